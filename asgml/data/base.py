"""What every datamodule shares: the loaders over ``splits`` and the data-layout errors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from asgml.train_set_plan import PlannedDataset, request_train_set_plan


class DataLayoutError(FileNotFoundError):
    """A data directory or split file is missing; the message shows the expected layout."""


def layout_error(what: str, layout: str) -> DataLayoutError:
    return DataLayoutError(f"{what}\nExpected layout:\n{layout.rstrip()}")


def check_data_dir(data_dir: str | os.PathLike | None, name: str, layout: str) -> Path:
    """``data_dir`` as a Path, or an error showing the expected layout."""
    if data_dir is None or str(data_dir) in ("", "None", "null"):
        raise layout_error(
            f"{name}: data_dir is not set; pass data_dir=/path/to/{name} on the command line",
            layout,
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise layout_error(f"{name}: data_dir {str(path)!r} does not exist", layout)
    return path


def require_file(path: Path, name: str, layout: str) -> Path:
    if not path.is_file():
        raise layout_error(f"{name}: missing file {str(path)!r}", layout)
    return path


class SplitDataModule(L.LightningDataModule):
    """A datamodule whose ``setup`` fills ``self.splits`` (``train``, ``val``, ``test``).

    Subclasses set ``batch_size``, ``num_workers`` and ``pin_memory`` and expose
    ``modalities`` and ``num_classes`` right after ``__init__`` (the
    :class:`asgml.types.MultimodalDataModule` protocol). Training batches are
    shuffled and the last incomplete one is dropped (when there is more than one batch).
    """

    batch_size: int = 64
    num_workers: int = 0
    pin_memory: bool = False
    modalities: Sequence[str]
    num_classes: int
    splits: dict[str, Dataset]

    def encoder_overrides(self) -> dict[str, dict[str, Any]]:
        """Encoder arguments read from the data; none by default."""
        return {}

    def eval_view(self, split: str) -> Dataset:
        """``split`` with evaluation transforms (no augmentation), item ``i`` the same sample
        as ``splits[split][i]``: what a method that values training samples reads. The split
        itself here (no augmentation); datamodules with train-time augmentation override it."""
        return self.splits[split]

    def _loader(self, split: str, shuffle: bool, dataset: Dataset | None = None) -> DataLoader:
        ds = self.splits[split] if dataset is None else dataset
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=shuffle and len(ds) > self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """The shuffled train split, or this epoch's train-set plan over it when a method
        callback returns one (:mod:`asgml.train_set_plan`)."""
        plan = request_train_set_plan(self.trainer, self)
        if plan is None:
            return self._loader("train", True)
        return self._loader("train", True, PlannedDataset(self.splits["train"], plan))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
