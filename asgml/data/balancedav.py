"""BalancedAV, BalanceBenchmark's balanced audio-visual set, in the layout its loader reads
(https://github.com/GeWu-Lab/BalanceBenchmark @ 4c1482f ``balancemm/datasets/balance_dataset.py``;
``configs/dataset_config.yaml:42-51``: 30 classes).

Layout (``data_dir``; the names are configurable, BalanceBenchmark takes three paths)::

    annotations.json       {"labels": [<class>, ...],
                            "database": {<key>: {"subset": "training" | "testing",
                                                 "label": <class>}, ...}}
                           label = index in "labels" as listed (balance_dataset.py:28-41)
    visual/<key>.hdf5      dataset "video": one encoded JPEG (bytes) per frame
    audio/<key>.pkl        pickled 2-D float spectrogram

A clip is kept when both files exist (balance_dataset.py:39); the others are counted and
skipped, as are ``.hdf5`` files that do not open (``verify=true`` lists them). Frames (balance_dataset.py:86-100, `balancedav_frame_indices`): T = 3 of the
n frames; for n > 6, ``seg = n // T``, train ``randint(i*seg + 1, i*seg + seg)`` lowered to 8
when >= 9, eval ``i*seg + max(seg // 2, 1)``, and these numbers index the frame list
directly (0-based), so frame 0 is never picked; for n <= 6 every pick is frame 1.
Transforms: BalanceBenchmark's training branch (``RandomResizedCrop`` + flip) is never taken,
since its ``mode`` is ``train`` and the check reads ``mode == 'training'``
(balance_dataset.py:25, 38, 71): every split gets ``Resize((224, 224))`` + ImageNet
normalisation. ``augment: false`` (default) does the same; ``augment: true`` applies the
OGM-GE train transforms the code evidently meant. Audio: the stored array as ``(1, F, T)``.
Needs ``h5py`` (``pip install -e .[balancedav]``).
"""

from __future__ import annotations

import io
import json
import pathlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from asgml.data.audiovisual import AudioVisualDataModule, Clip, FrameTransform
from asgml.data.avdataset import load_spectrogram

LAYOUT = """\
<data_dir>/
  annotations.json      {"labels": [...], "database": {<key>: {"subset": "training"|"testing", "label": ...}}}
  visual/<key>.hdf5     dataset "video": one encoded JPEG per frame
  audio/<key>.pkl       pickled 2-D float spectrogram
(see docs/datasets/balancedav.md)"""

SUBSETS = {"train": "training", "test": "testing"}


class H5Frame(pathlib.PosixPath if hasattr(pathlib, "PosixPath") else pathlib.Path):  # type: ignore[misc]
    """Frame ``index`` of an ``.hdf5`` file: a path to the file (what the cache stats and
    hashes) that remembers which frame it is."""

    index: int = 0

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:  # keep the index across processes
        return h5_frame, (str(self), self.index)

    def __repr__(self) -> str:
        return f"H5Frame({str(self)!r}, {self.index})"


def h5_frame(path: str | Path, index: int) -> H5Frame:
    """Frame ``index`` of the ``.hdf5`` file ``path``."""
    f = H5Frame(path)
    f.index = index
    return f


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:
        raise ImportError(
            "dataset=balancedav reads .hdf5 frame files and needs h5py: "
            "pip install -e .[balancedav] (or pip install h5py)"
        ) from e
    return h5py


def count_h5_frames(path: Path) -> int:
    """Frames in ``path``'s ``video`` dataset; 0 when the file is missing, an error naming the
    file when it is not a readable HDF5 file with a ``video`` dataset."""
    if not path.is_file():
        return 0
    try:
        with _h5py().File(path, "r") as f:
            return len(f["video"])
    except ImportError:
        raise
    except Exception as e:
        raise OSError(f"cannot read frame file {path}: {e} (expected a dataset 'video')") from e


def read_h5_frame(frame: Path, size_hw: tuple[int, int] | None) -> np.ndarray:
    """One frame of an ``.hdf5`` file (``H5Frame``) as uint8 ``(H, W, 3)``, resized to
    ``size_hw`` (bilinear) unless ``None``; errors name the file and the frame."""
    index = getattr(frame, "index", 0)
    try:
        with _h5py().File(frame, "r") as f:
            data = bytes(np.asarray(f["video"][index]).tobytes())
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if size_hw is not None:
                im = im.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except ImportError:
        raise
    except Exception as e:
        raise OSError(f"cannot read frame {index} of {frame}: {e}") from e


