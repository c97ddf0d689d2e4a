"""Config helpers: OmegaConf resolvers, start-up validation, instantiation of method
callbacks and loggers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from asgml.rundir import run_stamp


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


def to_container(cfg: Any) -> Any:
    """Plain (resolved) python containers, safe for ``torch.load(weights_only=True)``."""
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def method_callback_configs(method_cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """The ``(key, config)`` of every callback in a method config, in config order."""
    return [(k, v) for k, v in method_cfg.items() if isinstance(v, DictConfig) and "_target_" in v]


# method callbacks whose math needs exactly two modalities: (target, key, values) -- the
# callback at ``_target_`` with ``key`` in ``values`` (None: any value) supports N = 2 only
TWO_MODALITY_ONLY: tuple[tuple[str, str | None, tuple[str, ...] | None], ...] = (
    ("asgml.callbacks.ogm.OGMGE", "variant", ("official", "pre2022")),
)
TWO_MODALITY_FUSIONS = ("film", "gated")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_value_ranges(cfg: DictConfig) -> None:
    """Types and ranges of the run's scalar settings (``seed``, the datamodule's sizes),
    each error naming its key."""
    if not _is_int(cfg.get("seed")):
        raise ValueError(f"seed must be an integer, got {cfg.get('seed')!r}")
    dm = (cfg.get("dataset") or {}).get("datamodule") or {}
    for key, lo in (("image_size", 1), ("batch_size", 1), ("frames", 1), ("num_workers", 0)):
        for where, node in (("dataset", cfg.get("dataset") or {}), ("dataset.datamodule", dm)):
            if key in node and node[key] is not None:
                v = node[key]
                if not _is_int(v) or v < lo:
                    raise ValueError(f"{where}.{key} must be an integer >= {lo}, got {v!r}")
    size = dm.get("decode_size") if "decode_size" in dm else None
    if size is not None and size != "native":
        hw = list(size) if isinstance(size, ListConfig | list | tuple) else [size]
        if len(hw) not in (1, 2) or not all(_is_int(v) and v > 0 for v in hw):
            raise ValueError(
                "dataset.datamodule.decode_size must be native, null, a positive integer or "
                f"[H, W] of positive integers; got {size!r}"
            )


def validate_config(cfg: DictConfig) -> None:
    """Checks that fail early, before any data is read, with the offending key named."""
    check_value_ranges(cfg)
    if cfg.get("select_on", "val") not in ("val", "test"):
        raise ValueError(f"select_on must be 'val' or 'test', got {cfg.select_on!r}")
    metric = cfg.get("optimized_metric")
    if metric is not None and not str(metric).startswith("val/"):
        raise ValueError(
            f"optimized_metric must be a validation metric (val/...), got {metric!r}: "
            "sweepers must never tune on the test split"
        )
    encoders = cfg.model.get("encoders")
    if encoders is None or len(encoders) < 2:
        raise ValueError(f"model.encoders must name >= 2 modalities, got {list(encoders or [])}")
    check_model_options(cfg)
    n = len(encoders)
    fusion = cfg.model.get("fusion")
    if fusion in TWO_MODALITY_FUSIONS and n != 2:
        raise ValueError(
            f"model.fusion={fusion} supports exactly 2 modalities; model.encoders has {n} "
            f"({list(encoders)})"
        )
    for key, c in method_callback_configs(cfg.method):
        for target, opt, values in TWO_MODALITY_ONLY:
            if c.get("_target_") == target and n != 2 and (values is None or c.get(opt) in values):
                raise ValueError(
                    f"method.{key}.{opt}={c.get(opt)} supports exactly 2 modalities; "
                    f"model.encoders has {n} ({list(encoders)})"
                )


def check_model_options(cfg: DictConfig) -> None:
    """Every model option has one home (``model.<key>``).

    A method states the options it needs in ``method.model_defaults``; the model config reads
    them by interpolation (``${oc.select:method.model_defaults.<key>,<default>}``), so an
    explicit ``model.<key>=...`` replaces the interpolation and wins. Fails on the retired
    ``method.module`` block and on a ``model_defaults`` key the model does not have.
    """
    if "module" in cfg.method:
        raise ValueError(
            f"method.module is no longer read (method {cfg.method.get('name')!r}): put the "
            "model options a method needs under method.model_defaults; conf/model reads them "
            "as model.<key>, where a command-line override wins"
        )
    wanted = cfg.method.get("model_defaults") or {}
    unknown = set(wanted) - set(cfg.model)
    if unknown:
        raise ValueError(
            f"method.model_defaults has unknown option(s) {sorted(unknown)}; "
            f"MultimodalModule options are {sorted(k for k in cfg.model if not k.startswith('_'))}"
        )


def model_option_overrides(cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (model value, method default)}`` where ``model.<key>`` differs from the
    method's ``model_defaults`` (an explicit override that won)."""
    wanted = cfg.method.get("model_defaults") or {}
    return {k: (cfg.model[k], v) for k, v in wanted.items() if k in cfg.model and cfg.model[k] != v}


