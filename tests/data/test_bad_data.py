"""Bad data gets a clear error naming the file or key, or a warning recorded in the run
(``data_issues`` in ``metrics.json`` and the run log) -- never a silent result. Tiny
fixtures in the real on-disk formats (tests/data/fixtures.py)."""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures import make_ave, make_cremad, make_ks, make_mmsa, mmsa_split

from asgml.data.avdataset import AVEKSDataModule
from asgml.data.cremad import CremadDataModule, wav_truncation
from asgml.data.mmsa import MMSADataModule
from asgml.run.config import validate_config
from tests.conftest import TINY_TRAINER, compose_cfg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[2]


def cremad(root: Path, **kw) -> CremadDataModule:
    kw = {"image_size": 16, "num_workers": 0, "batch_size": 2, "cache": "off", **kw}
    m = CremadDataModule(str(root), **kw)
    m.setup()
    return m


def _first_clip(root: Path, split: str = "train", i: int = 0) -> str:
    return (root / f"{split}.csv").read_text().split()[i].split(",")[0]


@pytest.fixture
def croot(tmp_path: Path) -> Path:
    return make_cremad(tmp_path / "c", n_train_per_class=2, n_test_per_class=1, frames_per_clip=1)


# ---------------------------------------------------------------- split lists
def test_empty_splits_are_errors(croot: Path) -> None:
    (croot / "test.csv").write_text("")
    with pytest.raises(ValueError, match=r"test\.csv lists no clips \(empty test split\)"):
        cremad(croot)
    (croot / "test.csv").write_text("1001_IEO_NEU_XX,NEU\n")
    (croot / "train.csv").write_text("9998_X_NEU_XX,NEU\n9999_X_HAP_XX,HAP\n")
    with pytest.raises(FileNotFoundError, match=r"none of the 2 clips listed in .*train\.csv"):
        cremad(croot)


def test_val_fraction_leaving_no_train_is_an_error(croot: Path) -> None:
    (croot / "train.csv").write_text(f"{_first_clip(croot)},NEU\n")
    with pytest.raises(ValueError, match="the train split is empty"):
        cremad(croot, val_fraction=0.9)


def test_conflicting_duplicate_is_an_error_and_repeats_are_recorded(croot: Path) -> None:
    clip = _first_clip(croot)
    text = (croot / "train.csv").read_text()
    (croot / "train.csv").write_text(text + f"{clip},ANG\n")
    with pytest.raises(ValueError, match=rf"listed in .*train\.csv with two different labels, e.g. {clip} \(labels \[0, 5\]\)"):  # fmt: skip
        cremad(croot)
    (croot / "train.csv").write_text(text + f"{clip},NEU\n")
    m = cremad(croot)
    assert m.data_issues.as_dict()["train"]["duplicate_ids"]["count"] == 1
    assert m.data_issues.as_dict()["train"]["duplicate_ids"]["examples"] == [clip]
    with pytest.raises(ValueError, match="listed twice"):
        cremad(croot, strict=True)


def test_train_test_overlap_is_recorded_or_strict_error(croot: Path) -> None:
    clip = _first_clip(croot)
    with open(croot / "test.csv", "a") as f:
        f.write(f"{clip},NEU\n")
    m = cremad(croot)
    assert m.data_issues.as_dict()["test"]["train_test_overlap"]["examples"] == [clip]
    with pytest.raises(ValueError, match="in both the train and the test list"):
        cremad(croot, strict=True)


def test_utf8_bom_in_split_file(croot: Path) -> None:
    (croot / "train.csv").write_bytes(b"\xef\xbb\xbf" + (croot / "train.csv").read_bytes())
    m = cremad(croot)
    assert not m.data_issues  # nothing skipped: the BOM is not part of the first clip name
    assert len(m.splits["train"]) + len(m.splits["val"]) == 12


def test_ave_dedupe_is_recorded(tmp_path: Path) -> None:
    root = make_ave(tmp_path / "AVE", n_train_per_class=1, spec_shape=(8, 8), frame_hw=(8, 8))
    rows = (root / "my_train.txt").read_text().splitlines()
    name = rows[0].split(",")[1]
    (root / "my_train.txt").write_text("\n".join([*rows, f"Male speech,{name}"]) + "\n")
    m = AVEKSDataModule(str(root), frames=1, image_size=8, val_fraction=0.0, cache="off")
    m.setup()
    rec = m.data_issues.as_dict()["train"]["duplicate_ids"]
    assert rec["count"] == 1 and rec["examples"] == [name] and "last" in rec["action"]


