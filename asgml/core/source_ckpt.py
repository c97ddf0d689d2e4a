"""Checkpoints a method reads at start-up (UMT's teachers, the linear probe's encoders) must
come from a run of the same task: the same dataset, number of classes and modality set.

An encoder's weights have the same shapes on another dataset with the same input format
(CREMA-D and AVE audio spectrograms, say), so loading them succeeds and the run goes on
distilling or probing a model of another task; `check_source_task` compares the
checkpoint's stored config (``asgml_config``) with the model being trained and refuses,
naming the key, the file and both values.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _get(cfg: Mapping[str, Any] | None, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def source_task_differences(stored: Mapping[str, Any] | None, module: Any) -> list[str]:
    """``what: checkpoint X, this run Y`` for each of dataset, classes and modality set that
    differ between a checkpoint's stored config and ``module`` (a
    `MultimodalModule`; its ``run_config`` gives the dataset when
    set). Values the checkpoint does not record are not compared."""
    out = []
    run_cfg = getattr(module, "run_config", None)
    a, b = _get(stored, "dataset.name"), _get(run_cfg, "dataset.name")
    if a is not None and b is not None and a != b:
        out.append(f"dataset (dataset.name): checkpoint {a!r}, this run {b!r}")
    a, b = _get(stored, "model.num_classes"), int(module.num_classes)
    if a is not None and int(a) != b:
        out.append(f"number of classes (model.num_classes): checkpoint {a}, this run {b}")
    enc = _get(stored, "model.encoders")
    if isinstance(enc, Mapping):
        a_mods, b_mods = sorted(enc), sorted(module.modalities)
        if a_mods != b_mods:
            out.append(f"modalities (model.encoders): checkpoint {a_mods}, this run {b_mods}")
    return out


def check_source_task(
    key: str, path: str | Path, stored: Mapping[str, Any] | None, module: Any
) -> None:
    """Refuse (``ValueError``) a checkpoint ``key=path`` of another task than ``module``'s."""
    diffs = source_task_differences(stored, module)
    if diffs:
        raise ValueError(
            f"{key}={path} was trained on another task:\n  " + "\n  ".join(diffs) + "\n"
            "Use a checkpoint of this dataset, class count and modality set."
        )
