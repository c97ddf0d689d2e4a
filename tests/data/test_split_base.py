"""`SplitDataModule.val_dataloader`: a validation split carved from train (``val_fraction``)
that comes out empty is refused, naming the dataset and the fraction."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from asgml.data.base import SplitDataModule


def _module(val_items: int, carved: bool) -> SplitDataModule:
    dm = SplitDataModule()
    dm.NAME = "toy"  # type: ignore[attr-defined]
    if carved:
        dm.val_fraction = 0.0  # type: ignore[attr-defined]
    dm.batch_size = 2
    dm.splits = {"val": TensorDataset(torch.zeros(val_items, 1))}
    return dm


def test_empty_carved_validation_split_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^toy: val_fraction=0\.0 leaves no validation split"):
        _module(0, carved=True).val_dataloader()


def test_non_empty_or_official_validation_split_loads() -> None:
    assert len(_module(4, carved=True).val_dataloader()) == 2
    _module(0, carved=False).val_dataloader()  # an official (not carved) split: no check
