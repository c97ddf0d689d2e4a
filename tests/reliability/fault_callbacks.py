"""Callbacks that the fault tests load into a training subprocess (``+callbacks.x=...``);
this module imports nothing from the test suite (``tests/conftest.py`` sets torch's thread
count, which would change the subprocess's arithmetic)."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from typing_extensions import override


class SignalAt(L.Callback):
    """Sends ``signum`` to this process when the batch of global step ``step`` starts (after
    the checkpoints of the step before were written)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    @override
    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
