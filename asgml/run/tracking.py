"""Experiment trackers: the loggers of ``conf/logger/`` and what asgml sends them.

* `WandbLogger`: Lightning's ``WandbLogger`` with the run's **group** built from the
  dataset, the method and the keys a multirun sweeps (`sweep_group`; the seed never,
  so the seeds of one configuration land in one group), the preset's ``tags:`` added to the
  logger's own, and without the ``anonymous`` argument Lightning always passes (wandb >= 0.19
  warns that it has no effect).
* `build_loggers`: instantiates ``cfg.logger.*``; an optional tracker whose package
  is missing (TensorBoard, MLflow) fails with the pip extra that installs it.
* `log_run_media`: at the end of a run, the run's report table (a ``wandb.Table``),
  its figures and, optionally, each modality's Shapley value (`asgml.eval`) as wandb
  media. `log_report_to_wandb` does the same for a sweep's report
  (`asgml.run.sweep_report`).

The calls into `asgml.report` are in one function, `report_artifacts`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from omegaconf import DictConfig, OmegaConf

from asgml import report
from asgml.run.evaluate import evaluate_checkpoint, write_eval

log = logging.getLogger("asgml")

# override keys never part of a wandb group: they vary inside one configuration (seed), are
# already in the group's base name (the dataset and method choices), or say where files go
GROUP_EXCLUDED_KEYS = ("seed", "dataset", "method", "data_dir", "ckpt_path")
GROUP_EXCLUDED_PREFIXES = ("paths.", "hydra.")
WANDB_GROUP_MAX = 128  # wandb's limit on a group name

# `_target_` of an optional tracker -> (importable modules, any one suffices; pip extra)
OPTIONAL_LOGGERS: dict[str, tuple[tuple[str, ...], str]] = {
    "lightning.pytorch.loggers.TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
    "lightning.pytorch.loggers.MLFlowLogger": (("mlflow",), "mlflow"),
}


# ------------------------------------------------------------------------------ group
def _excluded(key: str) -> bool:
    key = key.lstrip("+~").split("@", 1)[0]
    return key in GROUP_EXCLUDED_KEYS or key.startswith(GROUP_EXCLUDED_PREFIXES)


def sweep_group(base: str, job_overrides: Sequence[str], swept_keys: Iterable[str]) -> str:
    """``base`` plus ``-key=value,...`` for the job's overrides of ``swept_keys`` (in the
    job's override order), leaving out `GROUP_EXCLUDED_KEYS` (the seed above all)
    and `GROUP_EXCLUDED_PREFIXES`.

    A name longer than wandb's 128 characters is cut and ends with a hash of the whole.
    """
    swept = {k.lstrip("+~") for k in swept_keys}
    parsed = OverridesParser.create().parse_overrides(list(job_overrides))
    parts = [
        str(o.input_line).lstrip("+~")
        for o in parsed
        if o.key_or_group in swept and not _excluded(o.key_or_group)
    ]
    name = f"{base}-{','.join(parts)}" if parts else base
    if len(name) > WANDB_GROUP_MAX:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: WANDB_GROUP_MAX - 9]}~{digest}"
    return name


def swept_keys(sweeper_params: Mapping[str, Any], sweep_overrides: Sequence[str]) -> list[str]:
    """The keys a multirun sweeps: the sweeper's ``params`` (a preset's
    ``hydra.sweeper.params``) and every sweep override of the command line (``a=1,2``)."""
    keys = [str(k) for k in sweeper_params]
    for o in OverridesParser.create().parse_overrides(list(sweep_overrides)):
        if o.is_sweep_override() and o.key_or_group not in keys:
            keys.append(o.key_or_group)
    return keys


def current_sweep() -> tuple[list[str], list[str]]:
    """``(job overrides, swept keys)`` of the running Hydra multirun job; ``([], [])``
    outside one. The command line of the sweep is read from ``<sweep dir>/multirun.yaml``
    (Hydra writes it before the jobs start); without it every job override counts as swept."""
    if not HydraConfig.initialized():
        return [], []
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return [], []
    job = [str(o) for o in hc.overrides.task]
    params = hc.sweeper.get("params") or {}
    multirun_yaml = Path(str(hc.sweep.dir)) / "multirun.yaml"
    if multirun_yaml.is_file():
        task = OmegaConf.load(multirun_yaml).hydra.overrides.task
        return job, swept_keys(params, [str(o) for o in task])
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(job)]
    return job, swept_keys(params, []) + keys


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with the group and tags asgml's runs need.

    Args:
        group: the group's base name (``<dataset>-<method>``).
        sweep_keys_in_group: append the swept keys of a multirun to ``group``
            (`sweep_group`); the seed is never appended.
        tags: the logger's own tags.
        preset_tags: more tags (the preset's ``tags:``), appended without duplicates.
        media: what `log_run_media` logs at the end of the run, ``{table, figures,
            shapley}`` (each on unless set false).
        **kwargs: passed to Lightning's ``WandbLogger`` (and on to ``wandb.init``).
    """

    def __init__(
        self,
        group: str | None = None,
        sweep_keys_in_group: bool = True,
        tags: Sequence[str] | None = None,
        preset_tags: Sequence[str] | None = None,
        media: Mapping[str, bool] | None = None,
        **kwargs: Any,
    ) -> None:
        if group is not None and sweep_keys_in_group:
            group = sweep_group(group, *current_sweep())
        all_tags = list(dict.fromkeys(str(t) for t in [*(tags or []), *(preset_tags or [])]))
        super().__init__(group=group, tags=all_tags, **kwargs)
        # Lightning always passes anonymous=None; wandb >= 0.19 warns about any value
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        self.group = group
        self.tags = all_tags
        self.media = {"table": True, "figures": True, "shapley": True, **dict(media or {})}


