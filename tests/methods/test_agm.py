"""AGM: Shapley logits, coefficients, gradient hooks, window and clipping."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asgml.core.base import BalancingCallback
from asgml.methods.agm import (
    AGM,
    agm_coefficients,
    agm_ratio,
    agm_scores,
    grad_scale,
    shapley_logits,
)
from asgml.train import run
from tests.helpers import fit, tiny_mlp_module, vector_loader


def test_shapley_two_modalities_official_form() -> None:
    T, A, V, E = (torch.tensor([[float(x), 0.0]]) for x in (5, 2, 1, 7))
    f = {frozenset({"a", "v"}): T, frozenset({"a"}): A, frozenset({"v"}): V, frozenset(): E}
    phi = shapley_logits(f, ["a", "v"], empty_baseline=False)
    assert phi["a"][0, 0].item() == pytest.approx(0.5 * (5 - 1 + 2))  # 1/2 (T - f(v) + f(a))
    assert phi["v"][0, 0].item() == pytest.approx(0.5 * (5 - 2 + 1))
    assert torch.allclose(phi["a"] + phi["v"], T)
    phi = shapley_logits(f, ["a", "v"], empty_baseline=True)
    assert phi["a"][0, 0].item() == pytest.approx(0.5 * (5 - 1) + 0.5 * (2 - 7))


def test_shapley_three_modalities() -> None:
    x = {"a": 1.0, "v": 2.0, "t": 4.0}
    mods = list(x)
    f = {}
    for r in range(4):
        import itertools

        for s in itertools.combinations(mods, r):
            # additive part + a pairwise a-v interaction of 6 (split 3/3 by Shapley)
            val = sum(x[m] for m in s) + (6.0 if {"a", "v"} <= set(s) else 0.0) + 10.0
            f[frozenset(s)] = torch.tensor([[val]])
    phi = shapley_logits(f, mods, empty_baseline=True)
    assert phi["a"].item() == pytest.approx(4.0)
    assert phi["v"].item() == pytest.approx(5.0)
    assert phi["t"].item() == pytest.approx(4.0)


def test_scores_and_coefficients_hand_computed() -> None:
    z = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [0.25, 0.75]
    s = agm_scores({"a": z, "v": z}, torch.tensor([1]))
    assert s[0].item() == pytest.approx(-math.log(0.75))
    z0 = torch.tensor([[0.0, -1000.0]])  # p(y) clamped at 1e-8
    assert agm_scores({"a": z0}, torch.tensor([1]))[0].item() == pytest.approx(-math.log(1e-8))
    s, sbar = torch.tensor([1.0, 2.0]), torch.zeros(2)
    assert torch.allclose(
        agm_ratio(s), torch.tensor([math.e, math.exp(-1)])
    )  # r_a = exp(s_v - s_a)
    c = agm_coefficients(s, sbar, alpha=1.5, clip=10.0)
    assert c[0].item() == pytest.approx(math.exp(1.5 * (1 - math.e)))
    assert c[1].item() == pytest.approx(math.exp(1.5 * (1 - math.exp(-1))))
    c = agm_coefficients(torch.tensor([30.0, 0.0]), torch.tensor([0.0, 30.0]), alpha=1.0, clip=10.0)
    assert c[0].item() == pytest.approx(math.exp(10.0))  # capped
    # N = 3: r_m = exp((mean s - s_m) * 3/2)
    r = agm_ratio(torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(r, torch.exp(torch.tensor([1.5, 0.0, -1.5])))


def test_grad_scale() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = grad_scale(x, torch.tensor(3.0))
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([3.0, 3.0]))


class _Rec(BalancingCallback):
    def __init__(self) -> None:
        self.grads, self.losses = [], []

    def on_train_gradients(self, trainer, pl_module, out) -> None:
        self.grads.append(
            {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        )
        self.losses.append({k: v.detach().clone() for k, v in out.losses.items()})


def _manual_grads(module, batch, coeffs):
    module.zero_grad()
    inputs, _, y = module.split_batch(batch)
    T = module(inputs)[0]
    fa = module({"audio": inputs["audio"], "visual": torch.zeros_like(inputs["visual"])})[0]
    fv = module({"audio": torch.zeros_like(inputs["audio"]), "visual": inputs["visual"]})[0]
    ma, mv = 0.5 * (T - fv + fa), 0.5 * (T - fa + fv)
    # forward value ma + mv, gradient c_a into ma and c_v into mv
    z = (
        coeffs[0] * ma
        + (1 - coeffs[0]) * ma.detach()
        + coeffs[1] * mv
        + (1 - coeffs[1]) * mv.detach()
    )
    loss = F.cross_entropy(z, y)
    loss.backward()
    s = torch.stack(
        [
            -torch.log(torch.softmax(m, 1).gather(1, y[:, None]).clamp_min(1e-8)).mean()
            for m in (ma, mv)
        ]
    ).detach()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}, loss, s


def test_gradients_match_the_hooked_shapley_loss() -> None:
    module = tiny_mlp_module()
    start = copy.deepcopy(module)
    loader = vector_loader(n=8, batch_size=8)
    rec = _Rec()
    cb = AGM(alpha=1.5, grad_clip=False)
    fit(module, loader, [cb, rec], max_steps=1)
    batch = next(iter(loader))
    # step 0: sbar = 0 -> rbar = 1; c_m = exp(alpha * (1 - r_m))
    _, _, s = _manual_grads(copy.deepcopy(start), batch, torch.ones(2))
    r = torch.exp(torch.stack([s[1] - s[0], s[0] - s[1]]))
    coeffs = torch.exp(1.5 * (1 - r))
    assert torch.allclose(cb.coeffs, coeffs, atol=1e-6)
    grads, loss, _ = _manual_grads(copy.deepcopy(start), batch, coeffs)
    assert rec.losses[0]["fused"].item() == pytest.approx(loss.item(), rel=1e-6)
    for n, g in grads.items():
        assert torch.allclose(rec.grads[0][n], g, atol=1e-6), n
    assert torch.allclose(cb.sbar, s, atol=1e-6) and cb.count == 1


def test_outside_window_reset_and_keep_last() -> None:
    loader = vector_loader(n=16, batch_size=8)
    module = tiny_mlp_module()
    base = _Rec()
    fit(copy.deepcopy(module), loader, [base], max_steps=1)
    rec = _Rec()
    cb = AGM(modulation_starts=2, modulation_ends=3, grad_clip=False)
    fit(copy.deepcopy(module), loader, [cb, rec], max_steps=1)
    for n, g in base.grads[0].items():  # (1-based) epoch 1 is outside: plain fused CE
        assert torch.equal(rec.grads[0][n], g)
    cb = AGM(modulation_starts=2, modulation_ends=3, grad_clip=False, outside_window="keep_last")
    cb.setup(None, module, "fit")
    cb.coeffs = torch.tensor([2.0, 0.5])
    rec = _Rec()
    m2 = copy.deepcopy(module)
    fit(m2, loader, [cb, rec], max_steps=1)
    assert torch.equal(cb.coeffs, torch.tensor([2.0, 0.5]))  # not updated outside the window
    grads, _, _ = _manual_grads(copy.deepcopy(module), next(iter(loader)), torch.tensor([2.0, 0.5]))
    for n, g in grads.items():
        assert torch.allclose(rec.grads[0][n], g, atol=1e-6), n


def test_window_uses_the_official_one_based_epochs() -> None:
    # official: for epoch in range(1, EPOCHS + 1), modulated iff starts <= epoch <= ends
    cb = AGM()  # [0, 20]: the first 20 epochs, i.e. Lightning epochs 0..19
    assert [e for e in range(25) if cb.in_window(e)] == list(range(20))
    cb = AGM(modulation_starts=3, modulation_ends=5)  # 1-based epochs 3, 4, 5
    assert [e for e in range(10) if cb.in_window(e)] == [2, 3, 4]


# Class-0 logit of f(S) for every subset S of {a, v, t} (class-1 logit 0); f(empty) = 4.
_F3 = {"avt": 3.0, "vt": 1.0, "at": 2.0, "av": 2.5, "a": 1.5, "v": 0.5, "t": 1.0, "": 4.0}


class _SubsetNet(nn.Module):
    """f(S) from a fixed table: S = the modalities whose input is non-zero."""

    modalities = ["a", "v", "t"]

    def __init__(self) -> None:
        super().__init__()
        self.f = {k: torch.tensor([[v, 0.0]], requires_grad=True) for k, v in _F3.items()}
        self.calls: list[str] = []

    def forward(self, inputs, lengths=None):
        key = "".join(m for m in self.modalities if inputs[m].abs().sum() > 0)
        self.calls.append(key)
        return (self.f[key],)

    def log(self, *args, **kwargs) -> None:
        pass


def _agm_step(**kw):
    net = _SubsetNet()
    cb = AGM(alpha=1.0, grad_clip=False, **kw)
    cb.setup(None, net, "fit")
    inputs = {m: torch.ones(1, 2) for m in net.modalities}
    out = SimpleNamespace(
        logits=net.f["avt"], inputs=inputs, lengths=None, labels=torch.tensor([0]), losses={}
    )
    cb.on_train_losses(SimpleNamespace(current_epoch=0), net, out)
    return net, cb, out.losses["fused"]


def test_three_modality_loss_is_the_official_urfunny_formula() -> None:
    net, cb, loss = _agm_step()
    f = {k: v[0, 0].item() for k, v in net.f.items()}
    # model/URFunny_net.py @ 5a65542 (Modality_Audio / _Visual / _Text), no f(empty) term:
    phi = {
        "a": (f["avt"] - f["vt"] + f["a"]) / 3 + (f["at"] - f["t"] + f["av"] - f["v"]) / 6,
        "v": (f["avt"] - f["at"] + f["v"]) / 3 + (f["vt"] - f["a"] + f["av"] - f["t"]) / 6,
        "t": (f["avt"] - f["av"] + f["t"]) / 3 + (f["at"] - f["v"] + f["vt"] - f["a"]) / 6,
    }
    assert phi["a"] == pytest.approx(5 / 3) and phi["v"] == pytest.approx(2 / 3)
    assert phi["t"] == pytest.approx(2 / 3)
    # run/URFunny_main.py trains on CE(m_a + m_v + m_t) = CE(T): log(1 + e^-3)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-6)  # 0.04859
    assert "" not in net.calls and len(net.calls) == 6  # no all-masked pass
    # scores s_m = -log p(y | m_m) = log(1 + e^-phi_m); r = exp((mean s - s) 3/2); c = exp(1 - r)
    s = [math.log1p(math.exp(-phi[m])) for m in "avt"]  # 0.17301, 0.41437, 0.41437
    r = [math.exp((sum(s) / 3 - x) * 1.5) for x in s]
    c = [math.exp(min(1 - x, 7.0)) for x in r]  # 0.76111, 1.12040, 1.12040
    assert cb.coeffs.tolist() == pytest.approx(c, rel=1e-6)
    assert c[0] == pytest.approx(0.761107, rel=1e-5) and c[1] == pytest.approx(1.120397, rel=1e-5)
    # gradients: the official hooks multiply the gradient into m_m by c_m
    loss.backward()
    g = torch.softmax(net.f["avt"].detach(), 1) - torch.tensor([[1.0, 0.0]])  # dCE/dz
    weights = {  # d m_m / d f(S) from the formulas above, per (m, S)
        "a": {
            "avt": 1 / 3,
            "vt": -1 / 3,
            "a": 1 / 3,
            "at": 1 / 6,
            "t": -1 / 6,
            "av": 1 / 6,
            "v": -1 / 6,
        },
        "v": {
            "avt": 1 / 3,
            "at": -1 / 3,
            "v": 1 / 3,
            "vt": 1 / 6,
            "a": -1 / 6,
            "av": 1 / 6,
            "t": -1 / 6,
        },
        "t": {
            "avt": 1 / 3,
            "av": -1 / 3,
            "t": 1 / 3,
            "at": 1 / 6,
            "v": -1 / 6,
            "vt": 1 / 6,
            "a": -1 / 6,
        },
    }
    for key in _F3:
        if key == "":
            assert net.f[""].grad is None
            continue
        want = sum(c[i] * weights[m].get(key, 0.0) for i, m in enumerate("avt")) * g
        assert torch.allclose(net.f[key].grad, want, atol=1e-7), key


def test_three_modality_empty_baseline_switch() -> None:
    net, cb, loss = _agm_step(empty_baseline=True)
    # every m_m loses f(empty)/3 (the official m_m_mc): CE(T - f(empty)) = log(1 + e^1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(1.0)), rel=1e-6)  # 1.31326
    assert "" in net.calls


def test_conditional_clip() -> None:
    module = tiny_mlp_module()
    cb = AGM()
    for p in module.parameters():
        p.grad = torch.full_like(p, 0.5)
    cb.on_train_gradients(None, module, None)  # no fusion-weight entry outside [-1, 1]: unchanged
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in module.parameters())
    module.fusion.fc_out.weight.grad[0, 0] = 2.0
    cb.on_train_gradients(None, module, None)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
    assert total.item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=agm", *extra]))
    assert m["metrics"]["test/acc"] >= 0
