"""CREMA-D datamodule, cache and prepare entry point on tiny fixtures in the OGM-GE layout."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import frame_ids, make_cremad

from asgml.core.types import MultimodalDataModule
from asgml.data.audiovisual import frame_indices, stratified_val_split
from asgml.data.base import DataLayoutError
from asgml.data.cremad import LABELS, CremadDataModule

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:torchvision")
IMG = 32


@pytest.fixture(scope="module")
def cremad_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cremad(tmp_path_factory.mktemp("cremad") / "CREMA-D")


def dm(root: Path, **kw) -> CremadDataModule:
    kw = {"image_size": IMG, "num_workers": 0, "batch_size": 4, "cache": "off", **kw}
    m = CremadDataModule(str(root), **kw)
    m.setup()
    return m


def test_shapes_dtypes_labels(cremad_root: Path) -> None:
    m = dm(cremad_root, frames=3)
    assert m.modalities == ["audio", "visual"] and m.num_classes == 6
    assert isinstance(m, MultimodalDataModule) and m.encoder_overrides() == {}
    item = m.splits["test"][0]
    assert item["audio"].shape == (1, 257, 188) and item["audio"].dtype == torch.float32
    assert item["visual"].shape == (3, 3, IMG, IMG) and item["visual"].dtype == torch.float32
    assert item["label"].dtype == torch.long
    # labels follow the clip names' emotion code
    for ds in m.splits.values():
        for clip in ds.clips:
            assert clip.label == LABELS[clip.name.split("_")[2]]
    assert LABELS == {"NEU": 0, "HAP": 1, "SAD": 2, "FEA": 3, "DIS": 4, "ANG": 5}
    batch = next(iter(m.train_dataloader()))
    assert batch["audio"].shape == (4, 1, 257, 188) and batch["visual"].shape == (4, 3, 3, IMG, IMG)
    mel = dm(cremad_root, audio="mel").splits["test"][0]["audio"]
    assert mel.shape == (1, 128, 188) and mel.dtype == torch.float32


def test_audio_matches_ogm_ge(cremad_root: Path) -> None:
    import librosa

    m = dm(cremad_root)
    clip = m.splits["test"].clips[0]
    x, _ = librosa.load(clip.audio, sr=22050)
    x = np.clip(np.tile(x, 3)[:66150], -1, 1)
    ref = np.log(np.abs(librosa.stft(x, n_fft=512, hop_length=353)) + 1e-7)
    np.testing.assert_allclose(m.splits["test"][0]["audio"][0].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_frame_sampling(cremad_root: Path) -> None:
    assert frame_indices(10, 3) == [0, 3, 6]  # OGM-GE frame_00001/4/7
    assert frame_indices(3, 1) == [0] and frame_indices(3, 3) == [0, 1, 2]
    assert frame_indices(2, 3) == [0, 1, 1]
    torch.manual_seed(0)
    for _ in range(20):
        idx = frame_indices(10, 3, random=True)
        assert [i // 3 for i in idx] == [0, 1, 2]
    one = dm(cremad_root, frames=1).splits["test"][0]["visual"]
    three = dm(cremad_root, frames=3).splits["test"][0]["visual"]
    assert frame_ids(one) == [0] and frame_ids(three) == [0, 1, 2]
    assert frame_ids(dm(cremad_root, frames=2).splits["val"][0]["visual"]) == [0, 1]


def test_split_sizes_seeded_val(cremad_root: Path) -> None:
    m = dm(cremad_root, val_fraction=0.2, seed=3)
    n = {s: len(d) for s, d in m.splits.items()}
    assert n == {"train": 14, "val": 4, "test": 6}  # 18 train rows -> round(3.6) = 4 val
    names = {s: {c.name for c in d.clips} for s, d in m.splits.items()}
    assert not names["train"] & names["val"] and not names["test"] & (names["train"] | names["val"])
    assert names == {
        s: {c.name for c in d.clips}
        for s, d in dm(cremad_root, val_fraction=0.2, seed=3).splits.items()
    }
    assert names["val"] != {
        c.name for c in dm(cremad_root, val_fraction=0.2, seed=4).splits["val"].clips
    }
    tr, va = stratified_val_split([0] * 50 + [1] * 50, 0.1, 0)
    assert len(va) == 10 and sum(i < 50 for i in va) == 5 and len(tr) == 90


def test_cache_equals_on_the_fly_and_detects_stale(cremad_root: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    kw = {"frames": 3, "cache_dir": str(cache_dir)}
    ref = dm(cremad_root, **kw)
    path = ref.build_cache()
    assert (path / "COMPLETE").is_file()
    cached = dm(cremad_root, cache="require", **kw)
    assert cached.splits["test"].cache is not None and cached.splits["val"].cache is not None
    for split in ("val", "test"):
        for i in range(len(ref.splits[split])):
            a, b = ref.splits[split][i], cached.splits[split][i]
            assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["visual"], b["visual"])
            assert a["label"] == b["label"]
    # train: same audio, augmented frames of the right shape
    a, b = ref.splits["train"][0], cached.splits["train"][0]
    assert torch.equal(a["audio"], b["audio"]) and b["visual"].shape == (3, 3, IMG, IMG)
    # another preprocessing config: stale -> warning + on-the-fly, or an error
    with pytest.warns(UserWarning, match="stale cache"):
        assert dm(cremad_root, audio="mel", cache="auto", **kw).splits["test"].cache is None
    with pytest.raises(FileNotFoundError, match="asgml.prepare"):
        dm(cremad_root, audio="mel", cache="require", **kw)
    # a cache without its completion marker is partial: never used
    (path / "COMPLETE").unlink()
    with pytest.warns(UserWarning, match="partial cache"):
        assert dm(cremad_root, cache="auto", **kw).splits["test"].cache is None


def test_cache_random_frames(cremad_root: Path, tmp_path: Path) -> None:
    kw = {"frames": 2, "frame_sampling": "random", "cache_dir": str(tmp_path)}
    dm(cremad_root, **kw).build_cache()
    cached = dm(cremad_root, cache="require", **kw)
    ref = dm(cremad_root, **kw)
    assert torch.equal(cached.splits["val"][1]["visual"], ref.splits["val"][1]["visual"])
    assert cached.splits["train"][0]["visual"].shape == (3, 2, IMG, IMG)


def test_prepare_entry_point(cremad_root: Path, tmp_path: Path, make_cfg) -> None:
    from asgml.prepare import prepare

    cfg = make_cfg(
        [
            "dataset=cremad_3f",
            f"data_dir={cremad_root}",
            "dataset.image_size=24",
            f"dataset.datamodule.cache_dir={tmp_path / 'c'}",
            "dataset.datamodule.num_workers=0",
        ],
        fast=False,
    )
    path = prepare(cfg)
    assert (path / "COMPLETE").is_file() and path.parent == tmp_path / "c"
    frames = np.load(path / "test" / "frames.npy", mmap_mode="r")
    assert frames.shape == (6 * 3, 27, 27, 3) and frames.dtype == np.uint8


# ----------------------------------------------------------------- bad input
def test_missing_data_dir_and_split_file(tmp_path: Path) -> None:
    for bad in (None, tmp_path / "nope"):
        with pytest.raises(DataLayoutError, match="Expected layout:(.|\n)*AudioWAV"):
            CremadDataModule(bad)
    root = make_cremad(tmp_path / "c", n_train_per_class=1, n_test_per_class=1)
    (root / "test.csv").unlink()
    with pytest.raises(DataLayoutError, match="test.csv(.|\n)*Expected layout"):
        CremadDataModule(root)


def test_missing_clips_warn_once_or_fail(tmp_path: Path) -> None:
    root = make_cremad(tmp_path / "c", n_train_per_class=2, n_test_per_class=1)
    rows = (root / "train.csv").read_text().split()
    (root / "AudioWAV" / f"{rows[0].split(',')[0]}.wav").unlink()
    with open(root / "train.csv", "a") as f:
        f.write("9999_XXX_ANG_XX,ANG\n")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        m = dm(root, cache="off")
    msgs = [str(w.message) for w in rec if "missing on disk" in str(w.message)]
    assert len(msgs) == 1 and msgs[0].startswith("2 of 13 clips")
    assert len(m.splits["train"]) + len(m.splits["val"]) == 11
    with pytest.raises(FileNotFoundError, match="2 of 13 clips"):
        dm(root, strict=True)


def test_unreadable_files_named(tmp_path: Path) -> None:
    root = make_cremad(tmp_path / "c", n_train_per_class=1, n_test_per_class=1)
    clip = (root / "test.csv").read_text().split()[0].split(",")[0]
    wav = root / "AudioWAV" / f"{clip}.wav"
    wav.write_bytes(b"not a wav file at all")
    m = dm(root)
    with pytest.raises(OSError, match=str(wav)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.splits["test"][0]
    clip2 = (root / "test.csv").read_text().split()[1].split(",")[0]
    jpg = sorted((root / "Image-01-FPS" / clip2).iterdir())[0]
    jpg.write_bytes(b"\xff\xd8 broken")
    with pytest.raises(OSError, match=str(jpg)):
        m.splits["test"][1]


def test_unknown_label_names_row(tmp_path: Path) -> None:
    root = make_cremad(tmp_path / "c", n_train_per_class=1, n_test_per_class=1)
    with open(root / "train.csv", "a") as f:
        f.write("1001_DFA_XYZ_XX,XYZ\n")
    with pytest.raises(ValueError, match=r"train\.csv:7: unknown label 'XYZ'"):
        dm(root)


# ------------------------------------------------------------------ end to end
def test_train_cremad_end_to_end(cremad_root: Path, tmp_path: Path) -> None:
    from conftest import TINY_TRAINER, compose_cfg

    from asgml.train import run

    cfg = compose_cfg(
        [
            "dataset=cremad",
            f"data_dir={cremad_root}",
            "dataset.image_size=32",
            "dataset.encoders.audio.width=8",
            "dataset.encoders.visual.width=8",
            "dataset.datamodule.batch_size=4",
            "dataset.datamodule.num_workers=0",
            "dataset.datamodule.cache=off",
            *TINY_TRAINER,
        ],
        output_dir=tmp_path,
        fast=False,
    )
    metrics = run(cfg)
    assert "test/acc" in metrics["metrics"] and (tmp_path / "metrics.json").is_file()


def test_official_pipeline_first_frames_and_native_crop(cremad_root: Path, tmp_path: Path) -> None:
    """OGM-GE CramedDataset.py:83-90: the first ``fps`` listed frames; RandomResizedCrop on the
    frame at its own size (frame_hw 36 x 48 here), not on a square squashed copy."""
    assert frame_indices(10, 3, first=True) == [0, 1, 2]
    assert frame_indices(5, 1, first=True) == [0] and frame_indices(2, 3, first=True) == [0, 1, 1]
    # 3 frames per clip in the fixture: `first` with 2 frames takes frames 0 and 1
    m = dm(cremad_root, frames=2, frame_sampling="first", decode_size="native")
    assert frame_ids(m.splits["test"][0]["visual"]) == [0, 1]
    assert m.decode_hw is None and m.splits["train"][0]["visual"].shape == (3, 2, IMG, IMG)
    # the crop sees the native (36, 48) frame: record the size RandomResizedCrop is given
    seen = []
    rrc = m.splits["train"].transform.geometry.transforms[0]
    orig = rrc.make_params

    def spy(flat_inputs):  # noqa: ANN001, ANN202
        seen.append(tuple(flat_inputs[0].shape[-2:]))
        return orig(flat_inputs)

    rrc.make_params = spy
    m.splits["train"][0]
    assert seen and seen[0] == (36, 48)
    squashed = dm(cremad_root, frames=2, frame_sampling="first")  # earlier behaviour
    assert squashed.decode_hw == (37, 37)  # round(32 * 256 / 224), square
    # the cache stores the native frames and gives the same eval items
    kw = {"frames": 2, "frame_sampling": "first", "decode_size": "native"}
    dm(cremad_root, cache_dir=str(tmp_path), **kw).build_cache()
    cached = dm(cremad_root, cache="require", cache_dir=str(tmp_path), **kw)
    assert torch.equal(cached.splits["test"][0]["visual"], m.splits["test"][0]["visual"])
    with pytest.raises(ValueError, match="decode_size"):
        dm(cremad_root, decode_size="huge")


def test_cache_build_shows_a_bar_per_split(
    cremad_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = dm(cremad_root, frames=1, cache_dir=str(tmp_path / "cache"))
    m.build_cache(progress_bar=True)
    err = capsys.readouterr().err
    for split in ("train", "test"):
        n = len(m.official_clips(split))
        assert re.search(rf"cremad {split}: 100%.* {n}/{n} \[\d\d:\d\d<", err), err
    assert "clip/s" in err
    m.build_cache(overwrite=True)  # the library default: no bar
    assert "100%" not in capsys.readouterr().err


def test_eval_view_is_the_train_split_without_augmentation(cremad_root: Path) -> None:
    """What sample-level valuation reads: same clips, same order, evaluation transforms."""
    m = dm(cremad_root, frames=3, frame_sampling="random")
    train, view = m.splits["train"], m.eval_view("train")
    assert view is not train and not view.train and train.train
    assert [c.name for c in view.clips] == [c.name for c in train.clips]
    a, b = view[0], view[0]  # deterministic: no random crop, flip or frame choice
    assert torch.equal(a["visual"], b["visual"]) and torch.equal(a["audio"], train[0]["audio"])
    assert frame_ids(a["visual"]) == frame_ids(m.splits["val"][0]["visual"])
    assert m.eval_view("test") is m.splits["test"]
