"""CGGM: coefficients, direction loss, gradient scaling and the next-step loss term."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from asgml.core.base import BalancingCallback
from asgml.methods.cggm import (
    CGGM,
    cggm_coefficients,
    cggm_defined,
    cggm_direction_loss,
    flat_cosine,
    fusion_weight_block,
)
from asgml.train import run
from tests.conftest import compose_cfg
from tests.helpers import fit, tiny_mlp_module, vector_loader


def test_coefficients_hand_computed() -> None:
    c = cggm_coefficients(torch.tensor([0.5, 0.25]), torch.tensor([0.25, 0.25]), eps=0.0)
    assert torch.allclose(
        c, torch.tensor([0.0, 1.0])
    )  # d = [0.25, 0]: [(0.25-0.25)/0.25, 0.25/0.25]
    c = cggm_coefficients(torch.tensor([0.3, 0.2, 0.1]), torch.tensor([0.1, 0.1, 0.0]), eps=0.0)
    assert torch.allclose(c, torch.tensor([0.5, 0.75, 0.75]))  # d = [.2,.1,.1], sum .4
    # unbounded, as in the official code: d = [0.3, -0.2] -> [(0.1-0.3)/0.1, (0.1+0.2)/0.1]
    c = cggm_coefficients(torch.tensor([0.3, -0.2]), torch.zeros(2), eps=0.0)
    assert torch.allclose(c, torch.tensor([-2.0, 3.0]))
    # no change at all: every coefficient is 0 (the 1e-8 guard)
    assert torch.equal(cggm_coefficients(torch.ones(2), torch.ones(2)), torch.zeros(2))


def test_zero_sum_steps_are_detected() -> None:
    # d = [0.25, -0.25]: sum 0, so the official coefficients are -d_i / 1e-8 = -+2.5e7
    now, prev = torch.tensor([0.5, 0.25]), torch.tensor([0.25, 0.5])
    c = cggm_coefficients(now, prev)
    assert c.tolist() == pytest.approx([-2.5e7, 2.5e7], rel=1e-6)
    assert not cggm_defined(now, prev)
    assert not cggm_defined(torch.ones(3), torch.ones(3))  # nothing changed: coefficients 0
    # d = [0.125, 0, 0]: defined, coefficients [0, 1, 1]
    now, prev = torch.tensor([0.375, 0.5, 0.25]), torch.tensor([0.25, 0.5, 0.25])
    assert cggm_defined(now, prev)
    assert cggm_coefficients(now, prev).tolist() == pytest.approx([0.0, 1.0, 1.0], abs=1e-6)


def test_no_direction_loss_from_a_zero_sum_step() -> None:
    module = tiny_mlp_module()
    cb = CGGM()
    cb.setup(None, module, "fit")
    g = torch.Generator().manual_seed(0)
    cb.saved = {}
    for m in module.modalities:
        cb.saved[f"cls_{m}"] = torch.randn(3, 8, generator=g)
        cb.saved[f"fus_{m}"] = fusion_weight_block(module.fusion, m).detach().clone()
    cb.coeffs = torch.tensor([-2.5e7, 2.5e7])  # the official values for d = [0.25, -0.25]
    cos = torch.stack(
        [flat_cosine(cb.saved[f"cls_{m}"], cb.saved[f"fus_{m}"]) for m in module.modalities]
    )
    cb.active = torch.tensor(True)  # zero_sum=official
    official = (5e7 - (cb.coeffs * cos).sum()) / 2
    assert cb.direction_loss(module).item() == pytest.approx(official.item(), rel=1e-5)
    cb.active = torch.tensor(False)  # zero_sum=skip
    loss = cb.direction_loss(module)
    assert loss.item() == 0.0
    loss.backward()
    assert module.fusion.fc_out.weight.grad.abs().max() == 0


class _Active(BalancingCallback):
    """Records the CGGM state and the gradients after the CGGM edit."""

    def __init__(self, cb: CGGM) -> None:
        self.cb, self.rows = cb, []

    def on_train_gradients(self, trainer, pl_module, out) -> None:
        grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        loss = out.losses.get("cggm_gm")
        self.rows.append(
            (self.cb.coeffs.clone(), bool(self.cb.active), grads, None if loss is None else loss)
        )


@pytest.mark.parametrize("zero_sum", ["skip", "official"])
def test_zero_sum_steps_are_left_unmodulated(zero_sum) -> None:
    # the same batch of 8 every step and slow classifiers: their accuracies rarely change,
    # so most steps have sum(d) = 0
    module = tiny_mlp_module()
    cb = CGGM(rou=1.3, lamda=0.2, clip=None, zero_sum=zero_sum)
    before, after = _Rec(cb), _Active(cb)
    fit(module, vector_loader(n=8, batch_size=8), [before, cb, after], max_steps=6)
    inactive = [s for s, row in enumerate(after.rows) if not row[1]]
    if zero_sum == "official":
        assert not inactive
    else:
        assert inactive and inactive != list(range(6))  # both kinds of step occur
    for s, (c, active, grads, _) in enumerate(after.rows):
        for n, g in before.grads[s].items():
            m = n.split(".")[1] if n.startswith("encoders.") else None
            i = module.modalities.index(m) if m else None
            factor = 1.3 * c[i].item() if (m and active) else 1.0
            assert torch.allclose(grads[n], g * factor, rtol=1e-5, atol=1e-7), (s, n)
        if s + 1 < len(after.rows) and not active:
            # the L_gm added at step s + 1 comes from step s: none from an unmodulated step
            assert after.rows[s + 1][3].item() == 0.0
    if zero_sum == "official":  # sum(d) = 0 with no change: every coefficient 0
        zeroed = [s for s, row in enumerate(after.rows) if row[0].abs().max() == 0]
        assert zeroed
        s = zeroed[0]
        assert all(
            after.rows[s][2][n].abs().max() == 0
            for n in after.rows[s][2]
            if n.startswith("encoders.")
        )


def test_direction_loss_hand_computed() -> None:
    # (|1| + |-0.5| - (1*0.5 + (-0.5)*1)) / 2 = 0.75
    v = cggm_direction_loss(torch.tensor([1.0, -0.5]), torch.tensor([0.5, 1.0]))
    assert v.item() == pytest.approx(0.75)
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert flat_cosine(a, b).item() == pytest.approx(2**-0.5)


class _Rec(BalancingCallback):
    def __init__(self, cb: CGGM | None = None) -> None:
        self.cb, self.grads, self.coeffs, self.losses = cb, [], [], []
        self.active: list[bool] = []

    def on_train_gradients(self, trainer, pl_module, out) -> None:
        self.grads.append(
            {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        )
        if self.cb is not None:
            self.coeffs.append(self.cb.coeffs.clone())
            self.active.append(self.cb.active is None or bool(self.cb.active))
            self.losses.append({k: v.detach().clone() for k, v in out.losses.items()})


def test_encoder_gradients_scaled_by_rou_times_coeff() -> None:
    module = tiny_mlp_module()
    cb = CGGM(rou=1.3, lamda=0.2, clip=None)
    before, after = _Rec(cb), _Rec()
    fit(module, vector_loader(n=24, batch_size=8), [before, cb, after], max_steps=3)
    # a step whose accuracy changes sum to 0 is left alone (zero_sum="skip", the default)
    assert any(before.active)
    for s in range(3):
        c = before.coeffs[s] * 1.3 if before.active[s] else torch.ones(2)
        for n, g in before.grads[s].items():
            if n.startswith("encoders.audio"):
                exp = g * c[0]
            elif n.startswith("encoders.visual"):
                exp = g * c[1]
            else:
                exp = g
            assert torch.allclose(after.grads[s][n], exp, atol=1e-7), (s, n)
    assert "cggm_gm" not in before.losses[0]  # no L_gm before the first step
    assert "cggm_gm" in before.losses[1]


def test_direction_loss_value_and_gradient_of_the_next_step() -> None:
    module = tiny_mlp_module()
    start = copy.deepcopy(module)
    cb = CGGM(rou=1.0, lamda=0.2, clip=None)
    rec = _Rec(cb)
    snap = {}

    class _Snap(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 0:
                snap.update({k: v.clone() for k, v in cb.saved.items()})

    fit(module, vector_loader(n=16, batch_size=8), [rec, cb, _Snap()], max_steps=2)
    # step 0 saved the initial fusion weights and the probes' weights before their update
    for m in module.modalities:
        assert torch.equal(snap[f"fus_{m}"], fusion_weight_block(start.fusion, m))
    c0 = rec.coeffs[0]
    cos = torch.stack(
        [
            flat_cosine(snap[f"cls_{m}"], fusion_weight_block(start.fusion, m))
            for m in module.modalities
        ]
    )
    l_gm = (c0.abs().sum() - (c0 * cos).sum()) / 2
    assert rec.losses[1]["cggm_gm"].item() == pytest.approx(0.2 * l_gm.item(), rel=1e-6)
    # its gradient reaches the current fusion weight, evaluated at the step-0 values
    cb.saved, cb.coeffs = snap, c0
    module.zero_grad()
    cb.direction_loss(module).backward()
    w = {
        m: fusion_weight_block(start.fusion, m).detach().requires_grad_() for m in module.modalities
    }
    ref = (
        c0.abs().sum()
        - sum(c0[i] * flat_cosine(snap[f"cls_{m}"], w[m]) for i, m in enumerate(module.modalities))
    ) / 2
    ref.backward()
    expected = torch.cat([w[m].grad for m in module.modalities], dim=1)
    assert torch.allclose(module.fusion.fc_out.weight.grad, expected, atol=1e-7)
    assert expected.abs().sum() > 0


def test_refuses_gated_fusion() -> None:
    module = tiny_mlp_module(fusion="gated", unimodal_heads=True)
    with pytest.raises(ValueError, match="CGGM"):
        CGGM().setup(None, module, "fit")


def test_state_dict_roundtrip() -> None:
    module = tiny_mlp_module()
    cb = CGGM()
    cb.setup(None, module, "fit")
    cb.acc_prev, cb.coeffs = torch.tensor([0.5, 0.25]), torch.tensor([0.3, 0.7])
    st = cb.state_dict()
    cb2 = CGGM()
    cb2.setup(None, module, "fit")
    cb2.load_state_dict(st)
    cb2.on_fit_start(None, module)
    assert torch.equal(cb2.coeffs, cb.coeffs) and torch.equal(cb2.acc_prev, cb.acc_prev)
    for a, b in zip(cb.bank.parameters(), cb2.bank.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=cggm", *extra]))
    assert m["metrics"]["test/acc"] >= 0


def test_defaults_leave_the_official_clip_and_zero_sum_values_as_switches() -> None:
    # the official clip (0.8) belongs to its Adam recipe and clips every run; alone on CGGM
    # under SGD it is a learning-rate cut, so it is off unless asked for
    cfg = compose_cfg(["method=cggm"]).method.cggm
    assert cfg.clip is None and cfg.zero_sum == "skip"
    assert CGGM().clip is None and CGGM().zero_sum == "skip"
    with pytest.raises(ValueError, match="zero_sum must be one of"):
        CGGM(zero_sum="ignore")
