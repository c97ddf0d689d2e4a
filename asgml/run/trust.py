"""A stored config (a checkpoint's ``asgml_config``) is data: what it may instantiate, and the
screen that refuses anything else before a node of it is resolved or built.

`screen_stored_config` walks the plain containers as stored (nothing resolved) and
refuses, naming the key path:

* any ``${...}`` in a string: a stored config is resolved when it is written, so an
  interpolation there can only be planted, and resolving it would run a resolver
  (``${oc.decode:...}`` parses YAML into new ``_target_`` nodes, ``${oc.create:...}``
  likewise, ``${oc.env:...}`` reads the environment);
* a ``_target_`` that is not **exactly** one of `trusted_targets`: the classes the
  shipped configs (``asgml.conf``) name, the classes asgml's own modules define, and torch's
  optimizers and LR schedulers. A name is compared as a string before anything is imported,
  so ``asgml.some_module.io.FileIO`` (``io.FileIO`` reached through an allowed module's
  namespace) or ``logging.FileHandler`` is refused whatever the prefix.

``allow_targets`` (``python -m asgml.eval ... 'allow_targets=[mypkg.MyClass]'``) is the
explicit opt-in for a checkpoint you trust: an entry is an exact class path, or a package
prefix ending in ``.``; a target admitted by a prefix must name a class *defined* in a module
under that prefix (``module.Class`` with ``module`` importable as a module and
``Class.__module__`` under the prefix), never an attribute chain.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import inspect
import pkgutil
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

# asgml packages whose classes a stored config may name (listed by walking them: exact names)
# (asgml.run's classes that configs name -- loggers, checkpoints -- come from conf/)
_ASGML_PACKAGES = ("asgml.core", "asgml.data", "asgml.models", "asgml.methods")
# library classes outside the shipped configs that users name in overrides
_LIBRARY_MODULES = ("torch.optim", "torch.optim.lr_scheduler")


class UntrustedConfigError(ValueError):
    """A stored config holds something that could act when it is resolved or built."""


class UntrustedTargetError(UntrustedConfigError):
    """A stored config names a ``_target_`` outside the allow-list."""


class StoredInterpolationError(UntrustedConfigError):
    """A stored config holds a ``${...}`` interpolation (a resolver call)."""


def _conf_targets() -> set[str]:
    """Every literal ``_target_`` of the shipped configs (``asgml.conf``)."""
    out: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "_target_" and isinstance(v, str) and "${" not in v:
                    out.add(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    def files(folder: Any) -> Iterable[Any]:
        for entry in folder.iterdir():
            if entry.is_dir():
                yield from files(entry)
            elif entry.name.endswith(".yaml"):
                yield entry

    for path in files(importlib.resources.files("asgml.conf")):
        walk(yaml.safe_load(path.read_text()))
    return out


def _module_classes(module_name: str, kinds: tuple[type, ...]) -> set[str]:
    """``module.Class`` for each public class of the module (defined there, or exported in
    its ``__all__``) that subclasses one of ``kinds``."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # an optional dependency is missing: nothing of it can be built
        return set()
    exported = "__all__" in vars(module)
    names = module.__all__ if exported else [n for n in vars(module) if not n.startswith("_")]
    out = set()
    for name in names:
        obj = getattr(module, name, None)
        if not inspect.isclass(obj) or not issubclass(obj, kinds):
            continue
        if exported or obj.__module__ == module_name:
            out.add(f"{module_name}.{name}")
    return out


@functools.cache
def trusted_targets() -> frozenset[str]:
    """The exact ``_target_`` names a stored config may instantiate: every ``_target_`` of
    the shipped configs, asgml's modules, datamodules and callbacks (``asgml.core``,
    ``data``, ``models``, ``methods``) and torch's optimizers and LR schedulers."""
    out = _conf_targets()
    buildable = (torch.nn.Module, L.LightningDataModule, L.Callback)
    for package in _ASGML_PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
            out |= _module_classes(info.name, buildable)
    schedulers = (
        torch.optim.Optimizer,
        torch.optim.lr_scheduler.LRScheduler,
        torch.optim.lr_scheduler.ReduceLROnPlateau,
    )
    for module_name in _LIBRARY_MODULES:
        out |= _module_classes(module_name, schedulers)
    return frozenset(out)


