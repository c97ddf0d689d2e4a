"""Fail fast: the mistakes of a command line caught before torch is imported, before the
start-up block and before Hydra makes the run folder.

* ``PreCheck`` is a Hydra callback (``conf/hydra/default.yaml``, so ``asgml.train`` and
  ``asgml.prepare`` get it). In ``on_run_start`` / ``on_multirun_start`` (the config is
  composed, nothing is written yet) it checks the dataset's files
  (``asgml.data.layout.check_datamodule_config``: ``data_dir`` set, existing, with the
  split files) and every ``+key=value`` that adds an option to an object's config next to a
  near-identical existing one (``check_added_options``: ``+method.boost.alpah=1`` would
  otherwise fail much later, when the object is built, with a ``TypeError``).
* ``suggest`` answers Hydra's own composition errors (``method.boost.alpah=1``: "Could not
  override ..."; ``method=boots``: "Could not find 'method/boots'") with a "did you mean"
  (``difflib``) after Hydra's message, and a missing Hydra plugin (the Optuna sweeper of
  ``hparams_search=...``, the SLURM launcher) with the extra that installs it; the entry points call it when Hydra exits with an
  error (``with_suggestions``).

Only ``hydra``/``omegaconf`` and the torch-free ``asgml.data.layout`` are imported here.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from typing_extensions import override

from asgml.data.layout import DataLayoutError, check_datamodule_config

F = TypeVar("F", bound=Callable[..., Any])

# where else a dataset root can come from (conf/train.yaml: data_roots)
DATA_DIR_HINT = (
    "\n  or set it once per machine: the environment variable ASGML_{env}_DIR, or "
    "data_roots.{name} in conf/local/default.yaml (docs/getting-started.md)"
)
# the environment variable of each dataset in conf/train.yaml `data_roots`
DATA_ENV = {"cremad_3f": "CREMAD"}


class PreCheckError(ValueError):
    """A command-line mistake found before the run starts."""


class PreCheckExit(SystemExit):
    """Ends the process with status 1 after the message of a ``PreCheckError`` (Hydra
    turns an exception raised in a callback into a warning and goes on)."""


def close_matches(word: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    """The ``candidates`` that look like a misspelling of ``word`` (difflib, cutoff 0.75)."""
    return difflib.get_close_matches(word, [str(c) for c in candidates], n=n, cutoff=0.75)


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """``" (did you mean 'alpha'?)"`` or ``""``."""
    matches = close_matches(word, candidates)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"


def check_data(cfg: DictConfig) -> None:
    """The dataset's files (see ``asgml.data.layout``), as a ``PreCheckError``."""
    dm = OmegaConf.select(cfg, "dataset.datamodule")
    if not isinstance(dm, DictConfig):
        return
    name = str(OmegaConf.select(cfg, "dataset.name", default=""))
    hint = DATA_DIR_HINT.format(env=DATA_ENV.get(name, name).upper(), name=name) if name else ""
    try:
        check_datamodule_config(OmegaConf.to_container(dm, resolve=True), hint)
    except DataLayoutError as err:
        raise PreCheckError(str(err)) from None


def added_options(cfg: DictConfig) -> list[tuple[str, str]]:
    """``(override, key)`` of each ``+key=value`` (not ``++``) of the command line."""
    task = OmegaConf.select(cfg, "hydra.overrides.task", default=None) or []
    out = []
    for ov in OverridesParser.create().parse_overrides([str(t) for t in task]):
        if ov.is_add() and not ov.is_force_add() and "." in ov.key_or_group:
            out.append((ov.input_line or ov.key_or_group, ov.key_or_group))
    return out


def check_added_options(cfg: DictConfig) -> None:
    """Refuse ``+a.b.key=v`` when ``a.b`` builds an object (has ``_target_``), ``key`` is new
    there and looks like a misspelling of one of its options (``++`` adds it anyway)."""
    problems = []
    for line, key in added_options(cfg):
        parent, leaf = key.rsplit(".", 1)
        node = OmegaConf.select(cfg, parent, default=None)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        options = [str(k) for k in node.keys() if k not in (leaf, "_target_")]
        hint = did_you_mean(leaf, options)
        if hint:
            problems.append(
                f"{line}: {parent} has no option {leaf!r}{hint}\n"
                f"  options of {parent}: {', '.join(options)}\n"
                f"  to add it anyway: +{line}"
            )
    if problems:
        raise PreCheckError("\n".join(problems))


