"""UCF-101 (RGB + optical flow) on a tiny fixture in BalanceBenchmark's layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import flow_value, frame_ids, make_ucf101

from asgml.core.types import MultimodalDataModule
from asgml.data.base import DataLayoutError
from asgml.data.ucf101 import UCF101DataModule, segment_indices

IMG = 16
REPO = Path(__file__).resolve().parents[2]
TINY = [
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "dataset.image_size=32",
    "dataset.encoders.visual.width=8",
    "dataset.encoders.flow.width=8",
    "dataset.datamodule.batch_size=4",
    "dataset.datamodule.num_workers=0",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ucf101(tmp_path_factory.mktemp("ucf") / "UCF101")


def dm(root: Path, **kw) -> UCF101DataModule:
    kw = {"image_size": IMG, "num_workers": 0, "batch_size": 2, **kw}
    m = UCF101DataModule(str(root), **kw)
    m.setup()
    return m


def flow_ids(flow: torch.Tensor) -> list[tuple[int, ...]]:
    """Per segment, the flow frame indices of each channel (u: 10 + 10j, v: 15 + 10j)."""
    grey = flow.mean(dim=(2, 3)) * 255  # (2L, T)
    out = []
    for t in range(grey.shape[1]):
        ids = []
        for c in range(grey.shape[0]):
            base = 10 if c % 2 == 0 else 15
            ids.append(int(round((grey[c, t].item() - base) / 10)))
        out.append(tuple(ids))
    return out


def test_segment_indices_match_balancebenchmark() -> None:
    # ucf101_dataset.py:116: 1-based i*seg + max(seg//2, 1) at eval
    assert segment_indices(6, 3, False) == [0, 2, 4]  # frame_00001 / 3 / 5
    assert segment_indices(9, 3, False) == [0, 3, 6]
    assert segment_indices(12, 3, False) == [1, 5, 9]
    assert segment_indices(2, 3, False) == [0, 1, 1]
    torch.manual_seed(0)
    draws = [segment_indices(12, 3, True) for _ in range(200)]
    for i in range(3):  # ucf101_dataset.py:114: uniform in [i*seg+1, i*seg+seg] (1-based)
        assert {d[i] for d in draws} == set(range(4 * i, 4 * i + 4))


def test_labels_shapes_and_eval_frames(root: Path) -> None:
    m = dm(root)
    assert isinstance(m, MultimodalDataModule)
    assert m.num_classes == 101 and m.classes == sorted(m.classes)
    # label = index in the SORTED names (ucf101_dataset.py:56), not classInd.txt's index
    assert [m.classes.index(c) for c in ("ApplyEyeMakeup", "Archery", "YoYo")] == [0, 1, 100]
    rows = (root / "ucfTrainTestlist" / "testlist01.txt").read_text().split()
    want = [(r.split("/")[1][:-4], m.classes.index(r.split("/")[0])) for r in rows]
    assert [(v.name, v.label) for v in m.splits["test"].videos] == want
    assert {s: len(d) for s, d in m.splits.items()} == {"train": 8, "val": 1, "test": 3}
    item = m.splits["test"][0]
    assert set(item) == {"visual", "flow", "label"}
    assert item["visual"].shape == (3, 3, IMG, IMG) and item["flow"].shape == (2, 3, IMG, IMG)
    assert frame_ids(item["visual"]) == [0, 2, 4]
    assert flow_ids(item["flow"]) == [(0, 0), (3, 3), (6, 6)]
    # flow is scaled to [0, 1], not normalised (BalanceBenchmark a_norm=False)
    assert abs(item["flow"][0, 0].mean().item() * 255 - flow_value(0, "u")) < 1.5
    assert m.encoder_overrides() == {"flow": {"in_channels": 2}}


def test_flow_stack_interleaves_u_v(root: Path) -> None:
    m = dm(root, flow_stack=3, modalities=["rgb", "of"])
    item = m.splits["test"][1]
    assert item["of"].shape == (6, 3, IMG, IMG)
    assert flow_ids(item["of"]) == [(0, 0, 1, 1, 2, 2), (3, 3, 4, 4, 5, 5), (6, 6, 7, 7, 8, 8)]
    assert m.encoder_overrides() == {"of": {"in_channels": 6}}


@pytest.mark.parametrize("mode", ["tsn", "independent"])
def test_train_flip_of_flow(root: Path, mode: str) -> None:
    m = dm(root, flow_flip=mode, val_fraction=0.0)
    ds = m.splits["train"]
    torch.manual_seed(1)
    inverted = set()
    for _ in range(12):
        flow = ds[0]["flow"]
        for t in range(3):
            u, v = flow[0, t].mean().item() * 255, flow[1, t].mean().item() * 255
            assert min(abs(v - flow_value(j, "v")) for j in range(9)) < 1.5  # v never inverted
            plain = min(abs(u - flow_value(j, "u")) for j in range(9)) < 1.5
            inv = min(abs(255 - u - flow_value(j, "u")) for j in range(9)) < 1.5
            assert plain or inv
            inverted.add(inv)
    # TSN inverts u when it flips (transforms.py:57); BalanceBenchmark never does
    assert inverted == ({True, False} if mode == "tsn" else {False})


def test_missing_video_counted_or_strict(root: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "UCF101"
    shutil.copytree(root, copy)
    gone = m_name = dm(root).splits["test"].videos[0].name
    shutil.rmtree(copy / "flow" / "v" / gone)
    with pytest.warns(UserWarning, match=r"1 of 3 videos listed in .*testlist01.txt are missing"):
        m = dm(copy)
    assert m.data_issues.as_dict()["test"]["missing_files"]["examples"] == [m_name]
    assert len(m.splits["test"]) == 2
    with pytest.raises(FileNotFoundError, match="strict=true"):
        dm(copy, strict=True)


def test_bad_lists_are_errors_naming_file_and_line(root: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "UCF101"
    shutil.copytree(root, copy)
    with pytest.raises(ValueError, match=r"num_classes=3 but .*classInd.txt lists 101"):
        UCF101DataModule(str(copy), num_classes=3)
    test_list = copy / "ucfTrainTestlist" / "testlist01.txt"
    test_list.write_text(test_list.read_text() + "Bowling/v_Bowling_g01_c01.avi\n")
    with pytest.raises(ValueError, match=r"testlist01.txt:4: unknown class 'Bowling'"):
        dm(copy)
    (copy / "ucfTrainTestlist" / "classInd.txt").unlink()
    with pytest.raises(DataLayoutError, match="classInd.txt"):
        dm(copy)


def _truncated_flow_copy(root: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    copy = tmp_path / "UCF101"
    shutil.copytree(root, copy)
    video = sorted((copy / "flow" / "u").iterdir())[0]
    bad = video / "frame000001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    return copy, bad


def test_bad_file_named_by_item_and_verify(root: Path, tmp_path: Path) -> None:
    copy, bad = _truncated_flow_copy(root, tmp_path)
    m = dm(copy, val_fraction=0.0)
    split, i = next(
        (s, k) for s in ("train", "test") for k, v in enumerate(m.splits[s].videos)
        if v.name == bad.parent.name
    )  # fmt: skip
    with pytest.raises(OSError, match=f"cannot read flow file {bad}"):
        m.eval_view(split)[i]
    problems = m.verify_files()
    assert len(problems) == 1 and problems[0].startswith(f"cannot read flow file {bad}")


def _cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ASGML_LOG_DIR": str(cwd / "logs"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_trains_one_epoch_and_verify_lists_bad_file(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _cli(
        ["asgml.train", "dataset=ucf101", f"data_dir={root}", f"paths.output_dir={out}", *TINY],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "metrics.json").is_file() and "test/acc" in (out / "metrics.json").read_text()
    copy, bad = _truncated_flow_copy(root, tmp_path)
    proc = _cli(["asgml.prepare", "dataset=ucf101", f"data_dir={copy}", "verify=true"], tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"BAD cannot read flow file {bad}" in proc.stdout
    assert "verify: 1 bad file(s)" in proc.stdout


def test_pretrained_preset_without_weights_fails_at_startup(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import compose_cfg

    from asgml.train import run

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    cfg = compose_cfg(
        ["dataset=ucf101_pretrained", f"data_dir={root}", *TINY], output_dir=tmp_path, fast=False
    )
    where = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(Exception, match=f"weights are not at {where}"):
        run(cfg)
