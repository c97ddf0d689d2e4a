"""Step plans: how one training step of `MultimodalModule` runs.

Methods that change the *structure* of a step -- forward one modality only, update some
encoders and not others, drop or mask a modality's features before the fusion layer, train
on a subset of the batch -- describe it in a `StepPlan` instead of editing the module.
The module builds a fresh default plan (everything forwarded, everything updated, nothing
masked) at the start of every training step and hands it to each
`BalancingCallback` twice:

1. ``on_step_plan(trainer, module, plan, batch)`` before any encoder runs: set
   `StepPlan.forward`, `StepPlan.no_grad`, `StepPlan.step`,
   `StepPlan.step_head`;
2. ``on_step_features(trainer, module, plan, features, batch)`` after the encoders ran and before
   the fusion layer: set `StepPlan.fusion_scale` and `StepPlan.sample_mask`
   from the features of this very batch.

Extra passes (a second forward through some encoders, a loss on another view) stay in
``on_train_losses``, where the published `StepOutput` and the module's
``encode`` / ``heads`` are at hand. A default plan leaves the step bit-for-bit as it was.
Methods that change which *data* an epoch trains on (resampled entries, per-sample modality
masks) return a `TrainSetPlan` instead.

Under DDP every field must be equal on all ranks except the per-sample ones
(``fusion_scale`` rows, ``sample_mask``): a callback that decides from rank-local data
all-reduces first. A plan that leaves a modality out of ``forward`` leaves its encoder
without gradients, so DDP needs ``strategy=ddp_find_unused_parameters_true``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class StepPlan:
    """The structure of one training step (defaults: a plain joint step).

    Attributes:
        modalities: every modality of the model, in order (read-only).
        forward: modalities whose encoder runs. A modality left out contributes zero
            features to the fusion layer (as a missing modality) and has neither unimodal
            logits nor a unimodal loss this step.
        no_grad: forwarded modalities whose encoder runs under ``torch.no_grad()``: their
            features are constants (e.g. the frozen learners of an alternating method).
        step: encoders the optimizer updates this step; the gradients of the others are
            dropped before ``optimizer.step()`` (so momentum and weight decay leave them
            alone too). ``None``: all.
        step_head: whether the fusion layer and unimodal heads (the ``head`` group) update.
        fusion_scale: ``{modality: tensor}`` multiplied onto that modality's features where
            they enter the fusion layer only (broadcast against ``(B, d_m)``: a scalar,
            ``(B, 1)`` or ``(d_m,)``); the published features and the unimodal logits stay
            unscaled. Feature dropping and masking live here.
        sample_mask: ``(B,)`` bool: the built-in loss terms (fused and unimodal CE) average
            over these samples only. ``None``: all.
    """

    modalities: tuple[str, ...]
    forward: set[str] = field(default_factory=set)
    no_grad: set[str] = field(default_factory=set)
    step: set[str] | None = None
    step_head: bool = True
    fusion_scale: dict[str, Tensor] = field(default_factory=dict)
    sample_mask: Tensor | None = None

    @classmethod
    def default(cls, modalities: Sequence[str]) -> StepPlan:
        return cls(modalities=tuple(modalities), forward=set(modalities))

    def only(self, *modalities: str) -> StepPlan:
        """Forward and update only ``modalities`` (their encoders); returns ``self``."""
        self._check(modalities)
        self.forward = set(modalities)
        self.step = set(modalities)
        return self

    @property
    def is_default(self) -> bool:
        return (
            self.forward == set(self.modalities)
            and not self.no_grad
            and self.step is None
            and self.step_head
            and not self.fusion_scale
            and self.sample_mask is None
        )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that refers to an unknown modality."""
        for name in ("forward", "no_grad", "step", "fusion_scale"):
            value = getattr(self, name)
            if value is not None:
                unknown = set(value) - set(self.modalities)
                if unknown:
                    raise ValueError(
                        f"StepPlan.{name} names unknown modalities {sorted(unknown)}; "
                        f"the model has {list(self.modalities)}"
                    )
        if not self.forward:
            raise ValueError("StepPlan.forward is empty: at least one modality must run")

    def _check(self, modalities: Sequence[str]) -> None:
        unknown = set(modalities) - set(self.modalities)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; have {list(self.modalities)}")
