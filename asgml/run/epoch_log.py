"""One line per training epoch: what a run has learnt so far, in ``train.log`` and (off a
terminal) on stdout.

``EpochLog`` is a Lightning callback (``conf/callbacks/default.yaml``, key
``epoch_log``). At the end of every training epoch (after that epoch's validation) it writes::

    epoch 3/10  val/acc 61.25%  val/acc_audio 58.13%  val/acc_visual 30.00%
    boost/scale_visual 1.420  ogm/coeff_audio 0.7310  epoch 12.3s  ETA 1m26s

(one line). The values are read from ``trainer.callback_metrics``, i.e. what the module and the
method callbacks logged with ``LightningModule.log`` (values a method sends straight to the
loggers with ``BalancingCallback.log_now`` are not there); ``keys`` picks and orders them with
``fnmatch`` patterns, so a method is never reached into. Accuracies (a key whose last part
starts with ``acc``) are printed in %, everything else with 4 significant digits. The ETA is the
mean epoch time so far (of this process) times the epochs left (``trainer.max_epochs``).

Where the line goes (``console``): ``auto`` writes it to every log file of the ``asgml`` logger
(``train.log`` under Hydra) and, when stdout is not a terminal (a job log, a pipe, a
notebook), also to the console; on a terminal the progress bar shows the same values, so the
line goes to the file only. ``always`` / ``never`` force the console on / off. Without any
logging handler (a plain script) the console line is printed.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

log = logging.getLogger("asgml")

CONSOLE_MODES = ("auto", "always", "never")


def format_value(key: str, value: float) -> str:
    """``61.25%`` for an accuracy key (last part starts with ``acc``), else 4 significant
    digits."""
    if not math.isfinite(value):
        return str(value)
    if key.rsplit("/", 1)[-1].startswith("acc"):
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


def format_duration(seconds: float) -> str:
    """``12.3s``, ``4m05s`` or ``2h03m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def select_metrics(metrics: Mapping[str, Any], patterns: Sequence[str]) -> list[tuple[str, float]]:
    """``(key, value)`` of the scalar ``metrics`` matching ``patterns``: in pattern order,
    keys of one pattern sorted, each key once; a pattern ``!p`` leaves out the keys matching
    ``p`` (wherever it stands)."""
    out: list[tuple[str, float]] = []
    seen = {
        k for p in patterns if p.startswith("!") for k in metrics if fnmatch.fnmatchcase(k, p[1:])
    }
    for pattern in (p for p in patterns if not p.startswith("!")):
        for key in sorted(k for k in metrics if fnmatch.fnmatchcase(k, pattern)):
            if key in seen:
                continue
            try:
                value = float(metrics[key])
            except (TypeError, ValueError):  # a non-scalar (tensor of several values)
                continue
            seen.add(key)
            out.append((key, value))
    return out


def epoch_line(
    epoch: int,
    max_epochs: int | None,
    values: Sequence[tuple[str, float]],
    epoch_seconds: float,
    eta_seconds: float | None,
) -> str:
    """The line itself (``epoch`` counted from 1)."""
    parts = [f"epoch {epoch}/{max_epochs}" if max_epochs and max_epochs > 0 else f"epoch {epoch}"]
    parts += [f"{k} {format_value(k, v)}" for k, v in values]
    parts.append(f"epoch {format_duration(epoch_seconds)}")
    if eta_seconds is not None:
        parts.append(f"ETA {format_duration(eta_seconds)}")
    return "  ".join(parts)


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of ``logger`` reaches (its own and its ancestors')."""
    out: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        out.extend(current.handlers)
        current = current.parent if current.propagate else None
    return out


def emit(line: str, console: bool, logger: logging.Logger = log) -> None:
    """``line`` to ``logger``'s log files, and to the console when ``console``."""
    handlers = _handlers(logger)
    files = [h for h in handlers if isinstance(h, logging.FileHandler)]
    streams = [h for h in handlers if h not in files]
    if console and streams and logger.isEnabledFor(logging.INFO):
        logger.info("%s", line)  # console handler(s) and file(s) alike
        return
    if console:
        print(line, flush=True)
    if files and logger.isEnabledFor(logging.INFO):
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "%s", (line,), None)
        for handler in files:
            if record.levelno >= handler.level:
                handler.handle(record)


class EpochLog(Callback):
    """One line per epoch (see the module docstring).

    Args:
        keys: ``fnmatch`` patterns of ``trainer.callback_metrics`` keys, in print order
            (``!pattern``: leave those keys out).
        console: ``auto`` (stdout when it is not a terminal), ``always`` or ``never``.
    """

    def __init__(
        self,
        keys: Sequence[str] = (
            "val/acc",
            "val/acc_*",
            "!val/acc_best",
            "boost/scale_*",
            "ogm/coeff_*",
        ),
        console: str = "auto",
    ) -> None:
        if console not in CONSOLE_MODES:
            raise ValueError(f"EpochLog: console must be one of {CONSOLE_MODES}, got {console!r}")
        self.keys = [str(k) for k in keys]
        self.console = console
        self._start: float | None = None
        self._durations: list[float] = []

    def to_console(self) -> bool:
        if self.console == "auto":
            return not sys.stdout.isatty()
        return self.console == "always"

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is None:
            return
        seconds = time.perf_counter() - self._start
        self._start = None
        self._durations.append(seconds)
        if not trainer.is_global_zero:
            return
        max_epochs = trainer.max_epochs
        eta = None
        if max_epochs is not None and max_epochs > 0:
            left = max_epochs - trainer.current_epoch - 1
            eta = left * sum(self._durations) / len(self._durations)
        values = select_metrics(trainer.callback_metrics, self.keys)
        line = epoch_line(trainer.current_epoch + 1, max_epochs, values, seconds, eta)
        emit(line, self.to_console())
