"""StepPlan: a default plan changes nothing; each field changes exactly what it says."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from asgml.core.base import BalancingCallback
from asgml.core.step_plan import StepPlan
from tests.helpers import GradRecorder, fit, tiny_mlp_module, vector_loader


class Planner(BalancingCallback):
    """Applies ``edit(plan)`` before the encoders and ``feat_edit(plan, feats)`` after."""

    def __init__(self, edit=None, feat_edit=None) -> None:
        self.edit, self.feat_edit = edit, feat_edit

    def on_step_plan(self, trainer, module, plan, batch) -> None:
        if self.edit:
            self.edit(plan)

    def on_step_features(self, trainer, module, plan, features, batch) -> None:
        if self.feat_edit:
            self.feat_edit(plan, features)


def _one_step(planner, **kw):
    module = tiny_mlp_module(**kw)
    before = copy.deepcopy(module.state_dict())
    rec = GradRecorder()
    fit(module, vector_loader(), [planner, rec], max_steps=1)
    return module, before, rec.grads[0]


def test_default_plan_is_the_plain_step() -> None:
    _, _, g_plan = _one_step(Planner())
    module = tiny_mlp_module()
    batch = next(iter(vector_loader()))
    logits, _, _ = module({m: batch[m] for m in module.modalities})
    F.cross_entropy(logits, batch["label"]).backward()
    for n, p in module.named_parameters():
        assert torch.equal(g_plan[n], p.grad), n


def test_only_one_modality_forwards_and_updates_it_alone() -> None:
    module, before, grads = _one_step(Planner(lambda p: p.only("audio")))
    assert not any(n.startswith("encoders.visual") for n in grads)
    assert any(n.startswith("encoders.audio") for n in grads)
    after = module.state_dict()
    for k, v in before.items():
        if k.startswith("encoders.visual"):
            assert torch.equal(v, after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoders.a"))
    # the visual block of the fusion weight sees zero features: no gradient there
    w = grads["fusion.fc_out.weight"]
    assert torch.count_nonzero(w[:, 8:]) == 0 and torch.count_nonzero(w[:, :8]) > 0


def test_step_freezes_an_encoder_that_still_gets_gradients() -> None:
    def edit(plan: StepPlan) -> None:
        plan.step = {"audio"}
        plan.step_head = False

    module, before, grads = _one_step(Planner(edit))
    assert any(n.startswith("encoders.visual") for n in grads)  # backward reached it
    after = module.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == k.startswith("encoders.audio") or not before[k].is_floating_point(), k


def test_no_grad_forward_keeps_features_but_not_the_graph() -> None:
    _, _, grads = _one_step(Planner(lambda p: p.no_grad.add("visual")))
    assert not any(n.startswith("encoders.visual") for n in grads)
    assert torch.count_nonzero(grads["fusion.fc_out.weight"][:, 8:]) > 0


def test_fusion_scale_and_sample_mask_match_a_hand_built_loss() -> None:
    keep = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    scale = torch.arange(8, dtype=torch.float32).unsqueeze(1) / 8

    def feat_edit(plan, feats) -> None:
        plan.fusion_scale["visual"] = scale
        plan.sample_mask = keep

    _, _, g = _one_step(Planner(feat_edit=feat_edit), gamma=0.5)
    module = tiny_mlp_module(gamma=0.5)
    batch = next(iter(vector_loader()))
    y = batch["label"]
    f = module.encode({m: batch[m] for m in module.modalities})
    logits = module.fusion({"audio": f["audio"], "visual": f["visual"] * scale})
    uni = module.fusion.unimodal_logits(f)  # unscaled
    loss = F.cross_entropy(logits[keep], y[keep])
    for m in ("audio", "visual"):
        loss = loss + 0.5 * F.cross_entropy(uni[m][keep], y[keep])
    loss.backward()
    for n, p in module.named_parameters():
        assert torch.allclose(g[n], p.grad, atol=1e-6), n


def test_unknown_modality_is_refused() -> None:
    with pytest.raises(ValueError, match="StepPlan.forward names unknown"):
        _one_step(Planner(lambda p: p.forward.add("text")))


def test_step_head_false_freezes_only_the_head() -> None:
    module, before, _ = _one_step(Planner(lambda p: setattr(p, "step_head", False)))
    after = module.state_dict()
    for k in before:
        if k.startswith("fusion."):
            assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoders."))
