"""A built-in synthetic multimodal task with a controllable strong and weak modality.

Every sample has one label ``y``; modality ``m`` carries ``strength_m * prototype_m[y]``
plus unit Gaussian noise, shaped like the real inputs:

* ``spectrogram``: ``(1, H, W)`` (audio-like, ResNet-18 with 1 channel);
* ``frames``: ``(3, T, H, W)`` (visual-like, temporal ResNet-18);
* ``vector``: ``(L, D)`` sequence features (MMSA-like, MLP encoder).

With the defaults the audio signal is much stronger than the visual one, so jointly
trained baselines under-train the visual encoder -- the imbalance the library is about.
All tensors are generated from ``seed`` alone (independent of the global RNG).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from asgml.data.base import SplitDataModule

KINDS = ("spectrogram", "frames", "vector")


class DictTensorDataset(Dataset):
    """A dataset over in-memory tensors returning ``{modality: x, "label": y}`` dicts."""

    def __init__(self, tensors: Mapping[str, Tensor], labels: Tensor) -> None:
        self.tensors = dict(tensors)
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {m: t[i] for m, t in self.tensors.items()}
        item["label"] = self.labels[i]
        return item


def _shape(kind: str, spec: Mapping[str, Any]) -> tuple[int, ...]:
    size = int(spec.get("size", 32))
    if kind == "spectrogram":
        return (1, size, size)
    if kind == "frames":
        return (3, int(spec.get("frames", 2)), size, size)
    return (int(spec.get("length", 8)), int(spec.get("dim", 32)))


def make_synthetic(
    specs: Mapping[str, Mapping[str, Any]],
    num_classes: int,
    num_samples: int,
    seed: int,
    split_offset: int = 0,
) -> tuple[dict[str, Tensor], Tensor]:
    """Generate ``num_samples`` samples. Prototypes depend on ``seed`` only; samples on
    ``seed`` and ``split_offset`` (so train/val/test differ but share prototypes)."""
    g_proto = torch.Generator().manual_seed(seed)
    protos = {}
    for m, spec in specs.items():
        shape = _shape(spec["kind"], spec)
        p = torch.randn((num_classes, *shape), generator=g_proto)
        if spec["kind"] == "frames":  # same pattern in every frame, plus per-frame noise
            p = p[:, :, :1].expand_as(p).clone()
        protos[m] = p / p.flatten(1).std(dim=1).view(-1, *[1] * len(shape))
    g = torch.Generator().manual_seed(seed * 1000 + 17 + split_offset)
    labels = torch.randint(0, num_classes, (num_samples,), generator=g)
    data = {}
    for m, spec in specs.items():
        noise = torch.randn((num_samples, *protos[m].shape[1:]), generator=g)
        data[m] = (
            float(spec["strength"]) * protos[m][labels] + float(spec.get("noise", 1.0)) * noise
        )
    return data, labels


class SyntheticDataModule(SplitDataModule):
    """The default dataset (``dataset=synthetic``).

    Args:
        modalities: ``{name: {kind, strength, noise, size, frames, length, dim}}`` for every
            modality on offer, in order; the first ``num_modalities`` are used.
        num_modalities: how many modalities to use (>= 2).
        num_classes: number of classes.
        num_train: training samples.
        num_val: validation samples.
        num_test: test samples.
        batch_size: loader batch size.
        num_workers: loader worker processes.
        seed: data seed (independent of the training seed).
    """

    def __init__(
        self,
        modalities: Mapping[str, Mapping[str, Any]],
        num_modalities: int = 2,
        num_classes: int = 4,
        num_train: int = 1024,
        num_val: int = 256,
        num_test: int = 256,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        names: Sequence[str] = list(modalities)
        if num_modalities < 2:
            raise ValueError(f"dataset.num_modalities must be >= 2, got {num_modalities}")
        if num_modalities > len(names):
            raise ValueError(
                f"dataset.num_modalities={num_modalities} but dataset.modalities defines only "
                f"{len(names)}: {list(names)}"
            )
        specs = {}
        for m in names[:num_modalities]:
            spec = dict(modalities[m])
            if spec.get("kind") not in KINDS:
                raise ValueError(
                    f"dataset.modalities.{m}.kind must be one of {KINDS}, got {spec.get('kind')!r}"
                )
            if "strength" not in spec:
                raise ValueError(f"dataset.modalities.{m}.strength is required")
            specs[m] = spec
        self.specs = specs
        self.modalities = list(specs)
        self.num_classes = num_classes
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, DictTensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for offset, split in enumerate(("train", "val", "test")):
            data, labels = make_synthetic(
                self.specs, self.num_classes, self.sizes[split], self.seed, split_offset=offset
            )
            self.splits[split] = DictTensorDataset(data, labels)
