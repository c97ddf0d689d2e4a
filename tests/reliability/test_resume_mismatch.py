"""Resuming from a checkpoint of another run (dataset, modalities, shapes, method, seed) is
refused with the list of differences; ``resume_allow_mismatch=true`` overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from asgml.run.resume import resume_differences
from asgml.train import run
from tests.conftest import compose_cfg


@pytest.fixture(scope="module")
def last_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("first")
    run(compose_cfg(["trainer.max_epochs=1", "seed=1"], output_dir=out))
    return out / "checkpoints" / "last.ckpt"


def test_resume_with_other_method_and_seed_is_refused(last_ckpt: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(
        ["trainer.max_epochs=2", "seed=2", "method=boost", f"ckpt_path={last_ckpt}"],
        output_dir=tmp_path / "a",
    )
    with pytest.raises(ValueError, match=r"different run") as e:
        run(cfg)
    msg = str(e.value)
    assert "seed (seed): checkpoint 1, config 2" in msg
    assert "method (method.name): checkpoint 'baseline', config 'boost'" in msg
    assert "resume_allow_mismatch=true" in msg
    assert not (tmp_path / "a" / "metrics.json").exists()


def test_resume_with_other_shapes_is_refused(last_ckpt: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(
        ["trainer.max_epochs=2", "seed=1", "dataset.encoder_choices.audio.width=4",
         f"ckpt_path={last_ckpt}"],
        output_dir=tmp_path / "b",
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"model shapes: \d+ tensors differ"):
        run(cfg)


def test_resume_mismatch_can_be_allowed(last_ckpt: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(
        ["trainer.max_epochs=2", "seed=2", f"ckpt_path={last_ckpt}", "resume_allow_mismatch=true"],
        output_dir=tmp_path / "c",
    )
    assert "test/acc" in run(cfg)["metrics"]


def test_same_run_resumes() -> None:
    cfg = {"dataset": {"name": "x"}, "method": {"name": "m"}, "seed": 1,
           "model": {"encoders": {"a": {}, "b": {}}}}  # fmt: skip
    assert resume_differences(cfg, cfg, {"w": (2, 3)}, {"w": (2, 3)}) == []
    other = {**cfg, "model": {"encoders": {"a": {}, "c": {}}}}
    assert resume_differences(cfg, other) == [
        "modalities (model.encoders): checkpoint ['a', 'b'], config ['a', 'c']"
    ]
