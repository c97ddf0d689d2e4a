"""One training run from a composed config: `run` (what ``python -m asgml.train`` calls).

Trains, validates each epoch, tests the best checkpoint, prints a summary and writes
``metrics.json`` (test metrics + resolved config) in the run directory. The command-line
entry point is `asgml.train`, kept free of torch/Lightning imports so ``--help`` and
shell completion answer at once; this module holds everything heavy.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from asgml.run.build import build
from asgml.run.checkpointing import AtomicCheckpointIO
from asgml.run.ckpt_source import settle_ckpt_path
from asgml.run.config import model_option_overrides, to_container, validate_config
from asgml.run.feedback import block, quiet_known_noise, startup_lines
from asgml.run.interrupt import SIGINT_EXIT_CODE, interrupted_by_ctrl_c
from asgml.run.logger_runs import continue_logger_runs, log_hyperparams, record_logger_runs
from asgml.run.outcome import check_trained
from asgml.run.provenance import provenance
from asgml.run.resume import check_resume, with_method_modules
from asgml.run.rundir import check_run_start, metrics_file_name
from asgml.run.tracking import build_loggers, log_run_media, wandb_loggers

__all__ = ["build_loggers", "optimized_value", "print_summary", "run"]

log = logging.getLogger("asgml")


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float | torch.Tensor)}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train/test as configured; returns the dict written to ``metrics.json``."""
    quiet_known_noise()
    validate_config(cfg)
    settle_ckpt_path(cfg)  # a remote ckpt_path refused (or fetched); its stored config screened
    if cfg.get("print_config"):
        print(OmegaConf.to_yaml(cfg, resolve=True))
    out_dir = Path(cfg.paths.output_dir)
    # Hydra wrote .hydra/ and the job log for this run; anything else is another run's
    check_run_start(
        out_dir,
        cfg.get("ckpt_path"),
        bool(cfg.get("train", True)),
        own=(".hydra", *(p.name for p in out_dir.glob("*.log"))),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    continued = continue_logger_runs(cfg, out_dir)  # a resume continues its wandb/MLflow run
    loggers = build_loggers(cfg)
    for key, (value, default) in model_option_overrides(cfg).items():
        log.info("model.%s=%s overrides method.model_defaults.%s=%s", key, value, key, default)
    L.seed_everything(cfg.seed, workers=True)

    datamodule, model, callbacks = build(cfg)
    datamodule.loader_seed = int(cfg.seed)  # the train loader's shuffle and item seeds
    if cfg.get("ckpt_path") and cfg.get("train", True):
        # refuses a checkpoint of another dataset/method/seed/shape
        check_resume(cfg, with_method_modules(model, callbacks))
    if cfg.select_on == "test":
        log.warning(
            "select_on=test: the best epoch is chosen on the TEST split (official-script mode)"
        )
        datamodule.val_dataloader = datamodule.test_dataloader

    model.run_config = to_container(cfg)

    log_hyperparams(loggers, {"cfg": to_container(cfg)}, continued=bool(continued))
    record_logger_runs(loggers, out_dir)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    lines = startup_lines(cfg, out_dir, loggers, trainer)
    log.info("%s", block(f"asgml {cfg.get('task_name', 'train')}", lines))
    use_atomic_checkpoints(trainer)

    result: dict[str, Any] = {}
    skipped: int | None = None
    try:
        if cfg.get("train", True):
            trainer.fit(
                model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True
            )
            skipped = model.skipped_nonfinite_steps  # testing best.ckpt reloads its count
            result.update(
                {f"fit/{k}": v for k, v in _scalar_metrics(trainer.callback_metrics).items()}
            )
        if cfg.get("test", True):
            ckpt = (
                "best"
                if cfg.get("train", True) and trainer.checkpoint_callback
                else cfg.get("ckpt_path")
            )
            if ckpt == "best":
                # the path itself, not "best": with best and last checkpoint callbacks Lightning
                # would warn that it picks the first one (the best one is the first, see conf)
                ckpt = trainer.checkpoint_callback.best_model_path or None
                if ckpt is None:
                    log.warning("no best checkpoint was saved; testing the current weights")
            test_metrics = trainer.test(
                model, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True
            )
            result.update(_scalar_metrics(test_metrics[0] if test_metrics else {}))
    except SIGTERMException as e:
        _finish_wandb(loggers)
        exit_on_sigterm(trainer, out_dir, e)
    except BaseException:
        _finish_wandb(loggers)
        raise

    best_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    metrics = {
        "metrics": {k: v for k, v in result.items() if k.startswith("test/")},
        "val_acc_best": result.get("fit/val/acc_best"),
        "optimized_metric": cfg.get("optimized_metric"),
        "optimized_value": optimized_value(cfg, result),
        "best_checkpoint": os.path.relpath(best_path, out_dir) if best_path else None,
        "skipped_nonfinite_steps": model.skipped_nonfinite_steps if skipped is None else skipped,
        # items the datamodule skipped or repaired: {split: {kind: {count, examples}}}
        "data_issues": _data_issues(datamodule),
        # the code that made the numbers: git commit (+ dirty flag) and package versions
        "provenance": provenance(),
        "config": to_container(cfg),
    }
    if trainer.is_global_zero:
        # an evaluation-only run (train=false) writes eval_metrics.json, never metrics.json
        name = metrics_file_name(bool(cfg.get("train", True)))
        (out_dir / name).write_text(json.dumps(metrics, indent=2, default=str))
        print_summary(cfg, metrics, out_dir)
        try:
            log_run_media(loggers, out_dir, metrics["best_checkpoint"])
        except Exception as err:  # the run's numbers are written; media are extra
            log.warning("could not log the run's table/figures to wandb: %r", err)
        finally:
            _finish_wandb(loggers)
    else:
        _finish_wandb(loggers)
    check_trained(trainer, skipped, out_dir)  # every step skipped as non-finite: exit non-zero
    return metrics


def _data_issues(datamodule: Any) -> dict[str, Any]:
    issues = getattr(datamodule, "data_issues", None)
    return issues.as_dict() if issues is not None else {}


SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process it terminated


def exit_on_sigterm(trainer: L.Trainer, out_dir: Path, exc: BaseException) -> None:
    """After Lightning stopped on SIGTERM or a first Ctrl-C (at the end of the current batch,
    with ``last.ckpt`` saved by `LastCheckpoint`): say how to
    resume and exit with status 143 (130 after Ctrl-C), so a scheduler or script sees the run
    did not finish. No ``metrics.json`` is written (there are no final results)."""
    last = next(
        (c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), None
    )
    ctrl_c = interrupted_by_ctrl_c(trainer)  # Ctrl-C stops like SIGTERM (asgml.run.interrupt)
    log.error(
        "%s at step %d (epoch %d): training stopped; %s. Resume with "
        "hydra.run.dir=%s ckpt_path=%s and the same overrides",
        "Ctrl-C" if ctrl_c else "SIGTERM",
        trainer.global_step,
        trainer.current_epoch,
        f"the current state is in {last}" if last else "no checkpoint was written",
        out_dir,
        last or "<checkpoint>",
    )
    raise SystemExit(SIGINT_EXIT_CODE if ctrl_c else SIGTERM_EXIT_CODE) from exc


def use_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Write checkpoints with `AtomicCheckpointIO` (temporary file
    next to the target, atomic rename, no non-finite weights) unless a custom CheckpointIO
    was configured."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def optimized_value(cfg: DictConfig, result: dict[str, Any]) -> float | None:
    """The fit's ``cfg.optimized_metric`` (what a sweeper optimizes); ``None`` without a fit
    and under ``select_on=test`` (the "validation" value would then be a test value)."""
    name = cfg.get("optimized_metric")
    if not name or not cfg.get("train", True):
        return None
    if cfg.get("select_on") == "test":
        log.warning("select_on=test: no optimized_metric is returned (it would be a test value)")
        return None
    if str(name).startswith("test/"):
        raise ValueError(f"optimized_metric={name!r}: tune on a validation metric, not a test one")
    if f"fit/{name}" not in result and not any(k.startswith("fit/val/") for k in result):
        # nothing was validated (trainer.max_epochs=0, trainer.limit_val_batches=0): the run's
        # test results are still written; there is no value to optimize
        log.warning(
            "optimized_metric=%s: the fit validated nothing (trainer.max_epochs=%s, "
            "trainer.limit_val_batches=%s); optimized_value is null",
            name,
            OmegaConf.select(cfg, "trainer.max_epochs", default=None),
            OmegaConf.select(cfg, "trainer.limit_val_batches", default=None),
        )
        return None
    if f"fit/{name}" not in result:
        fit = sorted(k.removeprefix("fit/") for k in result if k.startswith("fit/"))
        raise ValueError(f"optimized_metric={name!r} was not logged by the fit; it logged {fit}")
    return result[f"fit/{name}"]


def print_summary(cfg: DictConfig, metrics: dict[str, Any], out_dir: Path) -> None:
    """The results table of a run, logged (console and the run's log file, under Hydra);
    printed when no logging handler would show it (a notebook, a test)."""
    m = metrics["metrics"]
    lines = [
        f"== asgml results: dataset={cfg.dataset.name} method={cfg.method.name} seed={cfg.seed} ==",
    ]
    if "test/acc" in m:
        lines.append(f"test accuracy   {100 * m['test/acc']:.2f} %")
        lines.append(f"test macro-F1   {100 * m['test/f1']:.2f} %")
        for mod in cfg.model.encoders:
            if f"test/acc_{mod}" in m:
                lines.append(
                    f"  {mod:<8} unimodal acc {100 * m[f'test/acc_{mod}']:.2f} %"
                    f"  macro-F1 {100 * m[f'test/f1_{mod}']:.2f} %"
                )
    if metrics.get("val_acc_best") is not None:
        lines.append(f"best val acc    {100 * metrics['val_acc_best']:.2f} %")
    lines.append(f"run dir         {out_dir}")
    text = "\n".join(lines)
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info("%s", text)
    else:
        print("\n" + text)


def _finish_wandb(loggers: list[Any]) -> None:
    """Close a wandb run so sequential multirun jobs don't reuse it."""
    for lg in wandb_loggers(loggers):
        lg.experiment.finish()
