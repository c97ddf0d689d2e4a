"""Exact-resume check shared by the method tests: a 2-epoch run equals a 1-epoch run
resumed from its ``last.ckpt`` (weights, optimizer, every callback's state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from asgml.train import run
from tests.conftest import compose_cfg

# monitor=null: a checkpoint (and last.ckpt) every epoch; with a monitor, `save_last` only
# refreshes last.ckpt when the monitored value improves
BASE = [
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "test=false",
    "callbacks.model_checkpoint.monitor=null",
]


def _ckpt(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def check_resume(root: Path, overrides: Sequence[str], callback_keys: Sequence[str]) -> None:
    """Train 2 epochs straight and 1 + 1 resumed; everything in ``last.ckpt`` must match."""
    run(compose_cfg([*BASE, *overrides], output_dir=root / "full"))
    run(compose_cfg([*BASE, *overrides, "trainer.max_epochs=1"], output_dir=root / "first"))
    last = root / "first" / "checkpoints" / "last.ckpt"
    run(compose_cfg([*BASE, *overrides, f"ckpt_path={last}"], output_dir=root / "resumed"))
    full, resumed = _ckpt(root / "full"), _ckpt(root / "resumed")
    assert full["global_step"] == resumed["global_step"] == 6
    assert_same(full["state_dict"], resumed["state_dict"], "state_dict")
    assert_same(full["optimizer_states"], resumed["optimizer_states"], "optimizer")
    for key in callback_keys:
        assert key in full["callbacks"], sorted(full["callbacks"])
        assert_same(full["callbacks"][key], resumed["callbacks"][key], key)
