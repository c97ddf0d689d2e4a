"""SIGTERM and Ctrl-C stop a run where a resume loses nothing: after the current epoch's
validation when they come during it, and Ctrl-C the way SIGTERM does.

* **SIGTERM during an epoch's last training batch or its validation.** Lightning stops at the
  end of the current batch (``SIGTERMException``), and its validation loop stops after its
  current batch too (lightning/pytorch/loops/evaluation_loop.py, ``_evaluation_step``; the
  training loop checks only after the epoch-end validation: training_epoch_loop.py,
  ``on_advance_end``; Lightning 2.6). A SIGTERM near an epoch end therefore cut the
  validation short: ``last.ckpt`` held the epoch's training but not its validation, and the
  resumed run went on with the next epoch, so that epoch's validation rows (and its
  ``best.ckpt`` candidate) were never written. Here a SIGTERM that arrives during the last
  training batch of an epoch or during a validation inside ``fit`` is held until the epoch's
  end hooks have run (validation done, ``last.ckpt`` saved); Lightning then stops before the
  next epoch (fit_loop.py, ``on_advance_end``). A SIGTERM in the middle of an epoch still
  stops at the end of the current batch. The delay is at most one validation pass: keep
  that shorter than your scheduler's grace period (SLURM's ``KillWait``, 30 s by default).
* **Ctrl-C.** A ``KeyboardInterrupt`` can land anywhere, e.g. between two optimizer steps of
  a manual-optimization step, and Lightning then exits without a checkpoint: ``last.ckpt``
  held the previous epoch. Here the first Ctrl-C (SIGINT) during ``fit`` only raises
  Lightning's stop flag, exactly what its SIGTERM handler does
  (lightning/pytorch/trainer/connectors/signal_connector.py:
  ``_SignalConnector._sigterm_notifier_fn``); the run then stops like after SIGTERM, saves
  ``last.ckpt`` and exits with status 130 (128 + SIGINT). A second Ctrl-C interrupts at once
  (Python's ``KeyboardInterrupt``, nothing saved). Only in the main thread of a process that
  runs the fit loop itself (single device, ``ddp`` ranks); the previous SIGINT handler is
  restored when the fit ends.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import lightning as L
from typing_extensions import override

log = logging.getLogger("asgml")

SIGINT_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd process


class GracefulStop(L.Callback):
    """Holds a stop request (SIGTERM, first Ctrl-C) until the epoch's validation is done;
    turns the first Ctrl-C into such a request (see the module docstring).

    Args:
        ctrl_c: handle Ctrl-C like SIGTERM (false: Lightning's own handling, no checkpoint).
    """

    def __init__(self, ctrl_c: bool = True) -> None:
        self.ctrl_c = ctrl_c
        self.interrupted = False  # a first Ctrl-C was received
        self.held = False  # a stop request waits for the epoch's end
        self._previous: Any = None

    @staticmethod
    def _requested(trainer: L.Trainer) -> bool:
        return bool(getattr(trainer, "received_sigterm", False))

    @staticmethod
    def _set_request(trainer: L.Trainer, value: bool) -> None:
        trainer._signal_connector.received_sigterm = value

    def _hold(self, trainer: L.Trainer, where: str) -> None:
        if not self.held:
            log.warning("stop requested during %s: stopping after this epoch's validation", where)
        self.held = True
        self._set_request(trainer, False)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.interrupted = self.held = False
        if not self.ctrl_c or threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            log.warning(
                "Ctrl-C: stopping like on SIGTERM, with last.ckpt saved (press Ctrl-C again "
                "to stop at once, without saving)"
            )
            self._set_request(trainer, True)

        self._previous = signal.signal(signal.SIGINT, handler)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        # Lightning checks for the stop right after this hook: at the epoch's last batch,
        # validation and the epoch-end hooks (last.ckpt) come first
        if self._requested(trainer) and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._hold(trainer, "the epoch's last training batch")

    @override
    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._requested(trainer):
            self._hold(trainer, "validation")

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a validation in the middle of an epoch (val_check_interval < 1): stop after the
        # next training batch, as Lightning would have
        if self.held and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.held = False
            self._set_request(trainer, True)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.held:  # Lightning stops once the epoch is complete (FitLoop.on_advance_end)
            self.held = False
            self._set_request(trainer, True)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None


def interrupted_by_ctrl_c(trainer: L.Trainer) -> bool:
    """Whether the trainer's fit stopped because of a Ctrl-C (`GracefulStop`)."""
    return any(isinstance(c, GracefulStop) and c.interrupted for c in trainer.callbacks)