def balancedav_frame_indices(
    n: int, t: int, random: bool = False, first: bool = False
) -> list[int]:
    """BalanceBenchmark's BalancedAV frame picks (balance_dataset.py:92-100), used as 0-based
    indices as the official code does: ``n > 6``: ``seg = n // t``, ``random`` (train)
    ``randint(i*seg + 1, i*seg + seg)`` lowered to 8 when >= 9, else ``i*seg + max(seg//2, 1)``;
    ``n <= 6``: frame 1 for every pick. Clamped to ``n - 1``. ``first``: the first ``t``."""
    if n < 1:
        raise ValueError("a clip needs at least one frame")
    if first:
        return [min(i, n - 1) for i in range(t)]
    if n <= 6:
        return [min(1, n - 1)] * t
    seg = n // t
    if random:
        picks = [i * seg + 1 + o for i, o in enumerate(torch.randint(0, seg, (t,)).tolist())]
        picks = [8 if p >= 9 else p for p in picks]
    else:
        picks = [i * seg + max(seg // 2, 1) for i in range(t)]
    return [min(p, n - 1) for p in picks]


class BalancedAVDataModule(AudioVisualDataModule):
    """BalancedAV: ``{"audio": (1, F, T), "visual": (3, T, S, S), "label"}`` batches.

    Args (besides `AudioVisualDataModule`'s):
        num_classes: checked against the annotation's ``labels`` (30).
        annotation_file: the JSON annotation.
        visual_dir: folder of the ``<key>.hdf5`` frame files.
        audio_dir: folder of the ``<key>.pkl`` spectrograms.
        augment: train transforms; false as BalanceBenchmark executes (module docstring).
        audio_shape: the (F, T) every spectrogram must have; null: any 2-D array.
    """

    NAME = "balancedav"
    LAYOUT = LAYOUT
    select_frames = staticmethod(balancedav_frame_indices)
    read_frame = staticmethod(read_h5_frame)

    def __init__(
        self,
        data_dir: str | None,
        num_classes: int | None = 30,
        annotation_file: str = "annotations.json",
        visual_dir: str = "visual",
        audio_dir: str = "audio",
        augment: bool = False,
        audio_shape: Sequence[int] | None = None,
        frames: int = 3,
        **kwargs: Any,
    ) -> None:
        self.SPLIT_FILES = {"train": annotation_file, "test": annotation_file}
        super().__init__(data_dir, frames=frames, **kwargs)
        path = self.data_dir / annotation_file
        try:
            ann = json.loads(path.read_text(encoding="utf-8-sig"))
            self.classes = [str(c) for c in ann["labels"]]
            self._database: dict[str, Any] = dict(ann["database"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"balancedav: {path} is not an annotation file with 'labels' and 'database' "
                f"({type(e).__name__}: {e})"
            ) from e
        if num_classes is not None and num_classes != len(self.classes):
            raise ValueError(
                f"balancedav: num_classes={num_classes} but {path} lists {len(self.classes)} "
                "labels; set dataset.num_classes to match"
            )
        self.num_classes = len(self.classes)
        self.visual_dir, self.audio_dir = visual_dir, audio_dir
        self._unreadable: dict[str, list[str]] = {}
        self.augment = bool(augment)
        self.audio_shape = tuple(int(v) for v in audio_shape) if audio_shape else None

    def read_split(self, split: str) -> list[Clip]:
        _h5py()  # a clear error before any file is touched
        index = {c: i for i, c in enumerate(self.classes)}
        path = self.data_dir / self.SPLIT_FILES[split]
        clips, unreadable = [], []
        for key, entry in self._database.items():
            if not isinstance(entry, dict) or entry.get("subset") != SUBSETS[split]:
                continue
            label = entry.get("label")
            if label not in index:
                raise ValueError(f"balancedav: {path}: clip {key!r} has unknown label {label!r}")
            h5 = self.data_dir / self.visual_dir / f"{key}.hdf5"
            try:
                n = count_h5_frames(h5)
            except OSError as e:
                unreadable.append(str(e))
                continue
            frames = [h5_frame(h5, i) for i in range(n)]
            clips.append(
                Clip(key, index[label], self.data_dir / self.audio_dir / f"{key}.pkl", frames)
            )
        self._unreadable[split] = unreadable
        self.data_issues.record(
            split, "unreadable_files", unreadable, len(unreadable), "skipped: not a frame file"
        )
        return clips

    def verify_files(self) -> list[str]:
        """The base's checks (every spectrogram and every frame decoded) plus the ``.hdf5``
        files that could not be opened at listing."""
        problems = super().verify_files()
        return [*self._unreadable.get("train", []), *self._unreadable.get("test", []), *problems]

    def load_audio(self, path: Path) -> np.ndarray:
        return load_spectrogram(path, self.audio_shape)

    def audio_config(self) -> dict[str, Any]:
        return {"kind": "stored-pkl", "dir": self.audio_dir, "visual": f"{self.visual_dir}/*.hdf5"}

    def setup(self, stage: str | None = None) -> None:
        fresh = not self.splits
        super().setup(stage)
        if fresh and not self.augment:  # BalanceBenchmark: eval transforms at train too
            self.splits["train"].transform = FrameTransform(False, self.image_size)