def recipe_lines(cfg: DictConfig) -> list[str]:
    """The training recipe of a run in a few lines (printed at start-up)."""
    model = cfg.model
    opt = model.get("optimizer") or {}
    opt_args = ", ".join(
        f"{k}={opt[k]}" for k in ("lr", "momentum", "weight_decay", "betas") if k in opt
    )
    sched = model.get("scheduler")
    if sched:
        sched_args = ", ".join(
            f"{k}={v}" for k, v in sched.items() if not str(k).startswith("_") and v is not None
        )
        sched_text = f"{str(sched.get('_target_', '?')).rsplit('.', 1)[-1]}({sched_args})"
    else:
        sched_text = "none"
    dm = cfg.dataset.get("datamodule") or {}
    frames = cfg.dataset.get("frames")
    return [
        f"dataset   {cfg.dataset.get('name')}"
        + (f" ({frames} frame{'s' if frames != 1 else ''})" if frames is not None else ""),
        f"method    {cfg.method.get('name')}",
        f"model     fusion={model.get('fusion')} gamma={model.get('gamma')}",
        f"epochs    {cfg.trainer.get('max_epochs')}",
        f"optimizer {str(opt.get('_target_', '?')).rsplit('.', 1)[-1]}({opt_args})",
        f"scheduler {sched_text}",
        f"batch     {dm.get('batch_size')}",
        f"seed      {cfg.get('seed')}",
        f"select_on {cfg.get('select_on')} (optimized_metric {cfg.get('optimized_metric')})",
    ]


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


# `_target_`s a stored (untrusted) config may name: asgml's own classes and the library
# classes the shipped configs use (tests/reliability/test_security.py checks that every
# `_target_` under conf/ is covered). A target must also resolve to a class: functions such
# as `builtins.open` or `numpy.save` are never instantiated from a checkpoint.
TRUSTED_TARGET_PREFIXES: tuple[str, ...] = (
    "asgml.",
    "torch.optim.",
    "torchvision.models.",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
    "lightning.pytorch.Trainer",
    "hydra_plugins.hydra_optuna_sweeper.",
    "optuna.samplers.",
)


class UntrustedTargetError(ValueError):
    """A stored config names a ``_target_`` outside the allowlist."""


def _target_paths(node: Any, path: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(node, DictConfig | Mapping):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for k, v in items:
            key = f"{path}.{k}" if path else str(k)
            if k == "_target_":
                out.append((key, v))
            else:
                out.extend(_target_paths(v, key))
    elif isinstance(node, ListConfig | list | tuple):
        for i, v in enumerate(node):
            out.extend(_target_paths(v, f"{path}[{i}]"))
    return out


def check_targets(
    cfg: Any, extra_prefixes: Sequence[str] = (), source: str = "the stored config"
) -> None:
    """Refuse a config (e.g. one stored in a checkpoint) naming a ``_target_`` outside
    :data:`TRUSTED_TARGET_PREFIXES` (plus ``extra_prefixes``) or one that is not a class.

    Raises:
        UntrustedTargetError: naming the key path and the target.
    """
    prefixes = (*TRUSTED_TARGET_PREFIXES, *extra_prefixes)
    for key, target in _target_paths(cfg, ""):
        name = str(target)
        why = None
        if not name.startswith(prefixes):
            why = "is not in the allowlist"
        else:
            try:
                obj = get_object(name)
            except Exception as e:
                why = f"cannot be imported ({e})"
            else:
                if not isinstance(obj, type):
                    why = "is not a class"
        if why:
            raise UntrustedTargetError(
                f"{source}: {key}={name!r} {why}; only classes under {list(prefixes)} are "
                "instantiated from a stored config (a checkpoint could otherwise call any "
                "function). If you trust the checkpoint, allow the prefix with "
                "allow_targets=[...]"
            )
