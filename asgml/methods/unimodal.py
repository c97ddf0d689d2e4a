r"""Unimodal baseline: one modality's encoder trained alone with its own linear head.

The imbalance diagnostic BalanceBenchmark reports next to every method
(GeWu-Lab/BalanceBenchmark @ 4c1482f ``balancemm/trainer/unimodal_trainer.py``), and the
teachers of UMT (`asgml.methods.umt`). ``method=unimodal method.modality=audio``
trains

$$
\mathcal{L} = \mathrm{CE}\big(W f_m + b,\ y\big)
$$

with $f_m$ the encoder of modality $m$ and a fresh ``Linear(d_m, C)`` head. At start-up the
other modalities' encoders are replaced by parameter-free zero encoders (so they cost nothing)
and the fusion head by the single-modality head; the run's fused metrics (``test/acc``,
``test/f1``) *are* the unimodal model's, and ``test/acc_<m>`` repeats them for modality
``m``; no per-modality metric is reported for the other modalities. The checkpoint holds the
trained encoder and head, and its config records ``method.name=unimodal`` and
``method.modality``, which UMT checks when it loads teachers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.models.fusion import Fusion

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule


class ZeroEncoder(nn.Module):
    """A parameter-free stand-in for an unused modality's encoder: zeros ``(B, d)``."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return torch.zeros(x.shape[0], self.feature_dim, device=x.device)


class SingleModalityHead(Fusion):
    """``Linear(d_m, C)`` on one modality's features; its unimodal logits are the same."""

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int, modality: str) -> None:
        super().__init__(feature_dims, num_classes)
        self.modality = modality
        self.fc = nn.Linear(self.feature_dims[modality], num_classes)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.fc(features[self.modality])

    def unimodal_logits(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {self.modality: self.forward(features)}


def keep_metrics(collection: MetricCollection, drop: set[str]) -> MetricCollection:
    """A copy of ``collection`` without the metrics named in ``drop`` (unprefixed names)."""
    kept = {k: m for k, m in collection.items(keep_base=True) if k not in drop}
    return MetricCollection(kept, prefix=collection.prefix)


def make_unimodal(module: MultimodalModule, modality: str) -> None:
    """Turn ``module`` into a single-modality classifier in place (see the module docstring)."""
    if modality not in module.modalities:
        raise ValueError(
            f"method.modality={modality!r} is not a modality of this dataset; "
            f"choose one of {module.modalities}"
        )
    if isinstance(module.fusion, SingleModalityHead):
        return  # already converted (e.g. setup for `test` after `fit`)
    if module.gamma > 0 or module.unimodal_heads is not None:
        raise ValueError("method=unimodal: model.gamma must be 0 and model.unimodal_heads false")
    dims = {m: int(module.encoders[m].feature_dim) for m in module.modalities}
    for m in module.modalities:
        if m != modality:
            module.encoders[m] = ZeroEncoder(dims[m])
    module._encoder_params.clear()
    module.fusion = SingleModalityHead(dims, module.num_classes, modality)
    drop = {f"{k}_{m}" for m in module.modalities if m != modality for k in ("acc", "f1")}
    module.val_metrics = keep_metrics(module.val_metrics, drop)
    module.test_metrics = keep_metrics(module.test_metrics, drop)


class Unimodal(BalancingCallback):
    """Train ``modality`` alone (``method.modality``).

    Args:
        modality: the modality to train.
    """

    changes_model = True  # asgml.eval re-applies setup() before loading weights

    def __init__(self, modality: str) -> None:
        super().__init__()
        if not modality:
            raise ValueError("method=unimodal needs method.modality (e.g. method.modality=audio)")
        self.modality = str(modality)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        make_unimodal(pl_module, self.modality)
