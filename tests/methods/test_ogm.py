"""OGM-GE: hand-computed coefficients, parameter selection, GE noise, window, N modalities."""

from __future__ import annotations

import math

import pytest
import torch

from asgml.methods.boost import ASGMLBoost
from asgml.methods.ogm import (
    OGMGE,
    generalized_coefficients,
    modulate_,
    official_coefficients,
    ogm_scores,
)
from asgml.train import run
from tests.helpers import (
    GradRecorder,
    fit,
    image_loader,
    tiny_mlp_module,
    tiny_resnet_module,
    vector_loader,
)
from tests.test_asgml import FixedScores


def approx(x: float):
    """float32 arithmetic: compare to ~6 significant digits."""
    return pytest.approx(x, rel=1e-5, abs=1e-7)


def test_scores_are_summed_true_class_probabilities():
    z = {
        "a": torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]),
        "v": torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]]),
    }
    y = torch.tensor([1, 0])
    s = ogm_scores(z, y)
    # a: 0.5 + 0.75; v: 0.8 + 0.5
    assert s["a"].item() == pytest.approx(1.25)
    assert s["v"].item() == pytest.approx(1.3)


def test_official_coefficients_audio_dominant():
    ca, cv, ra, rv = official_coefficients(torch.tensor(1.5), torch.tensor(0.5), alpha=0.8)
    assert rv.item() == pytest.approx(1 / 3) and ra.item() == pytest.approx(3.0)
    assert ca.item() == approx(1 - math.tanh(0.8 * 3.0))
    assert cv.item() == 1.0


def test_official_coefficients_visual_dominant_and_tie():
    ca, cv, _, _ = official_coefficients(torch.tensor(0.5), torch.tensor(1.0), alpha=0.8)
    assert cv.item() == approx(1 - math.tanh(0.8 * 2.0)) and ca.item() == 1.0
    # ratio exactly 1: the official `else` branch damps audio by 1 - tanh(alpha) (discontinuity)
    ca, cv, _, _ = official_coefficients(torch.tensor(1.0), torch.tensor(1.0), alpha=0.8)
    assert ca.item() == approx(1 - math.tanh(0.8)) and cv.item() == 1.0


def test_pre2022_variant_uses_ratio_minus_one():
    ca, cv, _, _ = official_coefficients(
        torch.tensor(1.5), torch.tensor(0.5), alpha=0.8, pre2022=True
    )
    assert ca.item() == approx(1 - math.tanh(0.8 * 2.0)) and cv.item() == 1.0
    ca, cv, _, _ = official_coefficients(
        torch.tensor(1.0), torch.tensor(1.0), alpha=0.8, pre2022=True
    )
    assert ca.item() == 1.0 and cv.item() == 1.0


def test_zero_score_is_guarded():
    ca, cv, ra, rv = official_coefficients(torch.tensor(0.0), torch.tensor(0.7), alpha=0.5)
    assert torch.isfinite(rv) and cv.item() < 1.0 and ca.item() == 1.0


def test_generalized_coefficients_three_modalities():
    coeffs, ratios = generalized_coefficients(
        {"a": torch.tensor(3.0), "b": torch.tensor(1.0), "c": torch.tensor(2.0)}, alpha=0.5
    )
    assert ratios["a"].item() == pytest.approx(2.0)
    assert ratios["b"].item() == pytest.approx(0.4)
    assert ratios["c"].item() == pytest.approx(1.0)
    assert coeffs["a"].item() == approx(1 - math.tanh(0.5))
    assert coeffs["b"].item() == 1.0 and coeffs["c"].item() == 1.0


