"""Refuse to resume a run from a checkpoint of a different experiment.

``ckpt_path=<run>/checkpoints/last.ckpt`` continues the run that wrote it; with other
overrides (another dataset, modality set, model shapes, method or seed) Lightning would
either fail on the first mismatching tensor or, worse, silently continue a different
experiment under the new name. `check_resume` compares the config stored in the
checkpoint (``asgml_config``) and its weights' shapes with the current run before anything
is loaded and refuses with the list of differences; ``resume_allow_mismatch=true`` turns
the refusal into a logged warning (e.g. for fine-tuning on purpose).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from asgml.run.config import to_container
from asgml.run.moved import upgrade_targets

log = logging.getLogger("asgml")

# (what, key path in the resolved config) compared between the checkpoint and the run
COMPARED_KEYS: tuple[tuple[str, str], ...] = (
    ("dataset", "dataset.name"),
    ("dataset class", "dataset.datamodule._target_"),
    ("number of classes", "model.num_classes"),
    ("method", "method.name"),
    ("fusion", "model.fusion"),
    ("seed", "seed"),
)


def _get(cfg: Mapping[str, Any], path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def resume_differences(
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    stored_shapes: Mapping[str, tuple[int, ...]] | None = None,
    current_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> list[str]:
    """Human-readable differences between a checkpoint's run and the current one."""
    out = []
    for what, key in COMPARED_KEYS:
        a, b = _get(stored, key), _get(current, key)
        if a != b:
            out.append(f"{what} ({key}): checkpoint {a!r}, config {b!r}")
    mods_a = list(_get(stored, "model.encoders") or [])
    mods_b = list(_get(current, "model.encoders") or [])
    if mods_a != mods_b:
        out.append(f"modalities (model.encoders): checkpoint {mods_a}, config {mods_b}")
    if stored_shapes is not None and current_shapes is not None:
        shape_diffs = [
            f"{k}: checkpoint {tuple(stored_shapes[k])}, model {tuple(current_shapes[k])}"
            for k in current_shapes
            if k in stored_shapes and tuple(stored_shapes[k]) != tuple(current_shapes[k])
        ]
        missing = [k for k in current_shapes if k not in stored_shapes]
        extra = [k for k in stored_shapes if k not in current_shapes]
        if shape_diffs:
            out.append(
                f"model shapes: {len(shape_diffs)} tensors differ, e.g. "
                + "; ".join(shape_diffs[:3])
            )
        if missing:
            out.append(f"model weights missing from the checkpoint: {missing[:5]}")
        if extra:
            out.append(f"checkpoint weights the model does not have: {extra[:5]}")
    return out


def with_method_modules(model: torch.nn.Module, callbacks: Sequence[Any]) -> torch.nn.Module:
    """``model`` as training will hold it: a copy with the modules the method callbacks add
    in ``setup`` (those with ``changes_model``: MLA's head, Greedy's gates, ReconBoost's
    learners' head, ...), built without touching the global RNG; ``model`` itself is
    returned when no callback changes it."""
    changing = [cb for cb in callbacks if getattr(cb, "changes_model", False)]
    if not changing:
        return model
    copy = deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        for cb in changing:
            cb.setup(None, copy, "fit")
    return copy


def check_resume(cfg: DictConfig, model: torch.nn.Module) -> None:
    """Refuse (``ValueError``) to resume from ``cfg.ckpt_path`` when its run differs from
    ``cfg`` (see `resume_differences`); warn instead with
    ``cfg.resume_allow_mismatch``. Pass `with_method_modules` of the model for a
    method that adds modules in its callbacks' ``setup``."""
    path = Path(str(cfg.ckpt_path))
    if not path.is_file():  # Lightning's "last" / "hpc" keys, or a missing file: its error
        return
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    stored = ckpt.get("asgml_config")
    if stored is None:
        log.warning("%s has no asgml_config: cannot check that it belongs to this run", path)
        stored = {}
    upgrade_targets(stored)  # classes that moved since the checkpoint was written (moved.py)
    diffs = resume_differences(
        stored if stored else to_container(cfg),
        to_container(cfg),
        {k: tuple(v.shape) for k, v in (ckpt.get("state_dict") or {}).items()},
        {k: tuple(v.shape) for k, v in model.state_dict().items()},
    )
    if not diffs:
        return
    text = "\n  ".join(diffs)
    if cfg.get("resume_allow_mismatch", False):
        log.warning(
            "resuming from %s despite differences (resume_allow_mismatch):\n  %s", path, text
        )
        return
    raise ValueError(
        f"ckpt_path={path} was written by a different run:\n  {text}\n"
        "Resume with the original run's overrides, or pass resume_allow_mismatch=true to "
        "continue anyway (the result is then not that run's)."
    )
