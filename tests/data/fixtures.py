"""Writers of tiny datasets in the real on-disk formats (wav via soundfile, jpg via PIL,
pickles, .npy), shared by the data tests and ``benchmarks/data_throughput.py``.

Frame ``k`` of every clip is a solid colour ``frame_value(k)`` (all channels equal), so a
test can tell which frames a loader picked.
"""

from __future__ import annotations

import csv
import json
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

CREMAD_LABELS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


def frame_value(k: int) -> int:
    """Grey level of frame ``k`` (0-based, in name order)."""
    return 20 + 20 * k


def frame_ids(visual: torch.Tensor) -> list[int]:
    """Which fixture frames a (3, T, H, W) eval-transformed tensor shows."""
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    grey = (visual.mean(dim=(2, 3)) * std[:, None] + mean[:, None]).mean(0) * 255
    return [int(round((g.item() - frame_value(0)) / 20)) for g in grey]


def write_frames(
    folder: Path, n: int, size_hw: tuple[int, int], pattern: str, textured: bool = False
) -> None:
    """``n`` jpgs; solid ``frame_value(k)`` grey, or (``textured``) a photo-like gradient
    with noise, for realistic decode costs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for k in range(n):
        if textured:
            yy, xx = np.mgrid[0 : size_hw[0], 0 : size_hw[1]]
            base = (xx[..., None] * [0.3, 0.5, 0.2] + yy[..., None] * [0.4, 0.1, 0.6]) % 255
            noise = rng.normal(0, 12, (*size_hw, 3))
            arr = np.clip(base + noise + 10 * k, 0, 255).astype(np.uint8)
        else:
            arr = np.full((*size_hw, 3), frame_value(k), dtype=np.uint8)
        Image.fromarray(arr).save(folder / pattern.format(k), quality=95)


def write_wav(path: Path, seconds: float, sr: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed % 7) * t) + 0.05 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), sr, subtype="PCM_16")


def make_cremad(
    root: Path,
    n_train_per_class: int = 3,
    n_test_per_class: int = 1,
    frames_per_clip: int = 3,
    frame_hw: tuple[int, int] = (36, 48),
    seconds: float = 1.2,
    sr: int = 16000,
    labels: Sequence[str] = CREMAD_LABELS,
    textured: bool = False,
) -> Path:
    """CREMA-D in the OGM-GE layout: ``train.csv``/``test.csv``, ``AudioWAV/``, ``Image-01-FPS/``."""
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        rows = []
        for lab in labels:
            for _ in range(n):
                clip = f"{1001 + k}_IEO_{lab}_XX"
                write_wav(root / "AudioWAV" / f"{clip}.wav", seconds, sr, seed=k)
                write_frames(
                    root / "Image-01-FPS" / clip, frames_per_clip, frame_hw, "{:05d}.jpg", textured
                )
                rows.append(f"{clip},{lab}")
                k += 1
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def make_ave(
    root: Path,
    classes: Sequence[str] = ("Church bell", "Male speech", "Dog barking"),
    n_train_per_class: int = 2,
    n_test_per_class: int = 1,
    spec_shape: tuple[int, int] = (257, 1004),
    frame_hw: tuple[int, int] = (32, 40),
) -> Path:
    """AVE in the OGM-GE AVDataset layout (``stat.txt``, ``my_{train,test}.txt`` with
    ``class,name`` rows, ``audio_spec/<name>.pkl``, ``visual/<name>/frame_0000k.jpg``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stat.txt").write_text("\n".join(classes) + "\n")  # unsorted on purpose
    rng = np.random.default_rng(0)
    k = 0
    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        rows = []
        for cls in classes:
            for _ in range(n):
                name = f"vid{k:04d}"
                spec = rng.standard_normal(spec_shape).astype(np.float32)
                (root / "audio_spec").mkdir(exist_ok=True)
                with open(root / "audio_spec" / f"{name}.pkl", "wb") as f:
                    pickle.dump(spec, f)
                write_frames(root / "visual" / name, 10, frame_hw, "frame_{:05d}.jpg")
                rows.append(f"{cls},{name}")
                k += 1
        (root / f"my_{split}.txt").write_text("\n".join(rows) + "\n")
    # OGM-GE names frames frame_00001..frame_00010 (1-based): rename to match
    for d in (root / "visual").iterdir():
        for p in sorted(d.iterdir(), reverse=True):
            idx = int(p.stem.split("_")[1])
            p.rename(d / f"frame_{idx + 1:05d}.jpg")
    return root


def make_ks(
    root: Path,
    num_classes: int = 31,
    labels: Sequence[int] = (0, 4, 30),
    n_train_per_class: int = 2,
    n_test_per_class: int = 1,
    frames_per_clip: int = 10,
    frame_hw: tuple[int, int] = (32, 40),
) -> Path:
    """Kinetics-Sounds with OGM-GE's shipped list format (``<ytid>_<s>_<e>,10,<label>``),
    ``audio/<name>.npy`` fbanks (1024 x 128) and ``visual/<name>/*.jpg``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    k = 0
    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        rows = []
        for lab in labels:
            for _ in range(n):
                name = f"-yt{k:04d}x_{k:06d}_{k + 10:06d}"
                (root / "audio").mkdir(exist_ok=True)
                np.save(
                    root / "audio" / f"{name}.npy",
                    rng.standard_normal((1024, 128)).astype(np.float32),
                )
                write_frames(root / "visual" / name, frames_per_clip, frame_hw, "{:05d}.jpg")
                rows.append(f"{name},10,{lab}")
                k += 1
        (root / f"my_{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def mmsa_split(
    n: int,
    text_shape: tuple[int, int] = (39, 768),
    audio_shape: tuple[int, int] = (40, 33),
    vision_shape: tuple[int, int] = (11, 709),
    labels: Sequence[float] | None = None,
    seed: int = 0,
) -> dict:
    """One split of an MMSA pickle with the real keys (small lengths for speed)."""
    rng = np.random.default_rng(seed)
    lt = text_shape[0]
    text_bert = np.zeros((n, 3, lt), dtype=np.float32)
    text_len = rng.integers(3, lt + 1, n)
    for i, m in enumerate(text_len):
        text_bert[i, 0, :m] = rng.integers(100, 2000, m)
        text_bert[i, 1, :m] = 1
    audio = rng.standard_normal((n, *audio_shape)).astype(np.float32)
    audio[0, 0, 0] = -np.inf
    y = (
        np.asarray(labels, dtype=np.float32)
        if labels is not None
        else np.round(rng.uniform(-1, 1, n) * 5) / 5
    ).astype(np.float32)
    return {
        "raw_text": np.array([f"text {i}" for i in range(n)]),
        "id": np.array([f"vid{seed}_{i}$_$1" for i in range(n)]),  # unique across splits
        "text": rng.standard_normal((n, *text_shape)).astype(np.float32),
        "text_bert": text_bert,
        "audio": audio,
        "vision": rng.standard_normal((n, *vision_shape)).astype(np.float32),
        "audio_lengths": rng.integers(1, audio_shape[0] + 1, n),
        "vision_lengths": rng.integers(1, vision_shape[0] + 1, n),
        "annotations": np.array(["Neutral"] * n),
        "regression_labels": y,
    }


def make_mmsa(path: Path, sizes: tuple[int, int, int] = (24, 8, 8), **kw: object) -> Path:
    """A CH-SIMS-style MMSA pickle (``train``/``valid``/``test``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        split: mmsa_split(n, seed=i, **kw)  # type: ignore[arg-type]
        for i, (split, n) in enumerate(zip(("train", "valid", "test"), sizes))
    }
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path


def flow_value(k: int, axis: str) -> int:
    """Grey level of flow frame ``k`` (0-based) of the ``u`` or ``v`` stream."""
    return 10 + 10 * k + (5 if axis == "v" else 0)


def make_ucf101(
    root: Path,
    classes: Sequence[str] = ("ApplyEyeMakeup", "Archery", "YoYo"),
    n_train_per_class: int = 3,
    n_test_per_class: int = 1,
    rgb_frames: int = 6,
    flow_frames: int = 9,
    frame_hw: tuple[int, int] = (24, 32),
) -> Path:
    """UCF-101 in BalanceBenchmark's layout: ``ucfTrainTestlist/{classInd,trainlist01,
    testlist01}.txt`` as the official release writes them, ``rgb/<video>/frame_0000k.jpg``
    (k = 1..6, solid ``frame_value``) and ``flow/{u,v}/<video>/frame00kkkk.jpg`` greyscale
    (solid ``flow_value``)."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    # classInd.txt lists all 101 classes (``classes`` and fillers), 1-based, CRLF as the
    # official release; not in Python-sorted order (YoYo first) on purpose
    ordered = [classes[-1], *classes[:-1]]
    fillers = [f"Filler{i:03d}" for i in range(101 - len(ordered))]
    (lists / "classInd.txt").write_text(
        "".join(f"{i} {c}\r\n" for i, c in enumerate([*ordered, *fillers], start=1))
    )
    k = 0
    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        rows = []
        for ci, cls in enumerate(ordered, start=1):
            for _ in range(n):
                video = f"v_{cls}_g{k + 1:02d}_c01"
                write_frames(root / "rgb" / video, rgb_frames, frame_hw, "frame_{:05d}.jpg")
                for p in sorted((root / "rgb" / video).iterdir(), reverse=True):
                    p.rename(p.with_name(f"frame_{int(p.stem.split('_')[1]) + 1:05d}.jpg"))
                for axis in ("u", "v"):
                    d = root / "flow" / axis / video
                    d.mkdir(parents=True, exist_ok=True)
                    for j in range(flow_frames):
                        arr = np.full(frame_hw, flow_value(j, axis), dtype=np.uint8)
                        Image.fromarray(arr).save(d / f"frame{j + 1:06d}.jpg", quality=95)
                rows.append(f"{cls}/{video}.avi" + (f" {ci}" if split == "train" else ""))
                k += 1
        (lists / f"{split}list01.txt").write_text("\r\n".join(rows) + "\r\n")
    return root


def make_vggsound(
    root: Path,
    classes: Sequence[str] = ("dog barking", "playing cello", "people marching"),
    n_train_per_class: int = 3,
    n_test_per_class: int = 1,
    frames_per_clip: int = 10,
    spec_shape: tuple[int, int] = (64, 48),
    frame_hw: tuple[int, int] = (24, 32),
) -> Path:
    """VGGSound as BalanceBenchmark reads it: the official ``vggsound.csv`` rows
    (``<ytid>,<start_s>,<label>,<train|test>``, no header, train and test interleaved),
    ``visual/<ytid>_<start>/*.jpg`` and ``audio/<ytid>_<start>.npy``. The first train row
    is of ``classes[1]``, so first-seen order differs from sorted order."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    rows = []
    k = 0
    order = [classes[1], classes[0], *classes[2:]]
    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        for cls in order:
            for _ in range(n):
                ytid, start = f"-yt{k:03d}_x", 10 * k
                name = f"{ytid}_{start}"
                (root / "audio").mkdir(exist_ok=True)
                np.save(
                    root / "audio" / f"{name}.npy",
                    rng.standard_normal(spec_shape).astype(np.float32),
                )
                write_frames(root / "visual" / name, frames_per_clip, frame_hw, "{:05d}.jpg")
                rows.append(f"{ytid},{start},{cls},{split}")
                k += 1
    # the official file is not grouped by split
    rows = rows[::2] + rows[1::2]
    (root / "vggsound.csv").write_text("\n".join(rows) + "\n")
    return root


def make_balancedav(
    root: Path,
    classes: Sequence[str] = ("playing piano", "bowling", "singing"),
    n_train_per_class: int = 3,
    n_test_per_class: int = 1,
    frames_per_clip: int = 10,
    spec_shape: tuple[int, int] = (64, 48),
    frame_hw: tuple[int, int] = (24, 32),
) -> Path:
    """BalancedAV as BalanceBenchmark reads it: a JSON annotation (``labels``: 30 names,
    ``classes`` first; ``database``: ``{key: {subset, label}}``), ``visual/<key>.hdf5`` with a
    ``video`` dataset of JPEG bytes (frame ``k`` solid ``frame_value(k)``) and
    ``audio/<key>.pkl`` spectrograms."""
    import io

    import h5py

    root.mkdir(parents=True, exist_ok=True)
    (root / "visual").mkdir(exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    rng = np.random.default_rng(3)
    labels = [*classes, *(f"filler {i}" for i in range(30 - len(classes)))]
    database = {}
    k = 0
    for subset, n in (("training", n_train_per_class), ("testing", n_test_per_class)):
        for cls in classes:
            for _ in range(n):
                key = f"clip{k:04d}"
                with open(root / "audio" / f"{key}.pkl", "wb") as f:
                    pickle.dump(rng.standard_normal(spec_shape).astype(np.float32), f)
                with h5py.File(root / "visual" / f"{key}.hdf5", "w") as f:
                    video = f.create_dataset(
                        "video", (frames_per_clip,), dtype=h5py.vlen_dtype(np.uint8)
                    )
                    for j in range(frames_per_clip):
                        buf = io.BytesIO()
                        Image.fromarray(np.full((*frame_hw, 3), frame_value(j), np.uint8)).save(
                            buf, format="JPEG", quality=95
                        )
                        video[j] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
                database[key] = {"subset": subset, "label": cls}
                k += 1
    (root / "annotations.json").write_text(json.dumps({"labels": labels, "database": database}))
    return root


def make_modelnet40(
    root: Path,
    classes: Sequence[str] = ("airplane", "chair", "xbox"),
    n_train_per_class: int = 4,
    n_test_per_class: int = 1,
    size: int = 20,
) -> Path:
    """MVCNN's 12-view renderings as the Greedy code reads them:
    ``<class>/<split>/<class>_<id>.obj.shaded_v<k>.png`` (k = 001..012); view ``k`` of every
    model is a solid ``frame_value(k)`` grey."""
    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        for cls in classes:
            folder = root / cls / split
            folder.mkdir(parents=True, exist_ok=True)
            for m in range(n):
                for k in range(12):
                    arr = np.full((size, size, 3), frame_value(k), dtype=np.uint8)
                    Image.fromarray(arr).save(
                        folder / f"{cls}_{m + 1:04d}.obj.shaded_v{k + 1:03d}.png"
                    )
    return root


def make_food101(
    root: Path,
    classes: Sequence[str] = ("apple_pie", "pizza", "sushi"),
    n_train_per_class: int = 3,
    n_test_per_class: int = 1,
    size_hw: tuple[int, int] = (30, 40),
) -> Path:
    """UPMC Food-101 as BalanceBenchmark reads it: ``texts/{train,test}_titles.csv`` with the
    header ``Image_path,text,label`` and ``images/<split>/<label>/<Image_path>`` jpgs (image
    ``k`` of a split a solid ``frame_value(k % 8)`` grey)."""
    k = 0
    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        rows = [["Image_path", "text", "label"]]
        for cls in classes:
            folder = root / "images" / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                name = f"{cls}_{k}.jpg"
                arr = np.full((*size_hw, 3), frame_value(k % 8), dtype=np.uint8)
                Image.fromarray(arr).save(folder / name, quality=95)
                text = f"RT Best {cls.replace('_', ' ')} recipe #{j} http://example.com/{k}"
                rows.append([name, text, cls])
                k += 1
        (root / "texts").mkdir(parents=True, exist_ok=True)
        with open(root / "texts" / f"{split}_titles.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root
