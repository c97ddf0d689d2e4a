"""The one path from a config to the objects of a run.

`build` turns a composed (or stored, resolved) config into
``(datamodule, module, callbacks)``; ``asgml.train`` trains them, ``asgml.eval`` rebuilds a
checkpoint's run from the config stored in it, and ``asgml.prepare`` builds the datamodule
(`build_datamodule`) to write its cache. Where each part comes from:

* the datamodule: ``dataset.datamodule`` (it must satisfy
  `asgml.core.types.MultimodalDataModule`);
* the module: ``model``, with the encoder arguments the datamodule reads from the data
  (`encoder_overrides`, e.g. MMSA feature dims)
  merged into ``model.encoders``;
* the callbacks: the Lightning callbacks of ``callbacks``, then the method's callbacks
  (every entry of ``method`` with a ``_target_``), in config order, then the observers of
  ``diagnostics`` (``diagnostics=probes|full``: every entry with a ``_target_``), last so
  they see the gradients the optimizer applies.
"""

from __future__ import annotations

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from asgml.core.module import MultimodalModule
from asgml.core.types import MultimodalDataModule
from asgml.data.layout import DataLayoutError
from asgml.run.config import check_datamodule_matches, method_callback_configs
from asgml.run.protocols import drop_unset


def build_datamodule(cfg: DictConfig) -> MultimodalDataModule:
    """Instantiate ``cfg.dataset.datamodule``; it must satisfy the datamodule protocol. A
    missing file is raised as the datamodule's own ``DataLayoutError`` (Hydra's wrapper
    would print the expected layout as one line of ``\\n``)."""
    try:
        datamodule = instantiate(cfg.dataset.datamodule)
    except InstantiationException as err:
        if isinstance(err.__cause__, DataLayoutError):
            raise err.__cause__ from None
        raise
    if not isinstance(datamodule, MultimodalDataModule):
        raise TypeError(
            f"dataset.datamodule._target_={cfg.dataset.datamodule.get('_target_')!r} built a "
            f"{type(datamodule).__name__}, which lacks `modalities`, `num_classes` or "
            "`encoder_overrides()` (asgml.core.types.MultimodalDataModule)"
        )
    return datamodule


def model_config(cfg: DictConfig, datamodule: MultimodalDataModule) -> DictConfig:
    """``cfg.model`` with the datamodule's encoder overrides merged into its ``encoders``."""
    merged = OmegaConf.merge(cfg.model, {"encoders": datamodule.encoder_overrides()})
    assert isinstance(merged, DictConfig)
    for key in ("optimizer", "scheduler"):  # a null argument is not passed (protocols.py)
        if isinstance(merged.get(key), DictConfig):
            merged[key] = drop_unset(merged[key])
    return merged


def build_model(cfg: DictConfig, datamodule: MultimodalDataModule) -> MultimodalModule:
    """The module of ``cfg.model``; its encoders and class count must match the data."""
    check_datamodule_matches(datamodule, cfg.model)
    model = instantiate(model_config(cfg, datamodule))
    if not isinstance(model, MultimodalModule):
        raise TypeError(
            f"model._target_={cfg.model.get('_target_')!r} built a {type(model).__name__}, "
            "not an asgml.core.module.MultimodalModule"
        )
    return model


def build_method_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The method's callbacks (every entry of ``cfg.method`` with a ``_target_``), in order."""
    out: list[L.Callback] = []
    for key, c in method_callback_configs(cfg.method):
        try:
            out.append(instantiate(c))
        except Exception as e:  # name the key that failed (once: some errors name it already)
            if str(e).startswith(f"method.{key}"):
                raise
            raise type(e)(f"method.{key}: {e}") from e
    return out


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The Lightning callbacks of ``cfg.callbacks`` then the method's, in config order."""
    out: list[L.Callback] = []
    for _, c in (cfg.get("callbacks") or {}).items():
        if c is not None and "_target_" in c:
            out.append(instantiate(c))
    return out + build_method_callbacks(cfg) + build_diagnostics_callbacks(cfg)


def build_diagnostics_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The observers of ``cfg.diagnostics`` (``conf/diagnostics/``), in config order."""
    out: list[L.Callback] = []
    for key, c in (cfg.get("diagnostics") or {}).items():
        if isinstance(c, DictConfig) and "_target_" in c:
            try:
                out.append(instantiate(c))
            except Exception as e:
                raise type(e)(f"diagnostics.{key}: {e}") from e
    return out


def build(
    cfg: DictConfig, callbacks: bool = True
) -> tuple[MultimodalDataModule, MultimodalModule, list[L.Callback]]:
    """``(datamodule, module, callbacks)`` of a run config (``callbacks=False``: ``[]``)."""
    # method callbacks first: a bad method option fails before any data is read
    cbs = build_callbacks(cfg) if callbacks else []
    datamodule = build_datamodule(cfg)
    return datamodule, build_model(cfg, datamodule), cbs