# ---------------------------------------------------------------------------- loggers
def check_optional_logger(key: str, target: str) -> None:
    """Fail with the pip extra to install when the tracker behind ``target`` is missing."""
    if target not in OPTIONAL_LOGGERS:
        return
    modules, extra = OPTIONAL_LOGGERS[target]
    if not any(importlib.util.find_spec(m) is not None for m in modules):
        raise ModuleNotFoundError(
            f"logger.{key}: {target} needs the `{modules[0]}` package, which is not installed; "
            f"install it with `pip install 'asgml[{extra}]'` (or `pip install {modules[0]}`)"
        )


def build_loggers(cfg: DictConfig) -> list[Any]:
    """One Lightning logger per ``cfg.logger.<key>`` that has a ``_target_``."""
    out = []
    for key, c in (cfg.get("logger") or {}).items():
        if isinstance(c, DictConfig) and "_target_" in c:
            check_optional_logger(str(key), str(c._target_))
            if str(c._target_).endswith("MLFlowLogger") and not c.get("tracking_uri"):
                # the local store of conf/logger/mlflow.yaml: MLflow >= 3 refuses a file
                # store unless this is set (it stays readable by `mlflow ui`)
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            out.append(instantiate(c))
    return out


def wandb_loggers(loggers: Iterable[Any]) -> list[_LightningWandbLogger]:
    return [lg for lg in loggers if isinstance(lg, _LightningWandbLogger)]


# ------------------------------------------------------------------------------ media
def report_artifacts(
    root: str | Path, out_dir: str | Path, with_shapley: bool = False, plots: bool = True
) -> dict[str, Any]:
    """The report of the runs under ``root``, written to ``out_dir``.

    Returns ``{"markdown": str, "table": DataFrame (one row per group), "figures": {stem:
    png path}, "files": [paths], "warnings": [texts]}``. The one place this module calls `asgml.report`.
    """
    rep = report.write_report(root, out_dir, with_shapley=with_shapley, plots=plots)
    pngs = [Path(f) for f in rep["files"] if str(f).endswith(".png")]
    return {
        "markdown": rep["table"] + "\n\n" + rep.get("note", ""),
        "table": rep["summary"],
        "figures": {p.stem: p for p in pngs},
        "files": [Path(f) for f in rep["files"]],
        "warnings": list(rep.get("warnings") or []),
    }


