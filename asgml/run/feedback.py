"""What a run tells its user while it works: progress bars, the start-up block, and the one
place where known third-party noise is filtered.

* `progress` wraps a loop in a ``tqdm`` bar (tqdm ships with Lightning) on stderr,
  with rate and ETA; ``python -m asgml.prepare`` (per clip) and ``python -m asgml.eval``
  (per batch) use it.
* `startup_lines` is the block ``python -m asgml.train`` logs first: the run directory,
  the loggers, the recipe (``recipe_lines``), the method's hyperparameters
  (``method_lines``), device/precision/strategy (``trainer_lines``) and the code's
  git commit and package versions (``code_lines``, ``asgml.run.provenance``).
* `quiet_known_noise` filters, by exact message, the third-party messages that say
  nothing about the run (listed in `KNOWN_NOISE` and `KNOWN_NOISE_LOGS`), and
  removes the console handler the ``lightning`` package adds to its logger at import when
  logging is already configured (Hydra's job logging), so Lightning's messages are written
  once, to the console and the run's log file, instead of a second time to stderr.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig

from asgml.run.protocols import protocol_lines
from asgml.run.provenance import commit_text, git_state, versions

T = TypeVar("T")

# (category, exact message regex) of third-party warnings that carry no information about
# the run. Each names where it comes from; remove an entry when the source is fixed.
KNOWN_NOISE: tuple[tuple[type[Warning], str], ...] = (
    # torch >= 2.10 deprecates LeafSpec; Lightning's utilities/_pytree.py still builds one
    # on every fit (lightning 2.6)
    (
        FutureWarning,
        r"`isinstance\(treespec, LeafSpec\)` is deprecated, use `isinstance\(treespec, "
        r"TreeSpec\) and treespec\.is_leaf\(\)` instead\.",
    ),
)

# (logger name, exact message prefix) of third-party log records dropped
KNOWN_NOISE_LOGS: tuple[tuple[str, str], ...] = (
    # Lightning >= 2.6 advertises its hosted logger at every Trainer construction
    (
        "lightning.pytorch.utilities.rank_zero",
        "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    ),
)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_known_noise() -> None:
    """Install the filters of `KNOWN_NOISE` / `KNOWN_NOISE_LOGS` (idempotent)
    and, when the root logger has handlers, drop the ``lightning`` logger's own stderr
    handler (Lightning's messages still reach the root handlers: console and log file)."""
    for category, message in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefix in KNOWN_NOISE_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
    if logging.getLogger().handlers:
        pkg = logging.getLogger("lightning")
        for handler in list(pkg.handlers):
            # the StreamHandler(stderr) lightning/__init__.py adds; it also propagates to root
            if type(handler) is logging.StreamHandler and pkg.propagate:
                pkg.removeHandler(handler)


def recipe_lines(cfg: DictConfig) -> list[str]:
    """The training recipe of a run in a few lines (printed at start-up)."""
    model = cfg.model
    opt = model.get("optimizer") or {}
    opt_args = ", ".join(  # a null argument is not passed (asgml.run.protocols.drop_unset)
        f"{k}={opt[k]}"
        for k in ("lr", "momentum", "weight_decay", "betas")
        if opt.get(k) is not None
    )
    sched = model.get("scheduler")
    if sched:
        sched_args = ", ".join(
            f"{k}={v}" for k, v in sched.items() if not str(k).startswith("_") and v is not None
        )
        sched_text = f"{str(sched.get('_target_', '?')).rsplit('.', 1)[-1]}({sched_args})"
    else:
        sched_text = "none"
    dm = cfg.dataset.get("datamodule") or {}
    frames = cfg.dataset.get("frames")
    return [
        f"dataset   {cfg.dataset.get('name')}"
        + (f" ({frames} frame{'s' if frames != 1 else ''})" if frames is not None else ""),
        f"method    {cfg.method.get('name')}",
        f"model     fusion={model.get('fusion')} gamma={model.get('gamma')}",
        f"epochs    {cfg.trainer.get('max_epochs')}",
        f"optimizer {str(opt.get('_target_', '?')).rsplit('.', 1)[-1]}({opt_args})",
        f"scheduler {sched_text}",
        f"batch     {dm.get('batch_size')}",
        f"seed      {cfg.get('seed')}",
        f"select_on {cfg.get('select_on')} (optimized_metric {cfg.get('optimized_metric')})",
        *protocol_lines(cfg),
    ]


def method_lines(cfg: DictConfig) -> list[str]:
    """The method's own hyperparameters: one line per callback of ``method`` (an entry with
    a ``_target_``), ``method.<key> <option>=<value>, ...`` in config order (the keys a
    command line sets them with)."""
    out = []
    for key, node in (cfg.get("method") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        options = ", ".join(f"{k}={v}" for k, v in node.items() if k != "_target_")
        out.append(f"method.{key} {options or '(defaults)'}")
    return out


def trainer_lines(trainer: Any) -> list[str]:
    """Where the run trains: device and accelerator, precision, strategy and world size."""
    accelerator = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    strategy = type(trainer.strategy).__name__.removesuffix("Strategy")
    strategy = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", strategy).lower()  # SingleDevice: single_device
    return [
        f"device    {trainer.strategy.root_device} ({accelerator}, {trainer.num_devices} "
        f"device{'s' if trainer.num_devices != 1 else ''} x {trainer.num_nodes} "
        f"node{'s' if trainer.num_nodes != 1 else ''})",
        f"precision {trainer.precision}",
        f"strategy  {strategy} (world size {trainer.world_size})",
    ]


def code_lines() -> list[str]:
    """The code that runs: git commit (and uncommitted changes) and package versions."""
    pkgs = ", ".join(f"{k} {v}" for k, v in versions().items())
    return [f"commit    {commit_text(git_state())}", f"versions  {pkgs}"]


def startup_lines(
    cfg: DictConfig, out_dir: str | Path, loggers: Iterable[Any] = (), trainer: Any = None
) -> list[str]:
    """The start-up block: run directory, loggers, the recipe, the method's hyperparameters,
    then (given the ``trainer``) device, precision and strategy, and the code's commit."""
    names = [type(lg).__name__.removesuffix("Logger").lower() for lg in loggers]
    lines = [f"run dir   {out_dir}"]
    if names:
        lines.append(f"loggers   {', '.join(names)}")
    group = next((getattr(lg, "group", None) for lg in loggers if getattr(lg, "group", None)), None)
    if group:
        lines.append(f"group     {group}")
    if cfg.get("tags"):
        lines.append(f"tags      {', '.join(str(t) for t in cfg.tags)}")
    lines += recipe_lines(cfg) + method_lines(cfg)
    if trainer is not None:
        lines += trainer_lines(trainer)
    return lines + code_lines()


def block(title: str, lines: Iterable[str]) -> str:
    """``title`` then each line indented: one log record for a multi-line block."""
    return "\n  ".join([title, *lines])
