"""The extension point every balancing method builds on.

A method is a Lightning :class:`~lightning.pytorch.callbacks.Callback`. Besides the
ordinary Lightning hooks (``on_after_backward`` to edit gradients after
``manual_backward``, ``on_train_epoch_end`` for epoch-level schedules, ...) a
:class:`BalancingCallback` may implement :meth:`on_train_losses`, which
:class:`~asgml.module.MultimodalModule` calls inside ``training_step`` after the
forward pass and before the backward pass. There a method can add, reweight or
replace loss terms, register tensor hooks on the published features, or run extra
passes it needs (e.g. masked-modality passes) -- without editing the module or
``train.py``. Methods that change the structure of a step (which modalities are forwarded
or updated, feature masks, sample subsets) set a :class:`~asgml.step_plan.StepPlan` in
:meth:`on_step_plan` / :meth:`on_step_features`; :meth:`on_eval_logits` replaces the fused
logits at validation and test time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
from torch import Tensor

if TYPE_CHECKING:
    from asgml.module import MultimodalModule
    from asgml.step_plan import StepPlan
    from asgml.types import StepOutput


class BalancingCallback(L.Callback):
    """Base class of the balancing methods.

    Subclasses keep every piece of state that changes during training in
    :meth:`state_dict` / :meth:`load_state_dict` so a resumed run continues exactly.
    """

    def on_train_losses(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        out: StepOutput,
        losses: dict[str, Tensor],
    ) -> None:
        """Edit ``losses`` (a name -> scalar tensor dict) in place before backward."""

    def on_step_plan(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        plan: StepPlan,
        batch: Any,
    ) -> None:
        """Edit this step's :class:`~asgml.step_plan.StepPlan` before any encoder runs
        (which modalities are forwarded, which encoders update)."""

    def on_step_features(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        plan: StepPlan,
        features: dict[str, Tensor],
        batch: Any,
    ) -> None:
        """Edit the plan from this batch's features, before the fusion layer
        (``plan.fusion_scale``, ``plan.sample_mask``)."""

    def on_eval_logits(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        logits: Tensor,
        unimodal_logits: dict[str, Tensor],
        features: dict[str, Tensor],
    ) -> Tensor:
        """The fused logits validation and test score (a method's test-time fusion);
        returns ``logits`` unchanged by default. A method whose unimodal predictions come
        from elsewhere may replace entries of ``unimodal_logits`` in place (they feed the
        ``acc_<m>`` metrics)."""
        return logits

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

    @property
    def state_key(self) -> str:
        # One instance per class is the norm; a ``name`` attribute disambiguates more.
        name = getattr(self, "name", None)
        return f"{type(self).__qualname__}[{name}]" if name else type(self).__qualname__
