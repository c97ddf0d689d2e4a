"""CML: the confidence penalty and the removal chain on fixed tensors, which parameters
the terms reach, end-to-end runs and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asgml.methods.cml import CML, confidence_penalty
from asgml.train import run
from tests.helpers import fake_trainer as _fake_trainer
from tests.helpers import plain_step as _step
from tests.helpers import tiny_mlp_module, vector_loader
from tests.methods.resume_check import check_resume


def _official_rank_term(conf_more, pred_more, conf_fewer, pred_fewer, target):
    """CPM_Nets.rank_loss, one pair (num = more, num + 1 = fewer)."""
    sign = (~((pred_fewer == target) & (pred_more != target))).long()
    return torch.nn.ReLU()(torch.sub(conf_fewer, conf_more) * sign - 0.00).sum()


def test_penalty_matches_the_official_and_balancebenchmark_formulas() -> None:
    torch.manual_seed(0)
    z_more, z_fewer = torch.randn(32, 4), torch.randn(32, 4)
    y = torch.randint(0, 4, (32,))
    cm, pm = z_more.softmax(1).max(1)
    cf, pf = z_fewer.softmax(1).max(1)
    ref = _official_rank_term(cm, pm, cf, pf, y)
    assert confidence_penalty(z_more, z_fewer, y).item() == pytest.approx(ref.item(), rel=1e-6)
    bb = max(0, torch.sub(cf, cm).sum())
    got = confidence_penalty(z_more, z_fewer, y, "balancebenchmark")
    assert got.item() == pytest.approx(float(bb), rel=1e-6)
    # hand-computed: conf 0.5 (more) vs 0.8 (fewer) -> 0.3, unless fewer right and more wrong
    z_more = torch.tensor([[0.0, 0.0]])
    z_fewer = torch.tensor([[torch.log(torch.tensor(4.0)), 0.0]])
    assert confidence_penalty(z_more, z_fewer, torch.tensor([1])).item() == pytest.approx(0.3)
    z_wrong = torch.tensor([[0.0, 0.01]])  # predicts class 1
    assert confidence_penalty(z_wrong, z_fewer, torch.tensor([0])).item() == 0.0
    assert confidence_penalty(z_wrong, z_fewer, torch.tensor([1])).item() > 0.29
    # the less-confident reduced set costs nothing
    assert confidence_penalty(z_fewer, z_more, torch.tensor([1])).item() == 0.0


@pytest.mark.parametrize("n_mod", [2, 3])
def test_loss_is_the_balancebenchmark_composition(n_mod) -> None:
    mods = ["audio", "visual", "text"][:n_mod]
    module = tiny_mlp_module(mods)
    batch = next(iter(vector_loader(mods, n=16, batch_size=16)))
    cb = CML(lam=0.1, seed=1)
    cb.removal_order = cb.draw_order(mods, 0)
    assert len(cb.removal_order) == n_mod - 1 and len(set(cb.removal_order)) == n_mod - 1
    out, losses = _step(module, batch)
    cb.on_train_losses(_fake_trainer(), module, out)
    total = sum(losses.values())
    # CML_trainer.py: out_p = out_s - uni[removed] + bias / N; loss = (CE(out) + sum CE(out_p)) / N
    b = module.fusion.fc_out.bias
    z, ce, conf = out.logits, F.cross_entropy(out.logits, out.labels), 0.0
    for r in cb.removal_order:
        z_p = z - out.unimodal_logits[r] + b / n_mod
        ce = ce + F.cross_entropy(z_p, out.labels)
        conf = conf + confidence_penalty(z, z_p, out.labels)
        z = z_p
    assert total.item() == pytest.approx((ce / n_mod + 0.1 * conf).item(), rel=1e-6)
    # the last reduced logits are the kept modality's block plus the full bias
    kept = [m for m in mods if m not in cb.removal_order]
    lo, hi = module.fusion.blocks[kept[0]]
    direct = out.features[kept[0]] @ module.fusion.fc_out.weight[:, lo:hi].t() + b
    assert torch.allclose(z, direct, atol=1e-6)
    # gradients: every encoder and the fusion head
    grads = torch.autograd.grad(total, list(module.parameters()))
    for (name, _), g in zip(module.named_parameters(), grads, strict=True):
        assert g.abs().sum() > 0, name


def test_confidence_term_reaches_the_removed_modality() -> None:
    module = tiny_mlp_module()
    batch = next(iter(vector_loader(n=16, batch_size=16)))
    cb = CML(lam=1.0, variant="balancebenchmark")
    cb.removal_order = ["visual"]
    out, losses = _step(module, batch)
    with torch.no_grad():
        # make the audio-only logits confident and the visual block cancel half of them
        # (least squares over the batch), so adding visual lowers the confidence: the
        # penalty is active whatever the initialisation
        w = module.fusion.fc_out.weight
        w[:, :8] *= 20
        target = -0.5 * (out.features["audio"] @ w[:, :8].T)
        w[:, 8:] = torch.linalg.lstsq(out.features["visual"], target).solution.T
    out, losses = _step(module, batch)
    cb.on_train_losses(_fake_trainer(), module, out)
    assert losses["cml_conf"].item() > 0
    grads = torch.autograd.grad(losses["cml_conf"], list(module.parameters()), allow_unused=True)
    named = dict(zip([n for n, _ in module.named_parameters()], grads, strict=True))
    assert any(g is not None and g.abs().sum() > 0 for n, g in named.items() if "visual" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in named.items() if "audio" in n)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="cml"):
        CML().setup(None, tiny_mlp_module(fusion="gated", unimodal_heads=True), "fit")
    with pytest.raises(ValueError, match="unimodal_heads"):
        CML().setup(None, tiny_mlp_module(unimodal_heads=True), "fit")
    with pytest.raises(ValueError, match="variant"):
        CML(variant="x")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=cml", *extra]))
    assert 0 <= m["metrics"]["test/acc"] <= 1


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    check_resume(tmp_path, ["method=cml"], ["CML"])
