"""ASGML v2: probe monitor, continuous boost (docs/asgml_v2_design.md 3), and the v1 staleness mode."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from asgml.core.module import MultimodalModule
from asgml.core.types import Utilization
from asgml.data.synthetic import DictTensorDataset
from asgml.methods.boost import ASGMLBoost, continuous_scales, ema_update
from asgml.methods.ogm import OGMGE
from asgml.methods.probe import ProbeMonitor
from asgml.methods.staleness import StalenessScheduler, learning_speed, should_update, staleness
from asgml.models.encoders import MLPEncoder
from asgml.run.build import build_callbacks
from asgml.train import run
from tests.conftest import compose_cfg
from tests.helpers import GradRecorder, fit, tiny_mlp_module, vector_loader

MODS = ("audio", "visual")

# ---------------------------------------------------------------- the formulas


def test_design_document_worked_example():
    """docs/asgml_v2_design.md 3.2: audio 0.65, visual 0.35, alpha 0.5 -> 1.0 / 1.5."""
    s = continuous_scales({"audio": 0.65, "visual": 0.35}, alpha=0.5, scale_max=2.0)
    assert s == {"audio": 1.0, "visual": 1.5}


def test_three_modalities_and_cap():
    s = continuous_scales({"a": 0.8, "b": 0.5, "c": 0.2}, alpha=0.5)
    assert s["a"] == 1.0
    assert s["b"] == pytest.approx(1.25)
    assert s["c"] == pytest.approx(1.5)
    capped = continuous_scales({"a": 0.8, "b": 0.5, "c": 0.2}, alpha=2.0, scale_max=1.5)
    assert capped == pytest.approx({"a": 1.0, "b": 1.5, "c": 1.5})


def test_zero_gap_gives_unit_scales():
    assert continuous_scales({"a": 0.4, "b": 0.4, "c": 0.4}, alpha=1.0) == {
        "a": 1.0,
        "b": 1.0,
        "c": 1.0,
    }


def test_ema():
    s1 = ema_update({"v": 1.0}, {"v": 1.5}, 0.3)
    assert s1["v"] == pytest.approx(1.15)
    s2 = ema_update(s1, {"v": 1.5}, 0.3)
    assert s2["v"] == pytest.approx(0.3 * 1.5 + 0.7 * 1.15)
    boost = ASGMLBoost(alpha=0.5, ema=True, ema_alpha=0.3)
    boost.scales = {"audio": 1.0, "visual": 1.0}
    assert boost.update({"audio": 0.65, "visual": 0.35}) == pytest.approx(
        {"audio": 1.0, "visual": 1.15}
    )
    no_ema = ASGMLBoost(alpha=0.5, ema=False)
    assert no_ema.update({"audio": 0.65, "visual": 0.35}) == pytest.approx(
        {"audio": 1.0, "visual": 1.5}
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.boost.alpha=-0.1", r"(?s)method\.boost: .*alpha must be >= 0"),
        ("method.boost.scale_max=0.9", r"(?s)method\.boost: .*scale_max must be >= 1"),
        ("method.boost.ema_alpha=0.0", r"(?s)method\.boost: .*ema_alpha must be in \(0, 1\]"),
        ("method.boost.ema_alpha=1.5", r"(?s)method\.boost: .*ema_alpha must be in \(0, 1\]"),
        ("method.probe.eval_freq=0", r"(?s)method\.probe: .*eval_freq must be >= 1"),
        (
            "method.probe.probe_train_steps=0",
            r"(?s)method\.probe: .*probe_train_steps must be >= 1",
        ),
        ("method.probe.probe_type=deep", r"(?s)method\.probe: .*probe_type must be one of"),
        ("method.ogm.alpha=-1", r"(?s)method\.ogm: .*alpha must be >= 0"),
        ("method.ogm.mode=GE", r"(?s)method\.ogm: .*mode must be one of"),
        ("method.ogm.variant=other", r"(?s)method\.ogm: .*variant must be one of"),
        ("method.ogm.modulation_starts=60", r"(?s)method\.ogm: .*modulation_ends \(50\) < "),
    ],
)
def test_bad_values_name_the_key(make_cfg, override, message):
    """The callback names the argument; the config key is added once, by build_callbacks."""
    cfg = make_cfg(["method=boost_ogm", override])
    with pytest.raises(Exception, match=message) as err:
        build_callbacks(cfg)
    key, arg = override.split("=")[0].rsplit(".", 1)
    assert f"{key}: " in str(err.value) and f"{key}.{arg}" not in str(err.value)


def test_batch_size_guard():
    with pytest.raises(ValueError, match="batch size >= 4"):
        fit(
            tiny_mlp_module(),
            vector_loader(n=6, batch_size=3),
            [ProbeMonitor(), ASGMLBoost()],
            max_steps=1,
        )
    # without split_batch a batch of 3 is enough
    fit(
        tiny_mlp_module(),
        vector_loader(n=6, batch_size=3),
        [ProbeMonitor(split_batch=False)],
        max_steps=1,
    )


# ------------------------------------------------------------ gradient effects


class FixedScores(ProbeMonitor):
    """A monitor publishing fixed scores (to test the boost in isolation)."""

    def __init__(self, scores):
        super().__init__()
        self.fixed = scores

    def measure(self, trainer, module, features, labels):
        self.scores = dict(self.fixed)
        self.version += 1


def test_boost_multiplies_encoder_grads_by_scale():
    before, after = GradRecorder(), GradRecorder()
    boost = ASGMLBoost(alpha=0.5, ema=False)
    module = tiny_mlp_module()
    fit(
        module,
        vector_loader(),
        [before, FixedScores({"audio": 0.65, "visual": 0.35}), boost, after],
        max_steps=2,
    )
    assert boost.scales == {"audio": 1.0, "visual": 1.5}
    for b, a in zip(before.grads, after.grads):
        for name, g in b.items():
            factor = 1.5 if name.startswith("encoders.visual.") else 1.0
            torch.testing.assert_close(a[name], g * factor, rtol=0, atol=0)


class GlobalRNGProbe(ProbeMonitor):
    """A deliberately leaky probe: draws one number from the global RNG per evaluation."""

    def measure(self, trainer, module, features, labels):
        torch.rand(1)
        super().measure(trainer, module, features, labels)


def _train_with_randomness(callbacks) -> MultimodalModule:
    """12 steps (3 epochs) that consume the global RNG everywhere training does: dropout in
    the encoders, a shuffling loader (a new order drawn each epoch) and OGM-GE's noise."""
    torch.manual_seed(0)
    encs = {m: MLPEncoder(input_dim=4, hidden_dim=8, feature_dim=8, dropout=0.3) for m in MODS}
    module = MultimodalModule(encs, num_classes=3)
    loader = vector_loader(n=32, batch_size=8)
    loader = DataLoader(loader.dataset, batch_size=8, shuffle=True)
    ogm = OGMGE(variant="generalized", params="weights", mode="OGM_GE")
    fit(module, loader, [*callbacks, ogm], max_steps=12)
    return module


