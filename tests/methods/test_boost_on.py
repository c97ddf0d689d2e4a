"""boost=on (the ASGML boost on top of any method) and the boost's switches: the weakness
signal (probe | ogm_score | grad_norm) and the adaptive alpha."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from asgml.methods.boost import ASGMLBoost, adapt_alpha, continuous_scales
from asgml.run.boost_rule import REFUSED
from asgml.run.config import validate_config
from asgml.train import run
from tests.conftest import compose_cfg
from tests.helpers import fit, tiny_mlp_module, vector_loader
from tests.methods.resume_check import assert_resume_exact


def _weights(tmp: Path, name: str, overrides: list[str], probe: bool = True) -> dict:
    extra = ["method.probe.eval_freq=1"] if probe else []
    run(compose_cfg([*overrides, "test=false", *extra], output_dir=tmp / name))
    return torch.load(tmp / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("composed", "preset"),
    [
        (["method=ogm", "boost=on", "method.boost.alpha=0.75"], ["method=boost_ogm"]),
        (["method=cggm", "boost=on"], ["method=boost_cggm"]),
    ],
)
def test_presets_are_instances_of_the_rule(tmp_path: Path, composed, preset) -> None:
    a = _weights(tmp_path, "composed", composed)
    b = _weights(tmp_path, "preset", preset)
    assert _equal(a, b)
    # and the boost acted: without it the weights differ
    plain = _weights(tmp_path, "plain", [composed[0]], probe=False)
    assert not _equal(a, plain)


def test_the_boost_comes_after_the_method() -> None:
    cfg = compose_cfg(["method=agm", "boost=on"])
    keys = [k for k, v in cfg.method.items() if hasattr(v, "get") and v.get("_target_")]
    assert keys[-2:] == ["probe", "boost"] and keys[0] == "agm"
    assert cfg.method.name == "agm" and cfg.method.boost_added is True and cfg.boost.name == "on"
    plain = compose_cfg(["method=boost"])
    assert not plain.method.get("boost_added", False) and plain.boost.name == "none"


@pytest.mark.parametrize("method", sorted(REFUSED))
def test_senseless_combinations_are_refused(method: str) -> None:
    cfg = compose_cfg([f"method={method}", "boost=on"])
    with pytest.raises(ValueError, match=f"boost=on cannot be combined with method={method}"):
        validate_config(cfg)


def test_probe_signal_without_a_probe_is_refused() -> None:
    cfg = compose_cfg(["method=agm", "boost=on", "method.probe=null"])
    with pytest.raises(ValueError, match="method.boost.signal=probe needs the probe monitor"):
        validate_config(cfg)
    validate_config(
        compose_cfg(
            ["method=agm", "boost=on", "method.probe=null", "method.boost.signal=ogm_score"]
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["agm", "mmpareto", "inforeg", "pmr"])  # + ogm, cggm above
def test_boost_on_trains_on_top_of(tmp_path: Path, method: str) -> None:
    run(
        compose_cfg(
            [f"method={method}", "boost=on", "method.probe.eval_freq=1", "test=false"],
            output_dir=tmp_path,
        )
    )
    df = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    scales = df[["boost/scale_audio", "boost/scale_visual"]].dropna()
    assert len(scales) == 3  # one measurement per step
    assert (scales.to_numpy() >= 1.0).all() and (scales.to_numpy() > 1.0).any()


# ------------------------------------------------------------------- formulas
class _Trainer:
    world_size = 1
    callbacks: list = []
    is_global_zero = True
    loggers: list = []
    global_step = 0
    precision_plugin = None


def test_ogm_score_signal_on_fixed_logits() -> None:
    """s_m = mean_i softmax(z_m)[i, y_i]; scales = 1 + alpha * relative weakness."""
    module = tiny_mlp_module(("a", "b", "c"))
    boost = ASGMLBoost(alpha=0.5, ema=False, signal="ogm_score", signal_every=1)
    boost.on_fit_start(_Trainer(), module)  # no probe monitor needed
    z = {
        "a": torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
        "b": torch.tensor([[0.0, 0.0], [0.0, 0.0]]),
        "c": torch.tensor([[0.0, 3.0], [1.0, 0.0]]),
    }
    y = torch.tensor([0, 1])

    class Out:
        unimodal_logits, labels, step, loss, finite = z, y, 0, torch.zeros(()), torch.tensor(True)

    scores = boost.measure(_Trainer(), module, Out())

    def p(x: float) -> float:  # softmax of the true class against a 0 logit
        return 1.0 / (1.0 + math.exp(-x))

    want = {"a": (p(2) + p(1)) / 2, "b": 0.5, "c": (p(-3) + p(-1)) / 2}
    assert scores == pytest.approx(want)
    scales = boost.update(scores)
    # weakest c: 1 + 0.5; strongest a: 1; b in between, linearly
    wb = 1 - (want["b"] - want["c"]) / (want["a"] - want["c"])
    assert scales == pytest.approx({"a": 1.0, "b": 1 + 0.5 * wb, "c": 1.5})
    Out.step = 1
    boost.signal_every = 2
    assert boost.measure(_Trainer(), module, Out()) is None  # not due


def test_grad_norm_signal_is_the_gradient_rms() -> None:
    module = tiny_mlp_module(("a", "b"))
    boost = ASGMLBoost(signal="grad_norm", signal_every=1)
    for i, m in enumerate(("a", "b")):
        for p in module.encoder_parameters(m):
            p.grad = torch.full_like(p, float(i + 1))  # RMS 1 for a, 2 for b
    for p in module.fusion.parameters():
        p.grad = torch.zeros_like(p)

    class Out:
        step, loss, finite = 0, torch.zeros(()), torch.tensor(True)

    assert boost.measure(_Trainer(), module, Out()) == pytest.approx({"a": 1.0, "b": 2.0})
    Out.finite = torch.tensor(False)  # a step the optimizer skips is not measured
    assert boost.measure(_Trainer(), module, Out()) is None


def test_adaptive_alpha_formula_on_a_fixed_gap_sequence() -> None:
    """G_bar_t = rho G_t + (1 - rho) G_bar_{t-1}; alpha_t = clip(alpha_{t-1} exp(eta dG_bar))."""
    rate, rho, lo, hi = 5.0, 0.5, 0.1, 1.0
    alpha, g = adapt_alpha(0.5, None, 0.4, rate, rho, lo, hi)
    assert (alpha, g) == (0.5, 0.4)  # first measurement: kept
    alpha, g = adapt_alpha(alpha, g, 0.6, rate, rho, lo, hi)  # gap widens: 0.4 -> 0.5
    assert g == pytest.approx(0.5) and alpha == pytest.approx(0.5 * math.exp(0.5))
    alpha, g = adapt_alpha(alpha, g, 0.1, rate, rho, lo, hi)  # closes: 0.5 -> 0.3
    assert g == pytest.approx(0.3) and alpha == pytest.approx(0.5 * math.exp(0.5 - 1.0))
    assert adapt_alpha(0.9, 0.0, 1.0, rate, 1.0, lo, hi)[0] == hi  # clipped above
    assert adapt_alpha(0.2, 1.0, 0.0, rate, 1.0, lo, hi)[0] == lo  # and below


def test_adaptive_boost_uses_the_adapted_alpha() -> None:
    boost = ASGMLBoost(alpha=0.5, ema=False, adaptive=True, adapt_rate=2.0, adapt_smoothing=1.0)
    boost.update({"a": 0.8, "v": 0.4})  # gap 0.4: alpha kept
    assert boost.alpha_now == 0.5 and boost.scales == {"a": 1.0, "v": 1.5}
    boost.update({"a": 0.9, "v": 0.3})  # gap 0.6: alpha 0.5 e^{0.4}
    want = 0.5 * math.exp(2.0 * 0.2)
    assert boost.alpha_now == pytest.approx(want)
    assert boost.scales == pytest.approx(continuous_scales({"a": 0.9, "v": 0.3}, want))
    with pytest.raises(ValueError, match="alpha_min <= alpha <= alpha_max"):
        ASGMLBoost(alpha=3.0, adaptive=True, alpha_max=2.0)
    with pytest.raises(ValueError, match="signal must be one of"):
        ASGMLBoost(signal="loss")


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("signal", ["ogm_score", "grad_norm"])
def test_signals_and_adaptive_alpha_train_with_n_modalities(
    tmp_path: Path, n: int, signal: str
) -> None:
    run(
        compose_cfg(
            [
                "method=ogm" if signal == "ogm_score" else "method=agm",
                "boost=on",
                "method.probe=null",
                f"method.boost.signal={signal}",
                "method.boost.signal_every=1",
                "method.boost.adaptive=true",
                f"dataset.num_modalities={n}",
                "test=false",
            ],
            output_dir=tmp_path,
        )
    )
    df = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    mods = ["audio", "visual", "text"][:n]
    assert df[[f"boost/scale_{m}" for m in mods]].dropna().shape[0] == 3
    assert df["boost/alpha"].dropna().shape[0] == 3
    assert "probe/acc_audio" not in df.columns


def test_a_boost_without_source_fails_clearly() -> None:
    with pytest.raises(ValueError, match="needs a ProbeMonitor"):
        fit(tiny_mlp_module(), vector_loader(batch_size=8), [ASGMLBoost()], max_steps=1)


@pytest.mark.slow
def test_adaptive_boost_resumes_exactly(tmp_path: Path) -> None:
    assert_resume_exact(
        tmp_path,
        [
            "method=agm",
            "boost=on",
            "method.probe.eval_freq=2",
            "method.boost.adaptive=true",
            "trainer.limit_val_batches=1",
        ],
        "ASGMLBoost",
    )
