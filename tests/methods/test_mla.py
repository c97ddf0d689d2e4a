"""MLA: projector, entropy weights, alternation, gradient projection, test fusion, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from asgml.methods.mla import HEAD, MLA, entropy_weights, gs_alpha, gs_update
from asgml.train import run
from tests.helpers import GradRecorder, fit, tiny_mlp_module, vector_loader
from tests.methods.resume_check import assert_resume_exact


def test_projector_update_hand_computed() -> None:
    assert gs_alpha(0, 10) == pytest.approx(0.1)
    assert gs_alpha(5, 10) == pytest.approx(0.1**1.5)
    # P = I (2x2), r = [1, 0], alpha = 1: k = [1, 0]^T, P - kk^T / 2 = diag(0.5, 1)
    p = gs_update(torch.eye(2), torch.tensor([[1.0, 0.0]]), 1.0)
    expect = torch.diag(torch.tensor([0.5, 1.0])) / math.sqrt(1.25)
    assert torch.allclose(p, expect)


def test_entropy_weights_hand_computed() -> None:
    # a: uniform over the batch (B = 2) in every class -> H = 2 * C * (0.5 ln 2) with C = 1
    a = torch.zeros(2, 1)
    v = torch.tensor([[0.0], [math.log(3.0)]])  # softmax over batch: [0.25, 0.75]
    h_a = math.log(2.0)
    h_v = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    w = entropy_weights([a, v])
    wa, wv = 1.0, math.exp(h_a - h_v)  # max entropy is a's
    assert w[0].item() == pytest.approx(wa / (wa + wv))
    assert w[1].item() == pytest.approx(wv / (wa + wv))


def _fit(cb, steps):
    module = tiny_mlp_module()
    rec = GradRecorder()
    fit(module, vector_loader(), [cb, rec], max_steps=steps)
    return module, rec


def test_steps_alternate_and_touch_one_encoder_and_the_shared_head() -> None:
    module, rec = _fit(MLA(), 3)
    for step, m in enumerate(["audio", "visual", "audio"]):
        other = "visual" if m == "audio" else "audio"
        names = set(rec.grads[step])
        assert any(n.startswith(f"encoders.{m}.") for n in names), step
        assert not any(n.startswith(f"encoders.{other}.") for n in names), step
        assert f"{HEAD}.weight" in names
        assert not any(n.startswith("fusion.") for n in names)  # the concat layer is unused
    assert module.step_plan.forward == {"audio"} == module.step_plan.step  # the last step's


def official_before_update(pl, model, before_batch_input, batch_index, len_dataloader, count):
    """``GSPlugin.before_update`` as the official code runs it (``utils/utils.py:24-41``
    @ ab6c184): the projection is applied only to a parameter named ``module.weight``."""
    alpha = 1.0 * 0.1 ** (batch_index / len_dataloader + 1)
    if count != 0:
        for n, w in model.named_parameters():
            if n == "module.weight":
                r = torch.mean(before_batch_input, 0, True)
                k = torch.mm(pl, torch.t(r))
                pl = torch.sub(pl, torch.mm(k, torch.t(k)) / (alpha + torch.mm(k, r)))
                pl = pl / torch.norm(pl, p="fro")
                w.grad.data = torch.mm(w.grad.data, torch.t(pl))
    return pl


def test_official_plugin_never_projects_the_bare_linear_head() -> None:
    # main.py:437 passes model.module.fusion_module.fc_out, a bare nn.Linear
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 3)
    head(torch.randn(4, 8)).square().sum().backward()
    raw = head.weight.grad.clone()
    feats = torch.randn(4, 8)
    official_before_update(torch.eye(8), head, feats, 1, 10, count=5)
    assert torch.equal(head.weight.grad, raw)
    # the same call on a wrapper whose parameter *is* named module.weight does project
    wrapped = torch.nn.Module()
    wrapped.module = torch.nn.Linear(8, 3)
    wrapped.module.weight.grad = raw.clone()
    official_before_update(torch.eye(8), wrapped, feats, 1, 10, count=5)
    assert not torch.allclose(wrapped.module.weight.grad, raw)


class RawGrads(GradRecorder):
    """The gradients before MLA's hook (a second recorder type: Lightning keys callback
    state by class)."""


def test_default_mla_leaves_the_head_gradient_unprojected_as_officially_run() -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_cfg

    cb = instantiate(compose_cfg(["method=mla"]).method.mla)  # the synthetic task's default
    assert cb.projection == "none"
    raw, final = RawGrads(), GradRecorder()
    module = tiny_mlp_module()
    fit(module, vector_loader(), [raw, cb, final], max_steps=3)
    w = f"{HEAD}.weight"
    for step in range(3):
        assert torch.equal(final.grads[step][w], raw.grads[step][w]), step
        # the official plugin, given the same head and gradient, leaves it as it is too
        head = torch.nn.Linear(8, 3)
        head.weight.grad = raw.grads[step][w].clone()
        official_before_update(torch.eye(8), head, torch.randn(16, 8), step, 4, count=step)
        assert torch.equal(final.grads[step][w], head.weight.grad), step
    # the paper's projection (an option) does change it from the second step on
    raw_r, final_r = RawGrads(), GradRecorder()
    fit(tiny_mlp_module(), vector_loader(), [raw_r, MLA(projection="replace"), final_r], 2)
    assert torch.equal(final_r.grads[0][w], raw_r.grads[0][w])
    assert not torch.allclose(final_r.grads[1][w], raw_r.grads[1][w])


def test_head_gradient_is_projected_from_the_second_step_and_nothing_else_changes() -> None:
    cb_r = MLA(projection="replace")
    _, rec_r = _fit(cb_r, 2)
    _, rec_n = _fit(MLA(projection="none"), 2)
    w = f"{HEAD}.weight"
    assert torch.equal(rec_r.grads[0][w], rec_n.grads[0][w])  # step 0: no projection
    p = cb_r.projector  # one update so far (at step 1)
    assert not torch.allclose(p, torch.eye(8))
    assert torch.allclose(rec_r.grads[1][w], rec_n.grads[1][w] @ p.t(), atol=1e-6)
    for n in rec_n.grads[1]:
        if n != w:
            assert torch.equal(rec_r.grads[1][n], rec_n.grads[1][n]), n


def test_test_time_fusion_replaces_fused_and_unimodal_logits() -> None:
    cb = MLA(test_fusion="fixed", fixed_weights=[0.25, 0.75])
    module = tiny_mlp_module()
    cb.setup(None, module, "fit")
    batch = next(iter(vector_loader()))
    logits, uni, feats = module({m: batch[m] for m in module.modalities})
    out = cb.on_eval_logits(None, module, logits, uni, feats)
    head = getattr(module, HEAD)
    assert torch.allclose(out, 0.25 * head(feats["audio"]) + 0.75 * head(feats["visual"]))
    assert torch.allclose(uni["visual"], head(feats["visual"]))


def test_unequal_feature_dims_are_refused() -> None:
    from asgml.core.module import MultimodalModule
    from asgml.models.encoders import MLPEncoder

    encs = {
        "a": MLPEncoder(input_dim=4, hidden_dim=8, feature_dim=8),
        "b": MLPEncoder(input_dim=4, hidden_dim=8, feature_dim=6),
    }
    with pytest.raises(ValueError, match="MLA shares one head"):
        MLA().setup(None, MultimodalModule(encs, num_classes=3), "fit")


# MLA's shared head needs equal feature dims: the synthetic text MLP is set to the width-8
# ResNets' 64 features
THREE = ["dataset.num_modalities=3", "dataset.encoder_choices.text.feature_dim=64"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], THREE])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=mla", *extra]))
    assert m["metrics"]["test/acc"] >= 0


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    full = assert_resume_exact(tmp_path, ["method=mla"], "MLA")
    assert f"{HEAD}.weight" in full["state_dict"]
