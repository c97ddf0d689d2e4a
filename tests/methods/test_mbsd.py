"""MBSD: the pair terms against a per-sample transcription of the reference loop, which
parameters they reach, end-to-end runs and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asgml.methods.mbsd import MBSD, mbsd_pair_terms
from asgml.train import run
from tests.helpers import fake_trainer as _fake_trainer
from tests.helpers import plain_step as _step
from tests.helpers import tiny_mlp_module, vector_loader
from tests.methods.resume_check import check_resume


def _reference(za, zb, y, rs_on_logits=True):
    """MBSD_trainer.py lines 125-158, sample by sample."""
    pa, pb = F.softmax(za, dim=1), F.softmax(zb, dim=1)
    n = len(y)
    w, ps, pw = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    for i in range(n):
        a, b = pa[i][y[i]], pb[i][y[i]]
        if pa[i].argmax() == y[i] or pb[i].argmax() == y[i]:
            w[i] = max(a, b) - min(a, b)
        ps[i], pw[i] = max(a, b), min(a, b)
    r = (za, zb) if rs_on_logits else (pa, pb)
    rs = 1 / za.shape[1] * torch.sum((r[0] - r[1]) ** 2, dim=1)
    kl = F.kl_div(ps, pw, reduction="none")
    return (w @ rs) / n, (w @ kl) / n


def test_pair_terms_match_the_reference_loop() -> None:
    torch.manual_seed(0)
    za, zb = 2 * torch.randn(16, 5), 2 * torch.randn(16, 5)
    y = torch.randint(0, 5, (16,))
    for on_logits in (True, False):
        rs, kl, w = mbsd_pair_terms(za, zb, y, "logits" if on_logits else "probs")
        ref_rs, ref_kl = _reference(za, zb, y, on_logits)
        assert rs.item() == pytest.approx(ref_rs.item(), rel=1e-5)
        assert kl.item() == pytest.approx(ref_kl.item(), rel=1e-5)
    # hand-computed: one sample, audio correct with q_a = 0.8 (2 classes), visual q_v = 0.5
    za = torch.tensor([[0.0, torch.log(torch.tensor(4.0))]])  # softmax -> [0.2, 0.8]
    zb = torch.tensor([[0.0, 0.0]])
    rs, kl, w = mbsd_pair_terms(za, zb, torch.tensor([1]))
    assert w.item() == pytest.approx(0.3)
    assert rs.item() == pytest.approx(0.3 * torch.log(torch.tensor(4.0)).item() ** 2 / 2)
    assert kl.item() == pytest.approx(0.3 * 0.5 * (torch.log(torch.tensor(0.5)).item() - 0.8))
    # both wrong -> nothing distilled
    rs, kl, w = mbsd_pair_terms(za, torch.tensor([[0.0, 0.5]]), torch.tensor([0]))
    assert w.item() == 0 and rs.item() == 0 and kl.item() == 0


@pytest.mark.parametrize("n_mod", [2, 3])
def test_terms_reach_encoders_and_unimodal_heads_only(n_mod) -> None:
    mods = ("audio", "visual", "text")[:n_mod]
    module = tiny_mlp_module(mods, unimodal_heads=True)
    batch = next(iter(vector_loader(mods, n=16, batch_size=16)))
    out, losses = _step(module, batch)
    MBSD().on_train_losses(_fake_trainer(), module, out)
    assert set(losses) == {"fused", "mbsd_rs", "mbsd_kl", *(f"mbsd_unimodal_{m}" for m in mods)}
    extra = sum(v for k, v in losses.items() if k.startswith("mbsd_"))
    grads = torch.autograd.grad(
        extra, list(module.parameters()), allow_unused=True, retain_graph=True
    )
    for (name, _), g in zip(module.named_parameters(), grads, strict=True):
        if name.startswith("fusion."):
            assert g is None or g.abs().sum() == 0, name
        else:
            assert g is not None and g.abs().sum() > 0, name
    # the distillation terms alone reach the unimodal heads of the pair
    rs_grads = torch.autograd.grad(losses["mbsd_rs"], list(module.unimodal_heads.parameters()))
    assert all(g.abs().sum() > 0 for g in rs_grads)
    # outside the window: only the fused CE
    out, losses = _step(module, batch)
    MBSD(modulation_ends=0).on_train_losses(_fake_trainer(epoch=1), module, out)
    assert set(losses) == {"fused"}


def test_refuses_module_unimodal_terms() -> None:
    with pytest.raises(ValueError, match="gamma=0"):
        MBSD().setup(None, tiny_mlp_module(gamma=1.0), "fit")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=mbsd", *extra]))
    assert 0 <= m["metrics"]["test/acc"] <= 1


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    check_resume(tmp_path, ["method=mbsd"], [])
