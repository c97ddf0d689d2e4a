"""The built-in synthetic task: its construction, its stated caps, and the imbalance it shows."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from asgml.data.synthetic import (
    SyntheticDataModule,
    bayes_accuracy,
    class_prototypes,
    make_synthetic,
)
from asgml.train import run
from tests.conftest import compose_cfg

CONF = Path(__file__).resolve().parents[2] / "conf"
DEFAULT = OmegaConf.load(CONF / "dataset" / "synthetic.yaml")
SPECS = OmegaConf.to_container(DEFAULT.modalities)
K = int(DEFAULT.num_classes)


def _log_likelihoods(x: torch.Tensor, proto: torch.Tensor, spec: dict) -> torch.Tensor:
    """``(B, K)``: log p(x_m | y = k) of the construction, flag marginalised out."""
    s, sigma, q = float(spec["strength"]), float(spec.get("noise", 1.0)), spec["informative"]
    x, p = x.flatten(1).double(), s * proto.flatten(1).double()
    with_class = -((x[:, None, :] - p[None]) ** 2).sum(-1) / (2 * sigma**2) + math.log(q)
    without = -(x**2).sum(-1, keepdim=True) / (2 * sigma**2) + math.log(1 - q)
    return torch.logaddexp(with_class, without.expand_as(with_class))


def test_bayes_accuracy_formula():
    assert bayes_accuracy([0.75], 4) == pytest.approx(0.8125)
    assert bayes_accuracy([0.6], 4) == pytest.approx(0.7)
    assert bayes_accuracy([0.75, 0.6], 4) == pytest.approx(0.925)
    assert bayes_accuracy([0.75, 0.6, 0.6], 4) == pytest.approx(0.97)
    assert bayes_accuracy([0.0, 0.0], 4) == pytest.approx(0.25)


def test_default_caps_are_below_the_joint_optimum():
    """The docstring's claim, checked on generated data: the exact Bayes classifier of the
    construction reaches each modality's cap alone and the joint optimum together, and the
    joint optimum is clearly above every single modality's cap."""
    protos = class_prototypes(SPECS, K, seed=0)
    data, labels, flags = make_synthetic(SPECS, K, 4000, seed=0, split_offset=2, return_flags=True)
    for m, f in flags.items():  # the informative fraction is q_m
        assert f.float().mean().item() == pytest.approx(SPECS[m]["informative"], abs=0.025)
    ll = {m: _log_likelihoods(data[m], protos[m], SPECS[m]) for m in SPECS}
    caps = {}
    for m in SPECS:
        caps[m] = bayes_accuracy([SPECS[m]["informative"]], K)
        acc = (ll[m].argmax(1) == labels).double().mean().item()
        assert acc == pytest.approx(caps[m], abs=0.025), (m, acc, caps[m])
    for names in (["audio", "visual"], ["audio", "visual", "text"]):
        joint = bayes_accuracy([SPECS[m]["informative"] for m in names], K)
        acc = (sum(ll[m] for m in names).argmax(1) == labels).double().mean().item()
        assert acc == pytest.approx(joint, abs=0.025), (names, acc, joint)
        assert joint > max(caps[m] for m in names) + 0.1


def test_uninformative_inputs_carry_no_class_signal():
    data, labels, flags = make_synthetic(SPECS, K, 512, seed=3, return_flags=True)
    protos = class_prototypes(SPECS, K, seed=3)
    for m in SPECS:
        x, p = data[m].flatten(1), protos[m].flatten(1)
        score = x @ p.T / p.shape[1]  # ~ strength on the own class when informative, else ~0
        own = score[torch.arange(len(labels)), labels]
        s = SPECS[m]["strength"]
        assert own[flags[m]].mean().item() == pytest.approx(s, abs=0.15 * s + 0.02)
        assert own[~flags[m]].abs().mean().item() < 0.2 * s + 0.05


