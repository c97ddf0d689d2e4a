"""asgml.core.pretrained: encoder weights from a method=unimodal checkpoint, and every refusal
(missing file, unreadable file, other method, modality, dataset, encoder shapes) with the key
and both values named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asgml.core.pretrained import load_unimodal_encoder_state, run_dataset
from asgml.models.encoders import MLPEncoder
from tests.helpers import tiny_mlp_module

KEY = "method.reconboost.init_from.audio"


def _ckpt(
    tmp_path: Path, name="u.ckpt", method="unimodal", modality="audio", dataset="toy", hidden=8
) -> Path:
    torch.manual_seed(1)
    enc = MLPEncoder(input_dim=4, hidden_dim=hidden, feature_dim=8, dropout=0.0)
    state = {f"encoders.{modality}.{k}": v for k, v in enc.state_dict().items()}
    state["fusion.fc.weight"] = torch.zeros(3, 8)
    cfg = {"method": {"name": method, "modality": modality}, "dataset": {"name": dataset}}
    path = tmp_path / name
    torch.save({"state_dict": state, "asgml_config": cfg}, path)
    return path


def _encoder(hidden: int = 8) -> MLPEncoder:
    return MLPEncoder(input_dim=4, hidden_dim=hidden, feature_dim=8, dropout=0.0)


def test_returns_the_modality_encoder_weights(tmp_path: Path) -> None:
    path = _ckpt(tmp_path)
    state = load_unimodal_encoder_state(path, "audio", _encoder(), KEY, dataset="toy")
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert set(state) == set(_encoder().state_dict())
    for k, v in state.items():
        assert torch.equal(v, stored[f"encoders.audio.{k}"]), k


def test_refusals_name_the_key_and_both_values(tmp_path: Path) -> None:
    enc = _encoder()
    with pytest.raises(FileNotFoundError, match=rf"{KEY}=.*nope.ckpt: no such checkpoint"):
        load_unimodal_encoder_state(tmp_path / "nope.ckpt", "audio", enc, KEY)
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=rf"{KEY}=.*junk.ckpt: not a readable checkpoint"):
        load_unimodal_encoder_state(junk, "audio", enc, KEY)
    other = _ckpt(tmp_path, "b.ckpt", method="baseline")
    with pytest.raises(
        ValueError, match=r"method=unimodal method.modality=audio\), got method='baseline'"
    ):
        load_unimodal_encoder_state(other, "audio", enc, KEY)
    visual = _ckpt(tmp_path, "v.ckpt", modality="visual")
    with pytest.raises(ValueError, match=r"got method='unimodal' modality='visual'"):
        load_unimodal_encoder_state(visual, "audio", enc, KEY)
    path = _ckpt(tmp_path)
    with pytest.raises(ValueError, match=r"trained on dataset='toy', this run is dataset='cremad'"):
        load_unimodal_encoder_state(path, "audio", enc, KEY, dataset="cremad")
    wide = _ckpt(tmp_path, "w.ckpt", hidden=16)
    with pytest.raises(
        ValueError, match=r"does not match.*checkpoint \(16, 4\), this model \(8, 4\)"
    ):
        load_unimodal_encoder_state(wide, "audio", enc, KEY)


def test_run_dataset_reads_the_run_config() -> None:
    module = tiny_mlp_module()
    assert run_dataset(module) is None
    module.run_config = {"dataset": {"name": "cremad"}}
    assert run_dataset(module) == "cremad"
