"""LFM: JS alignment and the fitted weights on fixed tensors, the loss composition and
which parameters it reaches, end-to-end runs and resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asgml.core.types import StepOutput
from asgml.methods.lfm import FITTED_ALIGN, FITTED_CE, LFM, js_alignment, polynomial
from asgml.train import run
from tests.helpers import fake_trainer as _fake_trainer
from tests.helpers import tiny_mlp_module, vector_loader
from tests.methods.resume_check import check_resume


def test_js_alignment_hand_computed() -> None:
    # p = [0.5, 0.5], q = [0.8, 0.2] (log-odds log 4); m = [0.65, 0.35]
    zp = torch.tensor([[0.0, 0.0]])
    zq = torch.tensor([[math.log(4.0), 0.0]])
    m = [0.65, 0.35]
    kl_mp = sum(mi * math.log(mi / pi) for mi, pi in zip(m, [0.5, 0.5], strict=True))
    kl_mq = sum(mi * math.log(mi / qi) for mi, qi in zip(m, [0.8, 0.2], strict=True))
    assert js_alignment(zp, zq).item() == pytest.approx(0.5 * (kl_mp + kl_mq), rel=1e-6)
    assert js_alignment(zq, zq).item() == pytest.approx(0.0, abs=1e-7)
    # batchmean: the mean over samples
    both = js_alignment(torch.cat([zp, zq]), torch.cat([zq, zq]))
    assert both.item() == pytest.approx(0.25 * (kl_mp + kl_mq), rel=1e-6)


def test_fitted_weights_are_the_official_polynomials() -> None:
    cb = LFM()
    k1, k2 = cb.weights(0)
    assert (k1, k2) == (FITTED_CE[0], FITTED_ALIGN[0]) == (2.04623704e-01, 7.95376296e-01)
    k1, k2 = cb.weights(10)
    assert k1 == pytest.approx(polynomial(FITTED_CE, 10))
    assert k1 == pytest.approx(
        2.04623704e-01 + 3.35472727e-02 + 1.22989557e-02 - 2.92947416e-03
        + 2.23835486e-04 - 5.39717505e-06
    )  # fmt: skip
    assert k1 + k2 == pytest.approx(1.0)  # the two fits sum to one
    assert LFM("constant", 0.3, 0.7).weights(5) == (0.3, 0.7)


@pytest.mark.parametrize("n_mod", [2, 3])
def test_loss_composition_and_gradients(n_mod) -> None:
    mods = ["audio", "visual", "text"][:n_mod]
    module = tiny_mlp_module(mods, fusion="sum")
    batch = next(iter(vector_loader(mods, n=16, batch_size=16)))
    inputs, lengths, y = module.split_batch(batch)
    logits, uni, feats = module(inputs, lengths)
    losses = {"fused": F.cross_entropy(logits, y)}
    out = StepOutput(feats, logits, uni, y, inputs, lengths, losses)
    LFM().on_train_losses(_fake_trainer(epoch=3), module, out)
    k1, k2 = polynomial(FITTED_CE, 3), polynomial(FITTED_ALIGN, 3)
    # Crema_epoch.py: 2 * (k1 * CE(0.5 o_v + 0.5 o_a) + k2 * Alignment(o_a, o_v))
    mean_logits = sum(uni.values()) / n_mod
    pairs = [(a, b) for i, a in enumerate(mods) for b in mods[i + 1 :]]
    align = sum(js_alignment(uni[a], uni[b]) for a, b in pairs) / len(pairs)
    exp = 2 * (k1 * F.cross_entropy(mean_logits, y) + k2 * align)
    total = sum(losses.values())
    assert total.item() == pytest.approx(exp.item(), rel=1e-6)
    # the alignment term reaches every encoder and every head
    grads = torch.autograd.grad(losses["lfm_align"], list(module.parameters()))
    for (name, _), g in zip(module.named_parameters(), grads, strict=True):
        assert g.abs().sum() > 0, name


def test_refusals() -> None:
    with pytest.raises(ValueError, match="method=lfm"):
        LFM().setup(None, tiny_mlp_module(unimodal_heads=True), "fit")
    with pytest.raises(ValueError, match="gamma"):
        LFM().setup(None, tiny_mlp_module(gamma=1.0), "fit")
    with pytest.raises(ValueError, match="schedule"):
        LFM("learnable")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=lfm", *extra]))
    assert 0 <= m["metrics"]["test/acc"] <= 1


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    check_resume(tmp_path, ["method=lfm"], [])
