"""AVE and Kinetics-Sounds in the OGM-GE ``AVDataset`` layout (``dataset/dataset.py`` of
https://github.com/GeWu-Lab/OGM-GE_CVPR2022) and in the shipped KS split format
(``data/KineticSound/my_{train,test}.txt``, audio from ``data/KineticSound/process_audio.py``).

``split_format=class_name`` (AVE; OGM-GE ``AVDataset``)::

    stat.txt                    one class name per line; label = index in the SORTED list
    my_train.txt, my_test.txt   rows ``<class>,<name>``; with ``dedupe_last`` a name listed
                                twice keeps its last label (OGM-GE does this for AVE)
    audio_spec/<name>.pkl       pickled 2-D float array, AVE: (257, 1004) z-scored log-PSD
    visual/<name>/frame_0000<k>.jpg   10 frames per clip, k = 1..10

``split_format=ks`` (the Kinetics-Sounds lists shipped with OGM-GE)::

    my_train.txt, my_test.txt   rows ``<ytid>[_<start>_<end>],10,<label>``, label 0..30
    audio/<name>.npy            (1024, 128) kaldi fbank, normalised ``(x + 4.503877) / 10.283``
    visual/<name>/*.jpg         1-fps frames

Frames: ``frames`` (default 3) chosen by `asgml.data.audiovisual.frame_indices`; for 10
frames and T = 3 these are the 1st, 4th and 7th in name order, i.e. OGM-GE's
``frame_00001/4/7.jpg``. Audio: ``(1, F, T)`` float32 as stored.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asgml.data.audiovisual import AudioVisualDataModule, Clip, list_frames
from asgml.data.layout import AVE_LAYOUT, KS_LAYOUT, layout_error
from asgml.data.safe_pickle import UnsafePickleError, safe_load


def read_class_names(path: Path) -> list[str]:
    """OGM-GE ``stat.txt``: the first CSV field of each line, sorted."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not a name
        names = [row[0].strip() for row in csv.reader(f) if row and row[0].strip()]
    return sorted(names)


def read_class_name_split(
    path: Path, classes: list[str], dedupe_last: bool
) -> list[tuple[str, int]]:
    """``(name, label)`` from ``<class>,<name>`` rows; unknown classes name file:line."""
    index = {c: i for i, c in enumerate(classes)}
    rows: dict[str, int] | list[tuple[str, int]] = {} if dedupe_last else []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{lineno}: expected `<class>,<name>`, got {row}")
            cls, name = row[0].strip(), row[1].strip()
            if cls not in index:
                raise ValueError(
                    f"{path}:{lineno}: unknown class {cls!r} for {name!r} (not in stat.txt)"
                )
            if isinstance(rows, dict):
                rows.pop(name, None)  # a repeated name moves to its last position and label
                rows[name] = index[cls]
            else:
                rows.append((name, index[cls]))
    return list(rows.items()) if isinstance(rows, dict) else rows


def read_ks_split(path: Path, num_classes: int) -> list[tuple[str, int]]:
    """``(name, label)`` from ``<name>,10,<label>`` rows; bad labels name file:line."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise ValueError(f"{path}:{lineno}: expected `<name>,10,<label>`, got {row}")
            name, lab = row[0].strip(), row[2].strip()
            try:
                label = int(lab)
            except ValueError:
                label = -1
            if not 0 <= label < num_classes:
                raise ValueError(
                    f"{path}:{lineno}: unknown label {lab!r} for {name!r} "
                    f"(expected an integer in [0, {num_classes}))"
                )
            rows.append((name, label))
    return rows


def load_spectrogram(path: Path, shape: Sequence[int] | None = None) -> np.ndarray:
    """A 2-D float32 array from a ``.pkl`` (OGM-GE AVE) or ``.npy`` (KS fbank) file, of
    ``shape`` when given; non-finite values are an error naming the file."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = safe_load(path)
        arr = np.asarray(arr, dtype=np.float32)
    except UnsafePickleError:
        raise
    except Exception as e:
        raise OSError(f"cannot read audio file {path}: {e}") from e
    if arr.ndim != 2:
        raise OSError(f"cannot read audio file {path}: expected a 2-D array, got {arr.shape}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise OSError(
            f"audio file {path} holds an array of shape {arr.shape}, expected {tuple(shape)} "
            "(dataset.datamodule.audio_shape); re-extract it"
        )
    bad = int(arr.size - np.isfinite(arr).sum())
    if bad:
        raise OSError(f"audio file {path} holds {bad} non-finite values (NaN or inf)")
    return arr


