"""The ``debug/`` configs, the ``hparams_search/boost_optuna`` sweep and the sweep's return
value (the fit's ``optimized_metric``, a validation metric)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import compose_cfg
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig

from asgml.train import optimized_value, run

ROOT = Path(__file__).resolve().parents[2]


def _compose_with_hydra(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("name", ["default", "fdr", "overfit", "limit", "profiler"])
def test_debug_configs_compose(name: str) -> None:
    cfg = compose_cfg([f"debug={name}"], fast=False)
    assert cfg.task_name == "debug" and cfg.callbacks is None and cfg.logger is None
    t = cfg.trainer
    assert t.accelerator == "cpu" and t.devices == 1 and t.detect_anomaly is True
    assert cfg.dataset.datamodule.num_workers == 0
    expected = {
        "default": {"max_epochs": 1},
        "fdr": {"fast_dev_run": True},
        "overfit": {"max_epochs": 20, "overfit_batches": 3},
        "limit": {"max_epochs": 3, "limit_train_batches": 10, "limit_test_batches": 5},
        "profiler": {"max_epochs": 1, "profiler": "simple"},
    }[name]
    assert {k: t.get(k) for k in expected} == expected
    hydra_cfg = _compose_with_hydra([f"debug={name}"]).hydra
    assert hydra_cfg.job_logging.root.level == "DEBUG"


def test_debug_fdr_runs_one_batch_each(tmp_path: Path) -> None:
    cfg = compose_cfg(["debug=fdr"], output_dir=tmp_path, fast=False)
    metrics = run(cfg)
    assert "test/acc" in metrics["metrics"]
    assert metrics["optimized_value"] == metrics["val_acc_best"] is not None
    assert not (tmp_path / "checkpoints").exists()  # fast_dev_run writes no checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "overfit", "limit", "profiler"])
def test_debug_configs_run(name: str, tmp_path: Path) -> None:
    small = [
        "dataset.datamodule.num_train=128",
        "dataset.datamodule.num_val=32",
        "dataset.datamodule.num_test=32",
        "dataset.datamodule.batch_size=16",
        "trainer.max_epochs=1",
    ]
    cfg = compose_cfg([f"debug={name}", *small], output_dir=tmp_path, fast=False)
    metrics = run(cfg)
    assert "test/acc" in metrics["metrics"] and metrics["optimized_value"] is not None


def test_boost_optuna_composes() -> None:
    cfg = _compose_with_hydra(["hparams_search=boost_optuna"])
    assert cfg.method.name == "boost" and cfg.optimized_metric == "val/acc_best"
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert sweeper.direction == "maximize" and cfg.hydra.mode == RunMode.MULTIRUN
    assert dict(sweeper.params) == {
        "method.boost.alpha": "interval(0.1, 1.0)",
        "method.boost.scale_max": "interval(1.5, 3.0)",
        "method.probe.eval_freq": "choice(10, 20, 50, 100)",
    }


def test_optimized_value_is_a_logged_validation_metric() -> None:
    cfg = compose_cfg([], fast=False)
    result = {"fit/val/acc_best": 0.5, "fit/val/acc": 0.4, "test/acc": 0.9}
    assert optimized_value(cfg, result) == 0.5
    cfg.optimized_metric = "val/acc"
    assert optimized_value(cfg, result) == 0.4
    cfg.optimized_metric = "test/acc"
    with pytest.raises(ValueError, match="optimized_metric='test/acc': tune on a validation"):
        optimized_value(cfg, result)
    cfg.optimized_metric = "val/f1_best"
    with pytest.raises(ValueError, match=r"'val/f1_best' was not logged.*'val/acc_best'"):
        optimized_value(cfg, result)
    cfg.train = False
    assert optimized_value(cfg, result) is None


@pytest.mark.slow
def test_boost_optuna_sweep_returns_the_validation_metric(tmp_path: Path) -> None:
    overrides = [
        "hparams_search=boost_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={tmp_path}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false",
        "dataset.datamodule.num_train=96",
        "dataset.datamodule.num_val=32",
        "dataset.datamodule.batch_size=16",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "asgml.train", "-m", *overrides],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((tmp_path / str(i) / "metrics.json").read_text()) for i in range(2)]
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_value"] == max(r["val_acc_best"] for r in runs)
    assert set(results["best_params"]) == {
        "method.boost.alpha",
        "method.boost.scale_max",
        "method.probe.eval_freq",
    }
    for r in runs:
        assert r["optimized_value"] == r["val_acc_best"] is not None
