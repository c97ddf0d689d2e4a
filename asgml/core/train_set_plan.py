"""Train-set plans: which samples an epoch trains on, and which modalities each one keeps.

A `StepPlan` changes one training step. Methods that change the
*data* of an epoch -- resample the training set, add copies of some samples in which only one
modality is present -- return a `TrainSetPlan` instead, from the
`BalancingCallback` hook ``on_train_set_plan``:

1. at the start of every training epoch, the datamodule's ``train_dataloader()`` (any
   `SplitDataModule`) asks each callback through
   `request_train_set_plan`; at most one may answer with a plan (``None``: no plan,
   the plain train split);
2. the datamodule wraps its train split in a `PlannedDataset`: entry ``j`` is item
   ``indices[j]`` of the split plus a ``present`` row (key `PRESENT_KEY`, one 0/1 float
   per modality);
3. the module zeroes, for every sample, the features of the modalities its ``present`` row
   marks absent where they enter the fusion layer (through ``StepPlan.fusion_scale``): the
   feature-level masking that ``asgml.eval`` uses for modality subsets (``mask=feature``).
   The published features and the unimodal logits stay unmasked.

The train loader is rebuilt every epoch: a callback that plans calls
`require_reloaded_train_loader` in its ``setup`` (it sets Lightning's
``reload_dataloaders_every_n_epochs=1``). Under DDP every rank must return the same plan
(decide from all-reduced numbers); Lightning's ``DistributedSampler`` then shards the planned
set. A plan belongs in the callback's ``state_dict`` (`TrainSetPlan.state_dict`), so
a run resumed inside an epoch trains on the same entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

PRESENT_KEY = "present"
"""The batch key of the per-sample modality mask: ``(B, N)`` float, 1 present, 0 absent."""


@dataclass
class TrainSetPlan:
    """The entries of one epoch's training set.

    Attributes:
        indices: ``(M,)`` int64 indices into the base train split (repeats allowed).
        present: ``(M, N)`` bool: which modalities entry ``j`` keeps (in model order).
        modalities: the model's modality names, in order.
    """

    indices: Tensor
    present: Tensor
    modalities: tuple[str, ...]

    @classmethod
    def identity(cls, size: int, modalities: Sequence[str]) -> TrainSetPlan:
        """Every sample once with every modality: the plain train split."""
        return cls(
            torch.arange(size, dtype=torch.long),
            torch.ones(size, len(modalities), dtype=torch.bool),
            tuple(modalities),
        )

    def extend(self, indices: Tensor, present: Tensor) -> TrainSetPlan:
        """A new plan with ``(indices, present)`` appended after the current entries."""
        return TrainSetPlan(
            torch.cat([self.indices, indices.long()]),
            torch.cat([self.present, present.bool()]),
            self.modalities,
        )

    def __len__(self) -> int:
        return int(self.indices.numel())

    def validate(self, base_size: int) -> None:
        """Raise ``ValueError`` naming what is wrong with the plan for a split of this size."""
        n = len(self.modalities)
        if self.indices.ndim != 1 or self.present.shape != (self.indices.numel(), n):
            raise ValueError(
                f"TrainSetPlan: indices must be (M,) and present (M, {n}); got "
                f"{tuple(self.indices.shape)} and {tuple(self.present.shape)}"
            )
        if len(self) == 0:
            raise ValueError("TrainSetPlan is empty: an epoch needs at least one entry")
        lo, hi = int(self.indices.min()), int(self.indices.max())
        if lo < 0 or hi >= base_size:
            raise ValueError(
                f"TrainSetPlan indices span [{lo}, {hi}] but the train split has {base_size} items"
            )
        if not bool(self.present.any(dim=1).all()):
            raise ValueError("TrainSetPlan has an entry with every modality absent")

    def state_dict(self) -> dict[str, Any]:
        return {
            "indices": self.indices.clone(),
            "present": self.present.clone(),
            "modalities": list(self.modalities),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrainSetPlan:
        return cls(state["indices"].long(), state["present"].bool(), tuple(state["modalities"]))


class PlannedDataset(Dataset):
    """The base train split as a `TrainSetPlan` orders it: item ``j`` is
    ``base[indices[j]]`` with ``present[j]`` under `PRESENT_KEY` (a float row)."""

    def __init__(self, base: Dataset, plan: TrainSetPlan) -> None:
        plan.validate(len(base))  # type: ignore[arg-type]
        self.base = base
        self.plan = plan
        self._present = plan.present.float()

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, j: int) -> dict[str, Any]:
        item = self.base[int(self.plan.indices[j])]
        if not isinstance(item, dict):
            raise TypeError(
                f"PlannedDataset needs dict items ({{modality: x, 'label': y}}), got "
                f"{type(item).__name__}"
            )
        if PRESENT_KEY in item:
            raise KeyError(f"the train split's items already carry the key {PRESENT_KEY!r}")
        return {**item, PRESENT_KEY: self._present[j]}


def request_train_set_plan(trainer: Any, datamodule: Any) -> TrainSetPlan | None:
    """Ask every callback's ``on_train_set_plan`` for this epoch's plan (``None``: none).

    Outside a fit (no trainer) there is none. Two callbacks answering is an error."""
    if trainer is None:
        return None
    plans = []
    for cb in getattr(trainer, "callbacks", []):
        hook = getattr(cb, "on_train_set_plan", None)
        if hook is None:
            continue
        plan = hook(trainer, trainer.lightning_module, datamodule)
        if plan is not None:
            plans.append((type(cb).__name__, plan))
    if len(plans) > 1:
        raise ValueError(
            f"callbacks {[n for n, _ in plans]} each return a train-set plan; at most one may"
        )
    return plans[0][1] if plans else None


def require_reloaded_train_loader(trainer: Any, who: str) -> None:
    """Make Lightning rebuild the train loader every epoch (a plan changes per epoch)."""
    n = int(getattr(trainer, "reload_dataloaders_every_n_epochs", 0) or 0)
    if n > 1:
        raise ValueError(
            f"{who} plans the train set every epoch, but trainer.reload_dataloaders_every_n_epochs"
            f"={n}; leave it at 0 or 1"
        )
    trainer.reload_dataloaders_every_n_epochs = 1


def apply_present_mask(plan: Any, batch: Any) -> None:
    """Multiply each modality's ``plan.fusion_scale`` by the batch's ``present`` column
    (a no-op for batches without `PRESENT_KEY`)."""
    if not isinstance(batch, Mapping) or PRESENT_KEY not in batch:
        return
    present = batch[PRESENT_KEY]
    if present.ndim != 2 or present.shape[1] != len(plan.modalities):
        raise ValueError(
            f"batch[{PRESENT_KEY!r}] must be (B, {len(plan.modalities)}), got "
            f"{tuple(present.shape)}"
        )
    for i, m in enumerate(plan.modalities):
        col = present[:, i : i + 1]
        old = plan.fusion_scale.get(m)
        plan.fusion_scale[m] = col if old is None else old * col