# ---------------------------------------------------------------- file contents
def test_truncated_wav_is_an_error_naming_it(croot: Path) -> None:
    wav = croot / "AudioWAV" / f"{_first_clip(croot, 'test')}.wav"
    assert wav_truncation(wav) is None
    data = wav.read_bytes()
    wav.write_bytes(data[: len(data) // 2])
    declared, present = wav_truncation(wav)
    assert present < declared
    m = cremad(croot)
    with pytest.raises(OSError, match=rf"{wav.name} is truncated"):
        m.splits["test"][0]


def test_ks_audio_of_another_shape_names_the_file(tmp_path: Path) -> None:
    root = make_ks(tmp_path / "KS", labels=(0, 1), n_train_per_class=1, frames_per_clip=1)
    name = (root / "my_test.txt").read_text().split(",")[0]
    np.save(root / "audio" / f"{name}.npy", np.zeros((1000, 128), np.float32))
    ks_cfg = yaml.safe_load((ROOT / "conf" / "dataset" / "ks.yaml").read_text())
    m = AVEKSDataModule(
        str(root), name="ks", num_classes=31, split_format="ks", audio_dir="audio",
        audio_ext="npy", dedupe_last=False, audio_shape=ks_cfg["datamodule"]["audio_shape"],
        frames=1, image_size=8, cache="off",
    )  # fmt: skip
    m.setup()
    with pytest.raises(OSError, match=rf"{name}\.npy holds an array of shape \(1000, 128\), expected \(1024, 128\)"):  # fmt: skip
        m.splits["test"][0]


def test_nonfinite_spectrogram_names_the_file(tmp_path: Path) -> None:
    root = make_ave(tmp_path / "AVE", n_train_per_class=1, spec_shape=(8, 8), frame_hw=(8, 8))
    name = (root / "my_test.txt").read_text().split("\n")[0].split(",")[1]
    spec = np.ones((8, 8), np.float32)
    spec[2, 3] = np.nan
    (root / "audio_spec" / f"{name}.pkl").write_bytes(pickle.dumps(spec))
    m = AVEKSDataModule(str(root), frames=1, image_size=8, cache="off")
    m.setup()
    with pytest.raises(OSError, match=rf"{name}\.pkl holds 1 non-finite"):
        m.splits["test"][0]


# ---------------------------------------------------------------- MMSA
def _mmsa(tmp_path: Path, edit, **kw) -> MMSADataModule:
    data = {s: mmsa_split(4, seed=i) for i, s in enumerate(("train", "valid", "test"))}
    for s in data:
        data[s]["id"] = np.array([f"{s}{i}$_$1" for i in range(4)], dtype=object)
    edit(data)
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    m = MMSADataModule(str(path), **kw)
    m.setup()
    return m


def test_mmsa_labels_out_of_range(tmp_path: Path) -> None:
    def edit(d):
        d["train"]["regression_labels"][1] = 42.0

    with pytest.raises(ValueError, match=r"1 train/regression_labels outside \[-3, 3\], e.g. train1\$_\$1=42"):  # fmt: skip
        _mmsa(tmp_path, edit)


def test_mmsa_nonfinite_features_counted_per_modality(tmp_path: Path) -> None:
    def edit(d):
        d["test"]["vision"][2, 0, :3] = np.nan
        d["test"]["text"][0, 1, 0] = np.inf

    with pytest.raises(ValueError, match=r"non-finite test features: text: 1 values in 1 samples \(e.g. \['test0\$_\$1'\]\); vision: 3 values in 1 samples"):  # fmt: skip
        _mmsa(tmp_path, edit)
    m = _mmsa(tmp_path, edit, nonfinite="zero")
    assert m.data_issues.as_dict()["test"]["vision_nonfinite"]["examples"] == ["test2$_$1"]
    assert float(m.splits["test"].features["vision"][2].abs().sum()) > 0
    assert bool(m.splits["test"].features["vision"].isfinite().all())


def test_mmsa_nonpositive_lengths_recorded(tmp_path: Path) -> None:
    def edit(d):
        d["train"]["audio_lengths"][3] = 0
        d["train"]["vision_lengths"][1] = -2

    m = _mmsa(tmp_path, edit)
    issues = m.data_issues.as_dict()["train"]
    assert issues["audio_lengths_nonpositive"]["examples"] == ["train3$_$1"]
    assert issues["vision_lengths_nonpositive"]["count"] == 1
    with pytest.raises(ValueError, match=r"1 train/audio lengths are <= 0"):
        _mmsa(tmp_path, edit, strict=True)


def test_mmsa_empty_split_and_overlap(tmp_path: Path) -> None:
    def empty(d):
        d["test"] = {k: v[:0] for k, v in d["test"].items()}

    with pytest.raises(ValueError, match="split 'test' is empty"):
        _mmsa(tmp_path, empty)

    def overlap(d):
        d["test"]["id"][0] = d["train"]["id"][2]

    m = _mmsa(tmp_path, overlap)
    assert m.data_issues.as_dict()["test"]["train_test_overlap"]["examples"] == ["train2$_$1"]


# ---------------------------------------------------------------- config values
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=abc", "seed must be an integer, got 'abc'"),
        ("dataset.image_size=0", "dataset.image_size must be an integer >= 1, got 0"),
        ("dataset.datamodule.decode_size=-3", "dataset.datamodule.decode_size must be"),
        ("dataset.datamodule.decode_size=[0,4]", "dataset.datamodule.decode_size must be"),
    ],
)
def test_config_value_errors_name_the_key(override: str, message: str) -> None:
    cfg = compose_cfg(["dataset=cremad", "data_dir=/nonexistent", override], fast=False)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        validate_config(cfg)


# ---------------------------------------------------------------- recorded in the run
def test_skipped_clips_are_recorded_in_metrics_and_log(
    croot: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from asgml.train import run

    gone = _first_clip(croot, "train", 1)
    (croot / "AudioWAV" / f"{gone}.wav").unlink()
    cfg = compose_cfg(
        ["dataset=cremad", f"data_dir={croot}", "dataset.image_size=16", "dataset.frames=1",
         "dataset.encoders.audio.width=4", "dataset.encoders.visual.width=4",
         "dataset.datamodule.batch_size=2", "dataset.datamodule.num_workers=0",
         "dataset.datamodule.cache=off", *TINY_TRAINER],
        output_dir=tmp_path / "run", fast=False,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="asgml.data"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["data_issues"]["train"]["missing_files"]["examples"] == [gone]
    assert saved["data_issues"]["train"]["missing_files"]["count"] == 1
    assert any("missing_files" in r.getMessage() and gone in r.getMessage() for r in caplog.records)


def test_mmsa_fixture_has_no_issues(tmp_path: Path) -> None:
    m = MMSADataModule(str(make_mmsa(tmp_path / "x.pkl")))
    m.setup()
    assert m.data_issues.as_dict() == {}