def _same_parameters(a: MultimodalModule, b: MultimodalModule) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_probe_monitor_never_changes_training():
    """Probe on vs off (boost off): parameters bitwise equal after training that draws from
    the global RNG (dropout, shuffling, OGM-GE noise)."""
    off = _train_with_randomness([])
    probe = ProbeMonitor(eval_freq=2, probe_train_steps=3)
    on = _train_with_randomness([probe])
    assert probe.version == 6  # steps 0, 2, ..., 10
    assert _same_parameters(off, on)
    # the test can fail: a probe drawing one number from the global RNG changes training
    leaky = GlobalRNGProbe(eval_freq=2, probe_train_steps=3)
    assert not _same_parameters(off, _train_with_randomness([leaky]))


def test_probe_split_batch_uses_halves():
    seen = {}

    class Spy(ProbeMonitor):
        def measure(self, trainer, module, features, labels):
            bank_fit, bank_eval = self.bank.fit, self.bank.evaluate
            self.bank.fit = lambda f, y, o, s: (
                seen.setdefault("fit", y.shape[0]) and bank_fit(f, y, o, s)
            )
            self.bank.evaluate = lambda f, y: (
                seen.setdefault("eval", y.shape[0]) and bank_eval(f, y)
            )
            super().measure(trainer, module, features, labels)
            self.bank.fit, self.bank.evaluate = bank_fit, bank_eval

    fit(tiny_mlp_module(), vector_loader(batch_size=8), [Spy(eval_freq=1)], max_steps=1)
    assert seen == {"fit": 4, "eval": 4}
    seen.clear()
    fit(
        tiny_mlp_module(),
        vector_loader(batch_size=8),
        [Spy(eval_freq=1, split_batch=False)],
        max_steps=1,
    )
    assert seen == {"fit": 8, "eval": 8}


def test_probe_scores_are_accuracies_and_published():
    module = tiny_mlp_module()
    probe = ProbeMonitor(eval_freq=1, probe_train_steps=50, lr=0.05, split_batch=False)
    fit(module, vector_loader(strengths=[4.0, 0.0], batch_size=32), [probe], max_steps=1)
    util = probe.utilization
    assert isinstance(util, Utilization) and util.version == 1
    # audio carries the label, visual is pure noise
    assert util.scores["audio"] > util.scores["visual"]
    for v in util.scores.values():
        assert v * 32 == pytest.approx(round(v * 32))  # a count of correct predictions over 32


