"""MMPareto: min-norm weights, per-tensor rescaling, gradients after a real step."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from asgml.core.base import BalancingCallback
from asgml.methods.mmpareto import MMPareto, min_norm_2, pareto_combine, pareto_weights
from asgml.train import run
from tests.helpers import fit, tiny_mlp_module, vector_loader


def test_min_norm_hand_computed() -> None:
    # g1 = [1, 0], g2 = [-1, 1]: v11 = 1, v12 = -1, v22 = 2 -> gamma = 3/5
    assert min_norm_2(
        torch.tensor(1.0), torch.tensor(-1.0), torch.tensor(2.0)
    ).item() == pytest.approx(0.6)
    assert min_norm_2(
        torch.tensor(1.0), torch.tensor(1.5), torch.tensor(4.0)
    ).item() == pytest.approx(0.999)
    assert min_norm_2(
        torch.tensor(4.0), torch.tensor(1.5), torch.tensor(1.0)
    ).item() == pytest.approx(0.001)


def test_weights_and_combination_hand_computed() -> None:
    g_mm, g_uni = [torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])]
    k0, k1, cos = pareto_weights(g_mm, g_uni)
    assert cos.item() == pytest.approx(-1 / math.sqrt(2))
    assert k0.item() == pytest.approx(0.6) and k1.item() == pytest.approx(0.4)
    g_sum = [torch.tensor([0.0, 1.0])]
    out = pareto_combine(g_mm, g_uni, g_sum, k0, k1, gamma=1.5)
    # g_new = 2 (0.6 [1, 0] + 0.4 [-1, 1]) = [0.4, 0.8]; d = 1 / sqrt(0.8); g = 1.5 d g_new
    d = 1 / math.sqrt(0.8)
    assert torch.allclose(out[0], torch.tensor([1.5 * d * 0.4, 1.5 * d * 0.8]))
    # agreeing gradients: k = 1/2, g_new = g_sum, d = 1 -> 1.5 g_sum
    g_uni = [torch.tensor([1.0, 1.0])]
    k0, k1, cos = pareto_weights(g_mm, g_uni)
    assert k0.item() == 0.5 and cos.item() > 0
    out = pareto_combine(g_mm, g_uni, [torch.tensor([2.0, 1.0])], k0, k1)
    assert torch.allclose(out[0], torch.tensor([3.0, 1.5]))
    # per tensor: d is taken tensor by tensor, max(d, 1)
    out = pareto_combine(
        [torch.tensor([1.0]), torch.tensor([2.0])],
        [torch.tensor([1.0]), torch.tensor([0.0])],
        [torch.tensor([4.0]), torch.tensor([1.0])],
        torch.tensor(0.5),
        torch.tensor(0.5),
    )
    assert torch.allclose(out[0], torch.tensor([1.5 * 2 * 2.0]))  # g_new 2, d 2
    assert torch.allclose(out[1], torch.tensor([1.5 * 2.0]))  # g_new 2, d 0.5 -> 1


class _Rec(BalancingCallback):
    def __init__(self) -> None:
        self.grads = []

    def on_train_gradients(self, trainer, pl_module, out) -> None:
        self.grads.append(
            {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        )


def test_gradients_after_one_step() -> None:
    module = tiny_mlp_module(gamma=1.0, unimodal_heads=True)
    start = copy.deepcopy(module)
    loader = vector_loader(n=8, batch_size=8)
    before, after = _Rec(), _Rec()
    fit(module, loader, [before, MMPareto(gamma=1.5), after], max_steps=1)
    # reference: separate per-loss gradients on a copy of the initial module
    inputs, _, y = start.split_batch(next(iter(loader)))
    logits, uni, _ = start(inputs)
    names = {id(p): n for n, p in start.named_parameters()}
    for m in start.modalities:
        ps = list(start.encoder_parameters(m))
        g_mm = torch.autograd.grad(F.cross_entropy(logits, y), ps, retain_graph=True)
        g_uni = torch.autograd.grad(F.cross_entropy(uni[m], y), ps, retain_graph=True)
        g_sum = [a + b for a, b in zip(g_mm, g_uni, strict=True)]
        k0, k1, _ = pareto_weights(g_mm, g_uni)
        exp = pareto_combine(g_mm, g_uni, g_sum, k0, k1, 1.5)
        for p, e, gs in zip(ps, exp, g_sum, strict=True):
            n = names[id(p)]
            assert torch.allclose(before.grads[0][n], gs, atol=1e-6), n
            assert torch.allclose(after.grads[0][n], e, atol=1e-6), n
    for n, g in before.grads[0].items():  # heads keep the plain summed gradient
        if not n.startswith("encoders."):
            assert torch.equal(after.grads[0][n], g)


def test_needs_unimodal_losses() -> None:
    with pytest.raises(ValueError, match="gamma"):
        MMPareto().setup(None, tiny_mlp_module(gamma=0.0), "fit")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=mmpareto", *extra]))
    assert m["metrics"]["test/acc"] >= 0
