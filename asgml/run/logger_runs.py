"""A resumed run continues its trackers' runs: wandb, TensorBoard and MLflow.

At start-up rank 0 records in ``<run dir>/loggers.json`` which tracker run this run writes
to: the wandb run ``id``, the MLflow ``run_id`` and the TensorBoard log directory. A run
that resumes from a checkpoint inside its own directory (``hydra.run.dir=<run>
ckpt_path=<run>/checkpoints/last.ckpt``) reads the record back before its loggers are built
and passes it on: wandb gets ``id=<id>`` and ``resume="allow"`` (``wandb.init``), so the
dashboard shows one run whose history continues; MLflow's logger gets ``run_id=<id>``
(Lightning's ``MLFlowLogger`` then logs into that run instead of starting one). TensorBoard's
configs use a fixed ``version`` (``<run dir>/tensorboard``), so the resumed run writes its
event files next to the first ones; the record names the directory, and a resume whose
TensorBoard directory differs is warned about. Keys the user set (``logger.wandb.id=...``)
win over the record. The CSV history is kept by `asgml.run.csv_logger` (every logger
config appends ``csv/metrics.csv``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, open_dict

from asgml.run.rundir import process_rank, resumes_from

log = logging.getLogger("asgml")

RECORD = "loggers.json"

# `_target_` suffix -> (kind, the logger argument that names its run)
_KINDS = {"WandbLogger": ("wandb", "id"), "MLFlowLogger": ("mlflow", "run_id")}


def _kind(target: str) -> tuple[str, str] | None:
    return _KINDS.get(str(target).rsplit(".", 1)[-1])


def read_record(run_dir: Path) -> dict[str, Any]:
    """The tracker runs recorded in ``run_dir`` (``{}`` when none); a damaged record is a
    warning (the resumed run then starts new tracker runs)."""
    path = run_dir / RECORD
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s could not be read (%r): the trackers start new runs", path, err)
        return {}
    if not isinstance(data, dict):
        log.warning("%s does not hold a mapping: the trackers start new runs", path)
        return {}
    return data


def continue_logger_runs(cfg: DictConfig, run_dir: Path) -> dict[str, str]:
    """When ``cfg`` resumes the run in ``run_dir``, point ``cfg.logger``'s wandb and MLflow
    configs at the recorded runs (in place). Returns ``{logger key: run id}`` of what it set."""
    loggers = cfg.get("logger") or {}
    if not cfg.get("train", True) or not resumes_from(run_dir, cfg.get("ckpt_path")):
        return {}
    record = read_record(run_dir)
    done: dict[str, str] = {}
    for key, node in loggers.items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        kind = _kind(node._target_)
        if kind is None:
            continue
        name, arg = kind
        run_id = (record.get(name) or {}).get(arg)
        if not run_id or node.get(arg):
            continue
        with open_dict(node):
            node[arg] = str(run_id)
            if name == "wandb":
                node.resume = "allow"
        done[str(key)] = str(run_id)
        log.info("resume: logger.%s continues the %s run %s", key, name, run_id)
    return done


def _run_of(logger: Any) -> tuple[str, dict[str, str]] | None:
    if isinstance(logger, WandbLogger):
        return "wandb", {"id": str(logger.experiment.id)}
    if isinstance(logger, MLFlowLogger):
        return "mlflow", {"run_id": str(logger.run_id)}
    if isinstance(logger, TensorBoardLogger):
        return "tensorboard", {"log_dir": str(logger.log_dir).rstrip("/")}
    return None


def log_hyperparams(loggers: Iterable[Any], params: dict[str, Any], continued: bool) -> None:
    """``logger.log_hyperparams(params)`` for each logger; a continued MLflow run (a resume,
    `continue_logger_runs`) keeps the parameters it was started with (MLflow refuses to
    change a logged parameter, and a resume changes ``ckpt_path``) and gets the tag
    ``asgml.resumed_from`` = the checkpoint instead; the resumed run's full config is in its
    ``.hydra/config.yaml``."""
    for lg in loggers:
        if continued and isinstance(lg, MLFlowLogger):
            cfg = params.get("cfg") or {}
            lg.experiment.set_tag(lg.run_id, "asgml.resumed_from", str(cfg.get("ckpt_path")))
            continue
        lg.log_hyperparams(params)


def record_logger_runs(loggers: Iterable[Any], run_dir: Path) -> None:
    """Write ``<run dir>/loggers.json`` (rank 0) naming each tracker's run; warn when a
    resumed TensorBoard logger writes to another directory than the recorded one."""
    if process_rank() != 0:
        return
    record = read_record(run_dir)
    new = dict(record)
    for lg in loggers:
        found = _run_of(lg)
        if found is None:
            continue
        name, value = found
        old = record.get(name)
        if old and old != value:
            log.warning(
                "logger %s: this run writes to %s, the recorded run was %s (%s)",
                name,
                value,
                old,
                run_dir / RECORD,
            )
        new[name] = value
    if new and new != record:
        tmp = run_dir / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(new, indent=2))
        tmp.replace(run_dir / RECORD)
