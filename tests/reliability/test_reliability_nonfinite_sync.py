"""The non-finite guard's host syncs: every k-th step (``model.nonfinite_check_every``) and
none at all under a GradScaler with ``nonfinite=skip``."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from typing_extensions import override

from asgml.core.base import BalancingCallback
from tests.helpers import fit, tiny_mlp_module, vector_loader
from tests.reliability.test_reliability_guards import ParamSnapshots, PoisonGrads


class BatchStarts(L.Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(batch_idx)


class PoisonLoss(BalancingCallback):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_idx = batch_idx

    @override
    def on_train_losses(self, trainer, module, out) -> None:
        if self.batch_idx == self.at:
            out.losses["fused"] = out.losses["fused"] * float("nan")


def test_check_every_rejects_zero() -> None:
    with pytest.raises(ValueError, match="nonfinite_check_every"):
        tiny_mlp_module(nonfinite_check_every=0)


def test_checked_step_is_skipped_as_with_every_step_checks() -> None:
    module = tiny_mlp_module(nonfinite_check_every=2)
    snaps = ParamSnapshots()
    with pytest.warns(UserWarning, match="non-finite gradients at step 1: step skipped"):
        fit(module, vector_loader(), [PoisonGrads({1}), snaps], 3)  # step 1 is checked
    assert module.skipped_nonfinite_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(snaps.start[1], snaps.end[1]))


def test_an_unchecked_step_is_applied_and_reported_at_the_next_check() -> None:
    # k = 1: caught at batch 0 itself
    starts = BatchStarts()
    with pytest.raises(FloatingPointError, match="non-finite gradients at step 0"):
        fit(tiny_mlp_module(nonfinite="raise"), vector_loader(), [PoisonGrads({0}), starts], 3)
    assert starts.seen == [0]
    # k = 2: step 0 is not checked, its update is applied; step 1's check raises
    starts, snaps = BatchStarts(), ParamSnapshots()
    module = tiny_mlp_module(nonfinite="raise", nonfinite_check_every=2)
    with pytest.raises(FloatingPointError, match="non-finite"):
        fit(module, vector_loader(), [PoisonGrads({0}), starts, snaps], 3)
    assert starts.seen == [0, 1]
    assert not all(torch.isfinite(p).all() for p in snaps.end[0])  # the bad update landed


def test_scaler_skip_counts_on_the_device_and_warns_at_epoch_end() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    module = tiny_mlp_module()
    with pytest.warns(UserWarning, match=r"non-finite training loss at 1 step\(s\) of epoch 0"):
        fit(
            module,
            vector_loader(),
            [PoisonLoss(at=1)],
            max_steps=3,
            plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
        )
    assert module.skipped_nonfinite_steps == 1
