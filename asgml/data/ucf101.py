"""UCF-101 (101 actions) as RGB frames + stacked optical flow, in the layout that
BalanceBenchmark's loader reads (https://github.com/GeWu-Lab/BalanceBenchmark @ 4c1482f
``balancemm/datasets/ucf101_dataset.py``; paths from ``configs/dataset_config.yaml:27-39``).

Layout (``data_dir``; every name is configurable)::

    ucfTrainTestlist/classInd.txt     rows ``<index> <ClassName>`` (the official release's
                                      file); label = position of the name in the SORTED
                                      list (ucf101_dataset.py:45-48, 56)
    ucfTrainTestlist/trainlist01.txt  rows ``<ClassName>/<video>.avi [<index>]``; the class is
    ucfTrainTestlist/testlist01.txt   the part before ``/``, the video id the part after it up
                                      to the first ``.`` (ucf101_dataset.py:49-55)
    rgb/<video>/frame_00001.jpg ...   RGB frames, name-sorted
    flow/u/<video>/frame000001.jpg .. horizontal (u) flow as greyscale JPEGs (TV-L1)
    flow/v/<video>/frame000001.jpg .. vertical (v) flow, the same names

Sampling (ucf101_dataset.py:106-140, 0-based here): ``frames`` (T = 3) segments of the
first ``rgb_span`` (6) RGB frames and of all ``n`` flow frames, ``seg = n // T``; at train
one uniformly drawn index per segment (torch's RNG), at eval ``i * seg + max(seg // 2, 1) - 1``
(frames 1, 3, 5 of 6). Flow stacks ``flow_stack`` (L, default 1 as BalanceBenchmark)
consecutive (u, v) pairs from the chosen index, interleaved ``u1, v1, u2, v2, ...`` as TSN
(https://github.com/yjxiong/tsn-pytorch @ 2f0468e ``dataset.py:50-54, 103-108``), so a
flow item is ``(2L, T, S, S)``; the encoder's conv1 takes ``2L`` channels
(`asgml.models.encoders.ResNet18Encoder`, TSN's cross-modality initialisation when
pretrained).

Transforms (ucf101_dataset.py:71-102): ``Resize((S, S))`` (no crop), a horizontal flip at
train, RGB ImageNet-normalised, flow scaled to [0, 1] and not normalised (``a_norm=False``).
Flip of the flow: ``flow_flip: tsn`` (default) flips a segment's whole stack together and
inverts its u images (``255 - u``: a mirrored horizontal motion changes sign; TSN
``transforms.py:45-60``); ``flow_flip: independent`` is what BalanceBenchmark executes: every
u and every v image gets its own random flip, without inversion (its transform is called
once per image). Each RGB frame gets its own flip in both.

Missing videos (no RGB frames, or no u / v flow frames) are skipped and counted
(BalanceBenchmark skips them silently, ucf101_dataset.py:53); ``strict=true`` makes them an
error. A file that does not decode is an error naming it; ``python -m asgml.prepare
verify=true`` decodes every listed file and lists the bad ones. The data are JPEGs read
directly (no ``asgml.prepare`` cache).
"""

from __future__ import annotations

import logging
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

from asgml.data.audiovisual import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    decode_frame,
    list_frames,
    stratified_val_split,
)
from asgml.data.base import SplitDataModule, check_data_dir, require_file
from asgml.data.issues import DataIssues

log = logging.getLogger("asgml.data")

NAME = "ucf101"
FLOW_FLIPS = ("tsn", "independent")
LAYOUT = """\
<data_dir>/
  ucfTrainTestlist/classInd.txt      rows `<index> <ClassName>` (label = index in the sorted names)
  ucfTrainTestlist/trainlist01.txt   rows `<ClassName>/<video>.avi [<index>]`
  ucfTrainTestlist/testlist01.txt    rows `<ClassName>/<video>.avi`
  rgb/<video>/*.jpg                  RGB frames, name-sorted
  flow/u/<video>/*.jpg               horizontal flow (greyscale), name-sorted
  flow/v/<video>/*.jpg               vertical flow, the same names
(see docs/datasets/ucf101.md for how to obtain the frames and the flow)"""


@dataclass
class Video:
    """One listed video: its id, class index and sorted RGB / flow-u / flow-v files."""

    name: str
    label: int
    rgb: list[Path]
    flow_u: list[Path]
    flow_v: list[Path]

    @property
    def complete(self) -> bool:
        return bool(self.rgb and self.flow_u and self.flow_v)


