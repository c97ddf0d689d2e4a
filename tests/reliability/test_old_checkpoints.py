"""Checkpoints written before the move into wings (``asgml.callbacks.*``, ``asgml.module``
as stored ``_target_``s) still evaluate and resume: ``asgml.run.moved`` maps the old names
where a stored config is read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asgml.run.evaluate import evaluate_checkpoint, load_checkpoint
from asgml.run.moved import current_target, upgrade_targets

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "pre_wings"
# the overrides the fixtures were written with (see tests/fixtures/pre_wings/README.md)
TINY = [
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "dataset.datamodule.num_train=32",
    "dataset.datamodule.num_val=16",
    "dataset.datamodule.num_test=16",
    "dataset.datamodule.batch_size=16",
    "dataset.encoder_choices.audio.width=2",
    "dataset.encoder_choices.visual.width=2",
    "dataset.modalities.audio.size=16",
    "dataset.modalities.visual.size=16",
]


def test_fixtures_name_the_old_targets() -> None:
    """The fixtures really are pre-move checkpoints (else the tests below prove nothing)."""
    cfg = torch.load(FIXTURES / "mla_best.ckpt", weights_only=True)["asgml_config"]
    assert cfg["method"]["mla"]["_target_"] == "asgml.callbacks.mla.MLA"
    assert cfg["model"]["_target_"] == "asgml.module.MultimodalModule"


def test_moved_targets_map() -> None:
    assert current_target("asgml.callbacks.ogm.OGMGE") == "asgml.methods.ogm.OGMGE"
    assert current_target("asgml.callbacks.base.BalancingCallback") == (
        "asgml.core.base.BalancingCallback"
    )
    assert current_target("asgml.module.MultimodalModule") == "asgml.core.module.MultimodalModule"
    assert current_target("asgml.checkpointing.BestCheckpoint") == (
        "asgml.run.checkpointing.BestCheckpoint"
    )
    assert current_target("asgml.data.avdataset.AVDataModule") == (
        "asgml.data.avdataset.AVEKSDataModule"
    )
    for unchanged in ("asgml.models.encoders.MLPEncoder", "torch.optim.SGD", "asgml.modulex.A"):
        assert current_target(unchanged) == unchanged
    cfg = {"a": {"_target_": "asgml.callbacks.mla.MLA"}, "b": [{"_target_": "asgml.types.X"}]}
    changed = upgrade_targets(cfg)
    assert cfg == {
        "a": {"_target_": "asgml.methods.mla.MLA"},
        "b": [{"_target_": "asgml.core.types.X"}],
    }
    assert [c[0] for c in changed] == ["a._target_", "b[0]._target_"]


def test_pre_move_checkpoint_evaluates_as_its_run_tested(tmp_path: Path) -> None:
    ckpt = tmp_path / "mla_best.ckpt"
    shutil.copy(FIXTURES / "mla_best.ckpt", ckpt)
    result = evaluate_checkpoint(ckpt, split="test")
    tested = json.loads((FIXTURES / "mla_metrics.json").read_text())["metrics"]
    assert result["metrics"]["acc"] == pytest.approx(tested["test/acc"], abs=1e-6)
    assert result["metrics"]["f1"] == pytest.approx(tested["test/f1"], abs=1e-6)
    for m in ("audio", "visual"):
        assert result["metrics"][f"acc_{m}"] == pytest.approx(tested[f"test/acc_{m}"], abs=1e-6)
    # the stored config is read under the present names
    assert load_checkpoint(ckpt)["asgml_config"]["method"]["mla"]["_target_"] == (
        "asgml.methods.mla.MLA"
    )


def _train(out: Path, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "asgml.train", "method=boost_ogm", *TINY, *extra,
         f"hydra.run.dir={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_pre_move_checkpoint_resumes(tmp_path: Path) -> None:
    """Resumed from the pre-move epoch-1 checkpoint, the run trains its second epoch from the
    stored weights and callback states. (Not bitwise equal to an uninterrupted run of today's
    code: the evaluation loaders have since stopped drawing their worker seeds from the global
    RNG, so the RNG state stored after epoch 1 differs; tests/reliability/test_resume_workers.py
    checks exactness within one version.)"""
    first = tmp_path / "first.ckpt"
    shutil.copy(FIXTURES / "boost_ogm_epoch1.ckpt", first)
    before = torch.load(first, weights_only=True)
    _train(tmp_path / "resumed", "trainer.max_epochs=2", f"ckpt_path={first}")
    after = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert before["global_step"] == 2 and after["global_step"] == 4
    assert after["state_dict"].keys() == before["state_dict"].keys()
    moved = [
        k for k, v in before["state_dict"].items() if not torch.equal(v, after["state_dict"][k])
    ]
    assert moved, "the resumed run did not train"
    # the method state continued from the checkpoint's, under the methods' new module paths
    assert (
        after["callbacks"]["ProbeMonitor"]["version"]
        >= before["callbacks"]["ProbeMonitor"]["version"]
    )
    assert set(after["callbacks"]["ASGMLBoost"]["scales"]) == {"audio", "visual"}
