"""PMR: prototype similarity/score/coefficients on fixed tensors, which parameters the
prototype CE reaches, the prototype pass, end-to-end runs and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asgml.core.toolkit import EpochWindow
from asgml.methods.pmr import (
    PMR,
    pmr_coefficients,
    prototype_score,
    prototype_similarity,
)
from asgml.train import run
from tests.helpers import fake_trainer as _fake_trainer
from tests.helpers import fit, tiny_mlp_module, vector_loader
from tests.helpers import plain_step as _step
from tests.methods.resume_check import check_resume


def _official_eu_dist(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    d = torch.zeros(x1.shape[0], x2.shape[0])
    for i in range(x1.shape[0]):
        for j in range(x2.shape[0]):
            d[i, j] = torch.sqrt(torch.dot(x1[i] - x2[j], x1[i] - x2[j]))
    return d


def test_similarity_and_score_hand_computed() -> None:
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    c = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    sim = prototype_similarity(f, c)
    assert torch.allclose(sim, torch.tensor([[0.0, -3.0], [-5.0, -4.0]]))
    y = torch.tensor([0, 1])
    # softmax([0, -3])[0] + softmax([-5, -4])[1]
    exp = 1 / (1 + torch.exp(torch.tensor(-3.0))) + 1 / (1 + torch.exp(torch.tensor(-1.0)))
    assert prototype_score(sim, y).item() == pytest.approx(exp.item())
    torch.manual_seed(0)
    f, c = torch.randn(6, 5), torch.randn(4, 5)
    assert torch.allclose(prototype_similarity(f, c), -_official_eu_dist(f, c), atol=1e-5)


def test_coefficients_follow_the_official_ratio_rule() -> None:
    # ratio_a_p = s_a / s_v > 1 -> visual gets alpha; < 1 -> audio; == 1 -> none
    assert pmr_coefficients(torch.tensor([3.0, 2.0]), 2.0).tolist() == [0.0, 2.0]
    assert pmr_coefficients(torch.tensor([1.0, 2.0]), 2.0).tolist() == [2.0, 0.0]
    assert pmr_coefficients(torch.tensor([2.0, 2.0]), 2.0).tolist() == [0.0, 0.0]
    assert pmr_coefficients(torch.tensor([1.0, 3.0, 2.0]), 0.5).tolist() == [0.5, 0.0, 0.5]


def test_prototype_ce_reaches_only_the_slow_encoder() -> None:
    module = tiny_mlp_module()
    batch = next(iter(vector_loader(n=8, batch_size=8)))
    cb = PMR(alpha=2.0)
    with torch.no_grad():
        _, _, feats = module(*module.split_batch(batch)[:2])
    # audio prototypes at its class means (high score), visual ones far away (low score)
    y = batch["label"]
    protos = {}
    for m in module.modalities:
        protos[m] = torch.stack(
            [feats[m][y == k].mean(0) if (y == k).any() else feats[m].mean(0) for k in range(3)]
        )
    protos["visual"] = protos["visual"][[1, 2, 0]]
    cb.prototypes = protos
    out, losses = _step(module, batch)
    cb.on_train_losses(_fake_trainer(), module, out)
    assert losses["pmr_proto_audio"].item() == 0.0
    exp = 2.0 * F.cross_entropy(prototype_similarity(out.features["visual"], protos["visual"]), y)
    assert losses["pmr_proto_visual"].item() == pytest.approx(exp.item())
    grads = torch.autograd.grad(
        losses["pmr_proto_visual"], list(module.parameters()), allow_unused=True
    )
    for (name, _), g in zip(module.named_parameters(), grads, strict=True):
        if name.startswith("encoders.visual"):
            assert g is not None and g.abs().sum() > 0, name
        else:
            assert g is None or g.abs().sum() == 0, name
    # outside the epoch window: no prototype terms
    cb.window = EpochWindow(0, 2)  # epoch 3 lies outside
    out, losses = _step(module, batch)
    cb.on_train_losses(_fake_trainer(epoch=3), module, out)
    assert set(losses) == {"fused"}


def test_prototypes_are_class_means_of_the_drawn_subset() -> None:
    module = tiny_mlp_module()
    loader = vector_loader(n=40, batch_size=4)  # 10 batches -> 1 batch in the pass
    cb = PMR(seed=3)
    fit(module, loader, [cb], max_steps=1)
    idx = cb._subset_indices(40, 4, 10, epoch=0)
    assert len(idx) == 4
    ds = loader.dataset
    x = {m: torch.stack([ds[int(i)][m] for i in idx]) for m in module.modalities}
    y = torch.stack([ds[int(i)]["label"] for i in idx])
    # prototypes were computed before the first step (weights of a fresh copy)
    fresh = tiny_mlp_module().eval()
    with torch.no_grad():
        feats = fresh.encode(x)
    for m in module.modalities:
        for k in range(3):
            if (y == k).any():
                assert torch.allclose(cb.prototypes[m][k], feats[m][y == k].mean(0), atol=1e-6)
            else:
                assert torch.equal(cb.prototypes[m][k], torch.zeros(8))


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=pmr", *extra]))
    assert 0 <= m["metrics"]["test/acc"] <= 1


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    check_resume(tmp_path, ["method=pmr", "method.pmr.momentum_coef=0.5"], ["PMR"])