def test_probe_state_survives_checkpoint(tmp_path):
    module = tiny_mlp_module()
    probe = ProbeMonitor(eval_freq=1, probe_train_steps=2)
    trainer = fit(module, vector_loader(), [probe], max_steps=2)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    state = ckpt["callbacks"]["ProbeMonitor"]
    assert state["version"] == 2 and set(state["scores"]) == {"audio", "visual"}
    fresh = ProbeMonitor(eval_freq=1, probe_train_steps=2)
    fresh.load_state_dict(state)
    fresh.on_fit_start(None, tiny_mlp_module())
    for k, v in probe.bank.state_dict().items():
        torch.testing.assert_close(fresh.bank.state_dict()[k], v)
    assert (
        fresh.optimizer.state_dict()["state"].keys() == probe.optimizer.state_dict()["state"].keys()
    )
    assert fresh.scores == probe.scores


# ------------------------------------------------------------------ end to end


def test_method_boost_boosts_visual_on_synthetic_default(tmp_path):
    """Acceptance: on the synthetic default, boost lifts the visual scale above 1 and leaves
    audio unboosted once the probes have seen some training (the first evaluation, at step
    0, scores two untrained probes near chance and may boost either modality)."""
    cfg = compose_cfg(
        [
            "method=boost",
            "method.probe.eval_freq=4",
            "trainer.limit_train_batches=16",
            "trainer.max_epochs=2",
            "dataset.datamodule.num_train=1024",
            "dataset.datamodule.batch_size=64",
        ],
        output_dir=tmp_path,
    )
    run(cfg)
    df = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    scales = df[["step", "boost/scale_audio", "boost/scale_visual"]].dropna()
    assert len(scales) == 8  # steps 0, 4, ..., 28
    probes = df[["probe/acc_audio", "probe/acc_visual"]].dropna()
    assert (probes["probe/acc_audio"] > probes["probe/acc_visual"]).iloc[1:].all()
    later = scales.iloc[1:]
    assert (later["boost/scale_visual"] > 1.0).all()
    assert (later["boost/scale_visual"] > later["boost/scale_audio"]).all()
    assert later["boost/scale_visual"].is_monotonic_increasing
    # audio, the stronger modality from then on, gets no new boost: its scale only decays
    # toward 1 with the EMA (new = ema_alpha * 1 + (1 - ema_alpha) * old)
    a = scales["boost/scale_audio"].to_numpy()
    ema = cfg.method.boost.ema_alpha
    np.testing.assert_allclose(a[1:], ema * 1.0 + (1 - ema) * a[:-1], rtol=1e-5)


def test_cli_overrides_reach_callbacks(tmp_path):
    cfg = compose_cfg(
        [
            "method=boost",
            "method.boost.alpha=0.75",
            "method.probe.eval_freq=50",
            "method.probe.probe_type=mlp_1layer",
            "method.boost.ema=false",
            "method.probe.split_batch=false",
        ],
        output_dir=tmp_path,
    )
    cbs = {type(c).__name__: c for c in build_callbacks(cfg)}
    assert cbs["ASGMLBoost"].alpha == 0.75 and cbs["ASGMLBoost"].ema is False
    assert cbs["ProbeMonitor"].eval_freq == 50 and cbs["ProbeMonitor"].probe_type == "mlp_1layer"
    assert cbs["ProbeMonitor"].split_batch is False


def test_boost_needs_probe_first():
    with pytest.raises(ValueError, match="ProbeMonitor"):
        fit(tiny_mlp_module(), vector_loader(), [ASGMLBoost()], max_steps=1)
    with pytest.raises(ValueError, match="before method.boost"):
        fit(tiny_mlp_module(), vector_loader(), [ASGMLBoost(), ProbeMonitor()], max_steps=1)


# ----------------------------------------------------------- v1 (staleness)


def test_staleness_formulas():
    speed = learning_speed({"a": 3.0, "v": 1.0}, {"a": 0.2, "v": 0.2}, beta=0.5)
    # grad ratios 1.5 / 0.5, loss ratios 1 / 1
    assert speed == pytest.approx({"a": 1.25, "v": 0.75})
    tau = staleness(speed, tau_base=2.0, tau_max=8.0)
    assert tau == pytest.approx({"a": 2.5, "v": 1.5})
    assert staleness({"a": 10.0, "v": 0.1}, 2.0, 8.0) == {"a": 8.0, "v": 1.0}
    assert [should_update(s, 2.5) for s in range(5)] == [
        True,
        False,
        True,
        False,
        True,
    ]  # round(2.5)=2


