"""What a stored config (a checkpoint's ``asgml_config``) may instantiate: the allow-list
of ``_target_`` classes and the check that refuses anything else before it is built."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig

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
    `TRUSTED_TARGET_PREFIXES` (plus ``extra_prefixes``) or one that is not a class.

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
