"""Encoder weights from a ``method=unimodal`` checkpoint, checked before they are used.

Shared by the methods that start from separately trained unimodal models: UMT's frozen
teachers (``method.umt.teachers.<m>``) and ReconBoost's pre-trained start
(``method.reconboost.init_from.<m>``). Every refusal names the config key, the file and both
values that disagree: a missing or unreadable file, a checkpoint not written by
``method=unimodal``, one trained on another modality or dataset, or encoder weights whose
names or shapes differ from this model's encoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asgml.core.source_ckpt import check_source_task


def stored_config(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The run config a checkpoint carries (``asgml_config``; empty when absent)."""
    cfg = ckpt.get("asgml_config")
    return dict(cfg) if isinstance(cfg, Mapping) else {}


def load_unimodal_encoder_state(
    path: str | Path,
    modality: str,
    encoder: nn.Module,
    key: str,
    dataset: str | None = None,
    role: str = "checkpoint",
    module: Any = None,
) -> dict[str, Tensor]:
    """The ``encoders.<modality>`` weights of the ``method=unimodal`` checkpoint ``path``,
    checked against ``encoder`` (names and shapes) and, when given, the run's ``dataset``
    name, or, given the run's ``module``, its dataset, class count and modality set
    (`asgml.core.source_ckpt.check_source_task`). ``key`` is the config key the path came
    from and ``role`` what the checkpoint is for (``teacher``), both named in the errors."""
    path = Path(path)
    where = f"{key}={path}"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, ...
        raise ValueError(f"{where}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise ValueError(f"{where}: not a Lightning checkpoint (no 'state_dict' entry)")
    cfg = stored_config(ckpt)
    method = cfg.get("method") or {}
    if method.get("name") != "unimodal" or method.get("modality") != modality:
        raise ValueError(
            f"{where}: expected a unimodal {modality} {role} (trained with "
            f"method=unimodal method.modality={modality}), got method={method.get('name')!r} "
            f"modality={method.get('modality')!r}"
        )
    stored_dataset = (cfg.get("dataset") or {}).get("name")
    if dataset is not None and stored_dataset is not None and stored_dataset != dataset:
        raise ValueError(
            f"{where}: trained on dataset={stored_dataset!r}, this run is dataset={dataset!r}"
        )
    if module is not None:  # the dataset, class count and modality set of the run
        check_source_task(key, path, cfg, module)
    prefix = f"encoders.{modality}."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    expected = encoder.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k}: checkpoint {tuple(state[k].shape)}, this model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... ({len(problems)} in all)" if len(problems) > 5 else ""
        )
        raise ValueError(
            f"{where}: the checkpoint's {modality} encoder does not match this model's encoder "
            f"({type(encoder).__name__}): {shown}"
        )
    return state


def run_dataset(module: nn.Module) -> str | None:
    """The dataset name of the run ``module`` belongs to (``None`` outside ``asgml.train``)."""
    cfg = getattr(module, "run_config", None)
    if not isinstance(cfg, Mapping):
        return None
    return (cfg.get("dataset") or {}).get("name")
