"""ModelNet40 front / rear views, the two-"modality" task of the Greedy paper (Wu et al.,
ICML 2022, https://github.com/nyukat/greedy_multimodal_learning @ a190e03
``src/dataset.py``, ``configs/training.gin``), on the 12-view shaded renderings of MVCNN
(http://maxwell.cs.umass.edu/mvcnn-data/, the README's link).

Layout (``data_dir``, the renderings as released)::

    <class>/train/<class>_<id>.obj.shaded_v001.png ... _v012.png   12 views per model
    <class>/test/...                                               the same for test

Classes: the 40 ModelNet40 names in Greedy's fixed order (alphabetical, dataset.py:56-60),
label = index. A model is the part of a file name before ``.obj.`` (dataset.py:74-77); its
view ``k`` is the ``k``-th of its name-sorted files (Greedy stacks the 12 sorted files,
dataset.py:36-47). ``views: [0, 6]`` (``training.gin:33``): front and rear, the two
modalities (named by ``modalities``). The official loader reads ``.obj.npy`` stacks made from
these PNGs with ``torch.save`` (``make_npy_files``); this loader reads the PNGs themselves
(the same pixels, no pickles).

Transforms (dataset.py:116-138): train ``RandomHorizontalFlip`` per view, ImageNet
normalisation; no resize in the official code (the renders are 224 px); here
``Resize((S, S))`` when a view is not S x S. Validation (dataset.py:157-166): the official
split shuffles the train models with ``random.Random(10)`` and takes the first
``floor(0.2 * n)`` as validation (``val_split: official``); ``stratified`` uses the library's
seeded, stratified split with ``val_fraction``.

Models with fewer than ``num_views`` view files are skipped and counted (Greedy would
silently shift every later model's views); a view that does not decode is an error naming
it; ``python -m asgml.prepare verify=true`` decodes every view used and lists the bad ones.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from typing_extensions import override

from asgml.data.audiovisual import IMAGENET_MEAN, IMAGENET_STD, decode_frame, stratified_val_split
from asgml.data.base import SplitDataModule, check_data_dir
from asgml.data.issues import DataIssues

log = logging.getLogger("asgml.data")

NAME = "modelnet40"
# Greedy src/dataset.py:56-60
CLASSES = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair",
    "cone", "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box",
    "guitar", "keyboard", "lamp", "laptop", "mantel", "monitor", "night_stand",
    "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs",
    "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
)  # fmt: skip
VAL_SPLITS = ("official", "stratified")
LAYOUT = """\
<data_dir>/
  <class>/train/<class>_<id>.obj.shaded_v001.png ... v012.png   12 views per model
  <class>/test/...                                                the same for test
