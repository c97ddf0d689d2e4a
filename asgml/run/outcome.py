"""Whether a finished run trained at all.

With ``model.nonfinite=skip`` a step whose loss or gradients are non-finite is skipped, and
``model.max_consecutive_nonfinite`` stops a run after that many in a row. A short run
(fewer steps than that limit) whose every step is skipped -- inputs scaled by 1e36, say --
used to finish with exit status 0 and report the untrained model's test metrics as its
result. `check_trained` refuses that outcome after ``metrics.json`` is written (its
numbers and ``skipped_nonfinite_steps`` are kept), so the process exits non-zero.
"""

from __future__ import annotations

from typing import Any

from asgml.core.guard import NonFiniteTrainingError
from asgml.core.toolkit import has_grad_scaler


def every_step_skipped(trainer: Any, skipped: int | None) -> bool:
    """Whether the fit skipped every one of its optimizer steps as non-finite. Without a
    GradScaler a skipped step is no optimizer step (``global_step`` stays); with one, the
    scaler skips the update of a step that still counts."""
    if not skipped:
        return False
    steps = int(trainer.global_step)
    return skipped >= steps if has_grad_scaler(trainer) else steps == 0


def check_trained(trainer: Any, skipped: int | None, out_dir: Any) -> None:
    """Raise `NonFiniteTrainingError` when every training step was
    skipped as non-finite (see `every_step_skipped`)."""
    if every_step_skipped(trainer, skipped):
        raise NonFiniteTrainingError(
            f"every training step ({skipped}) had a non-finite loss or gradients and was "
            f"skipped: the model is untrained. {out_dir}/metrics.json records its numbers "
            "(skipped_nonfinite_steps); they are not a result. Check the inputs' scale and "
            "the learning rate, or use model.nonfinite=raise to stop at the first such step"
        )
