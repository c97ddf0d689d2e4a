"""Nothing lost where asgml meets Lightning and Hydra as a user runs it (docs/reliability.md,
"Seams"): spawned DDP processes and the CSV history, every logger config across a resume,
run directories refused before Hydra writes, runs with nothing to validate, SIGTERM near an
epoch end, Ctrl-C."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asgml.run.csv_logger import AppendingCSVLogger
from asgml.train import run
from tests.conftest import FAST, compose_cfg

ROOT = Path(__file__).resolve().parents[2]
LOGGERS = ["csv", "wandb", "tensorboard", "mlflow"]


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _filled(rows: list[dict[str, str]]) -> set[tuple[str, str, str]]:
    """(step, column, value) of every non-empty cell."""
    return {(r["step"], k, v) for r in rows for k, v in r.items() if v != "" and k != "step"}


def _cli(run_dir: Path, *overrides: str, env: dict[str, str] | None = None, timeout: int = 600):
    cmd = [sys.executable, "-m", "asgml.train", f"hydra.run.dir={run_dir}", *overrides]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def _signal_at(step: int, signum: int) -> str:
    target = "tests.reliability.fault_callbacks.SignalAt"
    return f"+callbacks.signal={{_target_:{target},step:{step},signum:{int(signum)}}}"


# ------------------------------------------------------------------------ CSV history
def test_a_stale_csv_writer_keeps_the_rows_a_spawned_process_wrote(tmp_path: Path) -> None:
    """ddp_spawn pickles the logger as the main process holds it, for fit and again for test:
    the test process's writer still has the column list of before the fit."""
    main = AppendingCSVLogger(tmp_path, name="csv", version="")
    main.log_hyperparams({"lr": 0.1})  # the main process made its writer before the fit
    fit = pickle.loads(pickle.dumps(main))
    fit.log_metrics({"train/loss": 1.5}, step=0)
    fit.log_metrics({"val/acc": 0.25}, step=1)
    fit.save()
    test = pickle.loads(pickle.dumps(main))
    test.log_metrics({"test/acc": 0.75}, step=2)
    test.save()
    rows = _rows(tmp_path)
    assert list(rows[0]) == ["step", "test/acc", "train/loss", "val/acc"]
    assert [(r["step"], r["train/loss"], r["val/acc"], r["test/acc"]) for r in rows] == [
        ("0", "1.5", "", ""),
        ("1", "", "0.25", ""),
        ("2", "", "", "0.75"),
    ]
    assert not list((tmp_path / "csv").glob(".*.tmp"))  # the widened header was renamed in


@pytest.mark.parametrize("logger", LOGGERS)
def test_every_logger_config_appends_the_csv(logger: str) -> None:
    cfg = compose_cfg([f"logger={logger}"])
    assert cfg.logger.csv._target_ == "asgml.run.csv_logger.AppendingCSVLogger"


# ------------------------------------------------------------------ loggers across resume
def _fit_and_resume(tmp_path: Path, overrides: list[str]) -> tuple[Path, dict, dict]:
    """A 1-epoch run, then resumed from its last.ckpt to 2 epochs; returns the run dir and
    its loggers.json after each part."""
    out = tmp_path / "run"
    first = [*overrides, "test=false", "trainer.log_every_n_steps=1"]
    run(compose_cfg([*first, "trainer.max_epochs=1"], output_dir=out))
    before = _rows(out)
    record = json.loads((out / "loggers.json").read_text())
    last = out / "checkpoints" / "last.ckpt"
    run(compose_cfg([*first, "trainer.max_epochs=2", f"ckpt_path={last}"], output_dir=out))
    after = _rows(out)
    assert _filled(before) < _filled(after)  # every row of the first part kept, more added
    assert {r["step"] for r in after if r.get("train/loss_step")} == {str(s) for s in range(6)}
    return out, record, json.loads((out / "loggers.json").read_text())


