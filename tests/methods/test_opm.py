"""OPM: drop probabilities, the drop itself on the step plan, end-to-end and resume."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asgml.methods.ogm import ogm_scores
from asgml.methods.opm import OPM, opm_drop_probs, opm_keep_masks, opm_theta
from asgml.train import run
from tests.helpers import GradRecorder, fit, tiny_mlp_module, vector_loader
from tests.methods.resume_check import assert_resume_exact


def test_drop_probabilities_hand_computed() -> None:
    q, r = opm_drop_probs(torch.tensor([3.0, 2.0]), q_base=0.5, lam=0.5)
    assert r[0].item() == pytest.approx(math.tanh(0.5)) and r[1].item() == 0.0
    assert q[0].item() == pytest.approx(0.5 * (1 + 0.5 * math.tanh(0.5)))  # 0.61553
    assert q[1].item() == 0.0  # the weaker modality is never dropped
    # N = 3: compared with the sum of the others (BalanceBenchmark)
    q, r = opm_drop_probs(torch.tensor([4.0, 1.0, 1.0]), q_base=0.4, lam=1.0)
    assert q[0].item() == pytest.approx(0.4 * (1 + math.tanh(1.0)))
    assert q[1].item() == q[2].item() == 0.0
    # clipped at 1
    q, _ = opm_drop_probs(torch.tensor([100.0, 1.0]), q_base=0.9, lam=1.0)
    assert q[0].item() == 1.0
    assert opm_theta(torch.tensor([0.6, 0.0]), [512, 256]).item() == pytest.approx(0.4)


def test_keep_masks_follow_one_minus_q() -> None:
    g = torch.Generator().manual_seed(0)
    keep = opm_keep_masks(torch.tensor([0.75, 0.0]), 4000, g)
    assert keep[:, 1].min().item() == 1.0
    assert keep[:, 0].mean().item() == pytest.approx(0.25, abs=0.03)


def test_one_step_equals_the_hand_built_dropped_loss() -> None:
    cb = OPM(q_base=0.5, lam=0.5, p_exe=1.0, modulation_starts=0, seed=3)
    gen = copy.deepcopy(cb.generator.get_state())
    module = tiny_mlp_module()
    ref = copy.deepcopy(module)
    rec = GradRecorder()
    fit(module, vector_loader(), [cb, rec], max_steps=1)

    batch = next(iter(vector_loader()))
    y = batch["label"]
    f = ref.encode({m: batch[m] for m in ref.modalities})
    with torch.no_grad():
        s = ogm_scores(ref.fusion.unimodal_logits(f), y)
    q, _ = opm_drop_probs(torch.stack([s["audio"], s["visual"]]), 0.5, 0.5)
    assert q.max() > 0  # a dominant modality exists in this batch
    g = torch.Generator()
    g.set_state(gen)
    assert torch.rand(1, generator=g).item() >= 0.0  # the execution coin (p_exe = 1)
    keep = opm_keep_masks(q, y.shape[0], g)
    assert 0 < keep.sum() < keep.numel()  # something dropped, something kept
    inv = 1 / (1 - opm_theta(q, [8, 8]))
    fused = ref.fusion({m: f[m] * keep[:, i : i + 1] * inv for i, m in enumerate(ref.modalities)})
    sel = keep.sum(1) > 0
    F.cross_entropy(fused[sel], y[sel]).backward()
    for n, p in ref.named_parameters():
        assert torch.allclose(rec.grads[0][n], p.grad, atol=1e-6), n


def test_outside_the_window_nothing_changes() -> None:
    cb = OPM(p_exe=1.0, modulation_starts=1)
    rec_a, rec_b = GradRecorder(), GradRecorder()
    fit(tiny_mlp_module(), vector_loader(), [cb, rec_a], max_steps=1)
    fit(tiny_mlp_module(), vector_loader(), [rec_b], max_steps=1)
    for n, g in rec_b.grads[0].items():
        assert torch.equal(g, rec_a.grads[0][n]), n


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="method.opm.p_exe"):
        OPM(p_exe=1.5)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=opm", "method.opm.modulation_starts=0", *extra]))
    assert m["metrics"]["test/acc"] >= 0


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    assert_resume_exact(tmp_path, ["method=opm", "method.opm.modulation_starts=0"], "OPM")
