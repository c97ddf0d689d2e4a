"""On-disk cache of decoded audio-visual clips (``python -m asgml.prepare dataset=...``).

Layout, under ``<cache_root>/<key>/`` (``cache_root`` defaults to ``<data_dir>/.asgml_cache``)::

    meta.json            preprocessing config, clip counts, array shapes, each array
                         file's size and SHA-256
    sources.json         per split, every source file the cache read (audio + stored
                         frames): path, size, mtime and SHA-256
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

Content checks. Opening a cache compares each array file's size with ``meta.json`` (a
truncated copy is refused with a "rebuild" hint instead of numpy's ``mmap length`` error)
and each source file's size and mtime with ``sources.json`` (a source of another size is a
changed source; one with only a new mtime is re-hashed): a changed source makes the cache
stale. `verify_cache` (``python -m asgml.prepare verify=true``) re-hashes every source
and array file, which also finds a swapped frame of the same size or a zeroed array.
`list_caches` / `clean_caches` (``cache=list`` / ``cache=clean``) list and
remove stale and partial caches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch.utils.data import DataLoader, Dataset

from asgml.data.progress import progress

log = logging.getLogger("asgml.data")

CACHE_VERSION = 1
MARKER = "COMPLETE"
SPLITS = ("train", "test")
ARRAYS = ("audio.npy", "frames.npy", "offsets.npy")
HASH_CHUNK = 1 << 20


class BadFilesError(ValueError):
    """Clips that could not be decoded while building a cache: ``files`` holds one line per
    bad file (``<path>: <reason>``). The cache is left partial (no marker)."""

    def __init__(self, name: str, files: Sequence[str]) -> None:
        self.files = list(files)
        super().__init__(
            f"{name}: {len(self.files)} bad file(s); the cache was not completed:\n"
            + "\n".join(f"  {f}" for f in self.files)
        )


class CacheError(RuntimeError):
    """A cache file is corrupt or truncated; the message says how to rebuild it."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _source_record(path: Path, data_dir: Path) -> list[Any]:
    st = path.stat()
    return [os.path.relpath(path, data_dir), st.st_size, st.st_mtime_ns, file_sha256(path)]


def prepare_command(dm: Any, extra: str = "") -> str:
    return f"python -m asgml.prepare dataset=<{dm.NAME} config> data_dir={dm.data_dir}" + (
        f" {extra}" if extra else ""
    )


class ClipFiles(Protocol):
    """A listed clip as the cache sees it (`asgml.data.audiovisual.Clip`)."""

    name: str
    label: int
    audio: Path
    frames: list[Path]


