"""The extension point every balancing method builds on.

A method is a Lightning :class:`~lightning.pytorch.callbacks.Callback`. Besides the
ordinary Lightning hooks (``on_train_epoch_end`` for epoch-level schedules, ...) a
:class:`BalancingCallback` implements two hooks that
:class:`~asgml.module.MultimodalModule` calls inside ``training_step``, in callback order,
with the step's :class:`~asgml.types.StepOutput`:

* :meth:`~BalancingCallback.on_train_losses` after the forward pass, before the backward
  pass: add, reweight or replace terms of ``out.losses``, register tensor hooks on
  ``out.features``, or run extra passes (e.g. masked-modality passes);
* :meth:`~BalancingCallback.on_train_gradients` after ``manual_backward``, before the
  optimizer step: read and edit the (DDP-averaged) gradients.

The step output is valid for the duration of those two calls; nothing is stored on the
module. The shared plumbing (unscaled gradients under any precision, skipped steps, DDP
reductions, epoch windows, deferred checkpoint state) is in :mod:`asgml.callbacks.toolkit`.
"""

from __future__ import annotations

import lightning as L

from asgml.types import StepOutput


class BalancingCallback(L.Callback):
    """Base class of the balancing methods.

    Subclasses keep every piece of state that changes during training in
    :meth:`state_dict` / :meth:`load_state_dict` so a resumed run continues exactly, and
    mark every hook they implement with ``@override``.
    """

    def on_train_losses(
        self, trainer: L.Trainer, module: L.LightningModule, out: StepOutput
    ) -> None:
        """Edit ``out.losses`` (a name -> scalar tensor dict summed into the training loss)
        in place before backward."""

    def on_train_gradients(
        self, trainer: L.Trainer, module: L.LightningModule, out: StepOutput
    ) -> None:
        """Read or edit the parameters' ``.grad`` after backward, before the optimizer step.

        Under ``16-mixed`` they carry the loss scale (see
        :func:`asgml.callbacks.toolkit.loss_scale`); ``out.loss`` is the summed loss."""

    @staticmethod
    def log_now(trainer: L.Trainer, metrics: dict[str, float]) -> None:
        """Send values straight to every logger at the current step.

        For quantities measured every few steps (probe accuracies, boost scales):
        ``LightningModule.log`` would only flush them on ``log_every_n_steps`` boundaries
        and could drop them."""
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    @staticmethod
    def logging_step(trainer: L.Trainer) -> bool:
        """Whether ``LightningModule.log(..., on_step=True)`` values are written this step
        (every ``trainer.log_every_n_steps``); per-step values logged on other steps are
        dropped, so callbacks skip the (costly) ``log`` calls there."""
        connector = getattr(trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))
