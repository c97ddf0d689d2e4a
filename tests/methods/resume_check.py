"""Exact-resume check shared by the step-plan method tests (the pattern of
tests/reliability/test_reliability_resume.py): a 2-epoch run equals 1 epoch + resume."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from asgml.train import run
from tests.conftest import compose_cfg

# last.ckpt is written at every epoch end, whatever val/acc does
RESUME = [
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "test=false",
]


def _same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_resume_exact(
    tmp: Path, overrides: Sequence[str], callback_key: str, epochs: int = 2
) -> dict:
    """Run full (``epochs``), first (one fewer) and resumed-from-first; assert the resumed last
    checkpoint equals the full one (weights, optimizer, the method's callback state).
    Returns the full run's last checkpoint."""

    def train(name: str, *extra: str) -> dict:
        run(compose_cfg([*RESUME, *overrides, *extra], output_dir=tmp / name))
        return torch.load(tmp / name / "checkpoints" / "last.ckpt", weights_only=True)

    full = train("full", f"trainer.max_epochs={epochs}")
    train("first", f"trainer.max_epochs={epochs - 1}")
    resumed = train(
        "resumed",
        f"trainer.max_epochs={epochs}",
        f"ckpt_path={tmp / 'first' / 'checkpoints' / 'last.ckpt'}",
    )
    assert full["global_step"] == resumed["global_step"] > 0
    _same(full["state_dict"], resumed["state_dict"], "state_dict")
    _same(full["optimizer_states"], resumed["optimizer_states"], "optimizer")
    assert callback_key in full["callbacks"], sorted(full["callbacks"])
    _same(full["callbacks"][callback_key], resumed["callbacks"][callback_key], callback_key)
    return full


def check_resume(root: Path, overrides: Sequence[str], callback_keys: Sequence[str]) -> None:
    """Train 2 epochs straight and 1 + 1 resumed (3 steps per epoch); everything in
    ``last.ckpt`` must match: weights, optimizer and the state of every callback named."""

    def train(name: str, *extra: str) -> dict:
        run(compose_cfg([*RESUME, *overrides, *extra], output_dir=root / name))
        return torch.load(root / name / "checkpoints" / "last.ckpt", weights_only=True)

    full = train("full")
    train("first", "trainer.max_epochs=1")
    resumed = train("resumed", f"ckpt_path={root / 'first' / 'checkpoints' / 'last.ckpt'}")
    assert full["global_step"] == resumed["global_step"] == 6
    _same(full["state_dict"], resumed["state_dict"], "state_dict")
    _same(full["optimizer_states"], resumed["optimizer_states"], "optimizer")
    for key in callback_keys:
        assert key in full["callbacks"], sorted(full["callbacks"])
        _same(full["callbacks"][key], resumed["callbacks"][key], key)