class AVEKSDataModule(AudioVisualDataModule):
    """AVE (28 events) / Kinetics-Sounds (31 actions): ``{"audio": (1, F, T), "visual":
    (3, T, S, S), "label"}`` batches.

    Args (besides `AudioVisualDataModule`'s):
        name: dataset name used in messages (``ave`` / ``ks``).
        num_classes: class count; checked against ``stat.txt`` for ``class_name``.
        split_format: ``class_name`` (``stat.txt`` + ``<class>,<name>``) or ``ks``.
        audio_dir, audio_ext: spectrogram folder and file type (``pkl`` or ``npy``).
        visual_dir: frame folders.
        train_file, test_file, stat_file: list files.
        dedupe_last: a name listed twice keeps its last label (OGM-GE, AVE); recorded in
            ``data_issues``.
        audio_shape: the (F, T) every audio file must have (KS: [1024, 128]); null: any
            2-D array (a batch of mixed shapes then fails to collate).
    """

    def __init__(
        self,
        data_dir: str | None,
        name: str = "ave",
        num_classes: int | None = None,
        split_format: str = "class_name",
        audio_dir: str = "audio_spec",
        audio_ext: str = "pkl",
        visual_dir: str = "visual",
        train_file: str = "my_train.txt",
        test_file: str = "my_test.txt",
        stat_file: str = "stat.txt",
        dedupe_last: bool = True,
        audio_shape: Sequence[int] | None = None,
        frames: int = 3,
        **kwargs: Any,
    ) -> None:
        if split_format not in ("class_name", "ks"):
            raise ValueError(f"split_format must be 'class_name' or 'ks', got {split_format!r}")
        if audio_ext not in ("pkl", "npy"):
            raise ValueError(f"audio_ext must be 'pkl' or 'npy', got {audio_ext!r}")
        self.NAME = name
        self.LAYOUT = AVE_LAYOUT if split_format == "class_name" else KS_LAYOUT
        self.SPLIT_FILES = {"train": train_file, "test": test_file}
        super().__init__(data_dir, frames=frames, **kwargs)
        self.split_format = split_format
        self.audio_dir, self.audio_ext, self.visual_dir = audio_dir, audio_ext, visual_dir
        self.dedupe_last = dedupe_last
        self.audio_shape = tuple(int(v) for v in audio_shape) if audio_shape else None
        if split_format == "class_name":
            stat = self.data_dir / stat_file
            if not stat.is_file():
                raise layout_error(f"{name}: missing file {str(stat)!r}", self.LAYOUT)
            self.classes = read_class_names(stat)
            if num_classes is not None and num_classes != len(self.classes):
                raise ValueError(
                    f"{name}: num_classes={num_classes} but {stat} lists {len(self.classes)} "
                    "classes; set dataset.num_classes to match"
                )
            self.num_classes = len(self.classes)
        else:
            if num_classes is None:
                raise ValueError(f"{name}: split_format=ks needs num_classes")
            self.classes = [str(i) for i in range(num_classes)]
            self.num_classes = int(num_classes)

    def read_split(self, split: str) -> list[Clip]:
        path = self.data_dir / self.SPLIT_FILES[split]
        if self.split_format == "class_name":
            rows = read_class_name_split(path, self.classes, self.dedupe_last)
            if self.dedupe_last:
                listed = read_class_name_split(path, self.classes, False)
                labels: dict[str, set[int]] = {}
                for name, label in listed:
                    labels.setdefault(name, set()).add(label)
                moved = [n for n, ls in labels.items() if len(ls) > 1]
                self.data_issues.record(
                    split, "duplicate_ids", moved, len(listed) - len(rows),
                    "listed twice, the last row's label kept (dedupe_last, as OGM-GE)",
                )  # fmt: skip
        else:
            rows = read_ks_split(path, self.num_classes)
        return [
            Clip(
                name,
                label,
                self.data_dir / self.audio_dir / f"{name}.{self.audio_ext}",
                list_frames(self.data_dir / self.visual_dir / name),
                frame_dir=self.data_dir / self.visual_dir / name,
            )
            for name, label in rows
        ]

    def load_audio(self, path: Path) -> np.ndarray:
        return load_spectrogram(path, self.audio_shape)

    def audio_config(self) -> dict[str, Any]:
        return {"kind": f"stored-{self.audio_ext}", "dir": self.audio_dir}