def log_report_to_wandb(
    run: Any,
    artifacts: Mapping[str, Any],
    prefix: str = "report",
    table: bool = True,
    figures: bool = True,
) -> None:
    """Log `report_artifacts` output to an open wandb ``run``: the table as a
    ``wandb.Table`` (``<prefix>/table``) and each figure as a ``wandb.Image``
    (``<prefix>/<stem>``)."""
    import wandb  # optional at run time: only with a wandb logger (import cost)

    media: dict[str, Any] = {}
    if table:
        frame = artifacts["table"]
        frame = frame.astype(object).where(frame.notna(), None)
        media[f"{prefix}/table"] = wandb.Table(dataframe=frame)
    if figures:
        for stem, path in artifacts["figures"].items():
            media[f"{prefix}/{stem}"] = wandb.Image(str(path), caption=stem)
    if media:
        run.log(media)


def log_shapley_to_wandb(run: Any, result: Mapping[str, Any]) -> None:
    """Each modality's Shapley value and share (`asgml.run.evaluate.evaluate_checkpoint`
    output) as a ``wandb.Table`` (``shapley/table``) and summary values."""
    import wandb  # optional at run time: only with a wandb logger (import cost)

    rows = [
        [m, float(v), float(result["shapley_share"][m]), float(result["metrics"][f"acc_{m}"])]
        for m, v in result["shapley"].items()
    ]
    table = wandb.Table(columns=["modality", "shapley", "share", "unimodal_acc"], data=rows)
    run.log({"shapley/table": table})
    for m, v in result["shapley"].items():
        run.summary[f"shapley/{m}"] = float(v)


def log_run_media(loggers: Iterable[Any], out_dir: Path, best_checkpoint: str | None) -> None:
    """At the end of a run, to every asgml `WandbLogger` as its ``media`` says: the
    run's report (table and figures, written to ``<run dir>/report/``) and the Shapley values
    of the best checkpoint on the test split (also written to ``<run dir>/eval.json``)."""
    targets = [lg for lg in wandb_loggers(loggers) if isinstance(lg, WandbLogger)]
    if not targets:
        return
    wanted = {k: any(lg.media[k] for lg in targets) for k in ("table", "figures", "shapley")}
    result = None
    if wanted["shapley"] and best_checkpoint is not None:
        result = evaluate_checkpoint(out_dir / str(best_checkpoint), split="test")
        write_eval(result)
    artifacts = None
    if wanted["table"] or wanted["figures"]:
        artifacts = report_artifacts(
            out_dir, out_dir / "report", result is not None, plots=wanted["figures"]
        )
    for lg in targets:
        run = lg.experiment
        if result is not None and lg.media["shapley"]:
            log_shapley_to_wandb(run, result)
        if artifacts is not None:
            log_report_to_wandb(
                run, artifacts, table=lg.media["table"], figures=lg.media["figures"]
            )


def log_sweep_report_to_wandb(
    wandb_cfg: Mapping[str, Any], artifacts: Mapping[str, Any], sweep_dir: Path
) -> None:
    """Log a sweep's report (`report_artifacts`) to one summary wandb run in the
    project, entity and mode of the sweep's wandb logger (job type ``sweep-report``)."""
    import wandb  # optional at run time: only with a wandb logger (import cost)

    run = wandb.init(
        project=wandb_cfg.get("project"),
        entity=wandb_cfg.get("entity"),
        mode=wandb_cfg.get("mode"),
        dir=str(sweep_dir),
        name=f"report-{sweep_dir.name}",
        group=f"sweep-{sweep_dir.name}",
        job_type="sweep-report",
        tags=["sweep-report"],
        config={"sweep_dir": str(sweep_dir)},
    )
    try:
        log_report_to_wandb(run, artifacts)
    finally:
        run.finish()
