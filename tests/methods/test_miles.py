"""MILES: utilisation, lr multipliers and per-encoder learning rates."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from asgml.methods.miles import MILES, miles_multipliers, miles_utilisation
from asgml.train import run
from tests.helpers import tiny_mlp_module, vector_loader


def test_utilisation_and_multipliers_hand_computed() -> None:
    u = miles_utilisation(0.8, {"a": 0.7, "v": 0.4})
    assert u["a"] == pytest.approx(0.5)  # (0.8 - 0.4) / 0.8
    assert u["v"] == pytest.approx(0.125)  # (0.8 - 0.7) / 0.8
    mult, delta = miles_multipliers(u, tau=0.2, mu=0.5)
    assert delta == pytest.approx(0.375) and mult == {"a": 0.5, "v": 1.0}
    # gap below tau: base lr everywhere
    mult, delta = miles_multipliers(miles_utilisation(0.8, {"a": 0.7, "v": 0.6}), 0.2, 0.5)
    assert delta == pytest.approx(0.125) and mult == {"a": 1.0, "v": 1.0}
    # every u < 0: nothing changes even though delta > tau
    u = miles_utilisation(0.3, {"a": 0.5, "v": 0.6})
    assert u["a"] == pytest.approx(-1.0) and u["v"] == pytest.approx(-2 / 3)
    assert miles_multipliers(u, 0.2, 0.5)[0] == {"a": 1.0, "v": 1.0}
    # N = 3: u_m = (M_f - mean of the others) / M_f
    u = miles_utilisation(0.8, {"a": 0.8, "v": 0.2, "t": 0.4})
    assert u["a"] == pytest.approx((0.8 - 0.3) / 0.8)
    assert u["v"] == pytest.approx((0.8 - 0.6) / 0.8)
    assert u["t"] == pytest.approx((0.8 - 0.5) / 0.8)
    assert miles_multipliers(u, 0.2, 0.5)[0] == {"a": 0.5, "v": 1.0, "t": 1.0}
    assert miles_utilisation(0.0, {"a": 0.1, "v": 0.2}) == {"a": 0.0, "v": 0.0}


def _fake(module, opt, metrics):
    return SimpleNamespace(optimizers=[opt], callback_metrics=metrics, sanity_checking=False)


def test_learning_rates_follow_the_rule_by_hand() -> None:
    module = tiny_mlp_module()
    module.log = lambda *a, **k: None
    opt = torch.optim.SGD(module.param_groups(), lr=0.1)
    lr = {g["name"]: g for g in opt.param_groups}
    cb = MILES(tau=0.2, mu=0.5)
    cb.setup(None, module, "fit")
    tr = _fake(module, opt, {})
    cb.on_train_epoch_start(tr, module)  # epoch 0: base lr
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1, 0.1]
    tr.callback_metrics = {
        "val/acc": torch.tensor(0.8),
        "val/acc_audio": torch.tensor(0.7),
        "val/acc_visual": torch.tensor(0.4),
    }
    cb.on_validation_end(tr, module)
    cb.on_train_epoch_start(tr, module)  # epoch 1: audio dominant -> 0.05
    assert lr["encoder.audio"]["lr"] == pytest.approx(0.05)
    assert lr["encoder.visual"]["lr"] == pytest.approx(0.1) and lr["head"]["lr"] == pytest.approx(
        0.1
    )
    # a multiplicative scheduler step (x0.1) in between is kept
    for g in opt.param_groups:
        g["lr"] *= 0.1
    cb.on_train_epoch_start(tr, module)  # no validation since: back to the base lr
    assert lr["encoder.audio"]["lr"] == pytest.approx(0.01)
    assert lr["encoder.visual"]["lr"] == pytest.approx(0.01)
    # visual dominant now
    tr.callback_metrics = {
        "val/acc": torch.tensor(0.5),
        "val/acc_audio": torch.tensor(0.1),
        "val/acc_visual": torch.tensor(0.45),
    }
    cb.on_validation_end(tr, module)
    cb.on_train_epoch_start(tr, module)
    assert lr["encoder.visual"]["lr"] == pytest.approx(0.005)
    assert lr["encoder.audio"]["lr"] == pytest.approx(0.01)
    st = cb.state_dict()
    cb2 = MILES()
    cb2.load_state_dict(st)
    assert cb2.applied_mult == {"audio": 1.0, "visual": 0.5}


class _LRRec(L.Callback):
    def __init__(self) -> None:
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})


def test_learning_rates_in_a_trainer() -> None:
    module = tiny_mlp_module()
    rec = _LRRec()
    cb = MILES(tau=0.0, mu=0.5)
    cb.tau = -1.0  # every gap exceeds tau: the dominant encoder is slowed
    loader = vector_loader(n=16, batch_size=8)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[cb, rec],
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert rec.lrs[0] == {"encoder.audio": 1e-3, "encoder.visual": 1e-3, "head": 1e-3}
    dom = max(cb.utilisation, key=cb.utilisation.get)
    other = [m for m in module.modalities if m != dom][0]
    assert rec.lrs[-1][f"encoder.{dom}"] == pytest.approx(5e-4)
    assert rec.lrs[-1][f"encoder.{other}"] == pytest.approx(1e-3)


def test_needs_named_groups() -> None:
    module = tiny_mlp_module()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    cb = MILES()
    cb.setup(None, module, "fit")
    with pytest.raises(ValueError, match="encoder"):
        cb.on_fit_start(_fake(module, opt, {}), module)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=miles", "trainer.max_epochs=2", *extra]))
    assert m["metrics"]["test/acc"] >= 0
