"""VGGSound (309 classes, audio + visual) in the layout BalanceBenchmark's loader reads
(https://github.com/GeWu-Lab/BalanceBenchmark @ 4c1482f ``balancemm/datasets/VGG_dataset.py``;
paths from ``configs/dataset_config.yaml:80-92``), with the official annotation file
``vggsound.csv`` (Chen et al., ICASSP 2020, https://www.robots.ox.ac.uk/~vgg/data/vggsound/).

Layout (``data_dir``; every name is configurable)::

    vggsound.csv                     no header; rows ``<ytid>,<start_s>,<label>,<train|test>``
    visual/<ytid>_<start_s>/*.jpg    frames of the clip, name-sorted (train and test may use
                                     separate folders: visual_train_dir / visual_test_dir)
    audio/<ytid>_<start_s>.npy       float 2-D spectrogram (audio_train_dir / audio_test_dir)

A clip is kept when its frame folder holds more than 3 frames and its ``.npy`` exists
(VGG_dataset.py:46-51, 58-63); the others are skipped and counted (missing files,
``too_few_frames``). Labels: ``class_order: first_seen`` numbers the classes in the order
they first appear among the kept train clips, as BalanceBenchmark does (VGG_dataset.py:52,
76-78; the numbering then depends on which files are present); ``sorted`` numbers the
csv's train classes alphabetically. A test class absent from train is an error
(VGG_dataset.py:71 asserts the counts match).

Frames (VGG_dataset.py:112-133, `vggsound_frame_indices`): ``frames`` (3) of the n
sorted frames; for n > 6, ``seg = n // T``, train one uniform frame per segment with the
1-based index capped at 9, eval ``i * seg + max(seg // 2, 1)`` (1-based); for n <= 6 every
pick is the first frame. Transforms as OGM-GE (train ``RandomResizedCrop`` + flip, eval
``Resize``; VGG_dataset.py:98-110). Audio: the stored array as ``(1, F, T)`` float32.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asgml.data.audiovisual import AudioVisualDataModule, Clip, list_frames
from asgml.data.avdataset import load_spectrogram

CLASS_ORDERS = ("first_seen", "sorted")
MIN_FRAMES = 4  # BalanceBenchmark keeps clips with len(os.listdir(video_dir)) > 3

LAYOUT = """\
<data_dir>/
  vggsound.csv                       no header, rows `<ytid>,<start_s>,<label>,<train|test>`
  visual/<ytid>_<start_s>/*.jpg      frames, name-sorted (more than 3 per clip)
  audio/<ytid>_<start_s>.npy         float 2-D spectrogram
(see docs/datasets/vggsound.md for how to obtain and prepare it)"""


def vggsound_frame_indices(n: int, t: int, random: bool = False, first: bool = False) -> list[int]:
    """BalanceBenchmark's VGGSound frame picks, 0-based (VGG_dataset.py:119-129): for
    ``n > 6``, ``seg = n // t``; ``random`` (train): ``randint(i*seg + 1, i*seg + seg)``
    (1-based) capped at 9, else ``i*seg + max(seg // 2, 1)``; for ``n <= 6`` every pick is
    the first frame. ``first``: the first ``t`` frames (not an official mode)."""
    if n < 1:
        raise ValueError("a clip needs at least one frame")
    if first:
        return [min(i, n - 1) for i in range(t)]
    if n <= 6:
        return [0] * t
    seg = n // t
    if random:
        offs = torch.randint(0, seg, (t,)).tolist()
        return [min(i * seg + 1 + o, 9) - 1 for i, o in enumerate(offs)]
    return [min(i * seg + max(seg // 2, 1), n) - 1 for i in range(t)]


def read_vggsound_csv(path: Path) -> list[tuple[str, str, str]]:
    """``(name, label, split)`` of the official csv's rows, ``name = <ytid>_<start_s>``; bad
    rows name file:line."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 4 or row[3].strip() not in ("train", "test"):
                raise ValueError(
                    f"{path}:{lineno}: expected `<ytid>,<start_s>,<label>,<train|test>`, got {row}"
                )
            rows.append((f"{row[0]}_{row[1].strip()}", row[2].strip(), row[3].strip()))
    return rows


class VGGSoundDataModule(AudioVisualDataModule):
    """VGGSound: ``{"audio": (1, F, T), "visual": (3, T, S, S), "label"}`` batches.

    Args (besides `AudioVisualDataModule`'s):
        num_classes: the class count (309); the csv may name fewer (a subset), not more.
        csv_file: the annotation file.
        visual_train_dir: frame folders of the train clips.
        visual_test_dir: frame folders of the test clips.
        audio_train_dir: spectrograms of the train clips.
        audio_test_dir: spectrograms of the test clips.
        class_order: ``first_seen`` (BalanceBenchmark) or ``sorted``.
        audio_shape: the (F, T) every spectrogram must have; null: any 2-D array.
    """

    NAME = "vggsound"
    LAYOUT = LAYOUT
    select_frames = staticmethod(vggsound_frame_indices)

    def __init__(
        self,
        data_dir: str | None,
        num_classes: int = 309,
        csv_file: str = "vggsound.csv",
        visual_train_dir: str = "visual",
        visual_test_dir: str = "visual",
        audio_train_dir: str = "audio",
        audio_test_dir: str = "audio",
        class_order: str = "first_seen",
        audio_shape: Sequence[int] | None = None,
        frames: int = 3,
        **kwargs: Any,
    ) -> None:
        if class_order not in CLASS_ORDERS:
            raise ValueError(
                f"vggsound: class_order must be one of {CLASS_ORDERS}, got {class_order!r}"
            )
        self.SPLIT_FILES = {"train": csv_file, "test": csv_file}
        super().__init__(data_dir, frames=frames, **kwargs)
        self.dirs = {
            "train": (visual_train_dir, audio_train_dir),
            "test": (visual_test_dir, audio_test_dir),
        }
        self.class_order = class_order
        self.audio_shape = tuple(int(v) for v in audio_shape) if audio_shape else None
        self.num_classes = int(num_classes)
        self._rows = read_vggsound_csv(self.data_dir / csv_file)
        self._classes: list[str] | None = None

    def _clip(self, name: str, label: int, split: str) -> Clip:
        visual, audio = self.dirs[split]
        frames = list_frames(self.data_dir / visual / name)
        return Clip(name, label, self.data_dir / audio / f"{name}.npy", frames)

    @property
    def classes(self) -> list[str]:
        """Class names, label order (see ``class_order``)."""
        if self._classes is None:
            train = [(n, lab) for n, lab, s in self._rows if s == "train"]
            if self.class_order == "sorted":
                names = sorted({lab for _, lab in train})
            else:  # first seen among the clips BalanceBenchmark keeps
                names = []
                for n, lab in train:
                    c = self._clip(n, 0, "train")
                    if lab not in names and len(c.frames) >= MIN_FRAMES and c.audio.is_file():
                        names.append(lab)
            if len(names) > self.num_classes:
                raise ValueError(
                    f"vggsound: {self.data_dir / self.SPLIT_FILES['train']} names {len(names)} "
                    f"train classes, more than num_classes={self.num_classes}; set "
                    "dataset.num_classes to match"
                )
            self._classes = names
        return self._classes

    def read_split(self, split: str) -> list[Clip]:
        index = {c: i for i, c in enumerate(self.classes)}
        path = self.data_dir / self.SPLIT_FILES[split]
        clips, few = [], []
        for name, lab, s in self._rows:
            if s != split:
                continue
            clip = self._clip(name, index.get(lab, -1), split)
            if 0 < len(clip.frames) < MIN_FRAMES:
                few.append(name)
                continue
            if clip.label < 0:
                if clip.frames and clip.audio.is_file():
                    raise ValueError(
                        f"vggsound: {path} lists {split} clip {name!r} of class {lab!r}, which "
                        "no train clip has"
                    )
                clip.label = 0  # missing on disk anyway: counted and skipped by the base
            clips.append(clip)
        self.data_issues.record(
            split, "too_few_frames", few, len(few),
            f"skipped: fewer than {MIN_FRAMES} frames (BalanceBenchmark keeps > 3)",
        )  # fmt: skip
        return clips

    def load_audio(self, path: Path) -> np.ndarray:
        return load_spectrogram(path, self.audio_shape)

    def audio_config(self) -> dict[str, Any]:
        dirs = {s: list(d) for s, d in self.dirs.items()}
        return {"kind": "stored-npy", "dirs": dirs, "class_order": self.class_order}
