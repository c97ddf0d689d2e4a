"""Methods that clip or measure gradients give the same result under any loss scale, and a
step the optimizer skips feeds none of their statistics.

A 16-mixed GradScaler multiplies the loss (hence every gradient the callbacks see) by S
until the optimizer step unscales it. The runs below use a real GradScaler with autocast
off, so the arithmetic is float32 and a power-of-two S is exact: S = 1 and S = 2^16 must
train the same weights and record the same statistics.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from asgml.methods.agm import AGM
from asgml.methods.arl import ARL
from asgml.methods.cggm import CGGM
from asgml.methods.inforeg import InfoReg
from asgml.methods.mmpareto import MMPareto
from tests.helpers import fit, tiny_mlp_module, vector_loader
from tests.reliability.test_reliability_amp import _amp16_plugin
from tests.reliability.test_reliability_guards import PoisonGrads


class ScaledFP32(MixedPrecision):
    """``16-mixed``'s loss scaling (a real GradScaler) without autocast: exact arithmetic."""

    def __init__(self, scale: float) -> None:
        scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10**6)
        super().__init__("16-mixed", "cpu", scaler)

    @contextlib.contextmanager
    def forward_context(self) -> Generator[None, None, None]:
        yield


# method -> (module options, callback factory); small clip values so that the clips act
METHODS: dict[str, tuple[dict, Callable[[], L.Callback]]] = {
    "cggm": ({}, lambda: CGGM(clip=0.05)),
    "agm": ({}, lambda: AGM(alpha=1.5)),
    "arl": ({}, lambda: ARL(start=-1, clip=0.05)),
    "inforeg": ({"gamma": 1.0}, lambda: InfoReg()),
    "mmpareto": ({"gamma": 1.0, "unimodal_heads": True}, lambda: MMPareto()),
}


def _train(method: str, scale: float) -> tuple[dict[str, torch.Tensor], L.Callback]:
    opts, make = METHODS[method]
    module = tiny_mlp_module(**opts)
    cb = make()
    loader = vector_loader(n=32, batch_size=8)
    fit(module, loader, [cb], max_steps=8, max_epochs=2, plugins=[ScaledFP32(scale)])
    return {k: v.detach().clone() for k, v in module.named_parameters()}, cb


@pytest.mark.parametrize("method", sorted(METHODS))
def test_loss_scale_does_not_change_the_result(method: str) -> None:
    plain, cb1 = _train(method, 1.0)
    scaled, cb2 = _train(method, 2.0**16)
    for k, v in plain.items():
        torch.testing.assert_close(scaled[k], v, rtol=1e-5, atol=1e-7, msg=k)
    if method == "inforeg":  # the Fisher trace of each epoch (the window statistic)
        assert cb1.trace_lists["audio"][-1] > 0
        for m, traces in cb1.trace_lists.items():
            assert traces == pytest.approx(cb2.trace_lists[m], rel=1e-5), m


def test_inforeg_fisher_sum_skips_steps_the_optimizer_skips() -> None:
    """A GradScaler overflow (16-mixed) and a module-skipped non-finite step (32-true) add
    nothing to the Fisher information: the trace stays finite and the steps are counted."""
    cb = InfoReg()
    fit(
        tiny_mlp_module(gamma=1.0),
        vector_loader(),
        [cb],
        max_steps=2,
        plugins=[_amp16_plugin(2.0**40)],
    )
    traces = [cb.trace_lists[m][-1] for m in ("audio", "visual")]
    assert all(math.isfinite(t) and t > 0 for t in traces), traces
    assert cb.nonfinite.total == 1  # step 0 overflowed; the scaler skipped it

    cb = InfoReg()
    with pytest.warns(UserWarning, match=r"InfoReg left 1 step\(s\) of epoch 0"):
        fit(tiny_mlp_module(gamma=1.0), vector_loader(), [PoisonGrads({1}), cb], max_steps=2)
    traces = [cb.trace_lists[m][-1] for m in ("audio", "visual")]
    assert all(math.isfinite(t) and t > 0 for t in traces), traces
    assert cb.nonfinite.total == 1
