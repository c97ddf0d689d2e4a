"""AMCo: schedule, class masks, shares, masked gradients, end-to-end and resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from asgml.methods.amco import STAR, AMCo, amco_class_mask, amco_pt, amco_shares
from asgml.train import run
from tests.helpers import (
    GradRecorder,
    NaNLossAt,
    StateAfterStep,
    fit,
    tiny_mlp_module,
    vector_loader,
)
from tests.methods.resume_check import assert_resume_exact


def test_schedule_mask_and_shares_hand_computed() -> None:
    assert amco_pt(0.0, 0.3) == 0.0
    assert amco_pt(0.15, 0.3) == pytest.approx(math.sin(math.pi / 4))
    assert amco_pt(5.0, 0.3) == pytest.approx(1.0)
    mask = amco_class_mask(6, math.sin(math.pi / 4), torch.Generator().manual_seed(0))
    assert mask.sum().item() == 6 - 4  # int(0.7071 * 6) = 4 zeros
    # one sample, logits a = [0, 0], v = [log 2, log 2]: softmax over 4 = [1, 1, 2, 2] / 6
    s = amco_shares([torch.zeros(1, 2), torch.full((1, 2), math.log(2.0))])
    assert s[0].item() == pytest.approx(2 / 6) and s[1].item() == pytest.approx(4 / 6)


class ForceDependent(AMCo):
    """AMCo with ``audio`` dependent and ``l_t = 0.15`` at every epoch start."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.l_t = 0.15  # pt = sin(pi/4): 2 of 3 classes masked (int(0.707 * 3) = 2)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, i) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, i)
        self.dependent = {"audio": True, "visual": False}


def test_masked_classes_get_no_gradient_on_the_dependent_block() -> None:
    cb = ForceDependent(eps=0.3, modulation_starts=0)
    cb.dependent = {"audio": True, "visual": False}
    gen = cb.generator.get_state()
    rec = GradRecorder()
    module = tiny_mlp_module(num_classes=3)
    fit(module, vector_loader(), [cb, rec], max_steps=1)
    g = torch.Generator()
    g.set_state(gen)
    mask = amco_class_mask(3, amco_pt(0.15, 0.3), g)
    w = rec.grads[0]["fusion.fc_out.weight"]  # (C, 8 audio | 8 visual)
    for c in range(3):
        audio_rows = torch.count_nonzero(w[c, :8]).item()
        assert (audio_rows == 0) == (mask[c].item() == 0), c
        assert torch.count_nonzero(w[c, 8:]).item() > 0  # visual block untouched by masks
    assert f"{STAR}.weight" in rec.grads[0]  # the star layer trains


def test_without_dependent_modality_loss_is_star_fused_plus_unimodal() -> None:
    cb = AMCo(modulation_starts=0)
    module = tiny_mlp_module(num_classes=3)
    cb.setup(None, module, "fit")
    batch = next(iter(vector_loader()))
    y = batch["label"]
    logits, uni, _ = module({m: batch[m] for m in module.modalities})
    expect = torch.nn.functional.cross_entropy(getattr(module, STAR)(logits), y)
    fused = cb.fused(module, uni)
    assert torch.allclose(torch.nn.functional.cross_entropy(fused, y), expect, atol=1e-6)


def test_refuses_separate_unimodal_heads() -> None:
    with pytest.raises(ValueError, match="AMCo"):
        AMCo().setup(None, tiny_mlp_module(unimodal_heads=True), "fit")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=amco", *extra]))
    assert m["metrics"]["test/acc"] >= 0


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    full = assert_resume_exact(tmp_path, ["method=amco"], "AMCo")
    assert f"{STAR}.weight" in full["state_dict"]


def test_a_skipped_step_leaves_the_dependence_flags_unchanged() -> None:
    cb = AMCo(sigma=0.01, modulation_starts=0)  # every applied step flags every modality
    snaps = StateAfterStep(cb)
    with pytest.warns(UserWarning, match="non-finite"):
        fit(tiny_mlp_module(), vector_loader(), [NaNLossAt({0}), cb, snaps], max_steps=1)
    skipped, applied = snaps.states
    assert skipped["dependent"] == {"audio": False, "visual": False}  # as before the step
    assert skipped["nonfinite_steps"] == 1
    assert applied["dependent"] == {"audio": True, "visual": True}


def test_schedule_masks_every_class_from_the_4th_batch_of_epoch_1() -> None:
    # AMCo_trainer.py:64-83: l_t = 0 per epoch, pt from l_t, then l_t += epoch / 10
    g = torch.Generator().manual_seed(0)
    for epoch, first_full in ((0, None), (1, 3), (2, 2), (3, 1)):
        l_t, full = 0.0, []
        for b in range(6):
            pt = amco_pt(l_t, 0.3)
            if amco_class_mask(6, pt, g).sum() == 0:  # every class of a dependent modality
                full.append(b)
            l_t += epoch / 10
        assert (full[0] if full else None) == first_full, epoch
        assert full == ([] if first_full is None else list(range(first_full, 6))), epoch
