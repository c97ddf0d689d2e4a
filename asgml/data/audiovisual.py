"""Shared machinery of the audio-visual datamodules (CREMA-D, AVE, Kinetics-Sounds).

* `Clip` -- one listed sample (name, label, audio file, sorted frame files).
* `frame_indices` -- the frames a clip contributes: evenly spaced (OGM-GE's AVE / KS
  loader, ``t = int(n / T) * i``, https://github.com/GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d
  ``dataset/dataset.py:95-106``), the first ``T`` listed frames (OGM-GE's CREMA-D loader,
  ``dataset/CramedDataset.py:83-90``, reading ``Image-{T:02d}-FPS``) or one random frame per
  segment at train.
* `decode_frame` / `FrameTransform` -- JPEG -> uint8 ``(H, W, 3)``, then the
  OGM-GE transforms (train ``RandomResizedCrop`` + flip, test ``Resize``; ImageNet
  normalisation; ``CramedDataset.py:68-80``) with ``torchvision.transforms.v2`` on the
  tensor, so the on-the-fly and the cached paths give identical results. Two pipelines:

  - ``decode_size: native`` (the official one): the frame is kept at its stored resolution
    and ``RandomResizedCrop(S)`` (train) / ``Resize((S, S))`` (eval) act on it, as the
    official loaders do on the decoded JPEG;
  - ``decode_size: null`` (or a size): the frame is first squashed to a square
    ``round(S * 256 / 224)`` (or the given size) copy and the transforms act on that -- the
    library's earlier behaviour, cheaper to cache; crops then see a distorted aspect ratio.
* `AudioVisualDataModule` -- official train/test lists, a seeded stratified validation
  split carved from train (the test list stays untouched), missing-file counting, and the
  on-disk cache of `asgml.data.cache`.
"""

from __future__ import annotations

import abc
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from typing_extensions import override

from asgml.data.base import SplitDataModule, check_data_dir, require_file
from asgml.data.cache import MARKER, AVCache, cache_key, verify_cache
from asgml.data.issues import DataIssues

log = logging.getLogger("asgml.data")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FRAME_EXTS = (".jpg", ".jpeg")


@dataclass
class Clip:
    """One listed sample: its id, class index, audio file, sorted frame files and the
    folder they were listed from (named when it holds no frame)."""

    name: str
    label: int
    audio: Path
    frames: list[Path]
    frame_dir: Path | None = None


