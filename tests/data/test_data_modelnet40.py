"""ModelNet40 front / rear views on a tiny fixture in the MVCNN rendering layout (Greedy)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import frame_value, make_modelnet40

from asgml.data.modelnet40 import CLASSES, ModelNet40DataModule, official_val_split

IMG = 20
TINY = [
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "dataset.image_size=32",
    "dataset.encoders.front.width=8",
    "dataset.encoders.rear.width=8",
    "dataset.datamodule.batch_size=4",
    "dataset.datamodule.num_workers=0",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_modelnet40(tmp_path_factory.mktemp("mn") / "modelnet40_images_new_12x")


def dm(root: Path, **kw) -> ModelNet40DataModule:
    kw = {"image_size": IMG, "num_workers": 0, "batch_size": 2, **kw}
    m = ModelNet40DataModule(str(root), **kw)
    m.setup()
    return m


def grey(x: torch.Tensor) -> int:
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return int(round(((x.mean(dim=(1, 2)) * std + mean).mean() * 255).item()))


def test_official_val_split_is_greedys() -> None:
    # Greedy dataset.py:164-166
    idx = list(range(50))
    random.Random(10).shuffle(idx)
    assert official_val_split(50) == (idx[10:], idx[:10])


def test_views_labels_and_split(root: Path) -> None:
    m = dm(root)
    assert m.num_classes == 40 and CLASSES.index("xbox") == 39
    test = m.splits["test"]
    assert [(x.name, x.label) for x in test.models] == [
        ("airplane_0001", 0), ("chair_0001", 8), ("xbox_0001", 39),
    ]  # fmt: skip
    item = test[0]
    assert set(item) == {"front", "rear", "label"}
    assert item["front"].shape == (3, IMG, IMG)
    assert grey(item["front"]) == frame_value(0) and grey(item["rear"]) == frame_value(6)
    # the official split: 12 train models, floor(0.2 * 12) = 2 of them in val
    train_order = [f"{c}_{i:04d}" for c in ("airplane", "chair", "xbox") for i in range(1, 5)]
    tr, va = official_val_split(12)
    assert [x.name for x in m.splits["val"].models] == [train_order[i] for i in va]
    assert [x.name for x in m.splits["train"].models] == [train_order[i] for i in tr]
    other = dm(root, modalities=["v2", "v9"], views=[2, 9])
    assert grey(other.splits["test"][0]["v9"]) == frame_value(9)


def test_incomplete_models_unknown_dirs_and_bad_view(root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "mn"
    shutil.copytree(root, copy)
    (copy / "chair" / "test" / "chair_0001.obj.shaded_v012.png").unlink()
    (copy / "sofa_typo" / "test").mkdir(parents=True)
    with pytest.warns(UserWarning, match=r"1 of 3 test models .* do not have 12 view files"):
        m = dm(copy)
    issues = m.data_issues.as_dict()["test"]
    assert issues["missing_files"]["examples"] == ["chair_0001"]
    assert issues["unknown_class_dirs"]["examples"] == ["sofa_typo"]
    with pytest.raises(FileNotFoundError, match="strict=true"):
        dm(copy, strict=True)
    bad = copy / "xbox" / "test" / "xbox_0001.obj.shaded_v007.png"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.warns(UserWarning, match="do not have 12 view files"):
        m = dm(copy)
    with pytest.raises(OSError, match=f"cannot read image file {bad}"):
        m.splits["test"][1]
    problems = m.verify_files()
    assert problems[0].startswith(f"{copy / 'chair' / 'test' / 'chair_0001'}: 11 view files")
    assert len(problems) == 2 and problems[1].startswith(f"cannot read image file {bad}")


def test_stratified_option_and_view_range(root: Path) -> None:
    m = dm(root, val_split="stratified", val_fraction=0.25, seed=0)
    assert sorted(x.label for x in m.splits["val"].models) == [0, 8, 39]
    with pytest.raises(ValueError, match=r"views must be in \[0, num_views=12\)"):
        ModelNet40DataModule(str(root), views=[0, 12])


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ASGML_LOG_DIR": str(cwd / "logs")}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_trains_one_epoch_and_verify_lists_bad_file(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _cli(
        ["asgml.train", "dataset=modelnet40", f"data_dir={root}", f"paths.output_dir={out}", *TINY],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test/acc" in (out / "metrics.json").read_text()
    copy = tmp_path / "mn"
    shutil.copytree(root, copy)
    bad = copy / "airplane" / "train" / "airplane_0002.obj.shaded_v001.png"
    bad.write_bytes(bad.read_bytes()[:30])
    proc = _cli(
        ["asgml.prepare", "dataset=modelnet40", f"data_dir={copy}", "verify=true"], tmp_path
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"BAD cannot read image file {bad}" in proc.stdout
