"""MMCosine: cosine logits on fixed tensors, gradients, end-to-end runs, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asgml.methods.mmcosine import MMCosine, target_logit
from asgml.models.fusion import MMCosineFusion, cosine_logits
from asgml.train import run
from tests.helpers import fit, tiny_mlp_module, vector_loader
from tests.methods.resume_check import check_resume


def test_cosine_logits_hand_computed() -> None:
    f = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    z = cosine_logits(f, w, scaling=10.0)
    exp = torch.tensor([[6.0, 8.0, 70 / math.sqrt(2) / 5], [10.0, 0.0, 10 / math.sqrt(2)]])
    assert torch.allclose(z, exp)


def test_fusion_matches_the_official_formula() -> None:
    torch.manual_seed(0)
    fusion = MMCosineFusion({"audio": 3, "visual": 2}, num_classes=4, scaling=15.0)
    a, v = torch.randn(5, 3), torch.randn(5, 2)
    w = fusion.fc_out.weight
    # main_CD.py: mm(normalize(a, dim=1), normalize(W[:, :d].T, dim=0)) * scaling
    out_a = torch.mm(F.normalize(a, dim=1), F.normalize(w[:, :3].t(), dim=0)) * 15.0
    out_v = torch.mm(F.normalize(v, dim=1), F.normalize(w[:, 3:].t(), dim=0)) * 15.0
    uni = fusion.unimodal_logits({"audio": a, "visual": v})
    assert torch.allclose(uni["audio"], out_a) and torch.allclose(uni["visual"], out_v)
    assert torch.allclose(fusion({"audio": a, "visual": v}), out_a + out_v)
    # invariant to the scale of features and weights
    assert torch.allclose(fusion({"audio": 7 * a, "visual": 0.1 * v}), out_a + out_v, atol=1e-5)
    assert fusion.fc_out.bias is None
    y = torch.tensor([0, 1, 2, 3, 0])
    assert target_logit(out_a, y).item() == pytest.approx(out_a[torch.arange(5), y].mean().item())


def test_gradients_reach_encoders_and_fusion_weights() -> None:
    module = tiny_mlp_module(fusion="mmcosine")
    fit(module, vector_loader(n=8, batch_size=8), [MMCosine(scaling=10.0)], max_steps=1)
    assert module.fusion.scaling == 10.0
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_scaling_changes_the_loss() -> None:
    torch.manual_seed(0)
    fusion = MMCosineFusion({"a": 3, "b": 3}, num_classes=3)
    feats = {"a": torch.randn(4, 3), "b": torch.randn(4, 3)}
    fusion.scaling = 1.0
    z1 = fusion(feats)
    fusion.scaling = 10.0
    assert torch.allclose(fusion(feats), 10 * z1)


def test_refuses_a_plain_head() -> None:
    with pytest.raises(ValueError, match="model.fusion=mmcosine"):
        MMCosine().setup(None, tiny_mlp_module(), "fit")
    with pytest.raises(ValueError, match="unimodal_heads"):
        MMCosine().setup(None, tiny_mlp_module(fusion="mmcosine", unimodal_heads=True), "fit")
    with pytest.raises(ValueError, match="scaling"):
        MMCosine(scaling=0)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    cfg = make_cfg(["method=mmcosine", *extra])
    assert cfg.model.fusion == "mmcosine" or cfg.method.model_defaults.fusion == "mmcosine"
    m = run(cfg)
    assert 0 <= m["metrics"]["test/acc"] <= 1


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    check_resume(tmp_path, ["method=mmcosine"], ["MMCosine"])
