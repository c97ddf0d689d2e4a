"""Accepted but meaningless, now refused or warned at start-up (docs/reliability.md): method
options outside their domain, warm-ups that outlast the run, teacher / probe checkpoints of
another task, a run whose every step was skipped as non-finite, and MMSA splits of different
feature widths."""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import open_dict

from asgml.core.guard import NonFiniteTrainingError
from asgml.data.mmsa import MMSADataModule
from asgml.methods.linear_probe import LinearProbe
from asgml.methods.umt import load_teacher
from asgml.run.config import validate_config
from asgml.train import run
from tests.conftest import compose_cfg
from tests.data.fixtures import mmsa_split
from tests.helpers import tiny_mlp_module


# ------------------------------------------------------------------ option domains
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=reconboost", "method.reconboost.alpha=-1"], "method.reconboost.alpha must be >= 0, got -1"),
        (["method=reconboost", "method.reconboost.boost_rate=0"], "method.reconboost.boost_rate must be > 0, got 0"),
        (["method=ogm", "method.ogm.alpha=-0.5"], "method.ogm.alpha must be >= 0, got -0.5"),
        (["method=boost_ogm", "method.boost.ema_alpha=0"], "method.boost.ema_alpha must be in (0, 1], got 0"),
        (["method=boost", "method.probe.lr=-1e-3"], "method.probe.lr must be > 0, got -0.001"),
        (["method=pmr", "method.pmr.momentum_coef=1.0"], "method.pmr.momentum_coef must be in [0, 1), got 1.0"),
        (["method=staleness", "method.staleness.beta=2"], "method.staleness.beta must be in [0, 1], got 2"),
        (["method=mmcosine", "method.mmcosine.scaling=0"], "method.mmcosine.scaling must be > 0, got 0"),
        (["method=cml", "method.cml.lam=-0.1"], "method.cml.lam must be >= 0, got -0.1"),
    ],
)  # fmt: skip
def test_options_outside_their_domain_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_config(compose_cfg(overrides))


def test_shipped_method_defaults_are_inside_their_domains(caplog: pytest.LogCaptureFixture) -> None:
    methods = sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "method").glob("*.yaml"))
    assert "reconboost" in methods and len(methods) > 20
    for m in methods:
        validate_config(compose_cfg([f"method={m}", "trainer.max_epochs=100"]))
    assert "NEVER acts" not in caplog.text and "does nothing" not in caplog.text


def test_a_zero_strength_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="asgml"):
        validate_config(compose_cfg(["method=boost_ogm", "method.boost.alpha=0"]))
    assert "method.boost.alpha=0: ASGMLBoost does nothing" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "epochs", "first"),
    [
        (["method=sample_valuation", "method.valuation.warmup=5"], 5, 5),
        (["method=opm"], 6, 6),  # modulation_starts=6 (official warm-up)
        (["method=arl", "method.arl.start=2"], 3, 3),  # modulates epochs > start
        (["method=agm", "method.agm.modulation_starts=4"], 3, 3),  # 1-based official epochs
    ],
)
def test_a_warm_up_that_outlasts_the_run_is_warned_loudly(
    caplog: pytest.LogCaptureFixture, overrides: list[str], epochs: int, first: int
) -> None:
    with caplog.at_level(logging.WARNING, logger="asgml"):
        validate_config(compose_cfg([*overrides, f"trainer.max_epochs={epochs}"]))
    assert f"first acts in epoch {first} (0-based), but trainer.max_epochs={epochs}" in caplog.text
    assert "NEVER acts" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asgml"):  # one more epoch: it acts once
        validate_config(compose_cfg([*overrides, f"trainer.max_epochs={first + 1}"]))
    assert "NEVER acts" not in caplog.text


# ------------------------------------------------- checkpoints of another task
def _tiny_ckpt(tmp_path: Path, stored: dict[str, Any], **kw: Any) -> Path:
    src = tiny_mlp_module(**kw)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": src.state_dict(), "asgml_config": stored}, path)
    return path


def _stored(dataset: str, classes: int, modalities: tuple[str, ...], **method: Any) -> dict:
    encoders = {m: {"_target_": "asgml.models.encoders.MLPEncoder"} for m in modalities}
    return {
        "dataset": {"name": dataset},
        "model": {"num_classes": classes, "encoders": encoders},
        "method": method,
    }


