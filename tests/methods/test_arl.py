"""ARL: entropy weights, warm-up, unimodal losses and encoder-output gradient scaling."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from asgml.core.base import BalancingCallback
from asgml.methods.arl import ARL, arl_weights, zero_padded_logits
from asgml.train import run
from tests.helpers import fit, tiny_mlp_module, vector_loader


def test_weights_hand_computed() -> None:
    za, zv = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    w = arl_weights({"a": za, "v": zv}, temperature=8.0)
    # magnitudes c = [2, 0] / 2 = [1, 0]
    pa = 1 / (1 + math.exp(-2.0))
    h_a = -(pa * math.log(pa) + (1 - pa) * math.log(1 - pa))  # 0.3628
    h_v = math.log(2.0)
    hn = [h_a / (h_a + h_v), h_v / (h_a + h_v)]  # no clamp binds (both > 0.3)
    inv = [1 / hn[0], 1 / hn[1]]
    a = [inv[0] / sum(inv), inv[1] / sum(inv)]
    score = [(1 - 1.0) * a[0], (1 - 0.0) * a[1]]  # [c_v a_a, c_a a_v]
    e = [math.exp(8 * s) for s in score]
    assert w[0].item() == pytest.approx(e[0] / sum(e), rel=1e-5)
    assert w[1].item() == pytest.approx(e[1] / sum(e), rel=1e-5)
    # the entropy clamp at 0.3: a very confident modality
    w = arl_weights({"a": torch.tensor([[20.0, 0.0]]), "v": torch.tensor([[1.0, 1.0]])}, 1.0)
    c = torch.tensor([20.0, 2.0]) / 22.0
    a = torch.tensor([1 / 0.3, 1 / 1.0])
    a = a / a.sum()
    assert torch.allclose(w, torch.softmax((1 - c) * a, dim=0), atol=1e-5)


def test_zero_padded_logits_use_the_full_bias() -> None:
    module = tiny_mlp_module()
    feats = {m: torch.randn(3, 8) for m in module.modalities}
    z = zero_padded_logits(module.fusion, feats)
    padded = module.fusion({"audio": feats["audio"], "visual": torch.zeros(3, 8)})
    assert torch.allclose(z["audio"], padded, atol=1e-6)


class _Rec(BalancingCallback):
    def __init__(self) -> None:
        self.grads, self.losses = [], []

    def on_train_gradients(self, trainer, pl_module, out) -> None:
        self.grads.append(
            {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        )
        self.losses.append({k: v.detach().clone() for k, v in out.losses.items()})


def _manual(module, batch, gamma, weights):
    module.zero_grad()
    inputs, _, y = module.split_batch(batch)
    feats = module.encode(inputs)
    scaled = {}
    for i, m in enumerate(module.modalities):
        f = feats[m]
        scaled[m] = f * (1 + weights[i]) - (f * weights[i]).detach()  # value f, grad x(1 + w)
    logits = module.fusion(scaled)
    uni = zero_padded_logits(module.fusion, scaled)
    loss = F.cross_entropy(logits, y) + gamma * sum(
        F.cross_entropy(uni[m], y) for m in module.modalities
    )
    loss.backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}, uni


@pytest.mark.parametrize("mode", ["entropy", "official"])
def test_gradients_after_warm_up(mode) -> None:
    module = tiny_mlp_module()
    start = copy.deepcopy(module)
    loader = vector_loader(n=8, batch_size=8)
    rec = _Rec()
    fit(module, loader, [ARL(gamma=4.0, start=-1, weights=mode, clip=None), rec], max_steps=1)
    batch = next(iter(loader))
    _, uni = _manual(copy.deepcopy(start), batch, 4.0, torch.zeros(2))
    w = arl_weights(uni) if mode == "entropy" else torch.tensor([0.5, 0.5])
    grads, _ = _manual(copy.deepcopy(start), batch, 4.0, w)
    y = batch["label"]
    assert rec.losses[0]["unimodal_audio"].item() == pytest.approx(
        4.0 * F.cross_entropy(uni["audio"], y).item(), rel=1e-6
    )
    for n, g in grads.items():
        assert torch.allclose(rec.grads[0][n], g, atol=1e-6), n


@pytest.mark.parametrize("start", [0, 5])  # epoch 0 == start is still warm-up
def test_warm_up_uses_gamma_one_and_no_gradient_scaling(start) -> None:
    # official: GradScale only when current_epoch > start (models/backbone.py:325,345 @ 358af4f)
    module = tiny_mlp_module()
    init = copy.deepcopy(module)
    loader = vector_loader(n=8, batch_size=8)
    rec = _Rec()
    fit(module, loader, [ARL(gamma=4.0, start=start, clip=None), rec], max_steps=1)
    grads, _ = _manual(copy.deepcopy(init), next(iter(loader)), 1.0, torch.zeros(2))
    scaled, _ = _manual(copy.deepcopy(init), next(iter(loader)), 1.0, torch.tensor([0.5, 0.5]))
    enc = [n for n in grads if n.startswith("encoders.")]
    assert enc
    for n, g in grads.items():
        assert torch.allclose(rec.grads[0][n], g, atol=1e-6), n
    for n in enc:  # a x1.5 scaling would be visible on every encoder weight
        if grads[n].abs().max() > 1e-4:
            assert not torch.allclose(rec.grads[0][n], scaled[n], atol=1e-6), n


def test_clip() -> None:
    module = tiny_mlp_module()
    for p in module.parameters():
        p.grad = torch.full_like(p, 10.0)
    ARL(clip=40.0).on_train_gradients(None, module, None)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
    assert total.item() == pytest.approx(40.0, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=arl", "method.arl.start=-1", *extra]))
    assert m["metrics"]["test/acc"] >= 0
