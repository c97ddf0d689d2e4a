"""Config helpers: start-up validation of a composed config (each error naming its key) and
the method callbacks' configs. The resolvers are in `asgml.run.resolvers`, the
allow-list for stored configs in `asgml.run.trust`, the start-up block in
`asgml.run.feedback`."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from asgml.run.boost_rule import check_boost_combination
from asgml.run.domains import check_option_domains


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
    ("asgml.methods.ogm.OGMGE", "variant", ("official", "pre2022")),
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
    check_boost_combination(cfg)
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
    check_option_domains(cfg)  # method options outside their domain; warm-ups never reached
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
