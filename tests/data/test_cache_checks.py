"""Cache content checks (truncated / zeroed arrays, changed or swapped sources), the
read-only hint, ``cache=list`` / ``cache=clean`` and ``python -m asgml.prepare verify=true``."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures import make_ave, make_cremad

from asgml.data.avdataset import AVEKSDataModule
from asgml.data.cache import CacheError, verify_cache
from asgml.data.cremad import CremadDataModule
from asgml.prepare import manage_caches, verify
from tests.conftest import compose_cfg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:torchvision")
ROOT = Path(__file__).resolve().parents[2]


def dm(root: Path, cache_dir: Path, **kw) -> CremadDataModule:
    kw = {"image_size": 16, "frames": 1, "num_workers": 0, "batch_size": 2, **kw}
    m = CremadDataModule(str(root), cache_dir=str(cache_dir), **kw)
    m.setup()
    return m


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = make_cremad(tmp_path / "c", n_train_per_class=1, n_test_per_class=1, frames_per_clip=2)
    cache_dir = tmp_path / "cache"
    path = dm(root, cache_dir, cache="off").build_cache()
    return root, cache_dir, path


def _same_size_edit(path: Path) -> None:
    """Change one byte in the middle of the file, keeping its size and mtime."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_truncated_cache_file_is_a_clear_error(built: tuple[Path, Path, Path]) -> None:
    root, cache_dir, path = built
    frames = path / "test" / "frames.npy"
    frames.write_bytes(frames.read_bytes()[: frames.stat().st_size // 2])
    with pytest.raises(
        CacheError, match=r"frames\.npy is \d+ bytes, expected \d+ .*asgml\.prepare"
    ):
        dm(root, cache_dir, cache="auto")


def test_changed_source_makes_the_cache_stale(built: tuple[Path, Path, Path]) -> None:
    root, cache_dir, path = built
    assert dm(root, cache_dir, cache="require").splits["test"].cache is not None
    clip = (root / "test.csv").read_text().split()[0].split(",")[0]
    jpg = sorted((root / "Image-01-FPS" / clip).iterdir())[0]
    os.utime(jpg)  # a new mtime alone (same content) keeps the cache
    assert dm(root, cache_dir, cache="require").splits["test"].cache is not None
    jpg.write_bytes(jpg.read_bytes() + b"\0" * 7)  # another size: a changed source
    with pytest.warns(UserWarning, match=rf"1 source files changed .*{jpg.name}"):
        assert dm(root, cache_dir, cache="auto").splits["test"].cache is None
    with pytest.raises(FileNotFoundError, match="overwrite=true"):
        dm(root, cache_dir, cache="require")


def test_full_verification_finds_same_size_changes(built: tuple[Path, Path, Path]) -> None:
    root, cache_dir, path = built
    assert verify_cache(path, root) == []
    clip = (root / "train.csv").read_text().split()[0].split(",")[0]
    jpg = sorted((root / "Image-01-FPS" / clip).iterdir())[0]
    _same_size_edit(jpg)  # a swapped / edited frame of the same size and mtime
    frames = path / "train" / "frames.npy"
    arr = np.load(frames, mmap_mode="r+")
    arr[:] = 0  # a zeroed array of the right size
    arr.flush()
    del arr
    assert dm(root, cache_dir, cache="require").splits["test"].cache is not None  # cheap: passes
    problems = verify_cache(path, root)
    assert any(str(frames) in p and "content differs" in p for p in problems), problems
    assert any(str(jpg) in p and "source changed" in p for p in problems), problems


def test_unwritable_cache_root_names_cache_dir(tmp_path: Path) -> None:
    root = make_cremad(tmp_path / "c", n_train_per_class=1, n_test_per_class=1, frames_per_clip=1)
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where a directory should go (a read-only root for root)
    with pytest.raises(OSError, match=r"cannot write the cache.*dataset\.datamodule\.cache_dir"):
        dm(root, blocker / "cache", cache="off").build_cache()


def test_cache_list_and_clean(built: tuple[Path, Path, Path], capsys) -> None:
    root, cache_dir, path = built
    (cache_dir / "deadbeef").mkdir()  # a partial cache (no COMPLETE marker)
    overrides = ["dataset=cremad", f"data_dir={root}", "dataset.image_size=16",
                 "dataset.frames=1", "dataset.datamodule.num_workers=0",
                 f"dataset.datamodule.cache_dir={cache_dir}"]  # fmt: skip
    listed = manage_caches(compose_cfg(overrides, fast=False), "list")
    assert {Path(e["path"]).name: e["status"] for e in listed} == {
        path.name: "current",
        "deadbeef": "partial",
    }
    mel = compose_cfg([*overrides, "dataset.datamodule.audio=mel"], fast=False)
    assert {e["status"] for e in manage_caches(mel, "list")} == {"stale", "partial"}
    removed = manage_caches(mel, "clean")
    assert len(removed) == 2 and not any(cache_dir.iterdir())
    assert "removed" in capsys.readouterr().out


def test_prepare_verify_reports_every_bad_file(tmp_path: Path) -> None:
    root = make_cremad(tmp_path / "c", n_train_per_class=1, n_test_per_class=1, frames_per_clip=2)
    clips = [r.split(",")[0] for r in (root / "train.csv").read_text().split()]
    wav = root / "AudioWAV" / f"{clips[0]}.wav"
    wav.write_bytes(wav.read_bytes()[:200])  # truncated
    jpg = sorted((root / "Image-01-FPS" / clips[1]).iterdir())[1]  # not a sampled frame
    jpg.write_bytes(b"\xff\xd8 broken")
    (root / "AudioWAV" / f"{clips[2]}.wav").unlink()
    overrides = ["dataset=cremad", f"data_dir={root}", "dataset.frames=1",
                 "dataset.datamodule.num_workers=0"]  # fmt: skip
    problems = verify(compose_cfg(overrides, fast=False))
    assert len(problems) == 3
    assert any(str(wav) in p and "truncated" in p for p in problems)
    assert any(str(jpg) in p for p in problems)
    assert any(clips[2] in p and "missing" in p for p in problems)
    out = subprocess.run(
        [sys.executable, "-m", "asgml.prepare", *overrides, "verify=true",
         f"hydra.run.dir={tmp_path / 'h'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 1, out.stderr[-2000:]
    assert str(jpg) in out.stdout and "3 bad file(s)" in out.stdout


def test_verify_names_an_odd_audio_shape(tmp_path: Path) -> None:
    """Without ``audio_shape`` (AVE), the full pass names the files whose shape differs from
    the others' (the on-the-fly path would fail in collate, naming none)."""
    root = make_ave(tmp_path / "AVE", n_train_per_class=1, spec_shape=(8, 12), frame_hw=(8, 8))
    rows = (root / "my_train.txt").read_text().splitlines()
    odd = root / "audio_spec" / f"{rows[1].split(',')[1]}.pkl"
    odd.write_bytes(pickle.dumps(np.zeros((8, 11), np.float32)))
    (root / "my_train.txt").write_text("\n".join([*rows, rows[0]]) + "\n")  # a repeated row
    m = AVEKSDataModule(str(root), frames=1, image_size=8, cache="off", num_workers=0)
    assert m.verify_files() == [f"{odd}: audio of shape (8, 11), most are (8, 12)"]
    m.setup()
    assert m.data_issues.as_dict()["train"]["duplicate_ids"]["count"] == 1  # recorded once
