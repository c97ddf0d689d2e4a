"""CMU-MOSI, CMU-MOSEI and CH-SIMS from MMSA's processed pickles
(https://github.com/thuiar/MMSA, ``src/MMSA/data_loader.py``).

A pickle (``MOSI/Processed/unaligned_50.pkl``, ``MOSEI/Processed/unaligned_50.pkl``,
``SIMS/Processed/unaligned_39.pkl``) holds ``{"train" | "valid" | "test": {...}}`` with

* ``text`` (N, L, 768) BERT features; ``text_bert`` (N, 3, L) token ids / attention mask /
  segment ids (for a BERT encoder, not shipped here);
* ``audio`` (N, La, Da), ``vision`` (N, Lv, Dv) and ``audio_lengths`` / ``vision_lengths``
  (valid time steps, unaligned files only);
* ``regression_labels`` (N,) sentiment in [-3, 3] (MOSI/MOSEI) or [-1, 1] (SIMS); also
  ``raw_text``, ``id``, ``annotations`` and the deprecated ``classification_labels``.

As MMSA, ``-inf`` in ``audio`` is set to 0. Feature dims and lengths come from the file;
`MMSADataModule.encoder_overrides` hands the dims to the MLP encoders.

Labels from ``regression_labels`` ``y`` (``num_classes``):

* 2: ``y < 0`` -> 0, ``y >= 0`` -> 1 (MMSA ``Has0_acc_2``); with ``drop_neutral`` samples with
  ``y == 0`` are dropped (MMSA ``Non0_acc_2``, ``y > 0`` -> 1);
* 3 (default): negative 0 / neutral 1 / positive 2 with neutral ``|y| <= neutral_band``.
  The default band 0 is ``<0 / ==0 / >0``: the design document's setting and the convention of
  MMSA's (deprecated) ``classification_labels``; for SIMS (labels on a 0.2 grid) it equals
  MMSA's ``Mult_acc_3`` thresholds (+-0.1). ``neutral_band=0.5`` reproduces MMSA's
  ``Mult_acc_3`` for MOSI/MOSEI (``round(clip(y, -1, 1))``);
* 7: ``round(clip(y, -3, 3)) + 3`` (MMSA ``Mult_acc_7``, MOSI/MOSEI; SIMS labels only reach
  classes 2..4).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from asgml.data.base import SplitDataModule
from asgml.data.issues import DataIssues
from asgml.data.layout import MMSA_LAYOUT as LAYOUT
from asgml.data.layout import check_data_dir, layout_error
from asgml.data.safe_pickle import UnsafePickleError, safe_load

log = logging.getLogger("asgml.data")

SPLITS = {"train": "train", "val": "valid", "test": "test"}
MODALITIES = ("text", "audio", "vision")


def sentiment_classes(y: np.ndarray, num_classes: int, neutral_band: float = 0.0) -> np.ndarray:
    """Class indices from MMSA ``regression_labels`` (see the module docstring)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if num_classes == 2:
        out = (y >= 0).astype(np.int64)
    elif num_classes == 3:
        out = np.where(y < -neutral_band, 0, np.where(y > neutral_band, 2, 1))
    elif num_classes == 7:
        out = np.round(np.clip(y, -3.0, 3.0)).astype(np.int64) + 3
    else:
        raise ValueError(f"num_classes must be 2, 3 or 7, got {num_classes}")
    return out.astype(np.int64)


class MMSADataset(Dataset):
    """``{"text", "audio", "vision": (L, D) float32, "label", "lengths": {m: int64}}`` items."""

    def __init__(
        self, features: dict[str, Tensor], lengths: dict[str, Tensor], labels: Tensor
    ) -> None:
        self.features, self.lengths, self.labels = features, lengths, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {m: x[i] for m, x in self.features.items()}
        item["label"] = self.labels[i]
        if self.lengths:
            item["lengths"] = {m: n[i] for m, n in self.lengths.items()}
        return item


