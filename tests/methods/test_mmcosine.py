"""MMCosine: cosine logits on fixed tensors, gradients, end-to-end runs, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asgml.methods.mmcosine import MMCosine, target_logit
from asgml.models.fusion import MMCosineFusion, MMCosineGatedFusion, build_fusion, cosine_logits
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


def _official_valid_prediction(a, v, w, b):
    """``main_CD.py:181,196`` (concat fusion): ``out = fc_out(cat(a, v))`` -> softmax -> argmax."""
    return torch.softmax(torch.cat((a, v), dim=1) @ w.t() + b, dim=1).argmax(1)


def test_official_evaluation_scores_the_linear_head() -> None:
    module = tiny_mlp_module(fusion="mmcosine")
    cb = MMCosine(scaling=10.0)
    cb.setup(None, module, "fit")
    # fixed tensors where the linear head and the cosine sum disagree: the audio feature is
    # long and points at class 0, the visual one short and points at class 1
    w = torch.zeros(3, 16)
    w[0, 0], w[1, 8], w[2, 1] = 1.0, 1.0, 0.1
    module.fusion.fc_out.weight.data.copy_(w)
    a = torch.zeros(2, 8)
    a[:, 0] = torch.tensor([5.0, 0.2])
    v = torch.zeros(2, 8)
    v[:, 0] = torch.tensor([1.0, 1.0])  # visual column 0 = W column 8 (class 1)
    feats = {"audio": a, "visual": v}
    logits, uni = module.heads(feats)
    out = cb.on_eval_logits(None, module, logits, uni, feats)
    assert torch.equal(out, torch.cat((a, v), dim=1) @ w.t())
    assert torch.equal(out.argmax(1), _official_valid_prediction(a, v, w, torch.zeros(3)))
    assert torch.equal(out.argmax(1), torch.tensor([0, 1]))
    # the cosine sum scores both classes equally (s * 1 each) and picks class 0 twice
    assert torch.equal(logits.argmax(1), torch.tensor([0, 0]))
    assert torch.equal(
        MMCosine(eval_fusion="cosine").on_eval_logits(None, module, logits, uni, feats), logits
    )
    # the unimodal predictions stay the cosine terms (main_CD.py:185-189)
    assert torch.allclose(uni["audio"], cosine_logits(a, w[:, :8], 10.0))
    with pytest.raises(ValueError, match="eval_fusion"):
        MMCosine(eval_fusion="mean")


def test_evaluation_through_the_module_uses_the_linear_head() -> None:
    module = tiny_mlp_module(fusion="mmcosine")
    cb = MMCosine()
    fit(module, vector_loader(n=8, batch_size=8), [cb], max_steps=1)
    batch = next(iter(vector_loader(n=8, batch_size=8)))
    logits, uni, feats = module(*module.split_batch(batch)[:2])
    exp = torch.cat([feats["audio"], feats["visual"]], dim=1) @ module.fusion.fc_out.weight.t()
    module.trainer.validate(module, vector_loader(n=8, batch_size=8), verbose=False)
    # the validation loss is the CE of the linear head's logits
    val_loss = module.trainer.callback_metrics["val/loss"]
    assert val_loss.item() == pytest.approx(F.cross_entropy(exp, batch["label"]).item(), rel=1e-5)


def test_gated_variant_matches_the_official_gated_fusion() -> None:
    torch.manual_seed(0)
    fusion = build_fusion("mmcosine_gated", {"audio": 3, "visual": 3}, num_classes=4, hidden_dim=5)
    assert isinstance(fusion, MMCosineGatedFusion)
    fusion.scaling = 10.0
    a, v = torch.randn(6, 3), torch.randn(6, 3)
    # models/fusion_modules.py:77-91 (GatedFusion) then main_CD.py:113-118 on x_new, y_new
    out_x, out_y = fusion.fc_x(a), fusion.fc_y(v)
    x_new = torch.mul(torch.sigmoid(out_y), out_x)
    y_new = torch.mul(torch.sigmoid(out_x), out_y)
    w = fusion.fc_out.weight
    out_a = torch.mm(F.normalize(x_new, dim=1), F.normalize(w[:, :5].t(), dim=0)) * 10.0
    out_v = torch.mm(F.normalize(y_new, dim=1), F.normalize(w[:, 5:].t(), dim=0)) * 10.0
    feats = {"audio": a, "visual": v}
    uni = fusion.unimodal_logits(feats)
    assert torch.allclose(uni["audio"], out_a) and torch.allclose(uni["visual"], out_v)
    assert torch.allclose(fusion(feats), out_a + out_v)
    exp = fusion.fc_out(torch.cat((x_new, y_new), dim=1))
    assert torch.allclose(fusion.linear_logits(feats), exp)
    module = tiny_mlp_module(fusion="mmcosine_gated")
    MMCosine(scaling=3.0).setup(None, module, "fit")
    assert module.fusion.scaling == 3.0
    with pytest.raises(ValueError, match="exactly 2 modalities"):
        build_fusion("mmcosine_gated", {"a": 3, "b": 3, "c": 3}, num_classes=4)


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


@pytest.mark.slow
def test_gated_variant_runs_end_to_end(make_cfg) -> None:
    m = run(make_cfg(["method=mmcosine", "model.fusion=mmcosine_gated"]))
    assert 0 <= m["metrics"]["test/acc"] <= 1
