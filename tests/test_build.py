"""``asgml.run.build``: the one path from a config to (datamodule, module, callbacks)."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
from hydra.errors import InstantiationException
from omegaconf import open_dict

from asgml.core.module import MultimodalModule
from asgml.core.types import MultimodalDataModule
from asgml.data.synthetic import SyntheticDataModule
from asgml.methods.boost import ASGMLBoost
from asgml.methods.probe import ProbeMonitor
from asgml.run.build import build, build_callbacks, build_datamodule, build_model, model_config


class StubData:
    """A datamodule as far as the protocol goes, with data-dependent encoder dims."""

    def __init__(self, modalities: list[str], num_classes: int, dims: dict[str, int]) -> None:
        self.modalities = modalities
        self.num_classes = num_classes
        self.dims = dims

    def encoder_overrides(self) -> dict[str, dict[str, Any]]:
        return {m: {"input_dim": d} for m, d in self.dims.items()}


def test_build_synthetic_default(make_cfg) -> None:
    cfg = make_cfg(["method=boost", "method.boost.alpha=0.25"])
    datamodule, module, callbacks = build(cfg)
    assert isinstance(datamodule, SyntheticDataModule)
    assert isinstance(datamodule, MultimodalDataModule) and datamodule.encoder_overrides() == {}
    assert isinstance(module, MultimodalModule)
    assert list(module.modalities) == list(datamodule.modalities) == ["audio", "visual"]
    # Lightning callbacks of `callbacks/` first, then the method's, in config order
    names = [type(c).__name__ for c in callbacks]
    assert names == [
        "BestCheckpoint",
        "LastCheckpoint",
        "LearningRateMonitor",
        "EpochLog",
        "GracefulStop",
        "ProbeMonitor",
        "ASGMLBoost",
    ]
    assert isinstance(callbacks[-2], ProbeMonitor) and isinstance(callbacks[-1], ASGMLBoost)
    assert callbacks[-1].alpha == 0.25
    assert build(cfg, callbacks=False)[2] == []


def test_encoder_overrides_reach_the_model(make_cfg) -> None:
    cfg = make_cfg(["dataset.num_modalities=3"])
    mlp = {"_target_": "asgml.models.encoders.MLPEncoder", "input_dim": 1, "hidden_dim": 8}
    with open_dict(cfg):
        cfg.model.encoders = {m: dict(mlp) for m in ("audio", "visual", "text")}
    data = StubData(["audio", "visual", "text"], 4, {"audio": 5, "visual": 6, "text": 7})
    assert {m: e.input_dim for m, e in model_config(cfg, data).encoders.items()} == data.dims
    module = build_model(cfg, data)
    assert {m: e.net[0].in_features for m, e in module.encoders.items()} == data.dims
    # the composed config is left as it was
    assert {e.input_dim for e in cfg.model.encoders.values()} == {1}


def test_model_must_match_the_data(make_cfg) -> None:
    cfg = make_cfg()
    with pytest.raises(ValueError, match="model.num_classes=4 does not match"):
        build_model(cfg, StubData(["audio", "visual"], 3, {}))
    with pytest.raises(ValueError, match="unknown modality 'visual'"):
        build_model(cfg, StubData(["audio", "text"], 4, {}))


def test_datamodule_outside_the_protocol_is_refused(make_cfg) -> None:
    cfg = make_cfg()
    with open_dict(cfg):
        cfg.dataset.datamodule = {"_target_": "lightning.pytorch.LightningDataModule"}
    assert not isinstance(L.LightningDataModule(), MultimodalDataModule)
    with pytest.raises(TypeError, match=r"dataset.datamodule._target_=.*MultimodalDataModule"):
        build_datamodule(cfg)


def test_method_callback_errors_name_the_key(make_cfg) -> None:
    cfg = make_cfg(["method=ogm", "method.ogm.params=all"])
    with pytest.raises(InstantiationException, match=r"(?s)^method.ogm: .*params='all' needs"):
        build_callbacks(cfg)
    cfg = make_cfg(["method=ogm", "method.ogm.variant=generalized", "method.ogm.params=all"])
    assert build_callbacks(cfg)[-1].params == "all"
