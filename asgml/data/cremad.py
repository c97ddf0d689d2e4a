"""CREMA-D in the OGM-GE layout (``dataset/CramedDataset.py`` of
https://github.com/GeWu-Lab/OGM-GE_CVPR2022).

Layout (``data_dir``)::

    train.csv, test.csv         no header; rows ``<clip>,<LABEL>``, e.g. ``1088_IOM_NEU_XX,NEU``
    AudioWAV/<clip>.wav         the original CREMA-D audio
    Image-01-FPS/<clip>/*.jpg   frames at 1 fps (OGM-GE: first frame of each second)

Labels ``NEU 0, HAP 1, SAD 2, FEA 3, DIS 4, ANG 5``. Audio as OGM-GE: ``librosa.load`` at
22,050 Hz, tiled to 3 s (66,150 samples), clipped to [-1, 1], ``librosa.stft`` (n_fft 512,
hop 353, Hann, centred), ``log(|X| + 1e-7)`` -> ``(1, 257, 188)``; or ``audio=mel``:
128-bin log-mel power spectrogram with the same STFT -> ``(1, 128, 188)``.
"""

from __future__ import annotations

import csv
import os
import struct
from pathlib import Path
from typing import Any

import librosa
import numpy as np

from asgml.data.audiovisual import AudioVisualDataModule, Clip, list_frames
from asgml.data.layout import CREMAD_LAYOUT as LAYOUT

LABELS = {"NEU": 0, "HAP": 1, "SAD": 2, "FEA": 3, "DIS": 4, "ANG": 5}
SR = 22050
N_SAMPLES = 3 * SR
N_FFT = 512
HOP = 353


def wav_truncation(path: str | Path) -> tuple[int, int] | None:
    """``(declared, present)`` bytes of a RIFF/WAVE file's ``data`` chunk when the file is
    shorter than its header says (a truncated copy; decoders read such files silently),
    else ``None`` (also for files that are not RIFF/WAVE)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                present = size - (pos + 8)
                return (n, present) if present < n and n != 0xFFFFFFFF else None
            pos += 8 + n + (n & 1)
            f.seek(pos)


def load_waveform(path: str | Path) -> np.ndarray:
    """OGM-GE: 22,050 Hz mono, repeated to 3 s (``np.tile(x, 3)[:66150]`` -- identical for
    clips of >= 1 s, cyclic repetition for shorter ones), clipped to [-1, 1]. A truncated
    wav (`wav_truncation`) is an error naming the file."""
    cut = wav_truncation(path) if str(path).lower().endswith(".wav") else None
    if cut is not None:
        raise OSError(
            f"audio file {path} is truncated: its header declares {cut[0]} bytes of samples, "
            f"the file holds {cut[1]}; replace it (`python -m asgml.prepare verify=true` "
            "lists every bad file)"
        )
    try:
        x, _ = librosa.load(str(path), sr=SR)
    except Exception as e:
        raise OSError(f"cannot read audio file {path}: {e}") from e
    if x.size == 0:
        raise OSError(f"cannot read audio file {path}: no samples")
    return np.clip(np.resize(x, N_SAMPLES), -1.0, 1.0)


def ogm_spectrogram(path: str | Path, kind: str = "stft", n_mels: int = 128) -> np.ndarray:
    """``(257, 188)`` log-magnitude STFT (OGM-GE) or ``(n_mels, 188)`` log-mel, float32."""
    x = load_waveform(path)
    if kind == "stft":
        spec = np.log(np.abs(librosa.stft(x, n_fft=N_FFT, hop_length=HOP)) + 1e-7)
    elif kind == "mel":
        mel = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=n_mels)
        spec = np.log(mel + 1e-7)
    else:
        raise ValueError(f"audio must be 'stft' or 'mel', got {kind!r}")
    return spec.astype(np.float32)


def read_cremad_split(path: Path) -> list[tuple[str, int]]:
    """``(clip, label)`` rows of an OGM-GE CREMA-D split file; bad rows name file:line."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not a clip name
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise ValueError(f"{path}:{lineno}: expected `<clip>,<LABEL>`, got {row}")
            clip, lab = row[0].strip(), row[1].strip()
            if lab not in LABELS:
                raise ValueError(
                    f"{path}:{lineno}: unknown label {lab!r} for clip {clip!r} "
                    f"(expected one of {list(LABELS)})"
                )
            rows.append((clip, LABELS[lab]))
    return rows


class CremadDataModule(AudioVisualDataModule):
    """CREMA-D (6 emotions, audio + visual): ``{"audio": (1, 257, 188), "visual":
    (3, T, S, S), "label"}`` batches.

    Args (besides `AudioVisualDataModule`'s):
        audio: ``stft`` (OGM-GE, 257 bins) or ``mel`` (``n_mels`` bins).
        n_mels: mel bins for ``audio=mel``.
        audio_dir, visual_dir: sub-directories of the wavs and of the frame folders.
    """

    NAME = "cremad"
    LAYOUT = LAYOUT
    SPLIT_FILES = {"train": "train.csv", "test": "test.csv"}

    def __init__(
        self,
        data_dir: str | None,
        audio: str = "stft",
        n_mels: int = 128,
        audio_dir: str = "AudioWAV",
        visual_dir: str = "Image-01-FPS",
        **kwargs: Any,
    ) -> None:
        if audio not in ("stft", "mel"):
            raise ValueError(f"audio must be 'stft' or 'mel', got {audio!r}")
        super().__init__(data_dir, **kwargs)
        self.audio = audio
        self.n_mels = int(n_mels)
        self.audio_dir = audio_dir
        self.visual_dir = visual_dir
        self.num_classes = len(LABELS)

    def read_split(self, split: str) -> list[Clip]:
        path = self.data_dir / self.SPLIT_FILES[split]
        return [
            Clip(
                name,
                label,
                self.data_dir / self.audio_dir / f"{name}.wav",
                list_frames(self.data_dir / self.visual_dir / name),
                frame_dir=self.data_dir / self.visual_dir / name,
            )
            for name, label in read_cremad_split(path)
        ]

    def load_audio(self, path: Path) -> np.ndarray:
        return ogm_spectrogram(path, self.audio, self.n_mels)

    def audio_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"kind": self.audio, "sr": SR, "n_fft": N_FFT, "hop": HOP}
        if self.audio == "mel":
            cfg["n_mels"] = self.n_mels
        return cfg
