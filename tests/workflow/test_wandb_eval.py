"""wandb offline logging and checkpoint evaluation on a tiny synthetic run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from asgml.report import load_runs, write_report
from asgml.run.evaluate import evaluate_checkpoint, format_eval, run_dir_of, write_eval
from asgml.train import run


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))


@pytest.mark.slow
def test_wandb_offline_run_files(
    make_cfg: Callable[..., DictConfig], tmp_path: Path, wandb_env: None
) -> None:
    cfg = make_cfg(["logger=wandb", "method=boost", "method.probe.eval_freq=1"])
    metrics = run(cfg)
    assert "test/acc" in metrics["metrics"]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    assert list(runs[0].glob("run-*.wandb")), "offline run has no .wandb data file"
    assert (tmp_path / "csv" / "metrics.csv").exists()  # CSV logger stays on
    import wandb

    assert wandb.run is None  # finished, so the next multirun job starts a new run


@pytest.mark.slow
def test_evaluate_checkpoint_and_report(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    run(make_cfg(["method=baseline"]))
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    assert run_dir_of(ckpt) == tmp_path.resolve()
    result = evaluate_checkpoint(ckpt, mask="feature", device="cpu")
    mods = ["audio", "visual"]
    assert set(result["shapley"]) == set(mods)
    assert set(result["subset_acc"]) == {"none", "audio", "visual", "audio+visual"}
    # all modalities present = the fused model; Shapley values add up to v(N) - v(empty)
    assert result["subset_acc"]["audio+visual"] == pytest.approx(result["metrics"]["acc"])
    total = result["subset_acc"]["audio+visual"] - result["subset_acc"]["none"]
    assert sum(result["shapley"].values()) == pytest.approx(total)
    for m in mods:
        assert 0.0 <= result["metrics"][f"acc_{m}"] <= 1.0
    assert "Shapley" in format_eval(result)
    path = write_eval(result)
    assert path == tmp_path.resolve() / "eval.json"
    assert json.loads(path.read_text())["split"] == "test"

    by_input = evaluate_checkpoint(ckpt, mask="input", device="cpu")
    assert by_input["subset_acc"]["audio+visual"] == pytest.approx(result["metrics"]["acc"])

    runs = load_runs(tmp_path)
    assert {"eval/shapley_audio", "eval/shapley_visual"} <= set(runs.columns)
    rep = write_report(tmp_path, tmp_path / "rep", with_shapley=True, plots=False)
    assert "Shapley audio (pp)" in rep["table"]
