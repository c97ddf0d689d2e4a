"""Faults lose nothing: ``last.ckpt`` holds the latest epoch, checkpoint writes are atomic,
non-finite runs stop and never leave a non-finite checkpoint (docs/reliability.md, Faults)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from torch.utils.data import Dataset
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.guard import NonFiniteTrainingError
from asgml.data.base import EpochSampler, ResumableLoader, SeededItems, SplitDataModule
from asgml.data.cremad import CremadDataModule
from asgml.data.synthetic import SyntheticDataModule
from asgml.run.checkpointing import AtomicCheckpointIO
from asgml.run.rundir import RunDirectoryError, RunDirGuard, check_run_dir
from asgml.train import run
from tests.conftest import compose_cfg
from tests.data.fixtures import make_cremad

ROOT = Path(__file__).resolve().parents[2]


class DecreasingScore(L.Callback):
    """Logs ``fault/score`` = 3, 2, 1, ... at the validation epoch ends: monitored with
    ``mode=max``, only the first epoch is ever the best (a plateau made to order)."""

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("fault/score", float(3 - trainer.current_epoch))


def _ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def test_last_ckpt_holds_the_final_epoch_when_it_did_not_improve(tmp_path: Path) -> None:
    cfg = compose_cfg(
        [
            "trainer.max_epochs=3",
            "test=false",
            "callbacks.model_checkpoint.monitor=fault/score",
            "optimized_metric=val/acc_best",
        ],
        output_dir=tmp_path,
    )
    with open_dict(cfg):
        cfg.callbacks.decreasing = {"_target_": f"{__name__}.DecreasingScore"}
    run(cfg)
    best = _ckpt(tmp_path / "checkpoints" / "best.ckpt")
    last = _ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert best["epoch"] == 0  # the plateau: epochs 1 and 2 did not improve
    assert last["epoch"] == 2 and last["global_step"] == 9
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]


# A process that writes a small checkpoint, then is killed by the kernel (SIGXFSZ, the file
# size limit) in the middle of writing a large one over it: a kill during a checkpoint write.
_KILLED_WRITE = """
import resource, signal, sys, torch
from {module} import {cls}
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it by default
io, path = {cls}(), sys.argv[1]
io.save_checkpoint({{"state_dict": {{"w": torch.ones(4)}}}}, path)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
io.save_checkpoint({{"state_dict": {{"w": torch.zeros(1 << 18)}}}}, path)
"""


def killed_write(tmp_path: Path, module: str, cls: str) -> tuple[int, Path, Path]:
    ckpt_dir, tmpdir = tmp_path / "checkpoints", tmp_path / "tmpdir"
    ckpt_dir.mkdir()
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    code = _KILLED_WRITE.format(module=module, cls=cls)
    res = subprocess.run(
        [sys.executable, "-c", code, str(ckpt_dir / "last.ckpt")],
        env=env,
        capture_output=True,
        timeout=120,
    )
    return res.returncode, ckpt_dir, tmpdir


@pytest.mark.slow
def test_a_killed_checkpoint_write_leaves_no_orphan_and_the_old_file(tmp_path: Path) -> None:
    rc, ckpt_dir, tmpdir = killed_write(tmp_path, "asgml.run.checkpointing", "AtomicCheckpointIO")
    assert rc == -signal.SIGXFSZ  # killed mid-write, as by a kill -9 or a node failure
    left = sorted(p.name for p in ckpt_dir.iterdir())
    assert left == ["last.ckpt"] or (
        # the kill can only leave our own temporary file, next to the target
        len(left) == 2 and left[0].startswith(".last.ckpt.") and left[0].endswith(".tmp")
    ), left
    assert list(tmpdir.iterdir()) == []  # nothing in $TMPDIR
    old = _ckpt(ckpt_dir / "last.ckpt")
    assert torch.equal(old["state_dict"]["w"], torch.ones(4))
    # the next write of that checkpoint removes the killed write's temporary file
    AtomicCheckpointIO().save_checkpoint(
        {"state_dict": {"w": torch.ones(2)}}, ckpt_dir / "last.ckpt"
    )
    assert [p.name for p in ckpt_dir.iterdir()] == ["last.ckpt"]


def test_a_failed_checkpoint_write_cleans_up_its_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(4)}}, path)

    def fail(fd: int) -> None:  # the data is written, the flush to disk fails
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(8)}}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.equal(_ckpt(path)["state_dict"]["w"], torch.ones(4))


def test_a_nonfinite_checkpoint_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "best.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(4)}}, path)
    bad = torch.tensor([1.0, float("inf")])
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": bad}}, path)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": bad}}, tmp_path / "new.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]
    assert torch.equal(_ckpt(path)["state_dict"]["w"], torch.ones(4))


def _nonfinite_run(tmp_path: Path, *extra: str) -> NonFiniteTrainingError:
    cfg = compose_cfg(
        ["model.optimizer.lr=1e6", "trainer.max_epochs=4", *extra], output_dir=tmp_path
    )
    with pytest.raises(NonFiniteTrainingError) as err:
        run(cfg)
    for name in ("best", "last"):
        path = tmp_path / "checkpoints" / f"{name}.ckpt"
        if path.exists():  # an earlier, finite state, or nothing
            ckpt = _ckpt(path)
            assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()), name
    assert not (tmp_path / "metrics.json").exists()  # no results table for a failed run
    return err.value


def test_lr_1e6_stops_after_k_consecutive_skipped_steps(tmp_path: Path) -> None:
    # 6 steps per epoch: the weights overflow in epoch 0, the next steps are all skipped
    err = _nonfinite_run(
        tmp_path, "model.max_consecutive_nonfinite=2", "trainer.limit_train_batches=6"
    )
    assert "2 consecutive steps had a non-finite loss or gradients" in str(err)
    assert "max_consecutive_nonfinite" in str(err)


def test_nonfinite_weights_stop_the_run_at_the_epoch_end(tmp_path: Path) -> None:
    err = _nonfinite_run(tmp_path, "model.max_consecutive_nonfinite=null")
    assert "the weights are not finite" in str(err)


class NaNGradsInEpoch(BalancingCallback):
    """A NaN audio-encoder gradient at every step of the given epochs (skipped steps)."""

    def __init__(self, epochs: list[int]) -> None:
        self.epochs = set(epochs)

    @override
    def on_train_gradients(self, trainer: L.Trainer, module: Any, out: Any) -> None:
        if trainer.current_epoch in self.epochs:
            next(iter(module.encoder_parameters("audio"))).grad[0].fill_(float("nan"))


def test_metrics_json_keeps_the_skipped_count_of_the_whole_fit(tmp_path: Path) -> None:
    """The test phase loads best.ckpt (epoch 0, no skipped step); metrics.json still counts
    the 3 steps of epoch 1 that were skipped."""
    cfg = compose_cfg(
        ["trainer.max_epochs=2", "callbacks.model_checkpoint.monitor=fault/score"],
        output_dir=tmp_path,
    )
    with open_dict(cfg):
        cfg.callbacks.decreasing = {"_target_": f"{__name__}.DecreasingScore"}
        cfg.callbacks.nan = {"_target_": f"{__name__}.NaNGradsInEpoch", "epochs": [1]}
    with pytest.warns(UserWarning, match="non-finite gradients at step 3"):
        metrics = run(cfg)
    assert _ckpt(tmp_path / "checkpoints" / "best.ckpt")["asgml_skipped_nonfinite_steps"] == 0
    assert _ckpt(tmp_path / "checkpoints" / "last.ckpt")["asgml_skipped_nonfinite_steps"] == 3
    assert metrics["skipped_nonfinite_steps"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["skipped_nonfinite_steps"] == 3


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_a_second_run_into_a_run_directory_is_refused_a_resume_appends(tmp_path: Path) -> None:
    first = ["trainer.log_every_n_steps=1", "test=false"]
    run(compose_cfg([*first, "trainer.max_epochs=1"], output_dir=tmp_path))
    before = _csv_rows(tmp_path)
    assert {r["step"] for r in before if r.get("train/loss_step")} == {"0", "1", "2"}
    metrics = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    # another run into the same directory: refused, nothing touched
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        run(compose_cfg([*first, "trainer.max_epochs=2"], output_dir=tmp_path))
    with pytest.raises(RunDirectoryError, match="ckpt_path="):
        run(compose_cfg(["ckpt_path=/elsewhere/last.ckpt"], output_dir=tmp_path))
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == metrics
    # resuming from its own last.ckpt: allowed, and the CSV history grows
    last = tmp_path / "checkpoints" / "last.ckpt"
    run(compose_cfg([*first, "trainer.max_epochs=2", f"ckpt_path={last}"], output_dir=tmp_path))
    after = _csv_rows(tmp_path)
    assert {r["step"] for r in after if r.get("train/loss_step")} == {str(s) for s in range(6)}
    common = [k for k in before[0] if k in after[0]]
    assert [{k: r[k] for k in common} for r in after[: len(before)]] == [
        {k: r[k] for k in common} for r in before
    ]


def test_hydra_refuses_a_run_directory_before_writing_into_it(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    cfg = OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path)}}, "ckpt_path": None})
    # an exit, not an exception: Hydra turns a callback's exception into a warning and goes on
    with pytest.raises(SystemExit, match=str(tmp_path)):
        RunDirGuard().on_run_start(config=cfg)
    cfg.ckpt_path = str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit, match="no such checkpoint"):  # a resume from nothing
        RunDirGuard().on_run_start(config=cfg)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")  # a resume: allowed
    RunDirGuard().on_run_start(config=cfg)
    RunDirGuard().on_run_start(config=OmegaConf.create({"hydra": {"run": {"dir": "new"}}}))


def test_only_rank_0_checks_the_shared_ddp_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under DDP the other ranks run in rank 0's directory, which rank 0 may already have
    written: a check there would refuse it and leave rank 0 waiting in a collective."""
    (tmp_path / "metrics.csv").write_text("step\n0\n")
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RunDirectoryError):
        check_run_dir(tmp_path, None)
    for key in ("LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.setenv(key, "1")
        check_run_dir(tmp_path, None)  # not rank 0: no check
        monkeypatch.delenv(key)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RunDirectoryError):
        check_run_dir(tmp_path, None)