def read_class_index(path: Path) -> list[str]:
    """``classInd.txt``: the second field of each ``<index> <ClassName>`` row, sorted."""
    names = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected `<index> <ClassName>`, got {line!r}")
            names.append(parts[1])
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a class name is listed twice")
    return sorted(names)


def read_ucf_split(path: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """``(video, label)`` of ``<ClassName>/<video>.avi [<index>]`` rows; bad rows name
    file:line."""
    index = {c: i for i, c in enumerate(classes)}
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            entry = line.strip().split(" ")[0] if line.strip() else ""
            if not entry:
                continue
            if entry.count("/") != 1:
                raise ValueError(
                    f"{path}:{lineno}: expected `<ClassName>/<video>.avi [<index>]`, got {line!r}"
                )
            cls, video = entry.split("/")
            if cls not in index:
                raise ValueError(
                    f"{path}:{lineno}: unknown class {cls!r} for {video!r} (not in the class file)"
                )
            rows.append((video.split(".")[0], index[cls]))
    return rows


def segment_indices(n: int, t: int, train: bool) -> list[int]:
    """BalanceBenchmark's ``t`` segment picks of ``n`` files, 0-based: ``seg = n // t``; at
    train one uniform index in each segment (torch's global RNG), at eval
    ``i * seg + max(seg // 2, 1) - 1``. Fewer than ``t`` files repeat the last one."""
    if n < 1:
        raise ValueError("a video needs at least one frame")
    seg = n // t
    if seg == 0:
        return [min(i, n - 1) for i in range(t)]
    if train:
        return [i * seg + o for i, o in enumerate(torch.randint(0, seg, (t,)).tolist())]
    return [i * seg + max(seg // 2, 1) - 1 for i in range(t)]


def decode_grey(path: Path) -> np.ndarray:
    """A flow JPEG as a uint8 ``(H, W)`` array; an unreadable file is an error naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except Exception as e:
        raise OSError(f"cannot read flow file {path}: {e}") from e


class UCF101Clips(Dataset):
    """``{<visual>: (3, T, S, S), <flow>: (2L, T, S, S), "label"}`` items."""

    def __init__(self, dm: UCF101DataModule, videos: Sequence[Video], train: bool) -> None:
        self.dm, self.videos, self.train = dm, list(videos), train
        s = dm.image_size
        self.resize = v2.Resize((s, s), antialias=True)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.videos)

    def _flip(self) -> bool:
        return self.train and bool(torch.rand(()) < 0.5)

    def _rgb(self, path: Path) -> Tensor:
        x = torch.from_numpy(decode_frame(path, None).copy()).permute(2, 0, 1)
        x = self.resize(x)
        if self._flip():
            x = x.flip(-1)
        return (x.float() / 255.0 - self.mean) / self.std

    def _flow_stack(self, us: Sequence[Path], vs: Sequence[Path]) -> Tensor:
        stack = []
        flip_all = self.dm.flow_flip == "tsn" and self._flip()
        for u_path, v_path in zip(us, vs):
            for is_u, path in ((True, u_path), (False, v_path)):
                x = self.resize(torch.from_numpy(decode_grey(path).copy())[None])[0]
                if flip_all:
                    x = x.flip(-1)
                    if is_u:  # TSN: a mirrored horizontal motion changes sign
                        x = 255 - x
                elif self.dm.flow_flip == "independent" and self._flip():
                    x = x.flip(-1)
                stack.append(x)
        return torch.stack(stack).float() / 255.0  # (2L, S, S)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        v, dm = self.videos[i], self.dm
        span = min(len(v.rgb), dm.rgb_span) if dm.rgb_span else len(v.rgb)
        rgb = torch.stack(
            [self._rgb(v.rgb[j]) for j in segment_indices(span, dm.frames, self.train)], 1
        )
        n = min(len(v.flow_u), len(v.flow_v))
        flows = []
        for j in segment_indices(n, dm.frames, self.train):
            idx = [min(j + k, n - 1) for k in range(dm.flow_stack)]
            flows.append(self._flow_stack([v.flow_u[k] for k in idx], [v.flow_v[k] for k in idx]))
        visual, flow = dm.modalities
        return {
            visual: rgb,
            flow: torch.stack(flows, dim=1),
            "label": torch.tensor(v.label, dtype=torch.long),
        }


class _VerifySet(Dataset):
    """One video's decode errors (every RGB and flow file)."""

    def __init__(self, videos: Sequence[Video]) -> None:
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> list[str]:
        v, errors = self.videos[i], []
        for f in v.rgb:
            try:
                decode_frame(f, None)
            except Exception as e:
                errors.append(str(e))
        for f in v.flow_u + v.flow_v:
            try:
                decode_grey(f)
            except Exception as e:
                errors.append(str(e))
        if len(v.flow_u) != len(v.flow_v):
            errors.append(
                f"{v.flow_u[0].parent if v.flow_u else v.name}: {len(v.flow_u)} u flow frames "
                f"but {len(v.flow_v)} v flow frames"
            )
        return errors


def _identity(x: Any) -> Any:
    return x


class UCF101DataModule(SplitDataModule):
    """UCF-101 RGB + optical flow (see the module docstring for layout and sampling).

    Args:
        data_dir: dataset root (see ``LAYOUT``).
        modalities: the names of the RGB and the flow stream, in that order (batch keys;
            ``model.encoders`` uses the same names).
        num_classes: checked against the class file (101).
        frames: segments T per video (3).
        flow_stack: consecutive flow (u, v) pairs per segment, L (1: 2 channels).
        image_size: side S of the square frames (224).
        rgb_span: only the first ``rgb_span`` RGB frames are sampled (BalanceBenchmark
            reads ``frame_00001`` .. ``frame_00006``); null: all of them.
        flow_flip: ``tsn`` or ``independent`` (BalanceBenchmark); see the module docstring.
        class_file: the class list (``classInd.txt``).
        train_file: the train list (the official release's split 1).
        test_file: the test list.
        rgb_dir: folder of the RGB frame folders.
        flow_u_dir: folder of the u flow frame folders.
        flow_v_dir: folder of the v flow frame folders.
        val_fraction: fraction of each train class carved out (seeded) as validation.
        seed: seed of the validation split.
        batch_size: loader batch size.
        num_workers: loader worker processes.
        pin_memory: loader ``pin_memory``.
        strict: fail instead of skipping videos missing on disk.
    """

    def __init__(
        self,
        data_dir: str | None,
        modalities: Sequence[str] = ("visual", "flow"),
        num_classes: int | None = 101,
        frames: int = 3,
        flow_stack: int = 1,
        image_size: int = 224,
        rgb_span: int | None = 6,
        flow_flip: str = "tsn",
        class_file: str = "ucfTrainTestlist/classInd.txt",
        train_file: str = "ucfTrainTestlist/trainlist01.txt",
        test_file: str = "ucfTrainTestlist/testlist01.txt",
        rgb_dir: str = "rgb",
        flow_u_dir: str = "flow/u",
        flow_v_dir: str = "flow/v",
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.NAME = NAME
        self.data_dir = check_data_dir(data_dir, NAME, LAYOUT)
        self.SPLIT_FILES = {"train": train_file, "test": test_file}
        for f in (class_file, train_file, test_file):
            require_file(self.data_dir / f, NAME, LAYOUT)
        names = [str(m) for m in modalities]
        if len(names) != 2 or names[0] == names[1]:
            raise ValueError(
                f"{NAME}: modalities must be two distinct names [<rgb>, <flow>], got {list(modalities)}"
            )
        for key, val in (
            ("frames", frames),
            ("flow_stack", flow_stack),
            ("image_size", image_size),
        ):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{NAME}: {key} must be a positive int, got {val!r}")
        if rgb_span is not None and (not isinstance(rgb_span, int) or rgb_span < 1):
            raise ValueError(f"{NAME}: rgb_span must be a positive int or null, got {rgb_span!r}")
        if flow_flip not in FLOW_FLIPS:
            raise ValueError(f"{NAME}: flow_flip must be one of {FLOW_FLIPS}, got {flow_flip!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"{NAME}: val_fraction must be in [0, 1), got {val_fraction}")
        self.modalities = names
        self.classes = read_class_index(self.data_dir / class_file)
        if num_classes is not None and num_classes != len(self.classes):
            raise ValueError(
                f"{NAME}: num_classes={num_classes} but {self.data_dir / class_file} lists "
                f"{len(self.classes)} classes; set dataset.num_classes to match"
            )
        self.num_classes = len(self.classes)
        self.frames, self.flow_stack, self.image_size = frames, flow_stack, image_size
        self.rgb_span, self.flow_flip = rgb_span, flow_flip
        self.rgb_dir, self.flow_u_dir, self.flow_v_dir = rgb_dir, flow_u_dir, flow_v_dir
        self.val_fraction, self.seed, self.strict = float(val_fraction), int(seed), strict
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.splits: dict[str, UCF101Clips] = {}
        self._videos: dict[str, list[Video]] = {}
        self._missing: dict[str, list[Video]] = {}
        self.data_issues = DataIssues(NAME)

    def encoder_overrides(self) -> dict[str, dict[str, Any]]:
        """The flow encoder's input channels follow ``flow_stack`` (2L)."""
        return {self.modalities[1]: {"in_channels": 2 * self.flow_stack}}

    def official_videos(self, split: str) -> list[Video]:
        """The videos of the official ``split`` list present on disk (memoised); missing ones
        are counted in ``data_issues`` (or an error with ``strict``)."""
        if split in self._videos:
            return self._videos[split]
        path = self.data_dir / self.SPLIT_FILES[split]
        rows = read_ucf_split(path, self.classes)
        if not rows:
            raise ValueError(f"{NAME}: {path} lists no videos (empty {split} split)")
        root = self.data_dir
        videos = [
            Video(
                name,
                label,
                list_frames(root / self.rgb_dir / name),
                list_frames(root / self.flow_u_dir / name),
                list_frames(root / self.flow_v_dir / name),
            )
            for name, label in rows
        ]
        kept = [v for v in videos if v.complete]
        self._missing[split] = [v for v in videos if not v.complete]
        gone = [v.name for v in self._missing[split]]
        if gone:
            msg = (
                f"{NAME}: {len(gone)} of {len(videos)} videos listed in {path} are missing on "
                f"disk (no RGB frames or no u / v flow frames), e.g. {', '.join(gone[:3])}"
            )
            if self.strict:
                raise FileNotFoundError(msg + " (strict=true)")
            warnings.warn(
                msg + "; they are skipped (set strict=true to fail instead)", stacklevel=2
            )
        self.data_issues.record(
            split, "missing_files", gone, len(gone), "skipped: no RGB frames or no flow frames"
        )
        if not kept:
            raise FileNotFoundError(
                f"{NAME}: none of the {len(videos)} videos listed in {path} is on disk "
                f"(e.g. {root / self.rgb_dir / videos[0].name}); check data_dir and the "
                f"layout:\n{LAYOUT}"
            )
        self._videos[split] = kept
        return kept

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train, test = self.official_videos("train"), self.official_videos("test")
        overlap = sorted({v.name for v in train} & {v.name for v in test})
        if overlap and self.strict:
            raise ValueError(
                f"{NAME}: {len(overlap)} videos are in both the train and the test list, "
                f"e.g. {overlap[:3]} (strict=true)"
            )
        self.data_issues.record(
            "test", "train_test_overlap", overlap, len(overlap), "also in the train list, kept"
        )
        tr, va = stratified_val_split([v.label for v in train], self.val_fraction, self.seed)
        if not tr:
            raise ValueError(
                f"{NAME}: the train split is empty ({len(train)} videos, "
                f"val_fraction={self.val_fraction}); lower val_fraction"
            )
        self.splits = {
            "train": UCF101Clips(self, [train[i] for i in tr], True),
            "val": UCF101Clips(self, [train[i] for i in va], False),
            "test": UCF101Clips(self, test, False),
        }
        log.info("%s: %d train / %d val / %d test videos", NAME, len(tr), len(va), len(test))

    @override
    def eval_view(self, split: str) -> Dataset:
        ds = self.splits[split]
        return UCF101Clips(self, ds.videos, False) if ds.train else ds

    def verify_files(self) -> list[str]:
        """Decode every listed RGB and flow file once (``num_workers`` processes); one line
        per bad file: unreadable, missing video, u / v frame counts that differ."""
        problems: list[str] = []
        for split in ("train", "test"):
            videos = self.official_videos(split)
            problems += [
                f"{self.data_dir / self.rgb_dir / v.name}: missing (no RGB frames or no u / v "
                f"flow frames for video {v.name})"
                for v in self._missing[split]
            ]
            loader = DataLoader(
                _VerifySet(videos), batch_size=None, num_workers=self.num_workers,
                collate_fn=_identity,
            )  # fmt: skip
            for i, errors in enumerate(loader):
                problems += errors
                if (i + 1) % 500 == 0 or i + 1 == len(videos):
                    log.info("%s %s: verified %d / %d videos", NAME, split, i + 1, len(videos))
        return problems
