"""``python -m asgml.prepare`` goes on past bad clips and ends with every bad file (each by its
own path) and status 1; ``verify=true`` names a clip without frames by its frame folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import make_cremad

from asgml.data.cache import MARKER, BadFilesError
from asgml.run.build import build_datamodule
from tests.conftest import compose_cfg


def _broken_cremad(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A tiny CREMA-D whose first train clip has a truncated wav, whose second train clip has
    an unreadable frame and whose first test clip has a truncated wav."""
    root = make_cremad(tmp_path / "c", n_train_per_class=1, n_test_per_class=1, frames_per_clip=1)
    train = [r.split(",")[0] for r in (root / "train.csv").read_text().split()]
    test = [r.split(",")[0] for r in (root / "test.csv").read_text().split()]
    wav = root / "AudioWAV" / f"{train[0]}.wav"
    wav.write_bytes(wav.read_bytes()[:200])
    (jpg,) = (root / "Image-01-FPS" / train[1]).iterdir()
    jpg.write_bytes(b"\xff\xd8 broken")
    test_wav = root / "AudioWAV" / f"{test[0]}.wav"
    test_wav.write_bytes(test_wav.read_bytes()[:200])
    return root, [wav, jpg, test_wav]


def _overrides(root: Path) -> list[str]:
    return [
        "dataset=cremad",
        f"data_dir={root}",
        "dataset.frames=1",
        "dataset.image_size=16",
        "dataset.datamodule.num_workers=0",
    ]


def test_cache_build_goes_on_past_bad_clips_and_names_each_file(tmp_path: Path) -> None:
    root, bad = _broken_cremad(tmp_path)
    dm = build_datamodule(compose_cfg(_overrides(root), fast=False))
    with pytest.raises(BadFilesError) as err:
        dm.build_cache()
    # every bad file, in split order, each by its own path (the test split was reached too)
    assert [line.split(": ", 1)[0] for line in err.value.files] == [str(p) for p in bad]
    assert not list((root / ".asgml_cache").glob(f"*/{MARKER}"))  # not marked complete


@pytest.mark.slow
def test_prepare_cli_lists_every_bad_file_and_exits_1_without_traceback(tmp_path: Path) -> None:
    root, bad = _broken_cremad(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "asgml.prepare", *_overrides(root),
         f"hydra.run.dir={tmp_path / 'h'}", "trainer.enable_progress_bar=false"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 1
    listed = [line for line in proc.stdout.splitlines() if line.startswith("BAD ")]
    assert [line[4:].split(": ", 1)[0] for line in listed] == [str(p) for p in bad]
    assert "prepare: 3 bad file(s); the cache was not completed" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_verify_names_a_clip_without_frames_by_its_frame_folder(tmp_path: Path) -> None:
    root = make_cremad(tmp_path / "c", n_train_per_class=1, n_test_per_class=1, frames_per_clip=1)
    clip = (root / "train.csv").read_text().split()[0].split(",")[0]
    shutil.rmtree(root / "Image-01-FPS" / clip)
    dm = build_datamodule(compose_cfg(_overrides(root), fast=False))
    with pytest.warns(UserWarning, match="missing on disk"):
        problems = dm.verify_files()
    assert problems == [f"{root / 'Image-01-FPS' / clip}: no frames (clip {clip})"]
