"""The extension point every balancing method builds on.

A method is a Lightning :class:`~lightning.pytorch.callbacks.Callback`. Besides the
ordinary Lightning hooks (``on_train_epoch_end`` for epoch-level schedules, ...) a
:class:`BalancingCallback` implements hooks that :class:`~asgml.core.module.MultimodalModule`
calls inside a step, in callback order:

* :meth:`~BalancingCallback.on_step_plan` before any encoder runs and
  :meth:`~BalancingCallback.on_step_features` before the fusion layer: methods that change
  the structure of a step (which modalities are forwarded or updated, feature masks, sample
  subsets) set a :class:`~asgml.core.step_plan.StepPlan` there;
* :meth:`~BalancingCallback.on_train_losses` after the forward pass, before the backward
  pass, with the step's :class:`~asgml.core.types.StepOutput`: add, reweight or replace terms of
  ``out.losses``, register tensor hooks on ``out.features``, or run extra passes (e.g.
  masked-modality passes);
* :meth:`~BalancingCallback.on_train_gradients` after backward, before the optimizer
  step: read and edit the (DDP-averaged) gradients. It is reached through Lightning's own
  ``on_after_backward`` (which ``manual_backward`` fires, in callback order): this base
  class implements ``on_after_backward`` and hands it the running step's output, so a
  reader looking for the gradient edit where Lightning puts it finds it there;
* :meth:`~BalancingCallback.on_eval_logits` at validation and test time: replace the fused
  logits (a method's test-time fusion);
* :meth:`~BalancingCallback.on_train_set_plan` at the start of every training epoch: return
  a :class:`~asgml.core.train_set_plan.TrainSetPlan` (resampled entries with per-sample modality
  masks) that the epoch trains on instead of the plain train split.

The step output is valid for the duration of the training hooks; the module holds it
(``module.step_output``) only while its backward pass runs.

Which hooks are Lightning's: ``on_after_backward`` and every ``on_*`` hook of
:class:`lightning.pytorch.Callback` (``setup``, ``on_train_epoch_start``, ...,
``state_dict``). asgml's own, called by :class:`~asgml.core.module.MultimodalModule`:
``on_step_plan``, ``on_step_features``, ``on_train_losses``, ``on_train_gradients`` (through
``on_after_backward``), ``on_eval_logits`` and ``on_train_set_plan`` (called by the
datamodule). All take ``(trainer, module, ...)`` in that order.

What every method repeats lives here: :meth:`BalancingCallback.epoch_window` (the epochs a
method acts in), :attr:`BalancingCallback.state_attrs` (declarative checkpoint state) and
:meth:`BalancingCallback.check_option` (a range check whose error names the key only:
``asgml.run.build`` adds the ``method.<name>.`` prefix). The shared plumbing (unscaled
gradients under any precision, skipped steps, DDP reductions, deferred checkpoint state) is
in :mod:`asgml.core.toolkit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import lightning as L
from torch import Tensor
from typing_extensions import override

from asgml.core.step_plan import StepPlan
from asgml.core.toolkit import EpochWindow, should_log
from asgml.core.train_set_plan import TrainSetPlan
from asgml.core.types import StepOutput


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
    # attributes saved by the default state_dict / restored by load_state_dict, by name
    state_attrs: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ shared plumbing
    @override
    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning's hook after backward: hands the running training step's output to
        :meth:`on_train_gradients`. A backward that is not the module's training step (none
        is set) is left alone. A subclass that overrides this calls ``super()`` first."""
        out = getattr(pl_module, "step_output", None)
        if out is not None:
            self.on_train_gradients(trainer, pl_module, out)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The attributes named in :attr:`state_attrs` (a subclass with richer state
        overrides this)."""
        return {name: getattr(self, name) for name in self.state_attrs}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name in self.state_attrs:
            if name in state_dict:
                setattr(self, name, state_dict[name])

    @staticmethod
    def epoch_window(start: int, end: int) -> EpochWindow:
        """The inclusive epochs ``start <= epoch <= end`` a method acts in."""
        return EpochWindow(int(start), int(end))

    @staticmethod
    def check_option(key: str, value: Any, ok: Callable[[Any], bool] | bool, expected: str) -> None:
        """Raise ``ValueError("<key> must be <expected>, got <value>")`` unless ``ok``
        (a bool, or a predicate of ``value``) holds. The key is the option's name only."""
        good = ok(value) if callable(ok) else ok
        if not good:
            raise ValueError(f"{key} must be {expected}, got {value!r}")

    # ------------------------------------------------------------------ asgml's hooks

    def on_train_losses(
        self, trainer: L.Trainer, module: L.LightningModule, out: StepOutput
    ) -> None:
        """Edit ``out.losses`` (a name -> scalar tensor dict summed into the training loss)
        in place before backward."""

    def on_train_gradients(
        self, trainer: L.Trainer, module: L.LightningModule, out: StepOutput
    ) -> None:
        """Read or edit the parameters' ``.grad`` after backward, before the optimizer step
        (called from :meth:`on_after_backward`).

        Under ``16-mixed`` they carry the loss scale (see
        :func:`asgml.core.toolkit.loss_scale`); ``out.loss`` is the summed loss."""

    def on_step_plan(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        plan: StepPlan,
        batch: Any,
    ) -> None:
        """Edit this step's :class:`~asgml.core.step_plan.StepPlan` before any encoder runs
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
        :func:`~asgml.core.train_set_plan.require_reloaded_train_loader` in ``setup``."""
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
