"""Faults lose nothing: ``last.ckpt`` holds the latest epoch, checkpoint writes are atomic,
non-finite runs stop and never leave a non-finite checkpoint (docs/reliability.md, Faults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import open_dict
from typing_extensions import override

from asgml.train import run
from tests.conftest import compose_cfg


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