def test_window_boundaries():
    cb = OGMGE(modulation_starts=2, modulation_ends=5)
    assert [cb.in_window(e) for e in range(8)] == [
        False,
        False,
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    assert OGMGE().in_window(50) and not OGMGE().in_window(51)


def test_ge_noise_has_the_original_std():
    torch.manual_seed(0)
    g = torch.randn(400_000) * 0.3
    before = g.clone()
    modulate_([g], torch.tensor(0.25), noise=True)
    noise = g - 0.25 * before
    assert noise.std().item() == pytest.approx(before.std().item() + 1e-8, rel=0.01)
    assert abs(noise.mean().item()) < 0.01


def test_ge_noise_under_a_fake_loss_scale():
    """Grads scaled by S: modulate then unscale == modulate the unscaled grads (same RNG)."""
    S = 1024.0
    g = torch.randn(1000) * 1e-3
    a, b = (g * S).clone(), g.clone()
    modulate_([a], 0.5, noise=True, loss_scale=S, generator=torch.Generator().manual_seed(3))
    modulate_([b], 0.5, noise=True, loss_scale=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a / S, b, rtol=1e-5, atol=1e-9)
    # the epsilon scales too: a zero gradient gets N(0, 1e-8) after unscaling
    z = torch.zeros(200_000)
    modulate_([z], 1.0, noise=True, loss_scale=S)
    assert (z / S).std().item() == pytest.approx(1e-8, rel=0.02)


def test_disabled_modulation_is_identity():
    g = torch.randn(10)
    before = g.clone()
    modulate_([g], 0.1, noise=True, enabled=torch.tensor(False))
    assert torch.equal(g, before)


class CoeffSpy(GradRecorder):
    """Records the coefficients ``ogm`` computes for each step (place it before ``ogm``)."""

    def __init__(self, ogm: OGMGE) -> None:
        super().__init__()
        self.ogm = ogm
        self.coeffs: list[dict[str, float]] = []

    def on_train_gradients(self, trainer, pl_module, out) -> None:
        c, _ = self.ogm.coefficients(
            {m: z.detach() for m, z in out.unimodal_logits.items()}, out.labels
        )
        self.coeffs.append({m: v.item() for m, v in c.items()})


def _run_with_recorders(module, loader, cbs, steps=2):
    before, after = GradRecorder(), GradRecorder()
    fit(module, loader, [before, *cbs, after], max_steps=steps)
    return before.grads, after.grads


def test_official_mode_scales_conv_weights_only():
    module = tiny_resnet_module()
    ogm = OGMGE(alpha=0.8, mode="OGM")
    spy = CoeffSpy(ogm)
    coeffs = spy.coeffs

    before, after = _run_with_recorders(module, image_loader(), [spy, ogm])
    convs = {n + ".weight" for n, mod in module.named_modules() if isinstance(mod, torch.nn.Conv2d)}
    for step, (b, a) in enumerate(zip(before, after)):
        assert min(coeffs[step].values()) < 1.0  # someone is damped
        for name, g in b.items():
            mod = name.split(".")[1] if name.startswith("encoders.") else None
            factor = coeffs[step][mod] if name in convs else 1.0
            torch.testing.assert_close(a[name], g * factor)
        # BatchNorm, fusion and biases untouched
        assert torch.equal(a["fusion.fc_out.weight"], b["fusion.fc_out.weight"])
        assert torch.equal(a["encoders.audio.bn1.weight"], b["encoders.audio.bn1.weight"])


def test_official_mode_rejects_three_modalities_and_mlp():
    with pytest.raises(ValueError, match="variant=generalized"):
        fit(
            tiny_mlp_module(("a", "b", "c")), vector_loader(("a", "b", "c")), [OGMGE()], max_steps=1
        )
    with pytest.raises(ValueError, match="selects no parameter"):
        fit(tiny_mlp_module(), vector_loader(), [OGMGE()], max_steps=1)


def test_generalized_mode_modulates_mlp_linear_weights():
    mods = ("text", "audio", "vision")
    module = tiny_mlp_module(mods)
    ogm = OGMGE(alpha=1.0, mode="OGM", variant="generalized", params="weights")
    spy = CoeffSpy(ogm)
    coeffs = spy.coeffs

    before, after = _run_with_recorders(
        module, vector_loader(mods, strengths=[3.0, 1.0, 0.1]), [spy, ogm], steps=3
    )
    assert any(c < 1.0 for step in coeffs for c in step.values())
    for step, (b, a) in enumerate(zip(before, after)):
        for name, g in b.items():
            if name.startswith("encoders.") and name.endswith("weight"):
                torch.testing.assert_close(a[name], g * coeffs[step][name.split(".")[1]])
            else:  # biases and the fusion head
                assert torch.equal(a[name], g), name


def test_official_variants_refuse_a_params_choice():
    for variant in ("official", "pre2022"):
        assert OGMGE(variant=variant).params == "conv"
        assert OGMGE(variant=variant, params="conv").params == "conv"
        with pytest.raises(ValueError, match=r"params='weights' needs variant=generalized"):
            OGMGE(variant=variant, params="weights")
    assert OGMGE(variant="generalized").params == "weights"
    assert OGMGE(variant="generalized", params="all").params == "all"


def test_boost_and_ogm_compose_multiplicatively():
    """grad = raw * ogm_coeff * boost_scale for every encoder parameter (noise off)."""
    mods = ("audio", "visual")
    module = tiny_mlp_module(mods)
    ogm = OGMGE(alpha=0.8, mode="OGM", variant="generalized", params="all")
    boost = ASGMLBoost(alpha=0.5, ema=False)
    spy = CoeffSpy(ogm)
    coeffs = spy.coeffs

    scores = FixedScores({"audio": 0.7, "visual": 0.4})
    before, after = _run_with_recorders(
        module, vector_loader(mods, strengths=[3.0, 0.3]), [spy, ogm, scores, boost], steps=3
    )
    assert boost.scales == {"audio": 1.0, "visual": 1.5}
    # OGM-GE throttled some modality in some step (which one depends on the initial head)
    assert any(c[m] < 1 for c in coeffs for m in mods)
    for step, (b, a) in enumerate(zip(before, after)):
        for name, g in b.items():
            if name.startswith("encoders."):
                m = name.split(".")[1]
                torch.testing.assert_close(a[name], g * coeffs[step][m] * boost.scales[m])
            else:
                assert torch.equal(a[name], g)


def test_nonfinite_grads_leave_step_unmodulated():
    g = [torch.tensor([1.0, float("nan")]), torch.tensor([2.0, 3.0])]
    from asgml.core.toolkit import all_finite

    fin = all_finite(g)
    assert not bool(fin)
    modulate_([g[1]], 0.5, noise=False, enabled=fin)
    assert torch.equal(g[1], torch.tensor([2.0, 3.0]))


@pytest.mark.parametrize("fusion", ["film", "gated", "concat"])
def test_untrained_unimodal_heads_are_refused_at_start_up(fusion):
    # film/gated fusion needs separate unimodal heads; with gamma = 0 they never train, so
    # OGM-GE's scores would come from random heads
    ogm = OGMGE(variant="generalized", params="weights")
    module = tiny_mlp_module(fusion=fusion, unimodal_heads=True)
    with pytest.raises(ValueError, match=rf"model.unimodal_heads=true, model.fusion={fusion}"):
        ogm.setup(None, module, "fit")
    with pytest.raises(ValueError, match="model.gamma=0"):
        fit(module, vector_loader(), [ogm], max_steps=1)
    # heads that train (gamma > 0) are fine, and so is the fusion-derived default
    ogm.setup(None, tiny_mlp_module(fusion=fusion, unimodal_heads=True, gamma=1.0), "fit")
    ogm.setup(None, tiny_mlp_module(), "fit")


@pytest.mark.slow
def test_untrained_unimodal_heads_are_refused_by_the_cli(make_cfg):
    cfg = make_cfg(["method=ogm", "model.fusion=gated", "model.unimodal_heads=true"])
    with pytest.raises(ValueError, match="model.gamma=0"):
        run(cfg)


def _official_ge(grads, coeff, seed):
    """OGM-GE ``main.py``: ``g * coeff + zeros_like(g).normal_(0, g.std().item() + 1e-8)``
    per tensor, in order."""
    torch.manual_seed(seed)
    return [g * coeff + torch.zeros_like(g).normal_(0, g.std().item() + 1e-8) for g in grads]


def test_per_tensor_noise_draw_equals_the_official_numbers():
    grads = [torch.randn(64, 3, 3, 3) * 0.1, torch.randn(7, 5, 2, 2) * 3.0, torch.randn(33)]
    expected = _official_ge(grads, 0.4, seed=11)
    got = [g.clone() for g in grads]
    torch.manual_seed(11)
    modulate_(got, torch.tensor(0.4), noise=True, noise_draw="per_tensor")
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)


def test_flat_noise_draw_has_each_tensors_own_std_and_zero_mean():
    torch.manual_seed(0)
    stds = [0.01, 1.0, 5.0]
    grads = [torch.randn(60_000) * s for s in stds] + [torch.randn(300, 10, 3, 3) * 0.2]
    before = [g.clone() for g in grads]
    modulate_(grads, torch.tensor(0.5), noise=True, noise_draw="flat")
    for g, b in zip(grads, before):
        noise = g - 0.5 * b
        target = b.std().item() + 1e-8
        n = noise.numel()
        assert noise.std().item() == pytest.approx(target, rel=0.02)
        assert abs(noise.mean().item()) < 4 * target / n**0.5


def test_noise_draw_is_validated_and_configured():
    with pytest.raises(ValueError, match="noise_draw"):
        OGMGE(noise_draw="blocks")
    assert OGMGE(noise_draw="flat").noise_draw == "flat"
