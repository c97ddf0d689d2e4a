"""Build the on-disk cache of an audio-visual dataset once, check a dataset, or manage caches:

    python -m asgml.prepare dataset=cremad data_dir=/data/CREMA-D [dataset.image_size=...]
    python -m asgml.prepare dataset=cremad data_dir=/data/CREMA-D verify=true
    python -m asgml.prepare dataset=cremad data_dir=/data/CREMA-D cache=list   # or clean

Uses the training config (``conf/train.yaml``, through ``conf/prepare.yaml``), so the cache
is built for exactly the preprocessing a ``python -m asgml.train`` run with the same
overrides will ask for; that run then finds and uses it (see `asgml.data.cache`).
A clip that cannot be decoded does not stop the build: every clip is decoded, then each bad
file is printed (``BAD <path>: <reason>``), the cache is left incomplete and the exit status
is 1. Each split shows a progress bar per clip (with ETA) unless
``trainer.enable_progress_bar=false``. ``+overwrite=true`` rebuilds a complete cache.
``dataset.datamodule.num_workers`` sets the decode workers.

``verify=true`` decodes every listed file once (every audio file and every frame), re-hashes
the cache of this config if there is one, prints every bad file by path and exits with
status 1 if there is any (for MMSA: the setup checks). ``cache=list`` lists the caches under
the cache root as ``current`` / ``stale`` / ``partial``; ``cache=clean`` removes the stale
and partial ones.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

import asgml  # noqa: F401  (registers resolvers)
from asgml.run.feedback import quiet_known_noise
from asgml.run.precheck import with_suggestions

log = logging.getLogger("asgml")

CACHE_ACTIONS = ("build", "list", "clean")


def prepare(cfg: DictConfig) -> Path:
    """Build the run's datamodule (`asgml.run.build.build_datamodule`, as
    ``asgml.train`` does) and write its cache; returns the cache dir."""
    from asgml.run.build import build_datamodule  # lazy: keeps `--help` free of torch (CLI speed)

    quiet_known_noise()
    dm = build_datamodule(cfg)
    if not hasattr(dm, "build_cache"):
        raise ValueError(
            f"dataset={cfg.dataset.name} has no cache to prepare "
            f"({type(dm).__name__} reads its data directly)"
        )
    path = dm.build_cache(
        overwrite=bool(cfg.get("overwrite", False)),
        progress_bar=bool(cfg.trainer.get("enable_progress_bar", True)),
    )
    print(f"cache ready: {path}")
    return path


def verify(cfg: DictConfig) -> list[str]:
    """Every bad file of the configured dataset, one line each (see the module docstring);
    also prints them and the setup's recorded data issues."""
    from asgml.run.build import build_datamodule

    dm: Any = build_datamodule(cfg)
    problems: list[str] = dm.verify_files() if hasattr(dm, "verify_files") else []
    if hasattr(dm, "setup"):
        dm.setup()  # the setup checks (split sizes, duplicates, labels, lengths, values)
    issues = getattr(dm, "data_issues", None)
    for split, kinds in (issues.as_dict() if issues is not None else {}).items():
        for kind, rec in kinds.items():
            print(
                f"recorded {split} {kind}: {rec['count']} ({rec['action']}), e.g. {rec['examples']}"
            )
    for line in problems:
        print(f"BAD {line}")
    print(f"verify: {len(problems)} bad file(s)" if problems else "verify: every file decodes")
    return problems


def manage_caches(cfg: DictConfig, action: str) -> list[dict[str, Any]]:
    """``list`` or ``clean`` the caches under the configured cache root."""
    from asgml.data.cache import cache_key, clean_caches, list_caches
    from asgml.run.build import build_datamodule

    dm: Any = build_datamodule(cfg)
    if not hasattr(dm, "cache_root"):
        raise ValueError(f"dataset={cfg.dataset.name} has no cache")
    key = cache_key(dm)[0]
    entries = (list_caches if action == "list" else clean_caches)(dm.cache_root, key)
    verb = "removed" if action == "clean" else ""
    for e in entries:
        print(f"{verb or e['status']:<8} {e['bytes'] / 2**20:10.1f} MiB  {e['path']}")
    if not entries:
        print(f"no {'stale or partial ' if action == 'clean' else ''}caches under {dm.cache_root}")
    return entries


@hydra.main(version_base="1.3", config_path="pkg://asgml.conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    action = cfg.get("cache") or "build"
    if action not in CACHE_ACTIONS:
        raise ValueError(f"cache must be one of {CACHE_ACTIONS}, got {action!r}")
    if cfg.get("verify"):
        if verify(cfg):
            sys.exit(1)
    elif action == "build":
        from asgml.data.cache import BadFilesError  # lazy: keeps `--help` free of torch

        try:
            prepare(cfg)
        except BadFilesError as err:  # the build went on past them: every bad file, no trace
            for line in err.files:
                print(f"BAD {line}")
            print(
                f"prepare: {len(err.files)} bad file(s); the cache was not completed. Fix or "
                "remove them (or drop their rows from the split lists) and run again"
            )
            sys.exit(1)
    else:
        manage_caches(cfg, action)


main = with_suggestions(main, "prepare")  # a "did you mean" after Hydra's errors

if __name__ == "__main__":
    main()
