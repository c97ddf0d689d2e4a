"""The extension point every balancing method builds on.

A method is a Lightning :class:`~lightning.pytorch.callbacks.Callback`. Besides the
ordinary Lightning hooks (``on_train_epoch_end`` for epoch-level schedules, ...) a
:class:`BalancingCallback` implements hooks that :class:`~asgml.module.MultimodalModule`
calls inside a step, in callback order:

* :meth:`~BalancingCallback.on_step_plan` before any encoder runs and
  :meth:`~BalancingCallback.on_step_features` before the fusion layer: methods that change
  the structure of a step (which modalities are forwarded or updated, feature masks, sample
  subsets) set a :class:`~asgml.step_plan.StepPlan` there;
* :meth:`~BalancingCallback.on_train_losses` after the forward pass, before the backward
  pass, with the step's :class:`~asgml.types.StepOutput`: add, reweight or replace terms of
  ``out.losses``, register tensor hooks on ``out.features``, or run extra passes (e.g.
  masked-modality passes);
* :meth:`~BalancingCallback.on_train_gradients` after ``manual_backward``, before the
  optimizer step: read and edit the (DDP-averaged) gradients;
* :meth:`~BalancingCallback.on_eval_logits` at validation and test time: replace the fused
  logits (a method's test-time fusion);
* :meth:`~BalancingCallback.on_train_set_plan` at the start of every training epoch: return
  a :class:`~asgml.train_set_plan.TrainSetPlan` (resampled entries with per-sample modality
  masks) that the epoch trains on instead of the plain train split.

The step output is valid for the duration of the training hooks; it is not stored on the
module. The shared plumbing (unscaled gradients under any precision, skipped steps, DDP
reductions, epoch windows, deferred checkpoint state) is in :mod:`asgml.callbacks.toolkit`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
from torch import Tensor

from asgml.callbacks.toolkit import should_log
from asgml.step_plan import StepPlan
from asgml.train_set_plan import TrainSetPlan
from asgml.types import StepOutput


class BalancingCallback(L.Callback):
    """Base class of the balancing methods.

    Subclasses keep every piece of state that changes during training in
    :meth:`state_dict` / :meth:`load_state_dict` so a resumed run continues exactly, and
    mark every hook they implement with ``@override``.

    A method whose ``setup`` changes the module (adds its own head or gate network, replaces
    encoders) sets :attr:`changes_model`: ``asgml.eval`` then calls
    ``setup(None, module, "test")`` and ``load_state_dict`` (the checkpoint's callback state)
    before it loads the weights, and scores with :meth:`on_eval_logits`. Such a ``setup``
    must work without a trainer.
    """

    changes_model: ClassVar[bool] = False

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

    def on_step_plan(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        plan: StepPlan,
        batch: Any,
    ) -> None:
        """Edit this step's :class:`~asgml.step_plan.StepPlan` before any encoder runs
        (which modalities are forwarded, which encoders update)."""

    def on_step_features(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        plan: StepPlan,
        features: dict[str, Tensor],
        batch: Any,
    ) -> None:
        """Edit the plan from this batch's features, before the fusion layer
        (``plan.fusion_scale``, ``plan.sample_mask``)."""

    def on_eval_logits(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        logits: Tensor,
        unimodal_logits: dict[str, Tensor],
        features: dict[str, Tensor],
    ) -> Tensor:
        """The fused logits validation and test score (a method's test-time fusion);
        returns ``logits`` unchanged by default. A method whose unimodal predictions come
        from elsewhere may replace entries of ``unimodal_logits`` in place (they feed the
        ``acc_<m>`` metrics)."""
        return logits

    def on_train_set_plan(
        self, trainer: L.Trainer, module: L.LightningModule, datamodule: Any
    ) -> TrainSetPlan | None:
        """This epoch's train set (called from the datamodule's ``train_dataloader()`` at the
        start of each epoch, ``trainer.current_epoch`` already the new epoch); ``None``
        (default): the plain train split. A callback that returns plans calls
        :func:`~asgml.train_set_plan.require_reloaded_train_loader` in ``setup``."""
        return None

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
        return should_log(trainer)
