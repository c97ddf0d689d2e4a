"""Typed contracts shared by the datamodules, the module and the balancing callbacks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@dataclass
class StepOutput:
    """Everything one training step produced, passed by the module to every
    `BalancingCallback` hook of that step (``on_train_losses``,
    then ``on_train_gradients``) so callbacks never re-run the model. It lives for one
    ``training_step``; the module keeps no reference to it.

    Attributes:
        features: ``{modality: (B, d_m)}`` encoder outputs (part of the autograd graph).
        logits: fused logits ``(B, C)``.
        unimodal_logits: ``{modality: (B, C)}`` (derived from the fusion weights or from
            separate unimodal heads).
        labels: ``(B,)`` integer targets.
        inputs: ``{modality: tensor}`` the raw modality inputs of the batch.
        lengths: ``{modality: (B,)}`` valid sequence lengths, where the batch has them.
        losses: named loss terms summed into the training loss; ``on_train_losses``
            hooks edit this dict in place.
        step: ``trainer.global_step`` when the step started (0-based).
        loss: the summed training loss (detached), set before backward.
        finite: cached by `asgml.core.toolkit.step_finite` (``None`` until asked).
    """

    features: dict[str, Tensor]
    logits: Tensor
    unimodal_logits: dict[str, Tensor]
    labels: Tensor
    inputs: dict[str, Tensor]
    lengths: dict[str, Tensor] = field(default_factory=dict)
    losses: dict[str, Tensor] = field(default_factory=dict)
    step: int = 0
    loss: Tensor | None = None
    finite: Tensor | None = None


@dataclass
class Utilization:
    """Per-modality utilization scores (e.g. probe accuracy) measured by a monitor
    (`asgml.methods.probe.ProbeMonitor.utilization`).

    ``version`` increases by one at every new measurement so readers can tell a fresh
    measurement from a cached one.
    """

    scores: dict[str, float]
    step: int
    version: int


@runtime_checkable
class UtilizationSource(Protocol):
    """A callback that publishes per-modality utilization scores (the probe monitor,
    `asgml.methods.probe.ProbeMonitor`); a method that reads them (the boost) finds
    its source among ``trainer.callbacks`` by this contract, not by importing another method.
    """

    @property
    def utilization(self) -> Utilization | None:
        """The latest measurement; ``None`` before the first."""
        ...


@runtime_checkable
class MultimodalDataModule(Protocol):
    """What `asgml.run.build.build` needs from a datamodule, besides the
    ``LightningDataModule`` hooks. Every datamodule of `asgml.data` conforms (through
    `asgml.data.base.SplitDataModule`); a new dataset's datamodule must too.

    Attributes:
        modalities: the batch keys of the modalities it provides, in order; they must
            equal the keys of ``model.encoders``.
        num_classes: the class count; it must equal ``model.num_classes``.
    """

    modalities: Sequence[str]
    num_classes: int

    def encoder_overrides(self) -> dict[str, dict[str, Any]]:
        """Encoder arguments read from the data (e.g. MMSA feature dims), merged into
        ``model.encoders`` as ``{modality: {argument: value}}``; ``{}`` when none."""
        ...