class PreCheck(Callback):
    """Hydra callback: ``check_data`` and ``check_added_options`` before the run
    folder exists (``enabled=false`` turns it off). Hydra turns an exception of a callback into a
    warning, so a problem ends the process here (``PreCheckExit``)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def check(self, config: DictConfig, data: bool = True) -> None:
        """Both checks; a problem is printed to stderr and ends the process (status 1)."""
        if not self.enabled:
            return
        try:
            check_added_options(config)
            if data:
                check_data(config)
        except PreCheckError as err:
            sys.stderr.write(f"{err}\n")
            raise PreCheckExit(1) from None

    @override
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.check(config)

    @override
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the sweep's base config; a swept dataset or data root is checked by each job
        task = [str(t) for t in OmegaConf.select(config, "hydra.overrides.task") or []]
        swept = [
            ov.key_or_group
            for ov in OverridesParser.create().parse_overrides(task)
            if ov.is_sweep_override()
        ]
        self.check(config, data=not any(k.startswith("data") for k in swept))


# --------------------------------------------------------------- Hydra's own errors
_OVERRIDE = re.compile(r"Could not override '([^']+)'")
_APPEND = re.compile(r"Could not append to config\. An item is already at '([^']+)'")
_MISSING = re.compile(r"Could not find '([^'/]+)/([^']+)'")
_PLUGIN = re.compile(r"Could not find '(hydra/(?:sweeper|launcher)/[^']+)'")
# the Hydra plugins behind config options, with the extra of pyproject.toml that installs them
PLUGIN_EXTRAS = {
    "hydra/sweeper/optuna": ("optuna", "hydra-optuna-sweeper"),
    "hydra/launcher/submitit_slurm": ("slurm", "hydra-submitit-launcher"),
    "hydra/launcher/submitit_local": ("slurm", "hydra-submitit-launcher"),
}


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def suggest(config_name: str, overrides: Sequence[str]) -> str | None:
    """A "did you mean" for the composition error of ``overrides`` (``None`` when they
    compose, or nothing close is found)."""
    try:
        _compose(config_name, overrides)
        return None
    except Exception as err:  # Hydra's composition errors
        message = f"{err}\n{err.__cause__ or ''}"
    found = _PLUGIN.search(message)
    if found and found.group(1) in PLUGIN_EXTRAS:
        extra, package = PLUGIN_EXTRAS[found.group(1)]
        return f"{found.group(1)} is a Hydra plugin ({package}): pip install 'asgml[{extra}]'"
    found = _OVERRIDE.search(message)
    if found:
        key = found.group(1)
        rest = [o for o in overrides if not o.lstrip("+~").startswith(f"{key}=")]
        parent, _, leaf = key.rpartition(".")
        try:
            cfg = _compose(config_name, rest)
        except Exception:
            return None
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        if not isinstance(node, DictConfig):
            return None
        hint = did_you_mean(leaf, [str(k) for k in node.keys()])
        return f"{key}:{hint}" if hint else None
    found = _MISSING.search(message)
    if found:
        group, option = found.groups()
        # Hydra lists them as indented lines after "Available options in '<group>':"
        listed = re.findall(r"^\t(\S+)$", message, flags=re.M) or re.findall(
            r"^\s+(\S+)$", message, flags=re.M
        )
        hint = did_you_mean(option, listed)
        return f"{group}={option}:{hint}" if hint else None
    return None


def with_suggestions(main: F, config_name: str) -> F:
    """``main`` (a ``@hydra.main`` function) that, when Hydra exits with an error, also
    prints ``suggest``'s "did you mean" to stderr."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except PreCheckExit:
            raise
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
                try:
                    hint = suggest(config_name, overrides)
                except Exception:  # a hint must never hide the error itself
                    hint = None
                if hint:
                    sys.stderr.write(f"{hint}\n")
            raise

    wrapped.__doc__ = main.__doc__
    wrapped.__name__ = getattr(main, "__name__", "main")
    return wrapped  # type: ignore[return-value]