def test_staleness_zeroes_skipped_encoder_grads():
    sched = StalenessScheduler(update_freq=2, tau_base=2.0)
    expected_skip: list[dict[str, bool]] = []

    class Spy(GradRecorder):
        def on_train_gradients(self, trainer, pl_module, out):
            super().on_train_gradients(trainer, pl_module, out)
            step = out.step
            expected_skip.append(
                {m: not should_update(step, sched.tau.get(m, 1.0)) for m in ("audio", "visual")}
            )

    before, after = Spy(), GradRecorder()
    fit(tiny_mlp_module(), vector_loader(strengths=[3.0, 0.2]), [before, sched, after], max_steps=8)
    assert any(any(s.values()) for s in expected_skip)  # something was skipped
    assert sum(sched.skips.values()) == sum(sum(s.values()) for s in expected_skip)
    for skip, b, a in zip(expected_skip, before.grads, after.grads):
        for name, g in b.items():
            m = name.split(".")[1] if name.startswith("encoders.") else None
            if m is not None and skip[m]:
                assert torch.count_nonzero(a[name]) == 0, name
            else:
                assert torch.equal(a[name], g), name


def test_staleness_default_throttles_only_the_dominant():
    """Design (1.3, Appendix A): throttle the dominant, rarely triggered; tau ~ 1-2."""
    assert StalenessScheduler().tau_base == 1.0
    assert compose_cfg(["method=staleness"]).method.staleness.tau_base == 1.0
    # balanced: speed 1 -> tau 1 -> every step updates
    assert staleness(learning_speed({"a": 1.0, "v": 1.0}, {"a": 0.2, "v": 0.2})) == {
        "a": 1.0,
        "v": 1.0,
    }
    # grad ratios 1.5 / 0.5, loss ratios 1 / 1 -> speed 1.25 / 0.75 -> tau 1.25 / 1: no skip
    tau = staleness(learning_speed({"a": 3.0, "v": 1.0}, {"a": 0.2, "v": 0.2}))
    assert tau == pytest.approx({"a": 1.25, "v": 1.0})
    assert all(should_update(s, tau["a"]) for s in range(4))
    # grad and loss ratios 1.5 / 0.5 -> speed 1.5 / 0.5 -> tau 1.5 (round 2) / 1
    tau = staleness(learning_speed({"a": 3.0, "v": 1.0}, {"a": 0.3, "v": 0.1}))
    assert tau == pytest.approx({"a": 1.5, "v": 1.0})
    assert [should_update(s, tau["a"]) for s in range(4)] == [True, False, True, False]
    assert all(should_update(s, tau["v"]) for s in range(4))


def _symmetric_module_and_loader():
    """Two exactly equally strong modalities: same encoder weights, same fusion block, same
    inputs, so both have the same gradient norm and loss descent in every window."""
    module = tiny_mlp_module()
    module.encoders["visual"].load_state_dict(module.encoders["audio"].state_dict())
    with torch.no_grad():
        w = module.fusion.fc_out.weight
        lo, hi = module.fusion.blocks["visual"]
        a_lo, a_hi = module.fusion.blocks["audio"]
        w[:, lo:hi] = w[:, a_lo:a_hi]
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (64,), generator=g)
    x = 2.0 * torch.randn(3, 4, generator=g)[y] + torch.randn(64, 4, generator=g)
    data = DictTensorDataset({"audio": x, "visual": x.clone()}, y)
    return module, DataLoader(data, batch_size=8, shuffle=False)


@pytest.mark.parametrize(("tau_base", "skips"), [(None, 0), (2.0, 3)])
def test_staleness_equally_strong_modalities_skip_neither(tau_base, skips):
    # update_freq 2: tau = 1 on steps 0-1, then from the window's speeds (both 1.0).
    # Default tau_base 1 -> tau 1: no skip. tau_base 2 (the old default) -> tau 2 for both:
    # both encoders skip steps 3, 5 and 7 of 0..7, on the same steps.
    kw = {} if tau_base is None else {"tau_base": tau_base}
    sched = StalenessScheduler(update_freq=2, **kw)
    module, loader = _symmetric_module_and_loader()
    before, after = GradRecorder(), GradRecorder()
    fit(module, loader, [before, sched, after], max_steps=8)
    assert sched.tau == pytest.approx({"audio": sched.tau_base, "visual": sched.tau_base})
    assert sched.skips == {"audio": skips, "visual": skips}
    if skips == 0:
        for b, a in zip(before.grads, after.grads):
            for name, grad in b.items():
                assert torch.equal(a[name], grad), name
