"""Mixed precision: bf16-mixed end to end on CPU; the 16-mixed loss scale at
``on_train_gradients`` (a fake GradScaler, and a real one on CPU); scaler-skipped steps."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision

from asgml.core.module import MultimodalModule
from asgml.core.types import StepOutput
from asgml.methods.boost import ASGMLBoost
from asgml.methods.ogm import OGMGE
from asgml.methods.probe import ProbeMonitor
from asgml.methods.staleness import StalenessScheduler
from asgml.train import run
from tests.conftest import compose_cfg
from tests.helpers import fit, tiny_mlp_module, vector_loader

# ------------------------------------------------------------------ bf16-mixed


@pytest.mark.parametrize("method", ["boost_ogm", "staleness"])
def test_bf16_mixed_runs_end_to_end_on_cpu(method: str, tmp_path: Path) -> None:
    extra = ["method.probe.eval_freq=1"] if method == "boost_ogm" else []
    extra += ["method.staleness.update_freq=2"] if method == "staleness" else []
    cfg = compose_cfg(
        [f"method={method}", "trainer.precision=bf16-mixed", "trainer.log_every_n_steps=1", *extra],
        output_dir=tmp_path,
    )
    out = run(cfg)
    assert 0.0 <= out["metrics"]["test/acc"] <= 1.0
    assert out["skipped_nonfinite_steps"] == 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    logged = []
    with open(tmp_path / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            logged += [float(v) for k, v in row.items() if v and k.startswith(("ogm/", "boost/"))]
            logged += [float(v) for k, v in row.items() if v and k.startswith("staleness/")]
    assert logged and all(math.isfinite(v) for v in logged)
    if method == "boost_ogm":
        boost = ckpt["callbacks"]["ASGMLBoost"]
        assert all(math.isfinite(s) for s in boost["scales"].values())
        assert ckpt["callbacks"]["ProbeMonitor"]["version"] == 3
        assert ckpt["callbacks"]["OGMGE"]["nonfinite_steps"] == 0
    else:
        tau = ckpt["callbacks"]["StalenessScheduler"]["tau"]
        assert all(1.0 <= t <= 8.0 for t in tau.values())


# ------------------------------------------------- 16-mixed, a fake GradScaler

S = 2.0**12  # a power of two, like GradScaler's scales: scaling is exact in floating point


class FakeScaler:
    """The part of ``torch.amp.GradScaler`` the callbacks read."""

    def __init__(self, scale: float) -> None:
        self.scale = torch.tensor(scale)

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return float(self.scale)

    def _get_scale_async(self) -> torch.Tensor:
        return self.scale


def fake_trainer(scale: float | None) -> Any:
    scaler = FakeScaler(scale) if scale is not None else None
    return SimpleNamespace(
        precision_plugin=SimpleNamespace(scaler=scaler),
        world_size=1,
        current_epoch=0,
        global_step=0,
        is_global_zero=True,
        loggers=[],
        strategy=None,
    )


def backward_step(module: MultimodalModule, loss_scale: float = 1.0) -> StepOutput:
    """One forward/backward of the tiny module with the loss multiplied by ``loss_scale``
    (as ``MixedPrecision.pre_backward`` does); returns the step output."""
    batch = next(iter(vector_loader(batch_size=16)))
    inputs, lengths, y = module.split_batch(batch)
    logits, uni, feats = module(inputs, lengths)
    module.zero_grad(set_to_none=True)
    loss = F.cross_entropy(logits, y)
    (loss * loss_scale).backward()
    return StepOutput(
        features=feats, logits=logits, unimodal_logits=uni, labels=y, inputs=inputs, loss=loss
    )


def grads(module: MultimodalModule) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["OGM_GE", "OGM"])
def test_ogm_on_scaled_grads_equals_the_unscaled_result(mode: str) -> None:
    """OGM-GE on grads carrying the loss scale S, divided by S == OGM-GE on unscaled grads
    (noise included: its std and epsilon scale with S). Exact for a power-of-two S."""
    results, raw = [], {}
    for scale in (None, S):
        module = tiny_mlp_module()
        ogm = OGMGE(variant="generalized", mode=mode)
        trainer = fake_trainer(scale)
        ogm.setup(trainer, module, "fit")
        out = backward_step(module, scale or 1.0)
        raw = raw or grads(module)
        torch.manual_seed(7)  # the GE noise draws from the global RNG
        with pytest.warns(UserWarning, match="self.log"):  # no trainer attached
            ogm.on_train_gradients(trainer, module, out)
        results.append(grads(module))
    plain, scaled = results
    assert plain.keys() == scaled.keys()
    for k, g in plain.items():
        assert torch.equal(scaled[k] / S, g), k
    changed = [k for k in plain if not torch.equal(plain[k], raw[k])]
    assert changed and all(k.startswith("encoders.") for k in changed), changed


def test_staleness_statistics_are_loss_scale_free() -> None:
    sums = []
    for scale in (None, S):
        module = tiny_mlp_module()
        st = StalenessScheduler(update_freq=100)
        trainer = fake_trainer(scale)
        st.on_fit_start(trainer, module)
        out = backward_step(module, scale or 1.0)
        st.on_train_gradients(trainer, module, out)
        sums.append({m: t.clone() for m, t in st._acc.items()})
    for m in sums[0]:
        assert torch.equal(sums[0][m], sums[1][m]), m


# ------------------------------------------- 16-mixed, a real GradScaler on CPU


def _amp16_plugin(init_scale: float) -> MixedPrecision:
    # Lightning maps precision="16-mixed" to bf16 on CPU; the plugin gives true fp16 AMP.
    # A huge initial scale makes the first step overflow; the scaler skips it and backs off
    # to a finite scale at once.
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, backoff_factor=2.0**-30)
    return MixedPrecision("16-mixed", "cpu", scaler)


def _callbacks() -> list:
    return [
        OGMGE(variant="generalized"),
        ProbeMonitor(eval_freq=1, probe_train_steps=2),
        ASGMLBoost(),
        StalenessScheduler(update_freq=100),
    ]


def test_a_scaler_skipped_step_leaves_method_state_unchanged() -> None:
    """Step 0 overflows under a real fp16 GradScaler: the scaler skips the optimizer step
    and no callback folds anything of that step into its state."""
    module = tiny_mlp_module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    ogm, probe, boost, stale = cbs = _callbacks()
    trainer = fit(module, vector_loader(), cbs, max_steps=1, plugins=[_amp16_plugin(2.0**40)])
    assert trainer.precision_plugin.scaler.get_scale() == 2.0**10  # it did overflow
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k  # the optimizer step was skipped
    assert module.skipped_nonfinite_steps == 0  # the scaler's business, not the module's
    assert ogm.state_dict()["nonfinite_steps"] == 1  # left unmodulated, counted
    assert probe.version == 0 and probe.due and not probe.scores  # deferred, not trained
    fresh = ProbeMonitor()
    fresh.on_fit_start(trainer, module)
    for k, v in fresh.bank.state_dict().items():
        assert torch.equal(probe.bank.state_dict()[k], v), k
    assert probe.optimizer.state_dict()["state"] == {}
    assert boost.scales == {"audio": 1.0, "visual": 1.0}
    assert float(stale._finite) == 0.0 and stale._count == 1
    for t in stale._acc.values():
        assert torch.equal(t, torch.zeros(2))
    assert stale.state_dict()["nonfinite_steps"] == 1


def test_16_mixed_trains_after_the_skipped_steps() -> None:
    module = tiny_mlp_module()
    ogm, probe, boost, stale = cbs = _callbacks()
    fit(module, vector_loader(), cbs, max_steps=4, plugins=[_amp16_plugin(2.0**40)])
    assert probe.version == 3 and probe.last_eval_step == 3  # step 0 deferred to step 1
    assert float(stale._finite) == 3.0 and stale._count == 4
    assert all(torch.isfinite(t).all() for t in stale._acc.values())
    assert all(math.isfinite(s) for s in boost.scales.values())
    assert any(s != 1.0 for s in boost.scales.values())
    assert ogm.state_dict()["nonfinite_steps"] == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())
