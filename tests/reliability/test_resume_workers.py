"""Exact resume with worker processes (``num_workers=2``) for every gradient-editing method.

The validation and test loaders keep their workers (``persistent_workers``), so their
iterator -- and the base seed a ``DataLoader`` draws for its workers when it starts one -- is
created once per run: an uninterrupted run draws it at the first validation, a resumed run
again when it restarts. Drawn from the global RNG, that extra draw shifts everything that
reads the global stream afterwards (OGM-GE's noise, a probe's batch order); so every loader
takes its own seeded generator (:mod:`asgml.data.base`). Each method trains 2 epochs
straight (3 at least), and 1 epoch + a resume from ``last.ckpt`` (an epoch boundary);
``ogm`` and ``boost_ogm`` also from a mid-epoch ``last.ckpt`` (step 4 of 9).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from typing_extensions import override

from asgml.train import run
from tests.conftest import compose_cfg
from tests.methods.resume_check import _same
from tests.reliability.ddp_methods import EXTRA, TINY
from tests.reliability.test_reliability_ddp import METHODS

WORKERS = ["dataset.datamodule.num_workers=2", "trainer.deterministic=true", "test=false"]
# what the fast tests cover; every other method is marked slow
QUICK = ("ogm", "boost_ogm")


def _train(out: Path, method: str, *extra: str) -> dict:
    overrides = [f"method={method}", *WORKERS, *TINY, *EXTRA.get(method, []), *extra]
    # gradient-editing methods in DDP need unused-parameter detection; not on one process
    overrides = [o for o in overrides if not o.startswith("trainer.strategy=")]
    run(compose_cfg(overrides, output_dir=out))
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)


def _epochs(method: str) -> int:
    given = [o for o in EXTRA.get(method, []) if o.startswith("trainer.max_epochs=")]
    # 3 at least: a persistent worker pool's extra start-up shows after the resumed epoch's
    # validation, i.e. in the epoch after it
    return max(3, int(given[-1].split("=")[1])) if given else 3


def _assert_equal(full: dict, resumed: dict) -> None:
    assert full["global_step"] == resumed["global_step"] > 0
    _same(full["state_dict"], resumed["state_dict"], "state_dict")
    _same(full["optimizer_states"], resumed["optimizer_states"], "optimizer")
    # every callback's state but the checkpoint writers' (which name their run directory)
    keys = [k for k in full["callbacks"] if "Checkpoint" not in k]
    assert keys == [k for k in resumed["callbacks"] if "Checkpoint" not in k]
    for k in keys:
        _same(full["callbacks"][k], resumed["callbacks"][k], k)


@pytest.mark.parametrize(
    "method",
    [m if m in QUICK else pytest.param(m, marks=pytest.mark.slow) for m in METHODS],
)
def test_resume_at_an_epoch_boundary_with_workers_is_exact(method: str, tmp_path: Path) -> None:
    epochs = _epochs(method)
    full = _train(tmp_path / "full", method, f"trainer.max_epochs={epochs}")
    _train(tmp_path / "first", method, "trainer.max_epochs=1")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = _train(
        tmp_path / "resumed", method, f"trainer.max_epochs={epochs}", f"ckpt_path={last}"
    )
    _assert_equal(full, resumed)


class KeepLastAt(L.Callback):
    """Copies ``last.ckpt`` (written after every step) to ``mid.ckpt`` when step ``step``
    starts: the checkpoint of a run stopped in the middle of an epoch."""

    def __init__(self, dirpath: str, step: int) -> None:
        self.dir, self.step = Path(dirpath), step

    @override
    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            shutil.copy(self.dir / "last.ckpt", self.dir / "mid.ckpt")


@pytest.mark.parametrize("method", QUICK)
def test_resume_mid_epoch_with_workers_is_exact(method: str, tmp_path: Path) -> None:
    # last.ckpt after every step; mid.ckpt: the one of step 4 (the middle of epoch 1 of 3)
    ckpts = tmp_path / "full" / "checkpoints"
    keep = f"+callbacks.keep={{_target_:{__name__}.KeepLastAt,dirpath:'{ckpts}',step:4}}"
    every = "callbacks.last_checkpoint.every_n_train_steps=1"
    full = _train(tmp_path / "full", method, "trainer.max_epochs=3", every, keep)
    mid = torch.load(ckpts / "mid.ckpt", weights_only=True)
    assert mid["global_step"] == 4 and mid["epoch"] == 1
    resumed = _train(
        tmp_path / "resumed", method, "trainer.max_epochs=3", f"ckpt_path={ckpts / 'mid.ckpt'}"
    )
    _assert_equal(full, resumed)
