"""Build the on-disk cache of an audio-visual dataset once:

    python -m asgml.prepare dataset=cremad data_dir=/data/CREMA-D [dataset.image_size=...]

Uses the training config (``conf/train.yaml``), so the cache is built for exactly the
preprocessing a ``python -m asgml.train`` run with the same overrides will ask for;
that run then finds and uses it (see :mod:`asgml.data.cache`). Each split shows a progress bar per clip (with ETA)
unless ``trainer.enable_progress_bar=false``. ``+overwrite=true``
rebuilds a complete cache. ``dataset.datamodule.num_workers`` sets the decode workers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import asgml  # noqa: F401  (registers resolvers)
from asgml.feedback import quiet_known_noise

log = logging.getLogger("asgml")


def prepare(cfg: DictConfig) -> Path:
    """Build the run's datamodule (:func:`asgml.build.build_datamodule`, as
    ``asgml.train`` does) and write its cache; returns the cache dir."""
    from asgml.build import build_datamodule  # lazy: keeps `--help` free of torch (CLI speed)

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


@hydra.main(version_base="1.3", config_path="pkg://asgml.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
