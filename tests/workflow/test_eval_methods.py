"""``asgml.eval`` scores a checkpoint as the training run's test phase did: the method's
test-time fusion (MLA, ReconBoost, AMCo, Greedy, MMCosine's linear head) and single-modality (``method=unimodal``)
checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from asgml.run.evaluate import evaluate_checkpoint, format_eval
from asgml.train import run
from tests.conftest import compose_cfg


def _train_and_eval(tmp_path: Path, overrides: list[str]) -> tuple[dict, dict]:
    metrics = run(compose_cfg(overrides, output_dir=tmp_path))["metrics"]
    result = evaluate_checkpoint(tmp_path / "checkpoints" / "best.ckpt", device="cpu")
    return metrics, result


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mla", "reconboost", "amco", "greedy", "mmcosine"])
def test_eval_applies_the_method_test_time_fusion(tmp_path: Path, method: str) -> None:
    # the test phase of the run scored best.ckpt on the same (whole) test split and batches
    metrics, result = _train_and_eval(tmp_path, [f"method={method}"])
    assert result["metrics"]["acc"] == pytest.approx(float(metrics["test/acc"]))
    assert result["metrics"]["f1"] == pytest.approx(float(metrics["test/f1"]))
    for m in ("audio", "visual"):
        assert result["metrics"][f"acc_{m}"] == pytest.approx(float(metrics[f"test/acc_{m}"]))


@pytest.mark.slow
def test_eval_loads_a_unimodal_checkpoint(tmp_path: Path) -> None:
    metrics, result = _train_and_eval(tmp_path, ["method=unimodal", "method.modality=visual"])
    assert result["metrics"]["acc"] == pytest.approx(float(metrics["test/acc"]))
    assert result["metrics"]["acc_visual"] == pytest.approx(float(metrics["test/acc_visual"]))
    assert "acc_audio" not in result["metrics"]
    assert "audio" in format_eval(result)  # its Shapley line, without unimodal metrics