class MMSADataModule(SplitDataModule):
    """An MMSA pickle as three-modality (text, audio, vision) classification.

    Args:
        data_dir: folder holding ``file`` (or the pickle itself).
        file: ``unaligned_50.pkl`` (MOSI/MOSEI) or ``unaligned_39.pkl`` (SIMS).
        name: dataset name used in messages.
        num_classes: 2, 3 or 7 (see the module docstring).
        neutral_band: 3 classes: ``|y| <= neutral_band`` is neutral (0: the design document's setting).
        drop_neutral: 2 classes: drop ``y == 0`` samples (MMSA ``Non0``).
        text: ``text`` (BERT features, default) or ``text_bert`` (token ids, as an
            ``(L, 3)`` float sequence, with lengths from its attention mask).
        text_lengths: give ``text`` lengths derived from ``text_bert``'s attention mask
            (off by default: MMSA's ``text`` features have no lengths, so the encoder
            averages all L steps).
        batch_size: loader batch size (per process under DDP).
        num_workers: loader worker processes.
        pin_memory: loader ``pin_memory``.
        nonfinite: NaN / inf in the features (after MMSA's ``-inf`` -> 0 in ``audio``):
            ``error`` (default; the message counts them per split and modality) or ``zero``
            (set to 0 and recorded in ``data_issues``).
        label_range: ``regression_labels`` outside ``[lo, hi]`` are an error (MMSA: [-3, 3]).
        strict: lengths <= 0 (a blank modality) and train/test id overlap are errors
            instead of recorded warnings.
    """

    def __init__(
        self,
        data_dir: str | None,
        file: str = "unaligned_50.pkl",
        name: str = "mosei",
        num_classes: int = 3,
        neutral_band: float = 0.0,
        drop_neutral: bool = False,
        text: str = "text",
        text_lengths: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        nonfinite: str = "error",
        label_range: tuple[float, float] = (-3.0, 3.0),
        strict: bool = False,
    ) -> None:
        super().__init__()
        if data_dir is not None and Path(str(data_dir)).is_file():
            self.path = Path(str(data_dir))
        else:
            self.path = check_data_dir(data_dir, name, LAYOUT) / file
        if not self.path.is_file():
            raise layout_error(f"{name}: missing file {str(self.path)!r}", LAYOUT)
        if num_classes not in (2, 3, 7):
            raise ValueError(f"{name}: num_classes must be 2, 3 or 7, got {num_classes}")
        if text not in ("text", "text_bert"):
            raise ValueError(f"{name}: text must be 'text' or 'text_bert', got {text!r}")
        if nonfinite not in ("error", "zero"):
            raise ValueError(f"{name}: nonfinite must be 'error' or 'zero', got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.label_range = (float(label_range[0]), float(label_range[1]))
        self.strict = strict
        self.data_issues = DataIssues(name)
        self.name = name
        self.num_classes = int(num_classes)
        self.neutral_band = float(neutral_band)
        self.drop_neutral = drop_neutral
        self.text_key = text
        self.text_lengths = text_lengths
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.modalities = list(MODALITIES)
        self.splits: dict[str, MMSADataset] = {}

    # ------------------------------------------------------------------ loading
    def _key(self, split_data: dict, key: str, split: str) -> Any:
        if key not in split_data:
            raise KeyError(
                f"{self.path}: split {split!r} has no key {key!r} "
                f"(has {sorted(split_data)}); expected an MMSA pickle"
            )
        return split_data[key]

    def _load(self) -> None:
        if self.splits:
            return
        try:
            data = safe_load(self.path)
        except UnsafePickleError:
            raise
        except Exception as e:
            raise OSError(f"cannot read MMSA pickle {self.path}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected a dict of splits, got {type(data).__name__}")
        for theirs in SPLITS.values():
            if theirs not in data:
                raise KeyError(f"{self.path}: no split key {theirs!r} (has {sorted(data)})")
        self.splits = {ours: self._build(data[theirs], theirs) for ours, theirs in SPLITS.items()}
        self._check_widths()
        ids = {
            s: set(self._ids(data[s], len(data[s].get("regression_labels", []))))
            for s in ("train", "test")
        }
        overlap = sorted(ids["train"] & ids["test"]) if "id" in data["train"] else []
        if overlap and self.strict:
            raise ValueError(
                f"{self.path}: {len(overlap)} ids are in both train and test, e.g. {overlap[:3]}"
            )
        self.data_issues.record(
            "test", "train_test_overlap", overlap, len(overlap), "also in train, kept"
        )
        dims = {m: tuple(x.shape[1:]) for m, x in self.splits["train"].features.items()}
        log.info(
            "%s: %s -> %s samples (train/val/test), features %s",
            self.name,
            self.path,
            "/".join(str(len(self.splits[s])) for s in SPLITS),
            dims,
        )

    def _check_widths(self) -> None:
        """Every split's features of a modality have the train split's width ``D`` (the
        encoder's ``input_dim`` is read from train): else a split would fail inside the
        model, after training, naming neither the split nor the file."""
        train = {m: int(x.shape[-1]) for m, x in self.splits["train"].features.items()}
        for ours, theirs in SPLITS.items():
            for m, x in self.splits[ours].features.items():
                if m in train and int(x.shape[-1]) != train[m]:
                    raise ValueError(
                        f"{self.path}: split {theirs!r} has {m} features of width "
                        f"{int(x.shape[-1])}, split 'train' of width {train[m]} (the "
                        "encoder's input_dim); every split of a modality needs the same width"
                    )

    @staticmethod
    def _ids(d: dict, n: int) -> list[str]:
        ids = d.get("id")
        return (
            [str(i) for i in ids]
            if ids is not None and len(ids) == n
            else [f"#{i}" for i in range(n)]
        )

    def _build(self, d: dict, split: str) -> MMSADataset:
        arrays = {
            "text": self._key(d, self.text_key, split),
            "audio": self._key(d, "audio", split),
            "vision": self._key(d, "vision", split),
        }
        feats = {m: np.asarray(a, dtype=np.float32) for m, a in arrays.items()}
        if self.text_key == "text_bert":  # (N, 3, L) -> (N, L, 3)
            feats["text"] = np.ascontiguousarray(feats["text"].transpose(0, 2, 1))
        feats["audio"] = feats["audio"].copy()
        feats["audio"][np.isneginf(feats["audio"])] = 0.0  # as MMSA's data_loader
        for m, x in feats.items():
            if x.ndim != 3:
                raise ValueError(f"{self.path}: {split}/{m} should be (N, L, D), got {x.shape}")
        lengths: dict[str, np.ndarray] = {}
        for m in ("audio", "vision"):
            if f"{m}_lengths" in d:
                lengths[m] = np.asarray(d[f"{m}_lengths"], dtype=np.int64).reshape(-1)
        if self.text_key == "text_bert" or self.text_lengths:
            mask = np.asarray(self._key(d, "text_bert", split))[:, 1, :]
            lengths["text"] = mask.sum(axis=1).astype(np.int64)
        y = np.asarray(self._key(d, "regression_labels", split), dtype=np.float64).reshape(-1)
        if not np.isfinite(y).all():
            raise ValueError(f"{self.path}: {split}/regression_labels has non-finite values")
        n = len(y)
        if n == 0:
            raise ValueError(f"{self.path}: split {split!r} is empty (0 samples)")
        for m, x in [*feats.items(), *((f"{k}_lengths", v) for k, v in lengths.items())]:
            if len(x) != n:
                raise ValueError(f"{self.path}: {split}/{m} has {len(x)} rows, labels have {n}")
        ids = self._ids(d, n)
        lo, hi = self.label_range
        out = np.flatnonzero((y < lo) | (y > hi))
        if out.size:
            ex = ", ".join(f"{ids[i]}={y[i]:g}" for i in out[:3])
            raise ValueError(
                f"{self.path}: {out.size} {split}/regression_labels outside [{lo:g}, {hi:g}], "
                f"e.g. {ex}; is this an MMSA file (label_range sets the bounds)?"
            )
        self._check_features(feats, ids, split)
        for m, v in lengths.items():
            seq = feats[m].shape[1]
            bad = np.flatnonzero(v <= 0)
            if bad.size and self.strict:
                raise ValueError(
                    f"{self.path}: {bad.size} {split}/{m} lengths are <= 0, e.g. "
                    f"{[ids[i] for i in bad[:3]]} (strict=true)"
                )
            self.data_issues.record(
                split, f"{m}_lengths_nonpositive", [ids[i] for i in bad], bad.size,
                f"length <= 0: the {m} modality is blank (zero features) for them",
            )  # fmt: skip
            long = np.flatnonzero(v > seq)
            self.data_issues.record(
                split, f"{m}_lengths_beyond_sequence", [ids[i] for i in long], long.size,
                f"length > {seq} stored steps: all {seq} steps are used",
            )  # fmt: skip
        keep = np.ones(n, dtype=bool)
        if self.num_classes == 2 and self.drop_neutral:
            keep = y != 0
        labels = sentiment_classes(y[keep], self.num_classes, self.neutral_band)
        return MMSADataset(
            {m: torch.from_numpy(x[keep]) for m, x in feats.items()},
            {m: torch.from_numpy(v[keep]) for m, v in lengths.items()},
            torch.from_numpy(labels),
        )

    def _check_features(self, feats: dict[str, np.ndarray], ids: list[str], split: str) -> None:
        """NaN / inf in the features: an error counting them per modality, or (``nonfinite=
        zero``) set to 0 and recorded."""
        found = {}
        for m, x in feats.items():
            finite = np.isfinite(x)
            if not finite.all():
                rows = np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))
                found[m] = (rows, int(finite.size - finite.sum()))
                if self.nonfinite == "zero":
                    x[~finite] = 0.0
        if not found:
            return
        if self.nonfinite == "error":
            counts = "; ".join(
                f"{m}: {v} values in {len(r)} samples (e.g. {[ids[i] for i in r[:3]]})"
                for m, (r, v) in found.items()
            )
            raise ValueError(
                f"{self.path}: non-finite {split} features: {counts}. Set "
                "dataset.datamodule.nonfinite=zero to replace them with 0 (recorded)"
            )
        for m, (rows, v) in found.items():
            self.data_issues.record(
                split, f"{m}_nonfinite", [ids[i] for i in rows], len(rows),
                f"{v} NaN/inf feature values set to 0",
            )  # fmt: skip

    # ---------------------------------------------------------------- interface
    def feature_dims(self) -> dict[str, int]:
        """Feature size ``D`` of each modality, read from the file."""
        self._load()
        return {m: int(x.shape[-1]) for m, x in self.splits["train"].features.items()}

    @override
    def encoder_overrides(self) -> dict[str, dict[str, Any]]:
        """``{modality: {"input_dim": D}}``, merged into ``cfg.model.encoders`` by
        `asgml.run.build.build_model`."""
        return {m: {"input_dim": d} for m, d in self.feature_dims().items()}

    def setup(self, stage: str | None = None) -> None:
        self._load()
