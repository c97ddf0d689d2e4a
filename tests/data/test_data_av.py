"""AVE (OGM-GE AVDataset layout) and Kinetics-Sounds (shipped split format) datamodules."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from fixtures import frame_ids, make_ave, make_ks

from asgml.core.types import MultimodalDataModule
from asgml.data.audiovisual import AudioVisualDataModule
from asgml.data.avdataset import AVEKSDataModule
from asgml.data.base import DataLayoutError
from asgml.run.build import build
from asgml.run.config import to_container
from asgml.run.evaluate import build_from_config

IMG = 24


def ave(root: Path, **kw) -> AVEKSDataModule:
    kw = {"image_size": IMG, "num_workers": 0, "batch_size": 2, "cache": "off", **kw}
    m = AVEKSDataModule(str(root), name="ave", **kw)
    m.setup()
    return m


def ks(root: Path, **kw) -> AVEKSDataModule:
    kw = {"image_size": IMG, "num_workers": 0, "batch_size": 2, "cache": "off", **kw}
    m = AVEKSDataModule(
        str(root), name="ks", num_classes=31, split_format="ks", audio_dir="audio",
        audio_ext="npy", dedupe_last=False, **kw,
    )  # fmt: skip
    m.setup()
    return m


@pytest.fixture(scope="module")
def ave_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ave(tmp_path_factory.mktemp("ave") / "AVE")


def test_ave_shapes_labels_frames(ave_root: Path) -> None:
    m = ave(ave_root, num_classes=3)
    # label = index in the SORTED stat.txt
    assert m.classes == ["Church bell", "Dog barking", "Male speech"] and m.num_classes == 3
    rows = [r.split(",") for r in (ave_root / "my_test.txt").read_text().splitlines()]
    assert [(c.name, c.label) for c in m.splits["test"].clips] == [
        (name, m.classes.index(cls)) for cls, name in rows
    ]
    item = m.splits["test"][0]
    assert item["audio"].shape == (1, 257, 1004) and item["audio"].dtype == torch.float32
    assert item["visual"].shape == (3, 3, IMG, IMG)
    assert frame_ids(item["visual"]) == [0, 3, 6]  # frame_00001 / 00004 / 00007
    with open(ave_root / "audio_spec" / f"{rows[0][1]}.pkl", "rb") as f:
        assert torch.equal(item["audio"][0], torch.from_numpy(pickle.load(f)))
    assert {s: len(d) for s, d in m.splits.items()} == {"train": 5, "val": 1, "test": 3}


def test_av_modality_names_come_from_config(ave_root: Path) -> None:
    m = ave(ave_root, num_classes=3, modalities=["sound", "frames"])
    ref = ave(ave_root, num_classes=3)
    assert m.modalities == ["sound", "frames"]
    item, ref_item = m.splits["test"][0], ref.splits["test"][0]
    assert set(item) == {"sound", "frames", "label"}
    assert torch.equal(item["sound"], ref_item["audio"])
    assert torch.equal(item["frames"], ref_item["visual"])
    with pytest.raises(ValueError, match="modalities must be two distinct names"):
        AVEKSDataModule(str(ave_root), name="ave", modalities=["audio", "audio"])
    with pytest.raises(ValueError, match="modalities must be two distinct names"):
        AVEKSDataModule(str(ave_root), name="ave", modalities=["audio", "visual", "text"])


def test_av_base_requires_the_subclass_api(ave_root: Path) -> None:
    class NoSplitReader(AudioVisualDataModule):
        def load_audio(self, path: Path):
            raise AssertionError

        def audio_config(self):
            return {}

    with pytest.raises(TypeError, match="read_split"):
        NoSplitReader(str(ave_root))


def test_ave_duplicates_keep_last_label(tmp_path: Path) -> None:
    root = make_ave(tmp_path / "AVE", n_train_per_class=1)
    rows = (root / "my_train.txt").read_text().splitlines()
    name = rows[0].split(",")[1]
    (root / "my_train.txt").write_text("\n".join([*rows, f"Male speech,{name}"]) + "\n")
    clips = ave(root, val_fraction=0.0).official_clips("train")
    assert [c.name for c in clips].count(name) == 1
    assert next(c for c in clips if c.name == name).label == 2


def test_ave_cache_matches_and_bad_input(ave_root: Path, tmp_path: Path) -> None:
    kw = {"cache_dir": str(tmp_path / "cache")}
    ref = ave(ave_root, **kw)
    ref.build_cache()
    cached = ave(ave_root, cache="require", **kw)
    for split in ("val", "test"):
        for i in range(len(ref.splits[split])):
            a, b = ref.splits[split][i], cached.splits[split][i]
            assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["visual"], b["visual"])
    with pytest.raises(ValueError, match="stat.txt lists 3"):
        AVEKSDataModule(str(ave_root), num_classes=28)


def test_ave_bad_files(tmp_path: Path) -> None:
    root = make_ave(tmp_path / "AVE", n_train_per_class=1, spec_shape=(8, 8))
    (root / "stat.txt").unlink()
    with pytest.raises(DataLayoutError, match="stat.txt(.|\n)*audio_spec"):
        AVEKSDataModule(str(root))
    root = make_ave(tmp_path / "AVE2", n_train_per_class=1, spec_shape=(8, 8))
    name = (root / "my_test.txt").read_text().split("\n")[0].split(",")[1]
    (root / "audio_spec" / f"{name}.pkl").write_bytes(b"garbage")
    with pytest.raises(OSError, match=f"{name}.pkl"):
        ave(root).splits["test"][0]
    with open(root / "my_test.txt", "a") as f:
        f.write("Helicopter,vid9999\n")
    with pytest.raises(ValueError, match=r"my_test\.txt:4: unknown class 'Helicopter'"):
        ave(root)


def test_ks_format(tmp_path: Path) -> None:
    root = make_ks(tmp_path / "KS")
    m = ks(root)
    assert m.num_classes == 31 and m.modalities == ["audio", "visual"]
    item = m.splits["test"][2]
    assert item["audio"].shape == (1, 1024, 128) and item["label"] == 30
    assert item["visual"].shape == (3, 3, IMG, IMG) and frame_ids(item["visual"]) == [0, 3, 6]
    assert {s: len(d) for s, d in m.splits.items()} == {"train": 5, "val": 1, "test": 3}
    with open(root / "my_train.txt", "a") as f:
        f.write("abc_000001_000011,10,31\n")
    with pytest.raises(ValueError, match=r"my_train\.txt:7: unknown label '31'"):
        ks(root)


SMALL_ENCODERS = ["dataset.encoders.audio.width=4", "dataset.encoders.visual.width=4"]


def test_configs_build(ave_root: Path, tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg(
        ["dataset=ave", f"data_dir={ave_root}", "dataset.num_classes=3", *SMALL_ENCODERS],
        fast=False,
    )
    m, model, _ = build(cfg, callbacks=False)
    assert isinstance(m, AVEKSDataModule) and isinstance(m, MultimodalDataModule)
    assert list(model.modalities) == m.modalities == ["audio", "visual"]
    ks_root = make_ks(tmp_path / "KS", n_train_per_class=1, n_test_per_class=1)
    cfg = make_cfg(["dataset=ks", f"data_dir={ks_root}", *SMALL_ENCODERS], fast=False)
    m, model, _ = build(cfg, callbacks=False)
    assert m.num_classes == 31 and m.split_format == "ks" and m.frames == 3
    assert model.num_classes == 31


def test_stored_config_with_the_old_datamodule_name_still_builds(ave_root: Path, make_cfg) -> None:
    cfg = make_cfg(
        ["dataset=ave", f"data_dir={ave_root}", "dataset.num_classes=3", *SMALL_ENCODERS],
        fast=False,
    )
    stored = to_container(cfg)
    stored["dataset"]["datamodule"]["_target_"] = "asgml.data.avdataset.AVDataModule"
    m, _ = build_from_config(stored)
    assert type(m) is AVEKSDataModule
