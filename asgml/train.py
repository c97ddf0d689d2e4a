"""Hydra entry point: ``python -m asgml.train [overrides]`` (also ``asgml-train``).

``--help`` lists the config groups and the composed config; ``-sc install=bash`` prints
the shell-completion script. The run itself is `asgml.run.training.run`: it (with torch,
Lightning and the data stack) is imported only after Hydra has parsed the command line,
so ``--help``, ``--cfg job`` and completion answer in about a second.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

import asgml  # noqa: F401  (registers resolvers)
from asgml.run.precheck import with_suggestions

# Names that used to live here; `from asgml.train import run` keeps working (lazily).
_TRAINING_NAMES = {"run", "build_loggers", "optimized_value", "print_summary"}


def __getattr__(name: str) -> Any:
    if name in _TRAINING_NAMES:
        from asgml.run import training  # lazy: keeps `--help` free of torch (CLI speed)

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hydra.main(version_base="1.3", config_path="pkg://asgml.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train and test; returns the best validation value named by ``optimized_metric`` (what
    Hydra sweepers optimise), never a test metric."""
    from asgml.run.training import run  # lazy: imported after Hydra parsed (CLI speed)

    return run(cfg)["optimized_value"]


# Hydra's own composition errors get a "did you mean" (asgml/run/precheck.py)
main = with_suggestions(main, "train")

if __name__ == "__main__":
    main()
