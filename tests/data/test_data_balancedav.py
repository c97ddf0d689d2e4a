"""BalancedAV on a tiny fixture in BalanceBenchmark's layout (JSON annotation, .hdf5 frames)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("h5py")
from fixtures import frame_ids, make_balancedav  # noqa: E402

from asgml.data.balancedav import (  # noqa: E402
    BalancedAVDataModule,
    balancedav_frame_indices,
    h5_frame,
)

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
    return make_balancedav(tmp_path_factory.mktemp("bav") / "BalancedAV")


def dm(root: Path, **kw) -> BalancedAVDataModule:
    kw = {"image_size": IMG, "num_workers": 0, "batch_size": 2, "cache": "off", **kw}
    m = BalancedAVDataModule(str(root), **kw)
    m.setup()
    return m


def test_frame_indices_match_balancebenchmark() -> None:
    # balance_dataset.py:98,100: i*seg + max(seg//2, 1) used as a 0-based index
    assert balancedav_frame_indices(10, 3) == [1, 4, 7]
    assert balancedav_frame_indices(6, 3) == [1, 1, 1]
    assert balancedav_frame_indices(1, 3) == [0, 0, 0]
    torch.manual_seed(0)
    draws = [balancedav_frame_indices(30, 3, random=True) for _ in range(300)]
    # balance_dataset.py:94-96: randint(i*seg+1, i*seg+seg), 8 when >= 9
    assert {d[0] for d in draws} == set(range(1, 9))
    assert {d[1] for d in draws} == {d[2] for d in draws} == {8}


def test_labels_items_and_official_transforms(root: Path) -> None:
    m = dm(root)
    assert m.num_classes == 30 and m.classes[:3] == ["playing piano", "bowling", "singing"]
    assert [c.label for c in m.splits["test"].clips] == [0, 1, 2]
    assert {s: len(d) for s, d in m.splits.items()} == {"train": 8, "val": 1, "test": 3}
    item = m.splits["test"][0]
    assert item["audio"].shape == (1, 64, 48) and item["visual"].shape == (3, 3, IMG, IMG)
    assert frame_ids(item["visual"]) == [1, 4, 7]
    with open(root / "audio" / f"{m.splits['test'].clips[0].name}.pkl", "rb") as f:
        assert torch.equal(item["audio"][0], torch.from_numpy(pickle.load(f)))
    # augment=false (what BalanceBenchmark executes): train frames are only resized, so a
    # solid frame stays exactly one grey level; RandomResizedCrop + flip would keep it solid
    # too, so compare against the eval transform of the same picks instead
    torch.manual_seed(3)
    train = m.splits["train"][0]["visual"]
    ids = frame_ids(train)
    clip = m.splits["train"].clips[0]
    ref = torch.stack(
        [m.splits["test"].transform(m.read_frame(clip.frames[j], m.decode_hw)) for j in ids], 1
    )
    assert torch.equal(train, ref)
    assert not m.splits["train"].transform.geometry.__class__.__name__ == "Compose"
    assert dm(root, augment=True).splits["train"].transform.geometry.__class__.__name__ == "Compose"


def test_h5_frame_keeps_its_index_across_processes(root: Path) -> None:
    f = h5_frame(root / "visual" / "clip0000.hdf5", 7)
    g = pickle.loads(pickle.dumps(f))
    assert g.index == 7 and str(g) == str(f) and g.is_file()


def test_missing_unknown_label_and_bad_annotation(root: Path, tmp_path: Path) -> None:
    import json

    copy = tmp_path / "BalancedAV"
    shutil.copytree(root, copy)
    (copy / "audio" / "clip0010.pkl").unlink()
    with pytest.warns(UserWarning, match="1 of 3 clips listed in .*annotations.json are missing"):
        m = dm(copy)
    assert m.data_issues.as_dict()["test"]["missing_files"]["examples"] == ["clip0010"]
    ann = json.loads((copy / "annotations.json").read_text())
    ann["database"]["clip0009"]["label"] = "lawn mowing"
    (copy / "annotations.json").write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="clip 'clip0009' has unknown label 'lawn mowing'"):
        dm(copy)
    with pytest.raises(ValueError, match="num_classes=31 but .* lists 30 labels"):
        BalancedAVDataModule(str(root), num_classes=31)
    (copy / "annotations.json").write_text("{}")
    with pytest.raises(ValueError, match="not an annotation file with 'labels' and 'database'"):
        BalancedAVDataModule(str(copy))


def _bad_copy(root: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """One .hdf5 that is not an HDF5 file, one whose frame 4 is not a JPEG."""
    import h5py

    copy = tmp_path / "BalancedAV"
    shutil.copytree(root, copy)
    broken = copy / "visual" / "clip0001.hdf5"
    broken.write_bytes(b"not hdf5")
    bad_frame = copy / "visual" / "clip0009.hdf5"
    with h5py.File(bad_frame, "r+") as f:
        f["video"][4] = np.frombuffer(b"garbage!", dtype=np.uint8)
    return copy, broken, bad_frame


def test_bad_files_recorded_named_and_verified(root: Path, tmp_path: Path) -> None:
    copy, broken, bad_frame = _bad_copy(root, tmp_path)
    m = dm(copy)
    assert m.data_issues.as_dict()["train"]["unreadable_files"]["count"] == 1
    with pytest.raises(OSError, match=f"cannot read frame 4 of {bad_frame}"):
        m.splits["test"][0]
    problems = m.verify_files()
    assert len(problems) == 2
    assert problems[0].startswith(f"cannot read frame file {broken}")
    assert problems[1].startswith(f"{bad_frame}: cannot read frame 4 of {bad_frame}")


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
        ["asgml.train", "dataset=balancedav", f"data_dir={root}", f"paths.output_dir={out}", *TINY],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test/acc" in (out / "metrics.json").read_text()
    copy, broken, bad_frame = _bad_copy(root, tmp_path)
    proc = _cli(
        ["asgml.prepare", "dataset=balancedav", f"data_dir={copy}", "verify=true"], tmp_path
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"BAD cannot read frame file {broken}" in proc.stdout
    assert f"BAD {bad_frame}: cannot read frame 4 of {bad_frame}" in proc.stdout