def test_a_resumed_mlflow_run_continues_the_same_mlflow_run(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    out, rec1, rec2 = _fit_and_resume(
        tmp_path, ["logger=mlflow", f"logger.mlflow.save_dir={store}"]
    )
    run_id = rec1["mlflow"]["run_id"]
    assert rec2["mlflow"]["run_id"] == run_id
    runs = [p for p in store.glob("*/*") if p.is_dir()]
    assert [p.name for p in runs] == [run_id]  # one MLflow run, not two
    history = (runs[0] / "metrics" / "val" / "acc").read_text().split("\n")
    assert [line.split()[-1] for line in history if line] == ["2", "5"]  # both epochs
    assert (runs[0] / "tags" / "asgml.resumed_from").read_text().endswith("last.ckpt")


def test_a_resumed_tensorboard_run_writes_into_the_same_log_dir(tmp_path: Path) -> None:
    if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        pytest.skip("needs the tensorboard extra")
    out, rec1, rec2 = _fit_and_resume(tmp_path, ["logger=tensorboard"])
    assert rec1["tensorboard"] == rec2["tensorboard"] == {"log_dir": str(out / "tensorboard")}
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_a_resume_reads_the_wandb_run_back_from_the_run_dir(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    from asgml.run.logger_runs import continue_logger_runs

    cfg = compose_cfg(["logger=wandb"], output_dir=tmp_path)
    (tmp_path / "loggers.json").write_text(json.dumps({"wandb": {"id": "abc123"}}))
    assert continue_logger_runs(cfg, tmp_path) == {}  # not a resume: a new wandb run
    cfg = compose_cfg(
        ["logger=wandb", f"ckpt_path={tmp_path}/checkpoints/last.ckpt"], output_dir=tmp_path
    )
    assert continue_logger_runs(cfg, tmp_path) == {"wandb": "abc123"}
    assert (cfg.logger.wandb.id, cfg.logger.wandb.resume) == ("abc123", "allow")
    cfg = compose_cfg(  # an id given on the command line wins
        ["logger=wandb", "+logger.wandb.id=mine", f"ckpt_path={tmp_path}/x.ckpt"],
        output_dir=tmp_path,
    )
    assert continue_logger_runs(cfg, tmp_path) == {} and cfg.logger.wandb.id == "mine"


# ----------------------------------------------------------------- run directory guards
def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seams") / "finished"
    r = _cli(out, *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["method=boost"],
        ["ckpt_path={run}/checkpoints/nosuch.ckpt"],
        ["train=false", "ckpt_path={run}/checkpoints/best.ckpt"],
    ],
    ids=["same", "other-method", "missing-ckpt", "eval-only"],
)
def test_a_used_run_dir_is_refused_before_anything_is_written(
    finished_run: Path, overrides: list[str]
) -> None:
    before = _hashes(finished_run)
    assert "metrics.json" in before and ".hydra/config.yaml" in before
    r = _cli(finished_run, *FAST, *(o.format(run=finished_run) for o in overrides), timeout=120)
    assert r.returncode == 1, r.stderr[-3000:]
    assert str(finished_run) in r.stderr
    assert _hashes(finished_run) == before  # byte-identical, nothing added


def test_an_evaluation_only_run_writes_eval_metrics_json(tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    run(compose_cfg([], output_dir=trained))
    best = trained / "checkpoints" / "best.ckpt"
    out = tmp_path / "eval"
    res = run(compose_cfg(["train=false", f"ckpt_path={best}"], output_dir=out))
    assert not (out / "metrics.json").exists()
    written = json.loads((out / "eval_metrics.json").read_text())
    assert written["metrics"]["test/acc"] == res["metrics"]["test/acc"]
    with pytest.raises(FileExistsError, match="evaluation-only"):  # into the trained run: no
        run(compose_cfg(["train=false", f"ckpt_path={best}"], output_dir=trained))


# ------------------------------------------------------------------- no silent discard
@pytest.mark.parametrize("override", ["trainer.max_epochs=0", "trainer.limit_val_batches=0"])
def test_a_run_with_nothing_validated_writes_its_metrics(tmp_path: Path, override: str) -> None:
    res = run(compose_cfg([override], output_dir=tmp_path))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["optimized_value"] is None and written["val_acc_best"] is None
    assert written["metrics"]["test/acc"] == res["metrics"]["test/acc"]
    assert 0.0 <= written["metrics"]["test/acc"] <= 1.0
    with pytest.raises(ValueError, match="val/nosuch"):  # a misspelt metric still fails
        run(compose_cfg(["optimized_metric=val/nosuch"], output_dir=tmp_path / "typo"))


# the synthetic FAST run: 3 training batches per epoch (steps 0-2, 3-5, 6-8), 2 validation ones
SIG_RUN = [*FAST, "trainer.max_epochs=3", "trainer.log_every_n_steps=1", "test=false"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seams") / "full"
    r = _cli(out, *SIG_RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _same_state(a: Path, b: Path) -> None:
    x = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    y = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    assert x["global_step"] == y["global_step"] == 9
    assert all(torch.equal(v, y["state_dict"][k]) for k, v in x["state_dict"].items())


@pytest.mark.slow
def test_sigterm_in_an_epochs_last_batch_keeps_its_validation_rows(
    uninterrupted: Path, tmp_path: Path
) -> None:
    """SIGTERM during the last training batch of epoch 0 (step 2): the epoch's validation
    runs, last.ckpt holds the whole epoch, the resumed CSV equals the uninterrupted one."""
    r = _cli(tmp_path, *SIG_RUN, _signal_at(2, signal.SIGTERM))
    assert r.returncode == 143, r.stderr[-3000:]
    assert {r["step"] for r in _rows(tmp_path) if r["val/acc"]} == {"2"}
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    r = _cli(tmp_path, *SIG_RUN, f"ckpt_path={last}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(map(sorted, map(dict.items, _rows(tmp_path)))) == sorted(
        map(sorted, map(dict.items, _rows(uninterrupted)))
    )
    _same_state(uninterrupted, tmp_path)


@pytest.mark.slow
def test_ctrl_c_saves_last_ckpt_like_sigterm(uninterrupted: Path, tmp_path: Path) -> None:
    r = _cli(tmp_path, *SIG_RUN, _signal_at(4, signal.SIGINT))
    assert r.returncode == 130, r.stderr[-3000:]
    assert "Ctrl-C at step 5" in r.stdout + r.stderr
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5  # the batch in progress
    assert not (tmp_path / "metrics.json").exists()
    r = _cli(tmp_path, *SIG_RUN, f"ckpt_path={last}")
    assert r.returncode == 0, r.stderr[-3000:]
    _same_state(uninterrupted, tmp_path)


# ------------------------------------------------------------------------ killed sweep
def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_sigtermed_joblib_sweep_stops_its_workers_and_reports_the_finished_jobs(
    tmp_path: Path,
) -> None:
    """Two parallel jobs: one of 1 epoch, one of 200. SIGTERM to the sweep's process group
    once the short job has finished and the long one has a last.ckpt: the launcher exits 143
    once its jobs stopped and the report is written, no process of the sweep outlives it, the
    long job saved its state and the report lists the finished job."""
    import time

    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "asgml.train",
        "-m",
        "launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        "hydra.callbacks.sweep_report.plots=false",
        "hydra.callbacks.sweep_report.stop_grace_s=20",
        *[o for o in FAST if not o.startswith("trainer.max_epochs")],
        "trainer.max_epochs=1,200",
        "test=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and proc.poll() is None:
            if (sweep / "0" / "metrics.json").exists() and (
                sweep / "1" / "checkpoints" / "last.ckpt"
            ).exists():
                break
            time.sleep(1)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        killed_at = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        exited_after = time.monotonic() - killed_at
        assert proc.returncode == 143, out[-3000:]
        # the launcher waits for its jobs (at most stop_grace_s), then writes the report in
        # a subprocess; when it is gone, nothing of the sweep is left
        assert exited_after < 90, exited_after
        time.sleep(2)
        assert not _group_alive(proc.pid), "a process of the killed sweep outlived the launcher"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert "SIGTERM: the running jobs save last.ckpt" in out
    step = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step > 3  # the long job's state at the SIGTERM, not only its first epoch
    assert not (sweep / "1" / "metrics.json").exists()
    assert (sweep / "report.md").is_file()
    with open(sweep / "runs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1  # the finished job


# ------------------------------------------------------------------- DDP through the CLI
DDP_RUN = [
    *[o for o in FAST if not o.startswith("trainer.max_epochs")],
    "trainer=ddp_cpu",
    "trainer.devices=2",
    "trainer.log_every_n_steps=1",
]


def _complete_history(run_dir: Path, epochs: int) -> None:
    rows = _rows(run_dir)
    assert sorted(r["step"] for r in rows if r["val/acc"]) == [
        str(3 * e + 2) for e in range(epochs)
    ]
    assert len([r for r in rows if r["test/acc"]]) >= 1
    assert {r["step"] for r in rows if r["train/loss_step"]} >= {str(s) for s in range(3 * epochs)}


@pytest.mark.slow
def test_ddp_spawn_with_wandb_runs_fit_test_and_a_resume(tmp_path: Path) -> None:
    """trainer=ddp_cpu (ddp_spawn: the logger is pickled into a fit and a test process)."""
    pytest.importorskip("wandb")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    r = _cli(tmp_path, *DDP_RUN, "logger=wandb", "trainer.max_epochs=2", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    _complete_history(tmp_path, 2)
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["test/acc"] >= 0
    first = json.loads((tmp_path / "loggers.json").read_text())["wandb"]["id"]
    before = _filled(_rows(tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    r = _cli(
        tmp_path, *DDP_RUN, "logger=wandb", "trainer.max_epochs=3", f"ckpt_path={last}", env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert before < _filled(_rows(tmp_path))
    _complete_history(tmp_path, 3)
    assert json.loads((tmp_path / "loggers.json").read_text())["wandb"]["id"] == first
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{first}") for name in runs)  # one run


@pytest.mark.slow
def test_ddp_strategy_with_mlflow_runs_fit_and_test(tmp_path: Path) -> None:
    """trainer=ddp_cpu trainer.strategy=ddp (subprocess ranks re-run the command line)."""
    pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    r = _cli(
        tmp_path / "run",
        *DDP_RUN,
        "trainer.strategy=ddp",
        "logger=mlflow",
        f"logger.mlflow.save_dir={store}",
        "trainer.max_epochs=2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    _complete_history(tmp_path / "run", 2)
    run_id = json.loads((tmp_path / "run" / "loggers.json").read_text())["mlflow"]["run_id"]
    assert [p.name for p in store.glob("*/*") if p.is_dir()] == [run_id]
