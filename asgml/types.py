"""Typed contracts shared by the datamodules, the module and the balancing callbacks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@dataclass
class StepOutput:
    """Everything one training step produced, published on the module as
    ``module.step_output`` before ``manual_backward`` so callbacks never re-run the model.

    Attributes:
        features: ``{modality: (B, d_m)}`` encoder outputs (part of the autograd graph).
        logits: fused logits ``(B, C)``.
        unimodal_logits: ``{modality: (B, C)}`` (derived from the fusion weights or from
            separate unimodal heads).
        labels: ``(B,)`` integer targets.
        inputs: ``{modality: tensor}`` the raw modality inputs of the batch.
        lengths: ``{modality: (B,)}`` valid sequence lengths, where the batch has them.
        losses: named loss terms summed into the training loss (after every
            ``on_train_losses`` hook has run).
        step: ``trainer.global_step`` when the step started (0-based).
    """

    features: dict[str, Tensor]
    logits: Tensor
    unimodal_logits: dict[str, Tensor]
    labels: Tensor
    inputs: dict[str, Tensor]
    lengths: dict[str, Tensor] = field(default_factory=dict)
    losses: dict[str, Tensor] = field(default_factory=dict)
    step: int = 0


@dataclass
class Utilization:
    """Per-modality utilization scores (e.g. probe accuracy) published by a monitor.

    ``version`` increases by one at every new measurement so readers can tell a fresh
    measurement from a cached one.
    """

    scores: dict[str, float]
    step: int
    version: int


@runtime_checkable
class MultimodalDataModule(Protocol):
    """What :func:`asgml.build.build` needs from a datamodule, besides the
    ``LightningDataModule`` hooks. Every datamodule of :mod:`asgml.data` conforms (through
    :class:`asgml.data.base.SplitDataModule`); a new dataset's datamodule must too.

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