class CacheSource(Protocol):
    """What the cache reads from its datamodule
    (`asgml.data.audiovisual.AudioVisualDataModule`). The frame choice and the frame
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

    def __getitem__(self, i: int) -> tuple[Any, Any, list[list[Any]], list[str]]:
        """``(audio, frames, sources, errors)``; a clip with a bad file gives
        ``(None, None, [], ["<file>: <reason>", ...])`` (every bad file of the clip)."""
        c = self.clips[i]
        idx = _stored_indices(self.dm, len(c.frames), self.mode)
        errors: list[str] = []
        try:
            audio = np.asarray(self.dm.load_audio(c.audio), dtype=np.float32)
        except Exception as e:  # any decoder error: the file is named, the build goes on
            errors.append(f"{c.audio}: {e}")
        decoded = []
        for j in idx:
            try:
                decoded.append(self.dm.read_frame(c.frames[j], self.dm.decode_hw))
            except Exception as e:
                errors.append(f"{c.frames[j]}: {e}")
        if errors:
            return None, None, [], errors
        files = [c.audio, *(c.frames[j] for j in sorted(set(idx)))]
        sources = [_source_record(p, self.dm.data_dir) for p in files]
        return audio, np.stack(decoded), sources, []


def open_array(path: Path) -> np.ndarray:
    """A cache array as a read-only memmap; a truncated or corrupt file is a
    `CacheError` naming it."""
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise CacheError(
            f"cache file {path} is corrupt or truncated ({e}); delete {path.parent.parent} "
            "and rebuild it with `python -m asgml.prepare ...` (the run's overrides, "
            "+overwrite=true)"
        ) from e


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
            self._audio = open_array(self.path / "audio.npy")
            self._frames = open_array(self.path / "frames.npy")
        assert self._frames is not None
        s, e = int(self.offsets[pos]), int(self.offsets[pos + 1])
        idx = self.select(e - s, t, random) if self.mode == "all" else range(e - s)
        return self._audio[pos], [self._frames[s + j] for j in idx]


class AVCache:
    """Builds and opens caches for an `AudioVisualDataModule`."""

    @staticmethod
    def build(dm: CacheSource, overwrite: bool = False, progress_bar: bool = False) -> Path:
        key, config = cache_key(dm)
        root = dm.cache_root / key
        if (root / MARKER).is_file() and not overwrite:
            log.info("%s: cache %s is complete and up to date", dm.NAME, root)
            return root
        try:
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
        except OSError as e:
            raise OSError(
                f"{dm.NAME}: cannot write the cache under {dm.cache_root} ({e}); point "
                "dataset.datamodule.cache_dir at a writable directory (the same setting "
                "must then be given to the training runs)"
            ) from e
        meta: dict[str, Any] = {"config": config, "splits": {}, "files": {}}
        sources: dict[str, list[list[Any]]] = {}
        bad: list[str] = []  # every bad file of every split; the build goes on past them
        for split in SPLITS:
            clips = dm.official_clips(split)
            mode = _stored_mode(dm, split)
            out = root / split
            out.mkdir(parents=True)
            sources[split] = []
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
            for i, (a, f, src, errors) in enumerate(bar):
                if errors:
                    bad.extend(errors)
                    continue
                sources[split].extend(src)
                if audio is None:
                    audio = np.lib.format.open_memmap(
                        out / "audio.npy", "w+", np.float32, (len(clips), *a.shape)
                    )
                if a.shape != audio.shape[1:]:
                    bad.append(
                        f"{clips[i].audio}: audio of shape {a.shape}, expected {audio.shape[1:]}"
                    )
                    continue
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
            if bad:  # nothing more to write: the cache cannot be completed
                continue
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
            for name in ARRAYS:
                p = out / name
                meta["files"][f"{split}/{name}"] = {
                    "size": p.stat().st_size,
                    "sha256": file_sha256(p),
                }
        if bad:
            raise BadFilesError(dm.NAME, bad)
        (root / "sources.json").write_text(json.dumps(sources))
        (root / "meta.json").write_text(json.dumps(meta, indent=2))
        (root / MARKER).write_text(key + "\n")  # last: marks the cache complete
        log.info("%s: wrote cache %s", dm.NAME, root)
        return root

    @staticmethod
    def open(dm: CacheSource, split: str, required: bool = False) -> AVCacheSplit | None:
        key, _ = cache_key(dm)
        root = dm.cache_root / key
        stale_sources: list[str] = []
        if (root / MARKER).is_file():
            full = json.loads((root / "meta.json").read_text())
            check_array_sizes(root, full, split)
            stale_sources = changed_sources(root, split, dm.data_dir)
        if (root / MARKER).is_file() and not stale_sources:
            meta = full["splits"][split]
            n = len(dm.official_clips(split))
            if meta["clips"] != n:  # pragma: no cover - guarded by the key
                raise RuntimeError(
                    f"cache {root} holds {meta['clips']} {split} clips, expected {n}"
                )
            log.info("%s %s: using cache %s", dm.NAME, split, root)
            return AVCacheSplit(root / split, meta["mode"], dm.select_frames)
        prepare = prepare_command(dm)
        if stale_sources:
            msg = (
                f"stale cache: {len(stale_sources)} source files changed since {root} was "
                f"built, e.g. {stale_sources[:3]}"
            )
            prepare = prepare_command(dm, "+overwrite=true")
        elif root.exists():
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


def check_array_sizes(root: Path, meta: dict[str, Any], split: str) -> None:
    """Each array file of ``split`` has the size recorded at build (cheap: one stat each)."""
    for name in ARRAYS:
        p = root / split / name
        want = (meta.get("files") or {}).get(f"{split}/{name}", {}).get("size")
        have = p.stat().st_size if p.is_file() else None
        if want is not None and have != want:
            raise CacheError(
                f"cache file {p} is {have if have is not None else 'missing'} bytes, expected "
                f"{want} (truncated or corrupt); delete {root} and rebuild it with "
                "`python -m asgml.prepare ...` (the run's overrides)"
            )


def changed_sources(root: Path, split: str, data_dir: Path, full: bool = False) -> list[str]:
    """Source files of ``split`` whose content differs from the build: a new size or a
    missing file at once; a new mtime is confirmed by re-hashing (``full``: re-hash every
    file). Files with a new mtime but the same content get their new mtime recorded (when
    the cache is writable), so a copied dataset is re-hashed once."""
    path = root / "sources.json"
    if not path.is_file():  # built before sources were recorded
        return []
    records = json.loads(path.read_text())
    changed, touched = [], False
    for rec in records.get(split, []):
        name, size, mtime, digest = rec
        p = Path(data_dir) / name
        try:
            st = p.stat()
        except OSError:
            changed.append(str(p))
            continue
        if st.st_size != size:
            changed.append(str(p))
        elif full or st.st_mtime_ns != mtime:
            if file_sha256(p) != digest:
                changed.append(str(p))
            elif st.st_mtime_ns != mtime:
                rec[2], touched = st.st_mtime_ns, True
    if touched and not changed:
        try:
            path.write_text(json.dumps(records))
        except OSError:
            pass  # read-only cache: the files are re-hashed next time too
    return changed


def verify_cache(root: Path, data_dir: Path) -> list[str]:
    """Full check of a complete cache: every array file and every source re-hashed.
    Returns one line per problem (empty: the cache is intact and current)."""
    problems = []
    meta = json.loads((root / "meta.json").read_text())
    for rel, rec in (meta.get("files") or {}).items():
        p = root / rel
        if not p.is_file() or p.stat().st_size != rec["size"]:
            problems.append(f"{p}: truncated or missing (expected {rec['size']} bytes)")
        elif file_sha256(p) != rec["sha256"]:
            problems.append(f"{p}: content differs from the build (corrupt or overwritten)")
    for split in SPLITS:
        for name in changed_sources(root, split, data_dir, full=True):
            problems.append(f"{name}: source changed since the cache was built")
    return problems


def cache_status(root: Path, current_key: str | None) -> str:
    """``current`` (complete, this config's key), ``stale`` (complete, another key) or
    ``partial`` (no completion marker)."""
    if not (root / MARKER).is_file():
        return "partial"
    return "current" if root.name == current_key else "stale"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_caches(cache_root: Path, current_key: str | None) -> list[dict[str, Any]]:
    """The caches under ``cache_root``: ``{"path", "status", "bytes"}`` each."""
    if not cache_root.is_dir():
        return []
    return [
        {"path": str(p), "status": cache_status(p, current_key), "bytes": _dir_size(p)}
        for p in sorted(cache_root.iterdir())
        if p.is_dir()
    ]


def clean_caches(cache_root: Path, current_key: str | None) -> list[dict[str, Any]]:
    """Remove the stale and partial caches under ``cache_root``; returns what was removed."""
    removed = [c for c in list_caches(cache_root, current_key) if c["status"] != "current"]
    for c in removed:
        shutil.rmtree(c["path"])
    return removed
