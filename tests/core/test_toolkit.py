"""The method toolkit (asgml.core.toolkit): true gradients under a loss scale, clipping,
skipped-step detection, epoch windows, non-finite accounting and deferred state."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from asgml.core.toolkit import (
    DeferredState,
    EpochWindow,
    NonFiniteCounter,
    clip_grad_norm_,
    grad_amax,
    grad_norm,
    loss_scale,
    step_finite,
    unscaled,
)
from asgml.core.types import StepOutput
from tests.reliability.test_reliability_amp import fake_trainer


def test_clip_matches_torch() -> None:
    g1 = [torch.tensor([3.0, 4.0]), torch.tensor([12.0])]
    g2 = [t.clone().requires_grad_() for t in g1]
    for p, g in zip(g2, g1, strict=True):
        p.grad = g.clone()
    total = clip_grad_norm_(fake_trainer(None), g1, 0.8)
    ref = torch.nn.utils.clip_grad_norm_(g2, 0.8)
    assert torch.allclose(total, ref)
    for a, p in zip(g1, g2, strict=True):
        assert torch.allclose(a, p.grad)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_norm_and_amax_are_loss_scale_free(max_norm: float) -> None:
    """Scaled gradients clip as their true values would: ``clip(S g) / S == clip(g)``."""
    s = 2.0**16
    true = [torch.tensor([3.0, 4.0]), torch.tensor([-12.0])]
    scaled = [t * s for t in true]
    plain_trainer, amp_trainer = fake_trainer(None), fake_trainer(s)
    assert loss_scale(plain_trainer) == 1.0 and float(loss_scale(amp_trainer)) == s
    assert float(grad_norm(amp_trainer, scaled)) == 13.0
    assert float(grad_amax(amp_trainer, scaled)) == 12.0
    assert all(torch.equal(u, t) for u, t in zip(unscaled(amp_trainer, scaled), true))
    n_true = clip_grad_norm_(plain_trainer, true, max_norm)
    n_scaled = clip_grad_norm_(amp_trainer, scaled, max_norm)
    assert float(n_true) == float(n_scaled) == 13.0
    for a, b in zip(scaled, true, strict=True):
        torch.testing.assert_close(a / s, b, rtol=1e-6, atol=0)
    if max_norm < 13:
        assert float(grad_norm(plain_trainer, true)) == pytest.approx(max_norm, rel=1e-5)


def test_clip_where_false_leaves_gradients() -> None:
    g = [torch.tensor([30.0, 40.0])]
    clip_grad_norm_(fake_trainer(None), g, 1.0, where=torch.tensor(False))
    assert torch.equal(g[0], torch.tensor([30.0, 40.0]))
    clip_grad_norm_(fake_trainer(None), g, 1.0, where=torch.tensor(True))
    assert float(g[0].norm()) == pytest.approx(1.0, rel=1e-5)


def _out(loss: float) -> StepOutput:
    t = torch.zeros(1, 2)
    return StepOutput(
        features={},
        logits=t,
        unimodal_logits={},
        labels=torch.zeros(1),
        inputs={},
        loss=torch.tensor(loss),
    )


def test_step_finite_reads_loss_and_every_gradient_once() -> None:
    lin = torch.nn.Linear(2, 2)
    for p in lin.parameters():
        p.grad = torch.ones_like(p)
    assert bool(step_finite(lin, _out(1.0)))
    assert not bool(step_finite(lin, _out(float("nan"))))
    lin.bias.grad[0] = float("inf")
    out = _out(1.0)
    assert not bool(step_finite(lin, out))
    lin.bias.grad[0] = 0.0
    assert not bool(step_finite(lin, out))  # cached for the step


def test_epoch_window_is_inclusive_and_validated() -> None:
    w = EpochWindow(1, 3)
    assert [e in w for e in range(5)] == [False, True, True, True, False]
    with pytest.raises(ValueError, match=r"modulation_ends \(0\) < modulation_starts \(1\)"):
        EpochWindow(1, 0)


def test_nonfinite_counter_reports_once_per_epoch() -> None:
    c = NonFiniteCounter("Method", "out of its statistics")
    trainer = SimpleNamespace(current_epoch=2, precision_plugin=None)
    for bad in (True, False, torch.tensor(True)):
        c.add(bad)
    assert c.total == 2  # pending steps count (e.g. for a mid-epoch checkpoint)
    with pytest.warns(UserWarning, match="Method left 2 step\\(s\\) of epoch 2 out of its"):
        assert c.end_epoch(trainer) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c.end_epoch(trainer) == 0  # nothing new: no warning
    assert c.total == 2
    c.load(5)
    assert c.total == 5


def test_deferred_state_moves_to_the_device_once() -> None:
    d = DeferredState()
    assert d.take("cpu") is None
    d.put({"a": torch.ones(2), "b": None, "c": [torch.zeros(1)]})
    assert d.pending is not None
    st = d.take("cpu")
    assert torch.equal(st["a"], torch.ones(2)) and st["b"] is None
    assert d.pending is None and d.take("cpu") is None
