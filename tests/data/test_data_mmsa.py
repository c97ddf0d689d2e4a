"""MMSA pickle datamodule (MOSI / MOSEI / CH-SIMS format)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import make_mmsa, mmsa_split

from asgml.core.types import MultimodalDataModule
from asgml.data.base import DataLayoutError
from asgml.data.mmsa import MMSADataModule, sentiment_classes


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mmsa(tmp_path_factory.mktemp("sims") / "unaligned_39.pkl")


def test_shapes_lengths_dims(sims: Path) -> None:
    m = MMSADataModule(str(sims.parent), file="unaligned_39.pkl", name="sims", batch_size=4)
    assert m.modalities == ["text", "audio", "vision"] and m.num_classes == 3
    assert isinstance(m, MultimodalDataModule)
    assert m.encoder_overrides() == {
        "text": {"input_dim": 768}, "audio": {"input_dim": 33}, "vision": {"input_dim": 709}
    }  # fmt: skip
    m.setup()
    assert {s: len(d) for s, d in m.splits.items()} == {"train": 24, "val": 8, "test": 8}
    batch = next(iter(m.train_dataloader()))
    assert batch["text"].shape == (4, 39, 768) and batch["audio"].shape == (4, 40, 33)
    assert batch["vision"].shape == (4, 11, 709) and batch["audio"].dtype == torch.float32
    assert set(batch["lengths"]) == {"audio", "vision"}
    assert batch["lengths"]["audio"].dtype == torch.long and batch["label"].dtype == torch.long
    with open(sims, "rb") as f:
        raw = pickle.load(f)
    assert np.isneginf(raw["train"]["audio"][0, 0, 0])
    assert m.splits["train"][0]["audio"][0, 0] == 0  # -inf -> 0 as MMSA
    np.testing.assert_array_equal(
        m.splits["test"].lengths["vision"].numpy(), raw["test"]["vision_lengths"]
    )
    # the pickle itself as data_dir; text lengths from text_bert's attention mask
    m2 = MMSADataModule(str(sims), text_lengths=True)
    m2.setup()
    np.testing.assert_array_equal(
        m2.splits["val"].lengths["text"].numpy(), raw["valid"]["text_bert"][:, 1].sum(1)
    )
    m3 = MMSADataModule(str(sims), text="text_bert")
    assert m3.feature_dims()["text"] == 3 and m3.splits["train"][0]["text"].shape == (39, 3)


def test_label_mapping(tmp_path: Path) -> None:
    y = np.array([-3.0, -1.4, -0.6, -0.2, 0.0, 0.2, 0.5, 0.6, 1.5, 2.6, 3.0])
    assert sentiment_classes(y, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert sentiment_classes(y, 3).tolist() == [0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2]
    assert sentiment_classes(y, 3, 0.5).tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert sentiment_classes(y, 7).tolist() == [0, 2, 2, 3, 3, 3, 3, 4, 5, 6, 6]
    path = make_mmsa(tmp_path / "x.pkl", sizes=(4, 4, 4), labels=[-0.4, 0.0, 0.0, 1.0])
    m = MMSADataModule(str(path), num_classes=2, drop_neutral=True)
    m.setup()
    assert m.splits["test"].labels.tolist() == [0, 1]
    m = MMSADataModule(str(path), num_classes=3)
    m.setup()
    assert m.splits["test"].labels.tolist() == [0, 1, 1, 2]


def test_bad_input(tmp_path: Path) -> None:
    for bad in (None, tmp_path / "nope"):
        with pytest.raises(DataLayoutError, match="Expected layout:(.|\n)*unaligned_50.pkl"):
            MMSADataModule(bad)
    with pytest.raises(DataLayoutError, match="missing file"):
        MMSADataModule(str(tmp_path))
    data = {s: mmsa_split(4, seed=i) for i, s in enumerate(("train", "valid", "test"))}
    del data["valid"]["vision"]
    with open(tmp_path / "unaligned_50.pkl", "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(KeyError, match="'valid' has no key 'vision'"):
        MMSADataModule(str(tmp_path)).setup()
    del data["test"]
    with open(tmp_path / "unaligned_50.pkl", "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(KeyError, match="no split key 'test'"):
        MMSADataModule(str(tmp_path)).setup()
    (tmp_path / "unaligned_50.pkl").write_bytes(b"\x80\x04 truncated")
    with pytest.raises(OSError, match="unaligned_50.pkl"):
        MMSADataModule(str(tmp_path)).setup()


def test_train_sims_end_to_end(sims: Path, tmp_path: Path) -> None:
    from conftest import TINY_TRAINER, compose_cfg

    from asgml.train import run

    cfg = compose_cfg(
        [
            "dataset=sims",
            f"data_dir={sims.parent}",
            "dataset.datamodule.batch_size=8",
            "dataset.encoders.text.hidden_dim=16",
            "dataset.encoders.audio.hidden_dim=16",
            "dataset.encoders.vision.hidden_dim=16",
            *TINY_TRAINER,
        ],
        output_dir=tmp_path,
        fast=False,
    )
    metrics = run(cfg)
    assert "test/acc" in metrics["metrics"] and "test/acc_vision" in metrics["metrics"]