def list_frames(frame_dir: Path) -> list[Path]:
    """The JPEG files of a clip directory, sorted by name ([] if the directory is missing)."""
    try:
        names = os.listdir(frame_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [frame_dir / n for n in sorted(names) if n.lower().endswith(FRAME_EXTS)]


def drop_missing(clips: Sequence[Clip], split_file: Path, strict: bool) -> list[Clip]:
    """Keep clips whose audio file and at least one frame exist; one warning counts the rest
    (OGM-GE skips them silently), or an error with ``strict=True``."""
    kept, missing = [], []
    for c in clips:
        (kept if c.frames and c.audio.is_file() else missing).append(c)
    if missing:
        ex = ", ".join(c.name for c in missing[:3])
        msg = (
            f"{len(missing)} of {len(clips)} clips listed in {split_file} are missing on disk "
            f"(no audio file or no frames), e.g. {ex}"
        )
        if strict:
            raise FileNotFoundError(msg + " (strict=true)")
        warnings.warn(msg + "; they are skipped (set strict=true to fail instead)", stacklevel=2)
    return kept


def stratified_val_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list, list]:
    """Seeded, stratified split of indices into (train, val): ``round(fraction * n)`` clips
    go to val, shared among classes in proportion to their size (largest remainders get
    the rounding). Depends only on ``labels``, ``fraction`` and ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels_np = np.asarray(labels)
    classes, sizes = np.unique(labels_np, return_counts=True)
    quota = fraction * sizes
    take = np.floor(quota).astype(int)
    extra = int(round(fraction * len(labels_np))) - int(take.sum())
    order = np.lexsort((rng.random(len(classes)), -(quota - take)))  # largest remainder first
    take[order[: max(extra, 0)]] += 1
    val: list[int] = []
    for c, k in zip(classes, take):
        idx = np.flatnonzero(labels_np == c)
        rng.shuffle(idx)
        val.extend(idx[:k].tolist())
    val_set = set(val)
    return [i for i in range(len(labels_np)) if i not in val_set], sorted(val)


FRAME_SAMPLING = ("even", "first", "random")


def frame_indices(n: int, t: int, random: bool = False, first: bool = False) -> list[int]:
    """``t`` of ``n`` sorted frames: ``seg * i`` with ``seg = n // t`` (OGM-GE AVE / KS; frames
    1, 4, 7 of 10 for ``t = 3``, the first frame for ``t = 1``); with ``first`` the first
    ``t`` frames (OGM-GE CREMA-D: ``image_samples[i] for i in range(fps)``, on a sorted
    listing where the official code takes ``os.listdir`` order); or with ``random`` one
    uniformly drawn frame per segment (torch's global RNG, so seeded by ``seed_everything``).
    Clips with fewer than ``t`` frames repeat their last frame."""
    if n < 1:
        raise ValueError("a clip needs at least one frame")
    if n < t or first:
        return [min(i, n - 1) for i in range(t)]
    seg = n // t
    if random:
        offs = torch.randint(0, seg, (t,)).tolist()
        return [seg * i + o for i, o in enumerate(offs)]
    return [seg * i for i in range(t)]


def decode_size_hw(
    decode_size: int | str | Sequence[int] | None, image_size: int
) -> tuple[int, int] | None:
    """Frames are stored at this (H, W): by default square, ``round(image_size * 256 / 224)``;
    ``native`` -> ``None`` (kept at the JPEG's own size, the official pipeline)."""
    if isinstance(decode_size, str):
        if decode_size != "native":
            raise ValueError(
                f"decode_size must be 'native', null, an int or [H, W]; got {decode_size!r}"
            )
        return None
    if decode_size is None:
        s = int(round(image_size * 256 / 224))
        return s, s
    if isinstance(decode_size, int):
        hw = [decode_size, decode_size]
    else:
        hw = list(decode_size)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise ValueError(
            f"decode_size must be 'native', null, a positive int or [H, W] of positive ints; "
            f"got {decode_size!r}"
        )
    return hw[0], hw[1]


def decode_frame(path: Path, size_hw: tuple[int, int] | None) -> np.ndarray:
    """A JPEG as a uint8 ``(H, W, 3)`` array resized (bilinear, PIL) to ``size_hw``, or at its
    own size when ``size_hw`` is ``None``."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size_hw is not None:
                im = im.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:
        raise OSError(f"cannot read image file {path}: {e}") from e
    return arr


class FrameTransform:
    """OGM-GE's frame transforms: uint8 ``(H, W, 3)`` -> float32 ``(3, S, S)``.

    Geometry with ``torchvision.transforms.v2`` (train ``RandomResizedCrop(S)`` + horizontal
    flip, eval ``Resize((S, S))``, antialiased) on a channels-last uint8 view, which takes
    torch's fast uint8 resize path; then ``x / 255`` and ImageNet normalisation fused into
    one multiply-subtract (same values as ``ToDtype(scale=True)`` + ``Normalize`` up to
    float rounding, about 4x cheaper).
    """

    def __init__(self, train: bool, image_size: int) -> None:
        self.geometry: v2.Transform = (
            v2.Compose(
                [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
            )
            if train
            else v2.Resize((image_size, image_size), antialias=True)
        )
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) / std

    def __call__(self, frame: np.ndarray) -> Tensor:
        x = _as_tensor(frame).permute(2, 0, 1)[None]  # (1, 3, H, W), channels-last
        x = self.geometry(x)[0]
        return x.float().mul_(self.scale).sub_(self.shift)


def _as_tensor(a: np.ndarray) -> Tensor:
    """A tensor over ``a`` (copied if read-only, e.g. a cache memmap)."""
    return torch.from_numpy(a if a.flags.writeable else np.array(a))


class AVClipDataset(Dataset):
    """``{<audio>: (1, F, T) float32, <visual>: (3, T, H, W) float32, "label": int64}`` items,
    keyed by the datamodule's two ``modalities`` names (default ``audio``, ``visual``).

    Reads from the cache when ``cache`` is given, else decodes the files on the fly with
    the datamodule's ``load_audio`` / ``read_frame``; both go through the same
    transforms, so outputs agree exactly at eval transforms.
    """

    def __init__(
        self,
        dm: AudioVisualDataModule,
        clips: Sequence[Clip],
        positions: Sequence[int],
        train: bool,
        cache: Any | None = None,
    ) -> None:
        self.dm = dm
        self.clips = list(clips)
        self.positions = list(positions)  # row of each clip in its official split (cache)
        self.train = train
        self.cache = cache
        self.transform = FrameTransform(train, dm.image_size)
        self.random_frames = train and dm.frame_sampling == "random"
        self.first_frames = dm.frame_sampling == "first"

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        clip = self.clips[i]
        if self.cache is not None:
            audio, frames = self.cache.get(self.positions[i], self.dm.frames, self.random_frames)
        else:
            audio = self.dm.load_audio(clip.audio)
            idx = self.dm.select_frames(
                len(clip.frames), self.dm.frames, self.random_frames, self.first_frames
            )
            frames = [self.dm.read_frame(clip.frames[j], self.dm.decode_hw) for j in idx]
        # per-frame transforms, as OGM-GE (each frame gets its own crop/flip at train)
        vis = torch.stack([self.transform(np.asarray(f)) for f in frames], dim=1)
        audio_name, visual_name = self.dm.modalities
        return {
            audio_name: _as_tensor(np.asarray(audio, dtype=np.float32))[None],
            visual_name: vis,
            "label": torch.tensor(clip.label, dtype=torch.long),
        }


def _identity(x: Any) -> Any:
    return x


class _VerifySet(Dataset):
    """One clip's decode errors (every frame, not only the sampled ones) and audio shape."""

    def __init__(self, dm: AudioVisualDataModule, clips: Sequence[Clip]) -> None:
        self.dm, self.clips = dm, clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[list[str], tuple[int, ...] | None, str]:
        c = self.clips[i]
        errors: list[str] = []
        shape = None
        try:
            shape = tuple(np.shape(self.dm.load_audio(c.audio)))
        except Exception as e:
            errors.append(f"{c.audio}: {e}")
        for f in c.frames:
            try:
                self.dm.read_frame(f, None)
            except Exception as e:
                errors.append(f"{f}: {e}")
        return errors, shape, str(c.audio)


class AudioVisualDataModule(SplitDataModule, abc.ABC):
    """Common base of the audio-visual datamodules.

    Subclasses set ``NAME``, ``LAYOUT``, ``num_classes`` and implement
    `read_split` (official list -> clips), `load_audio` (file -> 2-D float32
    array) and `audio_config` (preprocessing settings, part of the cache hash).

    Args:
        data_dir: dataset root (see ``LAYOUT``).
        modalities: the names of the audio and the visual stream, in that order (the batch
            keys; ``model.encoders`` must use the same names).
        frames: visual frames per clip (T).
        image_size: side of the square frames the model sees (224 in OGM-GE).
        decode_size: stored frame size (int or [H, W]); default ``round(image_size*256/224)``;
            ``native``: the JPEG's own size, the official pipeline (see the module docstring).
        frame_sampling: ``even`` (OGM-GE AVE / KS, same frames every epoch), ``first`` (the
            first ``frames`` listed frames, OGM-GE CREMA-D) or ``random`` (one random frame
            per segment at train; eval stays ``even``).
        val_fraction: fraction of each train class carved out (seeded) as validation.
        seed: seed of the validation split.
        batch_size: loader batch size (per process under DDP).
        num_workers: loader worker processes.
        pin_memory: loader ``pin_memory``.
        strict: fail (instead of a recorded warning) on clips missing on disk, listed
            twice, or in both the train and the test list.
        cache: ``auto`` (use a complete, matching cache if there is one, else decode on
            the fly with a warning if a stale one is found), ``off``, or ``require``.
        cache_dir: cache root; default ``<data_dir>/.asgml_cache``.
    """

    NAME = "av"
    LAYOUT = ""
    SPLIT_FILES: dict[str, str] = {}

    def __init__(
        self,
        data_dir: str | None,
        modalities: Sequence[str] = ("audio", "visual"),
        frames: int = 1,
        image_size: int = 224,
        decode_size: int | str | Sequence[int] | None = None,
        frame_sampling: str = "even",
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        strict: bool = False,
        cache: str = "auto",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = check_data_dir(data_dir, self.NAME, self.LAYOUT)
        for f in self.SPLIT_FILES.values():
            require_file(self.data_dir / f, self.NAME, self.LAYOUT)
        names = [str(m) for m in modalities]
        if len(names) != 2 or names[0] == names[1]:
            raise ValueError(
                f"{self.NAME}: modalities must be two distinct names [<audio>, <visual>], "
                f"got {list(modalities)}"
            )
        self.modalities = names
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if frame_sampling not in FRAME_SAMPLING:
            raise ValueError(
                f"frame_sampling must be one of {FRAME_SAMPLING}, got {frame_sampling!r}"
            )
        if cache not in ("auto", "off", "require"):
            raise ValueError(f"cache must be 'auto', 'off' or 'require', got {cache!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"{self.NAME}: image_size must be a positive int, got {image_size!r}")
        self.frames = int(frames)
        self.image_size = int(image_size)
        self.decode_hw = decode_size_hw(decode_size, self.image_size)
        self.frame_sampling = frame_sampling
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.strict = strict
        self.cache_mode = cache
        self.cache_root = Path(cache_dir) if cache_dir else self.data_dir / ".asgml_cache"
        self.splits: dict[str, AVClipDataset] = {}
        self._clips: dict[str, list[Clip]] = {}
        self._missing: dict[str, list[Clip]] = {}
        self.data_issues = DataIssues(self.NAME)

    # frame choice and frame decoding (the cache stores and reads frames with these too)
    select_frames = staticmethod(frame_indices)
    read_frame = staticmethod(decode_frame)

    # ------------------------------------------------------------ subclass API
    @abc.abstractmethod
    def read_split(self, split: str) -> list[Clip]:
        """The clips listed in the official ``split`` file (``train`` / ``test``)."""

    @abc.abstractmethod
    def load_audio(self, path: Path) -> np.ndarray:
        """One clip's audio file as a 2-D float32 array."""

    @abc.abstractmethod
    def audio_config(self) -> dict[str, Any]:
        """The audio preprocessing settings (part of the cache key)."""

    # ---------------------------------------------------------------- listing
    def official_clips(self, split: str) -> list[Clip]:
        """Clips of an official split (``train``/``test``) present on disk (memoised)."""
        if split not in self._clips:
            path = self.data_dir / self.SPLIT_FILES[split]
            clips = self.read_split(split)
            if not clips:
                raise ValueError(f"{self.NAME}: {path} lists no clips (empty {split} split)")
            self._check_duplicates(clips, split, path)
            kept = drop_missing(clips, path, self.strict)
            present = {id(c) for c in kept}
            self._missing[split] = [c for c in clips if id(c) not in present]
            gone = [c.name for c in self._missing[split]]
            self.data_issues.record(
                split, "missing_files", gone, len(gone), "skipped: no audio file or no frames"
            )
            if not kept:
                raise FileNotFoundError(
                    f"{self.NAME}: none of the {len(clips)} clips listed in {path} is on disk "
                    f"(e.g. {clips[0].audio}); check data_dir and the layout:\n{self.LAYOUT}"
                )
            self._clips[split] = kept
        return self._clips[split]

    def _check_duplicates(self, clips: Sequence[Clip], split: str, path: Path) -> None:
        """A clip listed twice with two labels is an error; with one label it is kept as
        listed (as the official loaders do) and recorded."""
        labels: dict[str, set[int]] = {}
        counts: dict[str, int] = {}
        for c in clips:
            labels.setdefault(c.name, set()).add(c.label)
            counts[c.name] = counts.get(c.name, 0) + 1
        conflicts = [n for n, ls in labels.items() if len(ls) > 1]
        if conflicts:
            ex = ", ".join(f"{n} (labels {sorted(labels[n])})" for n in conflicts[:3])
            raise ValueError(
                f"{self.NAME}: {len(conflicts)} clips are listed in {path} with two different "
                f"labels, e.g. {ex}; fix the list (each clip needs one label)"
            )
        repeated = [n for n, k in counts.items() if k > 1]
        if repeated and self.strict:
            raise ValueError(
                f"{self.NAME}: {len(repeated)} clips are listed twice in {path}, e.g. "
                f"{repeated[:3]} (strict=true)"
            )
        self.data_issues.record(
            split, "duplicate_ids", repeated, len(repeated), "listed twice, kept as listed"
        )

    def cache_config(self) -> dict[str, Any]:
        """Everything the cached arrays depend on (hashed with the clip listing)."""
        return {
            "dataset": type(self).__name__,
            "audio": self.audio_config(),
            "decode_hw": list(self.decode_hw) if self.decode_hw else "native",
            # which frames are stored: all of them for random sampling, else the chosen ones
            "frames": "all" if self.frame_sampling == "random" else self.frames,
            **({"frame_sampling": "first"} if self.frame_sampling == "first" else {}),
        }

    # ------------------------------------------------------------------ cache
    def build_cache(self, overwrite: bool = False, progress_bar: bool = False) -> Path:
        """Decode every listed clip once into the on-disk cache; returns its directory.
        ``progress_bar``: a bar per split (clips, rate, ETA) on stderr."""
        return AVCache.build(self, overwrite=overwrite, progress_bar=progress_bar)

    def _open_cache(self, split: str) -> Any | None:
        if self.cache_mode == "off":
            log.info("%s %s: cache=off, decoding files on the fly", self.NAME, split)
            return None
        return AVCache.open(self, split, required=self.cache_mode == "require")

    # ----------------------------------------------------------------- splits
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_clips = self.official_clips("train")
        test_clips = self.official_clips("test")
        overlap = sorted({c.name for c in train_clips} & {c.name for c in test_clips})
        if overlap and self.strict:
            raise ValueError(
                f"{self.NAME}: {len(overlap)} clips are in both the train and the test list, "
                f"e.g. {overlap[:3]} (strict=true)"
            )
        self.data_issues.record(
            "test", "train_test_overlap", overlap, len(overlap), "also in the train list, kept"
        )
        tr, va = stratified_val_split([c.label for c in train_clips], self.val_fraction, self.seed)
        if not tr:
            raise ValueError(
                f"{self.NAME}: the train split is empty ({len(train_clips)} clips, "
                f"val_fraction={self.val_fraction} takes {len(va)}); lower val_fraction"
            )
        cache_train, cache_test = self._open_cache("train"), self._open_cache("test")
        self.splits = {
            "train": AVClipDataset(self, [train_clips[i] for i in tr], tr, True, cache_train),
            "val": AVClipDataset(self, [train_clips[i] for i in va], va, False, cache_train),
            "test": AVClipDataset(self, test_clips, range(len(test_clips)), False, cache_test),
        }
        log.info(
            "%s: %d train / %d val (seeded, val_fraction=%s) / %d test clips",
            self.NAME,
            len(tr),
            len(va),
            self.val_fraction,
            len(test_clips),
        )

    # ----------------------------------------------------------------- verify
    def verify_files(self) -> list[str]:
        """Decode every listed audio file and every frame file once (``num_workers``
        processes) and, if a cache for this config exists, re-hash it
        (`asgml.data.cache.verify_cache`). Returns one line per bad file: unreadable,
        truncated, non-finite, of another audio shape, missing on disk."""
        problems: list[str] = []
        for split in ("train", "test"):
            clips = self.official_clips(split)
            for c in self._missing[split]:  # each missing file by its own path
                if not c.audio.is_file():
                    problems.append(f"{c.audio}: missing audio file (clip {c.name})")
                if not c.frames:
                    where = c.frame_dir if c.frame_dir is not None else c.name
                    problems.append(f"{where}: no frames (clip {c.name})")
            loader = DataLoader(
                _VerifySet(self, clips),
                batch_size=None,
                num_workers=self.num_workers,
                collate_fn=_identity,
            )
            shapes: dict[tuple[int, ...], list[str]] = {}
            for i, (errors, shape, audio) in enumerate(loader):
                problems += errors
                if shape is not None:
                    shapes.setdefault(shape, []).append(audio)
                if (i + 1) % 500 == 0 or i + 1 == len(clips):
                    log.info("%s %s: verified %d / %d clips", self.NAME, split, i + 1, len(clips))
            if len(shapes) > 1:  # the majority shape is taken as the right one
                common = max(shapes, key=lambda k: len(shapes[k]))
                for shape, paths in shapes.items():
                    if shape != common:
                        problems += [
                            f"{p}: audio of shape {shape}, most are {common}" for p in paths
                        ]
        root = self.cache_root / cache_key(self)[0]
        if (root / MARKER).is_file():
            log.info("%s: re-hashing cache %s and its sources", self.NAME, root)
            problems += verify_cache(root, self.data_dir)
        return problems

    @override
    def eval_view(self, split: str) -> Dataset:
        ds = self.splits[split]
        if not ds.train:
            return ds
        return AVClipDataset(self, ds.clips, ds.positions, False, ds.cache)
