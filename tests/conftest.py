"""Shared test fixtures: compose the Hydra config as the CLI would, with tiny shapes."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import asgml  # noqa: F401  (registers resolvers)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A one-epoch CPU trainer of a few batches, for end-to-end tests on any dataset.
TINY_TRAINER = [
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]

# Small, fast settings used by every end-to-end test on the synthetic task.
FAST = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "dataset.datamodule.num_train=96",
    "dataset.datamodule.num_val=32",
    "dataset.datamodule.num_test=32",
    "dataset.datamodule.batch_size=16",
]


def compose_cfg(
    overrides: Sequence[str] = (), output_dir: Path | None = None, fast: bool = True
) -> DictConfig:
    """Compose ``conf/train.yaml`` with overrides (as ``python -m asgml.train`` would)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*(FAST if fast else []), *overrides])
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(["method=boost"])`` -> composed config writing under ``tmp_path``."""

    def _make(overrides: Sequence[str] = (), fast: bool = True) -> DictConfig:
        return compose_cfg(overrides, output_dir=tmp_path, fast=fast)

    return _make
