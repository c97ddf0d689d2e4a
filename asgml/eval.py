"""Hydra entry point: ``python -m asgml.eval ckpt_path=<run>/checkpoints/best.ckpt`` (also
``asgml-eval``).

Re-tests a checkpoint with each modality's Shapley value; the logic is
`asgml.run.evaluate`, imported after Hydra has parsed the command line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import asgml  # noqa: F401  (registers resolvers)


@hydra.main(version_base="1.3", config_path="pkg://asgml.conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    """Evaluate ``cfg.ckpt_path`` and write ``eval.json``; returns the fused accuracy."""
    from asgml.run.evaluate import run_eval  # lazy: keeps `--help` free of torch (CLI speed)

    return run_eval(cfg)


if __name__ == "__main__":
    main()
