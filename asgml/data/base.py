"""What every datamodule shares: the loaders over ``splits`` and the data-layout errors.

The training loader is exactly resumable, also mid-epoch and with worker processes:

* `EpochSampler` shuffles from ``(seed, epoch)`` alone and hands each index out as an
  ``(epoch, index)`` key;
* `SeededItems` draws every training item with torch's CPU generator seeded from
  ``(seed, epoch, index)`` (and put back afterwards), so an item's random augmentation
  depends on nothing else: not on the worker that loads it, the number of workers, or how
  many items a persistent worker loaded before (a resumed run restarts its workers, whose
  random streams an uninterrupted run would have continued);
* `ResumableLoader` tells Lightning (``state_dict``) which epoch it is in and how many
  batches it has handed out; a run resumed from a mid-epoch checkpoint skips them;
* every loader (train, val, test) has its own seeded ``generator``: a ``DataLoader`` draws
  its workers' base seed each time it starts an iterator, from the global RNG when it has
  no generator. The val/test loaders keep their workers (``persistent_workers``), so an
  uninterrupted run starts their iterator once while a resumed run starts it again: drawn
  from the global RNG, that extra draw would shift whatever reads the global stream
  afterwards (OGM-GE's noise), and the resumed run would differ
  (tests/reliability/test_resume_workers.py).

Item randomness must therefore come from torch's global (CPU) generator, as torchvision's
transforms and `asgml.data.audiovisual.frame_indices` do; ``random`` and
``numpy.random`` are not re-seeded per item.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from typing_extensions import override

from asgml.core.train_set_plan import PlannedDataset, request_train_set_plan

# the layout errors live in the torch-free asgml.data.layout (checked before a run starts)
from asgml.data.layout import (  # noqa: F401
    DataLayoutError,
    check_data_dir,
    layout_error,
    require_file,
)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed from ``(seed, epoch, index)`` (numpy's ``SeedSequence`` mixing)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def split_seed(seed: int, split: str) -> int:
    """The seed of an evaluation loader's generator: `item_seed` of ``(seed, 2**32 +
    crc32(split), 0)`` (an epoch number no training run reaches)."""
    return item_seed(seed, 2**32 + zlib.crc32(split.encode()), 0)


class SeededItems(Dataset):
    """``dataset`` whose items, asked for as ``(epoch, index)``, are drawn with torch's CPU
    generator seeded by `item_seed`; the generator's state is put back afterwards, so
    loading in the main process (``num_workers=0``) leaves the global random stream alone.
    A plain ``index`` reads ``dataset[index]`` as is."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        epoch, index = key
        gen = torch.random.default_generator
        state = gen.get_state()
        gen.manual_seed(item_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            gen.set_state(state)


class EpochSampler(DistributedSampler):
    """Shuffles from ``(seed, epoch)`` (torch's ``DistributedSampler``: one rank's share of
    a permutation seeded with ``seed + epoch``; ``num_replicas=1`` by default) and yields
    ``(epoch, index)`` keys for `SeededItems`. `resume_at` skips the samples of
    an epoch that a resumed run already trained on."""

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, samples: int) -> None:
        """The next pass over ``epoch`` starts after its first ``samples`` samples."""
        self._resume = (int(epoch), int(samples))

    @property
    def skip(self) -> int:
        """Samples the next pass skips (those of the epoch being resumed)."""
        return self._resume[1] if self._resume and self._resume[0] == self.epoch else 0

    @override
    def __iter__(self) -> Any:
        skip, self._resume = self.skip, None
        order = list(super().__iter__())
        return iter([(self.epoch, i) for i in order[skip:]])


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` over an `EpochSampler` whose position Lightning saves
    in checkpoints (``state_dict``: the epoch and the batches handed out in it) and restores
    before iterating again (``load_state_dict``), so a run resumed mid-epoch continues with
    the next batch of the same epoch."""

    sampler: EpochSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = [0, 0]  # [epoch, batches handed out in it]

    @override
    def __iter__(self) -> Any:
        # Lightning may re-create the loader with its own sampler (``overfit_batches``
        # uses a SequentialSampler of plain indices): nothing to skip then
        skip = getattr(self.sampler, "skip", 0)
        if skip % (self.batch_size or 1):
            raise ValueError(f"cannot resume inside a batch ({skip} samples into the epoch)")
        self._position = [getattr(self.sampler, "epoch", 0), skip // (self.batch_size or 1)]
        for batch in super().__iter__():
            self._position[1] += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._position[0]), "batches": int(self._position[1])}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not isinstance(self.sampler, EpochSampler):  # a sampler Lightning put in
            return
        self.sampler.resume_at(state["epoch"], state["batches"] * (self.batch_size or 1))
        self._position = [int(state["epoch"]), int(state["batches"])]


class SplitDataModule(L.LightningDataModule):
    """A datamodule whose ``setup`` fills ``self.splits`` (``train``, ``val``, ``test``).

    Subclasses set ``batch_size``, ``num_workers`` and ``pin_memory`` and expose
    ``modalities`` and ``num_classes`` right after ``__init__`` (the
    `asgml.core.types.MultimodalDataModule` protocol). Training batches are
    shuffled and the last incomplete one is dropped (when there is more than one batch).
    The training loader is a `ResumableLoader` seeded from ``loader_seed`` (the run's
    ``seed``, set by `asgml.run.training.run`; else Lightning's ``PL_GLOBAL_SEED``, else 0).
    """

    loader_seed: int | None = None

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

    def _seed(self) -> int:
        """``loader_seed``, else Lightning's ``PL_GLOBAL_SEED``, else 0."""
        seed = self.loader_seed
        if seed is None:
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return int(seed)

    def _loader(self, split: str, shuffle: bool, dataset: Dataset | None = None) -> DataLoader:
        ds = self.splits[split] if dataset is None else dataset
        if shuffle:
            return self._train_loader(ds)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=shuffle and len(ds) > self.batch_size,
            persistent_workers=self.num_workers > 0,
            # the workers' base seed from (seed, split), not from the global RNG: a resumed
            # run restarts these persistent workers, an uninterrupted run does not
            generator=torch.Generator().manual_seed(split_seed(self._seed(), split)),
        )

    def _train_loader(self, ds: Dataset) -> ResumableLoader:
        seed = self._seed()
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = EpochSampler(ds, seed, num_replicas=world, rank=rank)
        return ResumableLoader(
            SeededItems(ds, seed),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=len(sampler) > self.batch_size,
            persistent_workers=self.num_workers > 0,
            # the workers' base seed: not drawn from the global RNG (which resume restores)
            generator=torch.Generator().manual_seed(seed),
        )

    def train_dataloader(self) -> DataLoader:
        """The shuffled train split, or this epoch's train-set plan over it when a method
        callback returns one (`asgml.core.train_set_plan`)."""
        plan = request_train_set_plan(self.trainer, self)
        if plan is None:
            return self._loader("train", True)
        return self._loader("train", True, PlannedDataset(self.splits["train"], plan))

    def val_dataloader(self) -> DataLoader:
        # a validation split carved from train (``val_fraction``) may come out empty: say so
        # rather than validate on nothing
        fraction = getattr(self, "val_fraction", None)
        if fraction is not None and not len(self.splits["val"]):
            raise ValueError(
                f"{getattr(self, 'NAME', type(self).__name__)}: val_fraction={fraction} leaves "
                "no validation split; set val_fraction > 0 or select_on=test"
            )
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