def test_prototypes_are_shaped_like_the_real_inputs():
    protos = class_prototypes(SPECS, K, seed=0)
    a, v, t = protos["audio"], protos["visual"], protos["text"]
    assert a.shape == (K, 1, 32, 32) and v.shape == (K, 3, 2, 32, 32) and t.shape == (K, 8, 32)
    assert torch.equal(a, a[..., :1].expand_as(a))  # band pattern: constant over time
    assert torch.equal(v, v[:, :, :1].expand_as(v))  # the same image in every frame
    assert torch.equal(t, t[:, :1].expand_as(t))  # the same vector at every step
    for p in protos.values():
        flat = p.flatten(1)
        assert torch.allclose(flat.mean(1), torch.zeros(K), atol=1e-5)
        assert torch.allclose(flat.std(1), torch.ones(K), atol=1e-5)
    # grain: the audio band profile varies slowly over frequency, the visual image less so
    roughness = {
        m: (protos[m].diff(dim=d).pow(2).mean() / 2).item()
        for m, d in (("audio", 2), ("visual", -1))
    }
    assert roughness["audio"] < roughness["visual"] < 0.5  # white noise would give ~1


def test_deterministic_from_the_seed_and_splits_differ():
    a, ya = make_synthetic(SPECS, K, 32, seed=5, split_offset=1)
    b, yb = make_synthetic(SPECS, K, 32, seed=5, split_offset=1)
    c, _ = make_synthetic(SPECS, K, 32, seed=5, split_offset=2)
    d, _ = make_synthetic(SPECS, K, 32, seed=6, split_offset=1)
    assert torch.equal(ya, yb) and all(torch.equal(a[m], b[m]) for m in SPECS)
    assert not torch.equal(a["audio"], c["audio"]) and not torch.equal(a["audio"], d["audio"])
    torch.manual_seed(0)
    e, _ = make_synthetic(SPECS, K, 32, seed=5, split_offset=1)
    assert torch.equal(a["visual"], e["visual"])  # independent of the global RNG


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("informative", 1.5, "informative must be a fraction"),
        ("grain", 0, "grain must be an integer >= 1"),
        ("kind", "video", "kind must be one of"),
    ],
)
def test_bad_modality_spec_names_the_key(key, value, match):
    specs = {m: dict(s) for m, s in SPECS.items()}
    specs["visual"][key] = value
    with pytest.raises(ValueError, match=rf"dataset\.modalities\.visual\.{match}"):
        SyntheticDataModule(specs)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_default_shows_the_imbalance(seed, tmp_path):
    """The default task and recipe, as `python -m asgml.train` runs them: under the baseline
    the strong (audio) branch approaches its cap and the weak (visual) one stays near
    chance; boost + OGM-GE on the same run boosts the visual and throttles the audio encoder.
    (Whether the methods *gain* is measured over 5 seeds in the README table, not here.)"""
    m = run(
        compose_cfg(
            [f"seed={seed}", "trainer.enable_progress_bar=false"],
            output_dir=tmp_path / "baseline",
            fast=False,
        )
    )["metrics"]
    audio_cap = bayes_accuracy([SPECS["audio"]["informative"]], K)
    assert m["test/acc_audio"] > audio_cap - 0.12, m  # strong: near its 81.25 % cap
    assert m["test/acc_visual"] < 1 / K + 0.2, m  # weak: near chance (25 %)
    assert m["test/acc_audio"] > m["test/acc_visual"] + 0.3, m
    assert m["test/acc"] < bayes_accuracy([0.75, 0.6], K) - 0.03, m  # below the joint 92.5 %

    out = tmp_path / "boost_ogm"
    run(
        compose_cfg(
            [f"seed={seed}", "method=boost_ogm", "trainer.enable_progress_bar=false"],
            output_dir=out,
            fast=False,
        )
    )
    df = pd.read_csv(out / "csv" / "metrics.csv")
    assert (df["boost/scale_visual"].dropna() > 1.0).mean() > 0.5
    assert (df["ogm/coeff_audio"].dropna() < 1.0).mean() > 0.5
