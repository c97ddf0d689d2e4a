"""Finding and loading finished runs: one row per job of a run or multirun directory."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import yaml
from tqdm import tqdm

log = logging.getLogger(__name__)

DEFAULT_GROUP_BY = ("method.name",)


# keys never used as automatic group keys (they vary within a group by design)
_NOT_GROUP_KEYS = {"seed", "ckpt_path", "data_dir", "paths.output_dir", "paths.log_dir"}


# a progress bar while collecting runs: only on a terminal and from this many runs on
PROGRESS_MIN_RUNS = 20


_T = TypeVar("_T")


def _progress(items: Sequence[_T], desc: str, progress: bool | None) -> Iterator[_T]:
    """``items`` behind a tqdm bar on stderr: ``progress=None`` shows it when stderr is a
    terminal and there are at least `PROGRESS_MIN_RUNS` items."""
    show = (
        progress
        if progress is not None
        else len(items) >= PROGRESS_MIN_RUNS and sys.stderr.isatty()
    )
    if not show:
        return iter(items)
    return iter(tqdm(items, desc=desc, unit="run", file=sys.stderr, leave=False))


# ---------------------------------------------------------------------- collecting runs
def find_run_dirs(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (itself included) holding a ``metrics.json``."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    found = {p.parent for p in root.rglob("metrics.json") if ".submitit" not in p.parts}
    return sorted(found, key=lambda p: [_natural(part) for part in p.relative_to(root).parts])


def _natural(s: str) -> tuple[int, Any]:
    return (0, int(s)) if s.isdigit() else (1, s)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list | tuple | Mapping):
            out[key] = json.dumps(v, default=str)
        else:
            out[key] = v
    return out


def read_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides of a Hydra job (``.hydra/overrides.yaml``), if any."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    return [str(o) for o in (yaml.safe_load(path.read_text()) or [])]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); was the run interrupted?") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """One job as a flat dict: config keys (dotted), ``test/...`` metrics, eval results."""
    run_dir = Path(run_dir)
    data = _read_json(run_dir / "metrics.json")
    row: dict[str, Any] = _flatten(data.get("config") or {})
    row.update({k: v for k, v in (data.get("metrics") or {}).items()})
    row["val_acc_best"] = data.get("val_acc_best")
    row["skipped_nonfinite_steps"] = data.get("skipped_nonfinite_steps")
    row["best_checkpoint"] = data.get("best_checkpoint")
    eval_path = run_dir / "eval.json"
    if eval_path.exists():
        ev = _read_json(eval_path)
        row.update({f"eval/{k}": v for k, v in (ev.get("metrics") or {}).items()})
        row.update({f"eval/shapley_{m}": v for m, v in (ev.get("shapley") or {}).items()})
    row["overrides"] = json.dumps(read_overrides(run_dir))
    row["run_dir"] = str(run_dir)
    return row


def load_runs(root: str | Path, progress: bool | None = None) -> pd.DataFrame:
    """Every job under ``root`` (a run or multirun directory), one row each, with the
    derived `add_imbalance` columns. ``progress``: a progress bar on stderr (``None``:
    on a terminal from `PROGRESS_MIN_RUNS` runs on)."""
    dirs = find_run_dirs(root)
    if not dirs:
        raise FileNotFoundError(f"no metrics.json under {root}")
    rows = [load_run(d) for d in _progress(dirs, "collecting runs", progress)]
    return add_imbalance(pd.DataFrame(rows))


def collect(runs_dir: str | Path, progress: bool | None = None) -> pd.DataFrame:
    """The runs of a run or multirun directory (`load_runs`): the report's first step."""
    return load_runs(runs_dir, progress)


def add_imbalance(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-run imbalance measures, as new columns (fractions, NaN where undefined).

    ``imbalance/acc_gap``: the largest minus the smallest unimodal test accuracy
    (``test/acc_<m>``; needs two modalities with a value). ``imbalance/shapley_min_share``:
    the smallest Shapley value (``eval/shapley_<m>``) over their sum (needs every modality's
    value and a positive sum).
    """
    out = runs.copy()
    mods = modalities(runs)
    acc = out[[c for c in (f"test/acc_{m}" for m in mods) if c in out.columns]]
    acc = acc.apply(pd.to_numeric, errors="coerce")
    gap = acc.max(axis=1) - acc.min(axis=1)
    out["imbalance/acc_gap"] = gap.where(acc.notna().sum(axis=1) >= 2)
    shap_cols = [f"eval/shapley_{m}" for m in mods]
    if all(c in out.columns for c in shap_cols) and len(shap_cols) >= 2:
        phi = out[shap_cols].apply(pd.to_numeric, errors="coerce")
        total = phi.sum(axis=1, min_count=len(shap_cols))
        share = phi.min(axis=1) / total
        out["imbalance/shapley_min_share"] = share.where(phi.notna().all(axis=1) & (total > 0))
    return out


def modalities(runs: pd.DataFrame) -> list[str]:
    """Modality names, from the ``test/acc_<m>`` (or ``eval/shapley_<m>``) columns."""
    out: list[str] = []
    for prefix in ("test/acc_", "eval/shapley_"):
        for c in runs.columns:
            if c.startswith(prefix) and c[len(prefix) :] not in out:
                out.append(c[len(prefix) :])
    return out


def _override_key(override: str) -> str:
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split("@", 1)[0].replace("/", ".")


def default_group_by(runs: pd.DataFrame) -> list[str]:
    """``method.name`` plus every swept config key whose value varies between runs.

    Swept keys come from each job's Hydra overrides (``method=boost`` -> ``method.name``,
    ``method.boost.alpha=0.5`` -> ``method.boost.alpha``); ``dataset.name`` is added when
    runs of several datasets are mixed. ``seed`` never is.
    """
    candidates = list(DEFAULT_GROUP_BY) + ["dataset.name"]
    for ov in runs.get("overrides", pd.Series(dtype=str)).dropna():
        for o in json.loads(ov):
            key = _override_key(o)
            if f"{key}.name" in runs.columns:
                key = f"{key}.name"
            if key not in candidates:
                candidates.append(key)
    keys = []
    for k in candidates:
        if k in _NOT_GROUP_KEYS or k.startswith("hydra.") or k not in runs.columns:
            continue
        if k in DEFAULT_GROUP_BY or runs[k].astype(str).nunique() > 1:
            keys.append(k)
    return keys or [c for c in DEFAULT_GROUP_BY if c in runs.columns]


def _check_keys(runs: pd.DataFrame, keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in runs.columns]
    if missing:
        known = sorted(c for c in runs.columns if "/" not in c)
        raise KeyError(f"unknown group key(s) {missing}; config keys of these runs: {known}")


def _grouped(runs: pd.DataFrame, group_by: Sequence[str]) -> Any:
    """``runs`` grouped by printable values of ``group_by`` in first-seen order (the order of
    `summarize`'s rows)."""
    _check_keys(runs, group_by)
    keyed = runs.copy()
    for k in group_by:  # group on printable values (lists/None stay groupable)
        keyed[k] = keyed[k].map(lambda v: "null" if v is None else v)
    return keyed.groupby(list(group_by), sort=False, dropna=False)


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)
