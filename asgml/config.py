"""Config helpers: OmegaConf resolvers, start-up validation, instantiation of method
callbacks and loggers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def _first(mapping: Any, n: Any) -> Any:
    """``${asgml.first:<mapping>,<n>}``: the first ``n`` entries of a mapping."""
    n = int(n)
    if not isinstance(mapping, Mapping | DictConfig):
        raise ValueError(f"asgml.first expects a mapping, got {type(mapping).__name__}")
    keys = list(mapping.keys())
    if n > len(keys):
        raise ValueError(f"asked for {n} entries of {keys}: only {len(keys)} defined")
    return OmegaConf.create({k: mapping[k] for k in keys[:n]})


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("asgml.first"):
        OmegaConf.register_new_resolver("asgml.first", _first)


def to_container(cfg: Any) -> Any:
    """Plain (resolved) python containers, safe for ``torch.load(weights_only=True)``."""
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def method_callback_configs(method_cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """The ``(key, config)`` of every callback in a method config, in config order."""
    return [(k, v) for k, v in method_cfg.items() if isinstance(v, DictConfig) and "_target_" in v]


def validate_config(cfg: DictConfig) -> None:
    """Checks that fail early with the offending key named."""
    if cfg.get("select_on", "val") not in ("val", "test"):
        raise ValueError(f"select_on must be 'val' or 'test', got {cfg.select_on!r}")
    encoders = cfg.model.get("encoders")
    if encoders is None or len(encoders) < 2:
        raise ValueError(f"model.encoders must name >= 2 modalities, got {list(encoders or [])}")
    module_opts = cfg.method.get("module", {}) or {}
    unknown = set(module_opts) - set(cfg.model)
    if unknown:
        raise ValueError(
            f"method.module has unknown option(s) {sorted(unknown)}; "
            f"MultimodalModule options are {sorted(k for k in cfg.model if not k.startswith('_'))}"
        )


def check_datamodule_matches(datamodule: Any, model_cfg: DictConfig) -> None:
    """The model's encoder map and class count must match what the data provides."""
    data_mods = list(getattr(datamodule, "modalities", []))
    enc_mods = list(model_cfg.encoders)
    for m in enc_mods:
        if m not in data_mods:
            raise ValueError(
                f"model.encoders.{m}: unknown modality {m!r}; the dataset provides {data_mods}"
            )
    for m in data_mods:
        if m not in enc_mods:
            raise ValueError(
                f"the dataset provides modality {m!r} but model.encoders has no entry for it "
                f"(have {enc_mods})"
            )
    n_data = getattr(datamodule, "num_classes", None)
    if n_data is not None and int(model_cfg.num_classes) != int(n_data):
        raise ValueError(
            f"model.num_classes={model_cfg.num_classes} does not match the dataset's "
            f"num_classes={n_data} (dataset.num_classes)"
        )
