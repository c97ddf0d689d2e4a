"""Run directories: unique default names, and no run written over another.

* Default names (``conf/hydra/default.yaml``) end in ``${asgml.stamp:}``: the start time to
  the microsecond and the process id, so two runs started in the same second (a job array,
  a loop) get two directories.
* A run directory that already holds a run is refused at start-up, unless this run resumes
  from it (``ckpt_path`` inside it, e.g. ``<run>/checkpoints/last.ckpt``, or Lightning's
  ``last`` / ``hpc``, or a SLURM requeue finding its ``hpc_ckpt_*.ckpt`` there).
  `RunDirGuard` (a Hydra callback) checks at ``on_run_start``, before Hydra creates
  the directory or writes ``.hydra/`` into it, and stops the process (``SystemExit``, status
  1): Hydra turns an *exception* raised by a callback into a warning and goes on writing, so
  the guard must not raise one. `check_run_dir` is also called by
  `asgml.run.training.run` (multirun jobs, the Python API).
* A resume whose checkpoint inside the run directory does not exist is refused before
  anything is written (Hydra would rewrite ``.hydra/`` and the loggers ``hparams.yaml``,
  then Lightning would fail).
* An evaluation-only run (``train=false``) never runs in a directory that holds a run: it
  would replace that run's ``.hydra/`` config. It runs in a new directory and writes
  ``eval_metrics.json`` there (`metrics_file_name`), never a training run's
  ``metrics.json``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from typing_extensions import override


class RunDirectoryError(FileExistsError):
    """The run directory already holds another run."""


def run_stamp() -> str:
    """``YYYY-mm-dd_HH-MM-SS_ffffff-p<pid>``: unique per process and microsecond."""
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S_%f}-p{os.getpid()}"


def resumes_from(run_dir: Path, ckpt_path: Any) -> bool:
    """Whether ``ckpt_path`` resumes the run in ``run_dir`` (a checkpoint inside it, or
    Lightning's ``last``/``hpc``, which look in this run's checkpoint directories)."""
    if ckpt_path is None or str(ckpt_path) in ("", "None", "null"):
        # a SLURM requeue: Lightning resumes from the hpc checkpoint it finds here
        return bool(os.environ.get("SLURM_JOB_ID")) and any(run_dir.glob("hpc_ckpt_*.ckpt"))
    if str(ckpt_path) in ("last", "hpc"):
        return True
    try:
        Path(ckpt_path).resolve().relative_to(run_dir.resolve())
    except ValueError:
        return False
    return True


def process_rank() -> int:
    """This process's global rank from the launcher's environment (0 outside DDP), read the
    way Lightning's ``rank_zero_only`` reads it, without importing Lightning."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 0


def check_run_dir(run_dir: str | os.PathLike, ckpt_path: Any, own: tuple[str, ...] = ()) -> None:
    """Refuse a non-empty ``run_dir`` unless this run resumes from it (``ckpt_path``).

    Only rank 0 checks: under DDP the other ranks share rank 0's directory (Lightning
    relaunches them with ``hydra.run.dir`` set to it), which rank 0 may already have written.

    Args:
        run_dir: the run directory.
        ckpt_path: the run's ``ckpt_path``.
        own: entries this run already wrote itself (Hydra's ``.hydra`` and job log).
    """
    path = Path(run_dir)
    if process_rank() != 0 or not path.is_dir():
        return
    found = sorted(p.name for p in path.iterdir() if p.name not in own)
    if not found or resumes_from(path, ckpt_path):
        return
    shown = ", ".join(found[:6]) + (" ..." if len(found) > 6 else "")
    raise RunDirectoryError(
        f"run directory {str(path)!r} already holds a run ({shown}); refusing to write over "
        "it. Choose another directory (drop hydra.run.dir=..., or set a new one), or resume "
        f"that run with ckpt_path={path / 'checkpoints' / 'last.ckpt'}"
    )


def _is_lightning_key(ckpt_path: Any) -> bool:
    return str(ckpt_path) in ("last", "hpc", "best")


def _is_remote(ckpt_path: Any) -> bool:
    return "://" in str(ckpt_path) and not str(ckpt_path).startswith("file://")


def check_run_start(
    run_dir: str | os.PathLike, ckpt_path: Any, train: bool = True, own: tuple[str, ...] = ()
) -> None:
    """Everything `RunDirGuard` checks before a run writes into ``run_dir``:
    `check_run_dir`, a missing checkpoint of a resume into ``run_dir``, and an
    evaluation-only run (``train=false``) into a directory that holds a run."""
    path = Path(run_dir)
    if process_rank() != 0 or not path.is_dir():
        return
    found = sorted(p.name for p in path.iterdir() if p.name not in own)
    if not found:
        return
    if not train:
        raise RunDirectoryError(
            f"run directory {str(path)!r} already holds a run; an evaluation-only run "
            "(train=false) would replace its .hydra/ config. Drop hydra.run.dir=... (a new "
            "directory is made) or choose a new one; the evaluation writes eval_metrics.json "
            "there"
        )
    check_run_dir(path, ckpt_path, own)
    has_ckpt = ckpt_path is not None and str(ckpt_path) not in ("", "None", "null")
    if has_ckpt and not _is_lightning_key(ckpt_path) and not _is_remote(ckpt_path):
        if not Path(ckpt_path).is_file():
            raise RunDirectoryError(
                f"ckpt_path={ckpt_path}: no such checkpoint file; nothing in run directory "
                f"{str(path)!r} was touched. Its checkpoints: "
                + (
                    ", ".join(sorted(p.name for p in (path / "checkpoints").glob("*.ckpt")))
                    or "none"
                )
            )


def metrics_file_name(train: bool) -> str:
    """``metrics.json`` for a training run, ``eval_metrics.json`` for an evaluation-only one
    (``train=false``), so an evaluation never replaces a training run's results."""
    return "metrics.json" if train else "eval_metrics.json"


class RunDirGuard(Callback):
    """Hydra callback: `check_run_start` on ``hydra.run.dir`` before Hydra creates it or
    writes into it (single runs; multirun jobs are checked by
    `asgml.run.training.run`). A refusal ends the process with status 1 and the reason
    on stderr, Hydra having written nothing."""

    @override
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = OmegaConf.select(config, "hydra.run.dir")
        if run_dir is None:
            return
        try:
            check_run_start(
                run_dir,
                OmegaConf.select(config, "ckpt_path", default=None),
                bool(OmegaConf.select(config, "train", default=True)),
            )
        except RunDirectoryError as err:
            # not an exception: Hydra would turn it into a warning and write .hydra/ anyway
            raise SystemExit(f"asgml: {err}") from err
