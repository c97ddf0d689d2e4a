"""On-disk cache of decoded audio-visual clips (``python -m asgml.prepare dataset=...``).

Layout, under ``<cache_root>/<key>/`` (``cache_root`` defaults to ``<data_dir>/.asgml_cache``)::

    meta.json            preprocessing config, clip counts, array shapes
    train/audio.npy      float32 (N, F, T) spectrograms, one row per listed clip
    train/frames.npy     uint8 (total_frames, H, W, 3) frames at the fixed decode size
    train/offsets.npy    int64 (N + 1): clip i's frames are rows offsets[i]:offsets[i+1]
    test/...             the same for the test list
    COMPLETE             written last: a directory without it is a partial cache

``key`` is a SHA-256 of the preprocessing config (audio settings, decode size, which frames
are stored) and of the clip listing (split files' bytes, clip names, labels and frame
counts, audio file sizes). Changing either gives a new key, so a stale cache is never read: the datamodule
warns that the caches it finds do not match and decodes on the fly (or, with
``cache=require``, raises). Augmentations run per epoch on the cached uint8 frames.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch.utils.data import DataLoader, Dataset

from asgml.feedback import progress

log = logging.getLogger("asgml.data")

CACHE_VERSION = 1
MARKER = "COMPLETE"
SPLITS = ("train", "test")


class ClipFiles(Protocol):
    """A listed clip as the cache sees it (:class:`asgml.data.audiovisual.Clip`)."""

    name: str
    label: int
    audio: Path
    frames: list[Path]


class CacheSource(Protocol):
    """What the cache reads from its datamodule
    (:class:`asgml.data.audiovisual.AudioVisualDataModule`). The frame choice and the frame
    decoding are the datamodule's, so this module does not import the datamodule's."""

    NAME: str
    SPLIT_FILES: dict[str, str]
    data_dir: Path
    cache_root: Path
    frames: int
    frame_sampling: str
    decode_hw: tuple[int, int]
    num_workers: int

    def official_clips(self, split: str) -> Sequence[ClipFiles]: ...

    def cache_config(self) -> dict[str, Any]: ...

    def load_audio(self, path: Path) -> np.ndarray: ...

    def select_frames(
        self, n: int, t: int, random: bool = False, first: bool = False
    ) -> list[int]: ...

    def read_frame(self, path: Path, size_hw: tuple[int, int]) -> np.ndarray: ...


def _stored_mode(dm: CacheSource, split: str) -> str:
    """``all`` frames (random sampling at train), the ``first`` ones or the ``even`` ones."""
    if dm.frame_sampling == "first":
        return "first"
    return "all" if split == "train" and dm.frame_sampling == "random" else "even"


def _stored_indices(dm: CacheSource, n: int, mode: str) -> list[int]:
    return (
        list(range(n)) if mode == "all" else dm.select_frames(n, dm.frames, first=mode == "first")
    )


def cache_key(dm: CacheSource) -> tuple[str, dict[str, Any]]:
    """The cache directory name and the config it encodes."""
    h = hashlib.sha256()
    config = {"version": CACHE_VERSION, **dm.cache_config()}
    h.update(json.dumps(config, sort_keys=True).encode())
    for split in SPLITS:
        h.update((dm.data_dir / dm.SPLIT_FILES[split]).read_bytes())
        for c in dm.official_clips(split):
            size = c.audio.stat().st_size
            h.update(f"{split}|{c.name}|{c.label}|{c.audio.name}|{size}|{len(c.frames)}\n".encode())
    return h.hexdigest()[:16], config


def _identity(x: Any) -> Any:
    return x


class _DecodeSet(Dataset):
    """Decodes one clip (audio + stored frames) -- run through a DataLoader for workers."""

    def __init__(self, dm: CacheSource, clips: Sequence[ClipFiles], mode: str) -> None:
        self.dm, self.clips, self.mode = dm, clips, mode

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.clips[i]
        idx = _stored_indices(self.dm, len(c.frames), self.mode)
        frames = np.stack([self.dm.read_frame(c.frames[j], self.dm.decode_hw) for j in idx])
        return np.asarray(self.dm.load_audio(c.audio), dtype=np.float32), frames


class AVCacheSplit:
    """Read access to one split of a complete cache (memmaps opened lazily per process)."""

    def __init__(
        self, path: Path, mode: str, select: Callable[[int, int, bool], list[int]]
    ) -> None:
        self.path = path
        self.mode = mode
        self.select = select  # the datamodule's frame choice (for ``all`` stored frames)
        self._audio: np.ndarray | None = None
        self._frames: np.ndarray | None = None
        self.offsets = np.load(path / "offsets.npy")

    def __getstate__(self) -> dict[str, Any]:  # don't pickle open memmaps into workers
        state = dict(self.__dict__)
        state["_audio"] = state["_frames"] = None
        return state

    def get(self, pos: int, t: int, random: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        if self._audio is None:
            self._audio = np.load(self.path / "audio.npy", mmap_mode="r")
            self._frames = np.load(self.path / "frames.npy", mmap_mode="r")
        assert self._frames is not None
        s, e = int(self.offsets[pos]), int(self.offsets[pos + 1])
        idx = self.select(e - s, t, random) if self.mode == "all" else range(e - s)
        return self._audio[pos], [self._frames[s + j] for j in idx]


class AVCache:
    """Builds and opens caches for an :class:`~asgml.data.audiovisual.AudioVisualDataModule`."""

    @staticmethod
    def build(dm: CacheSource, overwrite: bool = False, progress_bar: bool = False) -> Path:
        key, config = cache_key(dm)
        root = dm.cache_root / key
        if (root / MARKER).is_file() and not overwrite:
            log.info("%s: cache %s is complete and up to date", dm.NAME, root)
            return root
        if root.exists():
            shutil.rmtree(root)
        meta: dict[str, Any] = {"config": config, "splits": {}}
        for split in SPLITS:
            clips = dm.official_clips(split)
            mode = _stored_mode(dm, split)
            out = root / split
            out.mkdir(parents=True)
            counts = [len(_stored_indices(dm, len(c.frames), mode)) for c in clips]
            offsets = np.zeros(len(clips) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum(counts)
            frames = None
            audio = None
            loader = DataLoader(
                _DecodeSet(dm, clips, mode),
                batch_size=None,
                num_workers=dm.num_workers,
                collate_fn=_identity,
            )
            bar = progress(
                loader, len(clips), f"{dm.NAME} {split}", unit="clip", enable=progress_bar
            )
            for i, (a, f) in enumerate(bar):
                if audio is None:
                    audio = np.lib.format.open_memmap(
                        out / "audio.npy", "w+", np.float32, (len(clips), *a.shape)
                    )
                if a.shape != audio.shape[1:]:
                    raise ValueError(
                        f"{clips[i].audio}: audio of shape {a.shape}, expected {audio.shape[1:]}"
                    )
                if frames is None:  # decode_size=native: the first clip's frame size
                    frames = np.lib.format.open_memmap(
                        out / "frames.npy", "w+", np.uint8, (int(offsets[-1]), *f.shape[1:])
                    )
                if f.shape[1:] != frames.shape[1:]:
                    raise ValueError(
                        f"{clips[i].frames[0].parent}: frames of size {f.shape[1:3]}, expected "
                        f"{frames.shape[1:3]}; the cache stores one frame size: set "
                        "dataset.datamodule.decode_size=[H, W] or cache=off"
                    )
                audio[i] = a
                frames[offsets[i] : offsets[i + 1]] = f
            if audio is None or frames is None:
                raise ValueError(f"{dm.NAME}: no clips to cache in the {split} list")
            audio.flush()
            frames.flush()
            log.info("%s %s: cached %d clips", dm.NAME, split, len(clips))
            np.save(out / "offsets.npy", offsets)
            meta["splits"][split] = {
                "clips": len(clips),
                "frames": int(offsets[-1]),
                "mode": mode,
                "audio_shape": list(audio.shape[1:]),
            }
            del audio, frames
        (root / "meta.json").write_text(json.dumps(meta, indent=2))
        (root / MARKER).write_text(key + "\n")  # last: marks the cache complete
        log.info("%s: wrote cache %s", dm.NAME, root)
        return root

    @staticmethod
    def open(dm: CacheSource, split: str, required: bool = False) -> AVCacheSplit | None:
        key, _ = cache_key(dm)
        root = dm.cache_root / key
        if (root / MARKER).is_file():
            meta = json.loads((root / "meta.json").read_text())["splits"][split]
            n = len(dm.official_clips(split))
            if meta["clips"] != n:  # pragma: no cover - guarded by the key
                raise RuntimeError(
                    f"cache {root} holds {meta['clips']} {split} clips, expected {n}"
                )
            log.info("%s %s: using cache %s", dm.NAME, split, root)
            return AVCacheSplit(root / split, meta["mode"], dm.select_frames)
        prepare = f"python -m asgml.prepare dataset=<{dm.NAME} config> data_dir={dm.data_dir}"
        if root.exists():
            msg = f"partial cache {root} (no {MARKER} marker) is ignored"
        else:
            others = sorted(p.name for p in dm.cache_root.glob("*") if (p / MARKER).is_file())
            if others:
                msg = (
                    f"stale cache: {dm.cache_root} holds caches {others} built for another "
                    f"preprocessing config or file listing (expected {key})"
                )
            else:
                msg = f"no cache at {root}"
        if required:
            raise FileNotFoundError(f"{dm.NAME} {split}: {msg}; build it with `{prepare}`")
        if msg.startswith("no cache"):
            log.info(
                "%s %s: %s; decoding files on the fly (`%s` builds one)",
                dm.NAME,
                split,
                msg,
                prepare,
            )
        else:
            warnings.warn(
                f"{dm.NAME} {split}: {msg}; decoding files on the fly (rebuild with `{prepare}`)",
                stacklevel=2,
            )
        return None
