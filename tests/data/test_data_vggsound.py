"""VGGSound on a tiny fixture in BalanceBenchmark's layout (official vggsound.csv rows)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import frame_ids, make_vggsound

from asgml.data.vggsound import VGGSoundDataModule, vggsound_frame_indices

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:torchvision")
IMG = 16
TINY = [
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "dataset.image_size=32",
    "dataset.encoders.audio.width=8",
    "dataset.encoders.visual.width=8",
    "dataset.datamodule.batch_size=4",
    "dataset.datamodule.num_workers=0",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vggsound(tmp_path_factory.mktemp("vgg") / "VGGSound")


def dm(root: Path, **kw) -> VGGSoundDataModule:
    kw = {"image_size": IMG, "num_workers": 0, "batch_size": 2, "cache": "off", **kw}
    m = VGGSoundDataModule(str(root), **kw)
    m.setup()
    return m


def test_frame_indices_match_balancebenchmark() -> None:
    # VGG_dataset.py:127: eval 1-based i*seg + max(seg//2, 1) for n > 6, else frame 1
    assert vggsound_frame_indices(10, 3) == [0, 3, 6]
    assert vggsound_frame_indices(30, 3) == [4, 14, 24]
    assert vggsound_frame_indices(6, 3) == [0, 0, 0]
    torch.manual_seed(0)
    draws = [vggsound_frame_indices(30, 3, random=True) for _ in range(300)]
    # VGG_dataset.py:123-125: randint(i*seg+1, i*seg+seg), capped at 9 (1-based)
    assert {d[0] for d in draws} == set(range(9))
    assert {d[1] for d in draws} == {d[2] for d in draws} == {8}


def test_labels_first_seen_or_sorted_and_items(root: Path) -> None:
    m = dm(root)
    assert m.classes == ["playing cello", "dog barking", "people marching"]
    assert dm(root, class_order="sorted").classes == sorted(m.classes)
    rows = [r.split(",") for r in (root / "vggsound.csv").read_text().splitlines()]
    test = [(f"{r[0]}_{r[1]}", m.classes.index(r[2])) for r in rows if r[3] == "test"]
    assert [(c.name, c.label) for c in m.splits["test"].clips] == test
    assert {s: len(d) for s, d in m.splits.items()} == {"train": 8, "val": 1, "test": 3}
    item = m.splits["test"][0]
    assert item["audio"].shape == (1, 64, 48) and item["visual"].shape == (3, 3, IMG, IMG)
    assert frame_ids(item["visual"]) == [0, 3, 6]
    want = np.load(root / "audio" / f"{test[0][0]}.npy")
    assert torch.equal(item["audio"][0], torch.from_numpy(want))


def test_few_frames_missing_and_unknown_test_class(root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "VGGSound"
    shutil.copytree(root, copy)
    m0 = dm(root)
    few, gone = m0.splits["test"].clips[0].name, m0.splits["test"].clips[1].name
    for p in sorted((copy / "visual" / few).iterdir())[3:]:
        p.unlink()  # 3 frames left: BalanceBenchmark keeps > 3
    (copy / "audio" / f"{gone}.npy").unlink()
    with pytest.warns(UserWarning, match="1 of 2 clips listed in .*vggsound.csv are missing"):
        m = dm(copy)
    issues = m.data_issues.as_dict()["test"]
    assert issues["too_few_frames"]["examples"] == [few]
    assert issues["missing_files"]["examples"] == [gone]
    assert [c.name for c in m.splits["test"].clips] == [m0.splits["test"].clips[2].name]
    csv_file = copy / "vggsound.csv"
    csv_file.write_text(csv_file.read_text().replace(f"{gone.rsplit('_', 1)[0]},", "zz,", 1))
    shutil.copytree(copy / "visual" / m0.splits["test"].clips[2].name, copy / "visual" / "zz_0")
    shutil.copy(
        copy / "audio" / f"{m0.splits['test'].clips[2].name}.npy", copy / "audio" / "zz_0.npy"
    )
    csv_file.write_text(csv_file.read_text() + "zz,0,lawn mowing,test\n")
    with pytest.raises(ValueError, match="test clip 'zz_0' of class 'lawn mowing', which no train"):
        dm(copy)
    with pytest.raises(ValueError, match=r"vggsound.csv:\d+: expected"):
        csv_file.write_text("a,1,dog\n")
        VGGSoundDataModule(str(copy))


def _bad_copy(root: Path, tmp_path: Path) -> tuple[Path, Path]:
    copy = tmp_path / "VGGSound"
    shutil.copytree(root, copy)
    bad = sorted((copy / "audio").iterdir())[0]
    arr = np.load(bad)
    arr[0, 0] = np.nan
    np.save(bad, arr)
    return copy, bad


def test_bad_file_named_by_item_and_verify(root: Path, tmp_path: Path) -> None:
    copy, bad = _bad_copy(root, tmp_path)
    m = dm(copy, val_fraction=0.0)
    split, i = next(
        (s, k) for s in ("train", "test") for k, c in enumerate(m.splits[s].clips)
        if c.audio == bad
    )  # fmt: skip
    with pytest.raises(OSError, match=f"audio file {bad} holds 1 non-finite"):
        m.splits[split][i]
    problems = m.verify_files()
    assert problems == [f"{bad}: audio file {bad} holds 1 non-finite values (NaN or inf)"]


def test_cache_equals_on_the_fly(root: Path, tmp_path: Path) -> None:
    m = dm(root, cache_dir=str(tmp_path / "c"), frame_sampling="random")
    m.build_cache()
    cached = dm(root, cache="require", cache_dir=str(tmp_path / "c"), frame_sampling="random")
    for split in ("val", "test"):
        for a, b in zip(m.splits[split], cached.splits[split]):
            assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["visual"], b["visual"])


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
        ["asgml.train", "dataset=vggsound", f"data_dir={root}", f"paths.output_dir={out}", *TINY],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test/acc" in (out / "metrics.json").read_text()
    copy, bad = _bad_copy(root, tmp_path)
    proc = _cli(["asgml.prepare", "dataset=vggsound", f"data_dir={copy}", "verify=true"], tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"BAD {bad}: audio file {bad} holds 1 non-finite" in proc.stdout