def test_default_run_directories_are_unique_per_process_and_microsecond() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    assert re.search(rf"/\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{{6}}-p{os.getpid()}$", run_dir)
    assert "RunDirGuard" in str(OmegaConf.select(cfg, "hydra.callbacks"))


# ------------------------------------------------------------------ kill, terminate, resume
# a tiny CREMA-D run: random crops and flips drawn in 2 worker processes; 2 steps per epoch
AV_RUN = [
    "dataset=cremad",
    "dataset.image_size=32",
    "dataset.encoders.audio.width=8",
    "dataset.encoders.visual.width=8",
    "dataset.datamodule.batch_size=4",
    "dataset.datamodule.num_workers=2",
    "dataset.datamodule.cache=off",
    "trainer.max_epochs=3",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "trainer.enable_progress_bar=false",
    "trainer.limit_val_batches=1",
    "test=false",
]


def _cli(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "asgml.train", f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _signal_at(step: int, signum: int) -> str:
    target = "tests.reliability.fault_callbacks.SignalAt"
    return f"+callbacks.signal={{_target_:{target},step:{step},signum:{int(signum)}}}"


@pytest.fixture(scope="module")
def av_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 12 train clips (11 after the validation split): 2 batches of 4 per epoch; textured
    # frames, so that random crops and flips change the input
    root = tmp_path_factory.mktemp("faults") / "CREMA-D"
    return make_cremad(root, n_train_per_class=2, textured=True)


@pytest.mark.slow
def test_sigkill_mid_epoch_with_workers_then_resume_equals_an_uninterrupted_run(
    av_root: Path, tmp_path: Path
) -> None:
    run_ = [*AV_RUN, f"data_dir={av_root}", "callbacks.last_checkpoint.every_n_train_steps=1"]
    full = _cli(tmp_path / "full", *run_)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _cli(tmp_path / "killed", *run_, _signal_at(5, signal.SIGKILL))
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    at_kill = _ckpt(last)
    assert at_kill["global_step"] == 5 and at_kill["epoch"] == 2  # mid-epoch 2 (steps 4, 5)
    resumed = _cli(tmp_path / "killed", *run_, f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _ckpt(tmp_path / "full" / "checkpoints" / "last.ckpt"), _ckpt(last)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k, v in a["state_dict"].items() if not torch.equal(v, b["state_dict"][k])]
    assert differ == []
    for x, y in zip(
        a["optimizer_states"][0]["state"].values(),
        b["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        assert torch.equal(x["momentum_buffer"], y["momentum_buffer"])


@pytest.mark.slow
def test_sigterm_saves_the_current_state_and_exits_non_zero(av_root: Path, tmp_path: Path) -> None:
    res = _cli(tmp_path, *AV_RUN, f"data_dir={av_root}", _signal_at(2, signal.SIGTERM))
    assert res.returncode == 143, res.stderr[-3000:]
    assert "SIGTERM at step 3" in res.stdout + res.stderr
    last = _ckpt(tmp_path / "checkpoints" / "last.ckpt")  # loads (weights_only)
    # the batch in progress finished: step 3, newer than the end of epoch 0 (step 2)
    assert last["global_step"] == 3 and last["epoch"] == 1
    assert not (tmp_path / "metrics.json").exists()


class RandomItems(Dataset):
    """Each item is a fresh draw from torch's global generator (what a random crop does)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.rand(2), "i": torch.tensor(i)}


class RandomDataModule(SplitDataModule):
    def __init__(self, num_workers: int) -> None:
        super().__init__()
        self.batch_size, self.num_workers = 4, num_workers
        self.splits = {"train": RandomItems()}


def _draws(num_workers: int, epochs: list[int]) -> list[dict[int, torch.Tensor]]:
    dm = RandomDataModule(num_workers)
    dm.loader_seed = 7
    loader = dm.train_dataloader()
    out = []
    for e in epochs:
        loader.sampler.set_epoch(e)
        out.append({int(i): x for b in loader for i, x in zip(b["i"], b["x"], strict=True)})
    return out


def test_train_items_draw_from_seed_epoch_and_index_only() -> None:
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    e0, e1 = _draws(0, [0, 1])
    assert torch.equal(torch.get_rng_state(), global_state)  # the global stream is untouched
    (w1,) = _draws(2, [1])  # epoch 1 at once, in 2 (fresh) worker processes
    assert e1.keys() == w1.keys() == set(range(16))
    assert all(torch.equal(e1[i], w1[i]) for i in e1)  # no dependence on history or workers
    # random augmentation still differs: between epochs, and between items (and so workers)
    assert all(not torch.equal(e0[i], e1[i]) for i in e0)
    assert len({tuple(x.tolist()) for x in w1.values()}) == 16


@pytest.mark.parametrize("name", ["synthetic", "cremad"])
def test_datamodules_use_the_resumable_seeded_train_loader(name: str, av_root: Path) -> None:
    if name == "synthetic":
        dm = SyntheticDataModule(
            {"a": {"kind": "vector", "strength": 1}, "b": {"kind": "vector", "strength": 1}},
            num_train=8,
        )
    else:
        dm = CremadDataModule(str(av_root), image_size=32, batch_size=4, cache="off")
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader) and isinstance(loader.dataset, SeededItems)
    assert isinstance(loader.sampler, EpochSampler)
