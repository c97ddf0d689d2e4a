"""The OmegaConf resolvers asgml's configs use (``${asgml.first:...}``,
``${asgml.if_two_modalities:...}``, ``${asgml.stamp:}``), registered on ``import asgml``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from asgml.run.rundir import run_stamp


def _first(mapping: Any, n: Any) -> Any:
    """``${asgml.first:<mapping>,<n>}``: the first ``n`` entries of a mapping."""
    n = int(n)
    if not isinstance(mapping, Mapping | DictConfig):
        raise ValueError(f"asgml.first expects a mapping, got {type(mapping).__name__}")
    keys = list(mapping.keys())
    if n > len(keys):
        raise ValueError(f"asked for {n} entries of {keys}: only {len(keys)} defined")
    return OmegaConf.create({k: mapping[k] for k in keys[:n]})


def _if_two_modalities(encoders: Any, two: Any, more: Any) -> Any:
    """``${asgml.if_two_modalities:<encoder map>,<a>,<b>}``: ``a`` when the map has exactly two
    entries, else ``b`` (e.g. OGM-GE's official variant for two modalities, the generalized
    one for more)."""
    if not isinstance(encoders, Mapping | DictConfig):
        raise ValueError(
            f"asgml.if_two_modalities expects a mapping, got {type(encoders).__name__}"
        )
    return two if len(encoders) == 2 else more


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("asgml.first"):
        OmegaConf.register_new_resolver("asgml.first", _first)
    if not OmegaConf.has_resolver("asgml.if_two_modalities"):
        OmegaConf.register_new_resolver("asgml.if_two_modalities", _if_two_modalities)
    if not OmegaConf.has_resolver("asgml.stamp"):  # unique run-directory names, per process
        OmegaConf.register_new_resolver("asgml.stamp", run_stamp, use_cache=True)
