"""Guards: a non-finite loss, gradient, feature or score never poisons method state; the
module skips the step with a warning (``model.nonfinite=skip``) or stops with a clear
message (``raise``)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pytest
import torch
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.methods.boost import ASGMLBoost
from asgml.methods.ogm import OGMGE
from asgml.methods.probe import ProbeMonitor
from asgml.methods.staleness import StalenessScheduler
from tests.helpers import fit, tiny_mlp_module, vector_loader


class PoisonGrads(BalancingCallback):
    """Puts a NaN into one audio-encoder gradient on the given batches (place first)."""

    def __init__(self, batches: set[int]) -> None:
        self.batches = batches
        self.batch_idx = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_idx = batch_idx

    @override
    def on_train_gradients(self, trainer: L.Trainer, module: Any, out: Any) -> None:
        if self.batch_idx in self.batches:
            next(iter(module.encoder_parameters("audio"))).grad[0].fill_(float("nan"))


class PoisonFeatures(BalancingCallback):
    """Makes the published audio features infinite on the given batches (the loss, already
    built from the real features, stays finite)."""

    def __init__(self, batches: set[int]) -> None:
        self.batches = batches
        self.batch_idx = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_idx = batch_idx

    @override
    def on_train_losses(self, trainer, module, out) -> None:
        if self.batch_idx in self.batches:
            out.features["audio"] = torch.full_like(out.features["audio"], float("inf"))


class ParamSnapshots(L.Callback):
    def __init__(self) -> None:
        self.start: list[list[torch.Tensor]] = []
        self.end: list[list[torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        self.start.append([p.detach().clone() for p in pl_module.parameters()])

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.end.append([p.detach().clone() for p in pl_module.parameters()])


def test_nonfinite_gradients_skip_the_step_and_spare_every_callback() -> None:
    module = tiny_mlp_module()  # nonfinite=skip (the default)
    snaps = ParamSnapshots()
    ogm, probe = OGMGE(variant="generalized"), ProbeMonitor(eval_freq=1, probe_train_steps=2)
    boost, stale = ASGMLBoost(), StalenessScheduler(update_freq=100)
    with pytest.warns(UserWarning) as record:
        fit(module, vector_loader(), [PoisonGrads({1}), ogm, probe, boost, stale, snaps], 3)
    messages = [str(w.message) for w in record]
    assert any("non-finite gradients at step 1: step skipped" in m for m in messages)
    assert any("ProbeMonitor left 1 step(s) of epoch 0" in m for m in messages)
    assert module.skipped_nonfinite_steps == 1
    # batch 1 did not move the weights; the other batches did
    assert all(torch.equal(a, b) for a, b in zip(snaps.start[1], snaps.end[1]))
    assert not all(torch.equal(a, b) for a, b in zip(snaps.start[2], snaps.end[2]))
    # 4 batches, 3 optimizer steps; callbacks saw the poisoned batch and kept out of it
    assert ogm.state_dict()["nonfinite_steps"] == 1
    assert probe.version == 3 and probe.skipped_nonfinite == 1
    assert all(torch.isfinite(p).all() for p in probe.bank.parameters())
    assert float(stale._finite) == 3.0 and stale._count == 4
    assert all(torch.isfinite(t).all() for t in stale._acc.values())
    assert stale.state_dict()["nonfinite_steps"] == 1
    assert all(math.isfinite(s) for s in boost.scales.values())
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_nonfinite_gradients_raise_with_a_clear_message() -> None:
    module = tiny_mlp_module(nonfinite="raise")
    with pytest.raises(FloatingPointError, match=r"non-finite gradients at step 1.*raise"):
        fit(module, vector_loader(), [PoisonGrads({1})], max_steps=3)


def test_nonfinite_loss_still_skips_and_raises() -> None:
    class PoisonLoss(BalancingCallback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.batch_idx = batch_idx

        @override
        def on_train_losses(self, trainer, module, out) -> None:
            if self.batch_idx == 1:
                out.losses["fused"] = out.losses["fused"] * float("nan")

    module = tiny_mlp_module()
    with pytest.warns(UserWarning, match="non-finite training loss"):
        fit(module, vector_loader(), [PoisonLoss()], max_steps=3)
    assert module.skipped_nonfinite_steps == 1
    with pytest.raises(FloatingPointError, match="model.nonfinite=raise"):
        fit(tiny_mlp_module(nonfinite="raise"), vector_loader(), [PoisonLoss()], max_steps=3)


def test_probe_never_trains_on_nonfinite_features() -> None:
    probe = ProbeMonitor(eval_freq=2, probe_train_steps=2)
    with pytest.warns(UserWarning, match="deferred to the next finite step"):
        fit(tiny_mlp_module(), vector_loader(), [PoisonFeatures({0}), probe], max_steps=4)
    # due at steps 0 and 2: step 0 deferred to step 1, then step 2
    assert probe.version == 2 and probe.last_eval_step == 2 and not probe.due
    assert probe.skipped_nonfinite == 1
    assert all(torch.isfinite(p).all() for p in probe.bank.parameters())
    assert all(0.0 <= s <= 1.0 for s in probe.scores.values())


def test_boost_keeps_its_scales_on_nonfinite_scores() -> None:
    boost = ASGMLBoost(alpha=0.5, ema=True, ema_alpha=0.5)
    boost.scales = {"audio": 1.0, "visual": 1.0}
    boost.update({"audio": 0.8, "visual": 0.4})
    kept = dict(boost.scales)
    for bad in (float("nan"), float("inf")):
        with pytest.warns(UserWarning, match="non-finite utilization scores"):
            assert boost.update({"audio": bad, "visual": 0.4}) == kept
    assert boost.scales == kept and kept["visual"] > 1.0


def test_staleness_keeps_tau_when_a_whole_window_is_nonfinite() -> None:
    stale = StalenessScheduler(update_freq=2, tau_base=2.0)
    taus: list[dict[str, float]] = []

    class TauRecorder(L.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            taus.append(dict(stale.tau))

    with pytest.warns(UserWarning, match="StalenessScheduler left 2 step"):
        fit(
            tiny_mlp_module(),
            vector_loader(),
            [PoisonGrads({0, 1}), stale, TauRecorder()],
            max_steps=2,
        )
    # window 1 (batches 0, 1) was all non-finite: tau stays 1; window 2 recomputes it
    assert taus[1] == {"audio": 1.0, "visual": 1.0}
    assert taus[3] != taus[1] and all(1.0 <= t <= 8.0 for t in taus[3].values())
    assert all(math.isfinite(v) for v in stale.prev_loss.values())