(40 classes, e.g. airplane/train/airplane_0001.obj.shaded_v001.png; see docs/datasets/modelnet40.md)"""


@dataclass
class Model3D:
    """One model: its id (file stem before ``.obj.``), class index and sorted view files."""

    name: str
    label: int
    views: list[Path]


def list_models(root: Path, split: str, classes: Sequence[str]) -> tuple[list[Model3D], list[str]]:
    """The models of ``split`` in Greedy's order (class order, then sorted model ids), and
    the class folders that are not ModelNet40 classes."""
    models = []
    for label, cls in enumerate(classes):
        folder = root / cls / split
        try:
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".png"))
        except (FileNotFoundError, NotADirectoryError):
            continue
        groups: dict[str, list[Path]] = {}
        for n in names:
            groups.setdefault(n.split(".obj.")[0], []).append(folder / n)
        models += [Model3D(m, label, groups[m]) for m in sorted(groups)]
    known = set(classes)
    unknown = sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and d.name not in known and (d / split).is_dir()
    )
    return models, unknown


def official_val_split(
    n: int, valid_size: float = 0.2, seed: int = 10
) -> tuple[list[int], list[int]]:
    """Greedy's split (dataset.py:157-166): ``random.Random(seed).shuffle`` of ``range(n)``,
    the first ``floor(valid_size * n)`` are validation. Returns (train, val) in that order."""
    idx = list(range(n))
    k = int(np.floor(valid_size * n))
    random.Random(seed).shuffle(idx)
    return idx[k:], idx[:k]


class ModelNetViews(Dataset):
    """``{<front>: (3, S, S), <rear>: (3, S, S), "label"}`` items."""

    def __init__(self, dm: ModelNet40DataModule, models: Sequence[Model3D], train: bool) -> None:
        self.dm, self.models, self.train = dm, list(models), train
        s = dm.image_size
        self.resize = v2.Resize((s, s), antialias=True)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.models)

    def view(self, path: Path) -> Tensor:
        x = torch.from_numpy(decode_frame(path, None).copy()).permute(2, 0, 1)
        if tuple(x.shape[1:]) != (self.dm.image_size, self.dm.image_size):
            x = self.resize(x)
        if self.train and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return (x.float() / 255.0 - self.mean) / self.std

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        m = self.models[i]
        item = {name: self.view(m.views[k]) for name, k in zip(self.dm.modalities, self.dm.views)}
        item["label"] = torch.tensor(m.label, dtype=torch.long)
        return item


class _VerifySet(Dataset):
    def __init__(self, models: Sequence[Model3D], views: Sequence[int]) -> None:
        self.models, self.views = models, views

    def __len__(self) -> int:
        return len(self.models)

    def __getitem__(self, i: int) -> list[str]:
        errors = []
        for k in self.views:
            try:
                decode_frame(self.models[i].views[k], None)
            except Exception as e:
                errors.append(str(e))
        return errors


def _identity(x: Any) -> Any:
    return x


class ModelNet40DataModule(SplitDataModule):
    """ModelNet40 as two views of each object (see the module docstring).

    Args:
        data_dir: the rendered views' root (see ``LAYOUT``).
        modalities: the names of the two view streams (batch keys = ``model.encoders`` keys).
        views: which of the ``num_views`` sorted views each stream reads ([0, 6]: front, rear).
        num_views: view files per model (12).
        num_classes: 40.
        image_size: side S of the views the model sees (the renders are 224 px).
        val_split: ``official`` (Greedy: ``random.Random(10)`` shuffle, first 20% of the
            train models) or ``stratified`` (the library's split, ``val_fraction`` / ``seed``).
        val_fraction: validation fraction (0.2, Greedy's ``valid_size``).
        seed: the validation split's seed (10, Greedy's ``random_seed_for_validation``).
        batch_size: loader batch size (8 in Greedy).
        num_workers: loader worker processes.
        pin_memory: loader ``pin_memory``.
        strict: fail instead of skipping models with missing views.
    """

    def __init__(
        self,
        data_dir: str | None,
        modalities: Sequence[str] = ("front", "rear"),
        views: Sequence[int] = (0, 6),
        num_views: int = 12,
        num_classes: int = 40,
        image_size: int = 224,
        val_split: str = "official",
        val_fraction: float = 0.2,
        seed: int = 10,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.NAME = NAME
        self.data_dir = check_data_dir(data_dir, NAME, LAYOUT)
        names, vs = [str(m) for m in modalities], [int(v) for v in views]
        if len(names) != len(vs) or len(set(names)) != len(names) or len(names) < 1:
            raise ValueError(
                f"{NAME}: modalities {list(modalities)} and views {list(views)} must be lists "
                "of the same length with distinct names"
            )
        if not all(0 <= v < num_views for v in vs):
            raise ValueError(f"{NAME}: views must be in [0, num_views={num_views}), got {vs}")
        if num_classes != len(CLASSES):
            raise ValueError(f"{NAME}: num_classes must be {len(CLASSES)}, got {num_classes}")
        if val_split not in VAL_SPLITS:
            raise ValueError(f"{NAME}: val_split must be one of {VAL_SPLITS}, got {val_split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"{NAME}: val_fraction must be in [0, 1), got {val_fraction}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"{NAME}: image_size must be a positive int, got {image_size!r}")
        self.modalities, self.views, self.num_views = names, vs, int(num_views)
        self.classes = list(CLASSES)
        self.num_classes = len(CLASSES)
        self.image_size, self.val_split = image_size, val_split
        self.val_fraction, self.seed, self.strict = float(val_fraction), int(seed), strict
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.splits: dict[str, ModelNetViews] = {}
        self._models: dict[str, list[Model3D]] = {}
        self._incomplete: dict[str, list[Model3D]] = {}
        self.data_issues = DataIssues(NAME)

    def official_models(self, split: str) -> list[Model3D]:
        """The complete models of ``split`` (memoised); incomplete ones are counted."""
        if split in self._models:
            return self._models[split]
        models, unknown = list_models(self.data_dir, split, self.classes)
        if not models:
            raise FileNotFoundError(
                f"{NAME}: no {split} views under {self.data_dir}; expected layout:\n{LAYOUT}"
            )
        self.data_issues.record(
            split, "unknown_class_dirs", unknown, len(unknown), "ignored: not a ModelNet40 class"
        )
        bad = [m for m in models if len(m.views) != self.num_views]
        if bad:
            msg = (
                f"{NAME}: {len(bad)} of {len(models)} {split} models under {self.data_dir} do not "
                f"have {self.num_views} view files, e.g. "
                + ", ".join(f"{m.name} ({len(m.views)})" for m in bad[:3])
            )
            if self.strict:
                raise FileNotFoundError(msg + " (strict=true)")
            warnings.warn(
                msg + "; they are skipped (set strict=true to fail instead)", stacklevel=2
            )
        self.data_issues.record(
            split, "missing_files", [m.name for m in bad], len(bad),
            f"skipped: not {self.num_views} view files",
        )  # fmt: skip
        self._incomplete[split] = bad
        self._models[split] = [m for m in models if len(m.views) == self.num_views]
        return self._models[split]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train, test = self.official_models("train"), self.official_models("test")
        if self.val_split == "official":
            tr, va = official_val_split(len(train), self.val_fraction, self.seed)
        else:
            tr, va = stratified_val_split([m.label for m in train], self.val_fraction, self.seed)
        if not tr:
            raise ValueError(f"{NAME}: the train split is empty; lower val_fraction")
        self.splits = {
            "train": ModelNetViews(self, [train[i] for i in tr], True),
            "val": ModelNetViews(self, [train[i] for i in va], False),
            "test": ModelNetViews(self, test, False),
        }
        log.info("%s: %d train / %d val / %d test models", NAME, len(tr), len(va), len(test))

    @override
    def eval_view(self, split: str) -> Dataset:
        ds = self.splits[split]
        return ModelNetViews(self, ds.models, False) if ds.train else ds

    def verify_files(self) -> list[str]:
        """Decode every view the streams read; one line per bad file or incomplete model."""
        problems: list[str] = []
        for split in ("train", "test"):
            models = self.official_models(split)
            problems += [
                f"{(m.views[0].parent / m.name) if m.views else m.name}: {len(m.views)} view "
                f"files, expected {self.num_views}"
                for m in self._incomplete[split]
            ]
            loader = DataLoader(
                _VerifySet(models, self.views), batch_size=None, num_workers=self.num_workers,
                collate_fn=_identity,
            )  # fmt: skip
            for errors in loader:
                problems += errors
        return problems
