"""Samples/s of the CREMA-D loader: OGM-GE-style per-item librosa loader (reference),
asgml decoding on the fly, and asgml reading the cache -- on the same generated files.

    python benchmarks/data_throughput.py [--clips 60] [--frames 1] [--image-size 224]

Files are written in the OGM-GE layout (16 kHz wavs of 2.5 s like CREMA-D, 480x360
textured jpgs at 1 fps). Items are read one by one in a single process with train-time
augmentation (RandomResizedCrop + flip) in every loader, after one warm-up pass.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from fixtures import make_cremad  # noqa: E402

from asgml.data.cremad import CremadDataModule  # noqa: E402


class OGMGECremad(torch.utils.data.Dataset):
    """A faithful copy of OGM-GE's ``CramedDataset.__getitem__`` (train mode, fps 1)."""

    def __init__(self, root: Path, image_size: int, frames: int) -> None:
        rows = [ln.split(",") for ln in (root / "train.csv").read_text().split()]
        self.items = [(root / "AudioWAV" / f"{c}.wav", root / "Image-01-FPS" / c) for c, _ in rows]
        self.frames = frames
        self.tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        wav, folder = self.items[i]
        samples, _ = librosa.load(wav, sr=22050)
        x = np.tile(samples, 3)[: 22050 * 3]
        x[x > 1.0] = 1.0
        x[x < -1.0] = -1.0
        spec = np.log(np.abs(librosa.stft(x, n_fft=512, hop_length=353)) + 1e-7)
        files = sorted(folder.iterdir())[: self.frames]
        imgs = [self.tf(Image.open(f).convert("RGB")).unsqueeze(1) for f in files]
        return torch.from_numpy(spec)[None], torch.cat(imgs, 1)


def rate(ds: torch.utils.data.Dataset, passes: int) -> float:
    for i in range(len(ds)):  # warm-up (page cache, librosa/numba init)
        ds[i]
    t = time.perf_counter()
    for _ in range(passes):
        for i in range(len(ds)):
            ds[i]
    return passes * len(ds) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=60, help="train clips (multiple of 6)")
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("asgml.data").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        root = make_cremad(
            Path(tmp) / "cremad",
            n_train_per_class=max(1, args.clips // 6),
            n_test_per_class=1,
            frames_per_clip=3,
            frame_hw=(360, 480),
            seconds=2.5,
            sr=16000,
            textured=True,
        )
        kw = dict(frames=args.frames, image_size=args.image_size, val_fraction=0.0, num_workers=0)
        ref = OGMGECremad(root, args.image_size, args.frames)

        otf = CremadDataModule(root, cache="off", **kw)
        otf.setup()
        t = time.perf_counter()
        cache_dir = otf.build_cache()
        build_s = time.perf_counter() - t
        cached = CremadDataModule(root, cache="require", **kw)
        cached.setup()

        results = {
            "OGM-GE-style per-item librosa loader": rate(ref, args.passes),
            "asgml CremadDataModule, on the fly": rate(otf.splits["train"], args.passes),
            "asgml CremadDataModule, cached": rate(cached.splits["train"], args.passes),
        }
        size_mb = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file()) / 2**20

    n = len(ref)
    print(
        f"CREMA-D loader throughput: {n} clips, frames={args.frames}, "
        f"image_size={args.image_size}, {args.threads} thread(s), train transforms"
    )
    print(f"{'loader':<40} {'samples/s':>10} {'vs on-the-fly':>14}")
    base = results["asgml CremadDataModule, on the fly"]
    for k, v in results.items():
        print(f"{k:<40} {v:>10.1f} {v / base:>13.1f}x")
    print(f"cache build: {build_s:.1f} s for {n + 6} clips, {size_mb:.1f} MiB on disk")


if __name__ == "__main__":
    main()