def _opted_in(target: str, allow: Sequence[str]) -> str | None:
    """Why ``target`` is not admitted by ``allow`` (exact names, or prefixes ending in
    ``.``); ``None`` when it is."""
    if target in allow:
        return None
    prefixes = [a for a in allow if a.endswith(".")]
    if not any(target.startswith(p) for p in prefixes):
        return "is not in the allow-list"
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an attribute chain (asgml.x.io.FileIO) is no module
        return f"does not name a class of a module ({module_name!r}: {e})"
    obj = getattr(module, name, None)
    if not inspect.isclass(obj):
        return "is not a class"
    if not any(f"{obj.__module__}.".startswith(p) for p in prefixes):
        return f"is {obj.__module__}.{obj.__qualname__}, defined outside the allowed prefixes"
    return None


def _walk(node: Any, path: str) -> Iterable[tuple[str, Any, Any]]:
    """``(key path, key, value)`` of every entry of plain containers."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{path}.{k}" if path else str(k)
            yield key, k, v
            yield from _walk(v, key)
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            key = f"{path}[{i}]"
            yield key, i, v
            yield from _walk(v, key)


def _plain(cfg: Any) -> Any:
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=False)
    return cfg


def _refusal(source: str, key: str, what: str, hint: str) -> str:
    return f"{source}: {key} {what}; {hint}"


_TARGET_HINT = (
    "a stored config instantiates only the exact classes of asgml.run.trust.trusted_targets() "
    "(a checkpoint could otherwise call any function). If you trust the checkpoint, allow "
    "the class with allow_targets=[package.module.Class] (or a package prefix ending in '.')"
)


def check_targets(
    cfg: Any, allow_targets: Sequence[str] = (), source: str = "the stored config"
) -> None:
    """Refuse a config naming a ``_target_`` that is not exactly one of
    `trusted_targets` nor admitted by ``allow_targets``.

    Raises:
        UntrustedTargetError: naming the key path and the target.
    """
    allow = [str(a) for a in allow_targets]
    trusted = trusted_targets()
    for key, k, v in _walk(_plain(cfg), ""):
        if k != "_target_":
            continue
        name = v if isinstance(v, str) else repr(v)
        if name in trusted:
            continue
        why = _opted_in(name, allow) if isinstance(v, str) else "is not a string"
        if why:
            raise UntrustedTargetError(_refusal(source, f"{key}={name!r}", why, _TARGET_HINT))


def check_no_interpolations(cfg: Any, source: str = "the stored config") -> None:
    """Refuse any ``${...}`` in a string (key or value) of a stored config.

    Raises:
        StoredInterpolationError: naming the key path and the string.
    """
    for key, k, v in _walk(_plain(cfg), ""):
        for text in (k, v):
            if isinstance(text, str) and "${" in text:
                raise StoredInterpolationError(
                    _refusal(
                        source,
                        f"{key}={text!r}",
                        "holds an interpolation",
                        "a stored config is written resolved, so this one was edited; it is "
                        "never resolved (a resolver such as oc.decode or oc.create would run)",
                    )
                )


def screen_stored_config(
    cfg: Any, allow_targets: Sequence[str] = (), source: str = "the stored config"
) -> None:
    """Everything a stored config must pass before any part of it is resolved or built:
    `check_no_interpolations`, then `check_targets`.

    Raises:
        UntrustedConfigError: (a subclass) naming the key path and what was found.
    """
    check_no_interpolations(cfg, source)
    check_targets(cfg, allow_targets, source)


def config_targets(cfg: Any) -> list[str]:
    """The ``_target_`` strings of a config (e.g. the current run's, which the user runs as
    code: a resumed run's stored config may name them too)."""
    return [v for _, k, v in _walk(_plain(cfg), "") if k == "_target_" and isinstance(v, str)]
