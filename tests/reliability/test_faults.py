"""Faults lose nothing: ``last.ckpt`` holds the latest epoch, checkpoint writes are atomic,
non-finite runs stop and never leave a non-finite checkpoint (docs/reliability.md, Faults)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from omegaconf import open_dict
from typing_extensions import override

from asgml.checkpointing import AtomicCheckpointIO
from asgml.train import run
from tests.conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]


class DecreasingScore(L.Callback):
    """Logs ``fault/score`` = 3, 2, 1, ... at the validation epoch ends: monitored with
    ``mode=max``, only the first epoch is ever the best (a plateau made to order)."""

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("fault/score", float(3 - trainer.current_epoch))


def _ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def test_last_ckpt_holds_the_final_epoch_when_it_did_not_improve(tmp_path: Path) -> None:
    cfg = compose_cfg(
        [
            "trainer.max_epochs=3",
            "test=false",
            "callbacks.model_checkpoint.monitor=fault/score",
            "optimized_metric=val/acc_best",
        ],
        output_dir=tmp_path,
    )
    with open_dict(cfg):
        cfg.callbacks.decreasing = {"_target_": f"{__name__}.DecreasingScore"}
    run(cfg)
    best = _ckpt(tmp_path / "checkpoints" / "best.ckpt")
    last = _ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert best["epoch"] == 0  # the plateau: epochs 1 and 2 did not improve
    assert last["epoch"] == 2 and last["global_step"] == 9
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]


# A process that writes a small checkpoint, then is killed by the kernel (SIGXFSZ, the file
# size limit) in the middle of writing a large one over it: a kill during a checkpoint write.
_KILLED_WRITE = """
import resource, signal, sys, torch
from {module} import {cls}
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it by default
io, path = {cls}(), sys.argv[1]
io.save_checkpoint({{"state_dict": {{"w": torch.ones(4)}}}}, path)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
io.save_checkpoint({{"state_dict": {{"w": torch.zeros(1 << 18)}}}}, path)
"""


def killed_write(tmp_path: Path, module: str, cls: str) -> tuple[int, Path, Path]:
    ckpt_dir, tmpdir = tmp_path / "checkpoints", tmp_path / "tmpdir"
    ckpt_dir.mkdir()
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    code = _KILLED_WRITE.format(module=module, cls=cls)
    res = subprocess.run(
        [sys.executable, "-c", code, str(ckpt_dir / "last.ckpt")],
        env=env,
        capture_output=True,
        timeout=120,
    )
    return res.returncode, ckpt_dir, tmpdir


@pytest.mark.slow
def test_a_killed_checkpoint_write_leaves_no_orphan_and_the_old_file(tmp_path: Path) -> None:
    rc, ckpt_dir, tmpdir = killed_write(tmp_path, "asgml.checkpointing", "AtomicCheckpointIO")
    assert rc == -signal.SIGXFSZ  # killed mid-write, as by a kill -9 or a node failure
    left = sorted(p.name for p in ckpt_dir.iterdir())
    assert left == ["last.ckpt"] or (
        # the kill can only leave our own temporary file, next to the target
        len(left) == 2 and left[0].startswith(".last.ckpt.") and left[0].endswith(".tmp")
    ), left
    assert list(tmpdir.iterdir()) == []  # nothing in $TMPDIR
    old = _ckpt(ckpt_dir / "last.ckpt")
    assert torch.equal(old["state_dict"]["w"], torch.ones(4))
    # the next write of that checkpoint removes the killed write's temporary file
    AtomicCheckpointIO().save_checkpoint(
        {"state_dict": {"w": torch.ones(2)}}, ckpt_dir / "last.ckpt"
    )
    assert [p.name for p in ckpt_dir.iterdir()] == ["last.ckpt"]


def test_a_failed_checkpoint_write_cleans_up_its_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(4)}}, path)

    def fail(fd: int) -> None:  # the data is written, the flush to disk fails
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(8)}}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.equal(_ckpt(path)["state_dict"]["w"], torch.ones(4))


def test_a_nonfinite_checkpoint_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "best.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(4)}}, path)
    bad = torch.tensor([1.0, float("inf")])
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": bad}}, path)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": bad}}, tmp_path / "new.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]
    assert torch.equal(_ckpt(path)["state_dict"]["w"], torch.ones(4))