def _student(dataset: str = "cremad", **kw: Any) -> Any:
    module = tiny_mlp_module(**kw)
    module.run_config = {"dataset": {"name": dataset}}
    return module


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (_stored("ave", 3, ("audio", "visual")), "dataset (dataset.name): checkpoint 'ave', this run 'cremad'"),
        (_stored("cremad", 6, ("audio", "visual")), "number of classes (model.num_classes): checkpoint 6, this run 3"),
        (_stored("cremad", 3, ("audio", "text")), "modalities (model.encoders): checkpoint ['audio', 'text'], this run ['audio', 'visual']"),
    ],
)  # fmt: skip
def test_a_probe_checkpoint_of_another_task_is_refused(
    tmp_path: Path, stored: dict, message: str
) -> None:
    path = _tiny_ckpt(tmp_path, stored, unimodal_heads=True)
    key = f"method.linear_probe.checkpoint={path}"
    with pytest.raises(ValueError, match=re.escape(key)) as err:
        LinearProbe(str(path)).setup(None, _student(unimodal_heads=True), "fit")
    assert message in str(err.value)
    # the same task: loaded
    same = _tiny_ckpt(tmp_path, _stored("cremad", 3, ("audio", "visual")), unimodal_heads=True)
    LinearProbe(str(same)).setup(None, _student(unimodal_heads=True), "fit")


def test_a_teacher_of_another_task_is_refused(tmp_path: Path) -> None:
    teacher = {"name": "unimodal", "modality": "audio"}
    path = _tiny_ckpt(tmp_path, _stored("ave", 6, ("audio", "visual"), **teacher))
    student = _student()
    with pytest.raises(ValueError, match=re.escape(f"method.umt.teachers.audio={path}")) as err:
        load_teacher(path, "audio", student.encoders["audio"], student)
    assert "checkpoint 'ave', this run 'cremad'" in str(err.value)
    assert "checkpoint 6, this run 3" in str(err.value)
    same = _tiny_ckpt(tmp_path, _stored("cremad", 3, ("audio", "visual"), **teacher))
    load_teacher(same, "audio", student.encoders["audio"], student)


@pytest.mark.slow
def test_umt_run_with_a_teacher_of_another_dataset_fails_at_setup(tmp_path: Path) -> None:
    """Through ``run``: the synthetic run refuses a teacher stored as trained on CREMA-D."""
    first = compose_cfg(["method=unimodal", "method.modality=audio", "test=false"], tmp_path / "t")
    run(first)
    ckpt = torch.load(tmp_path / "t" / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["asgml_config"]["dataset"]["name"] = "cremad"
    teacher = tmp_path / "teacher.ckpt"
    torch.save(ckpt, teacher)
    cfg = compose_cfg(["method=umt", f"method.umt.teachers.audio={teacher}"], tmp_path / "s")
    with pytest.raises(ValueError, match="checkpoint 'cremad', this run 'synthetic'"):
        run(cfg)
    assert not (tmp_path / "s" / "checkpoints").exists()  # refused before any step


# ------------------------------------------------------ every step skipped
def test_a_run_whose_every_step_was_skipped_exits_non_zero(tmp_path: Path) -> None:
    cfg = compose_cfg(["trainer.max_epochs=1"], output_dir=tmp_path)
    with open_dict(cfg):
        nan = "tests.reliability.test_faults.NaNGradsInEpoch"
        cfg.callbacks.nan = {"_target_": nan, "epochs": [0]}
    with (
        pytest.warns(UserWarning, match="step skipped"),
        pytest.raises(NonFiniteTrainingError, match=r"every training step \(3\) .* skipped"),
    ):
        run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # the numbers are kept
    assert metrics["skipped_nonfinite_steps"] == 3


def test_a_run_with_some_steps_applied_is_not_refused(tmp_path: Path) -> None:
    cfg = compose_cfg(["trainer.max_epochs=2", "test=false"], output_dir=tmp_path)
    with open_dict(cfg):
        nan = "tests.reliability.test_faults.NaNGradsInEpoch"
        cfg.callbacks.nan = {"_target_": nan, "epochs": [1]}
    with pytest.warns(UserWarning, match="step skipped"):
        assert run(cfg)["skipped_nonfinite_steps"] == 3


# ------------------------------------------------------ MMSA feature widths
@pytest.mark.parametrize("split", ["valid", "test"])
def test_mmsa_split_of_another_feature_width_fails_at_setup(tmp_path: Path, split: str) -> None:
    data = {s: mmsa_split(4, seed=i) for i, s in enumerate(("train", "valid", "test"))}
    data[split] = mmsa_split(4, vision_shape=(11, 700), seed=7)
    path = tmp_path / "unaligned_39.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    message = (
        f"{path}: split '{split}' has vision features of width 700, split 'train' of width 709"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        MMSADataModule(str(path)).setup()
