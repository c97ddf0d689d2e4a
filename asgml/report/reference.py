"""The published-numbers column of a preset (``reference`` key) beside the measured one."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

# ----------------------------------------------------------------- reference column
REFERENCE_FLAG_STD = 2.0


def pooled_std(std_measured: float | None, std_paper: float | None) -> float | None:
    """``sqrt((s_m² + s_p²) / 2)``; ``s_m`` alone when the paper gives no std; None when
    the measured std is unknown (or the result is 0)."""
    s_m = None if std_measured is None or math.isnan(std_measured) else float(std_measured)
    s_p = None if std_paper is None or math.isnan(std_paper) else float(std_paper)
    if s_m is None:
        return None
    pooled = math.sqrt((s_m**2 + s_p**2) / 2) if s_p is not None else s_m
    return pooled if pooled > 0 else None


def add_reference(
    summary: pd.DataFrame, runs: pd.DataFrame, group_by: Sequence[str]
) -> tuple[pd.DataFrame, str | None, str | None]:
    """Attach the preset's reference numbers to `summarize` output.

    Returns ``(summary + paper_mean, paper_std, paper_diff_std, paper_flag; metric;
    source)`` (fractions, as the measured columns), or ``(summary, None, None)`` when the
    runs carry no ``reference``. A group's reference is looked up by its ``method.name``.
    """
    metric_col = "reference.metric"
    if metric_col not in runs.columns or runs[metric_col].dropna().empty:
        return summary, None, None
    metric = str(runs[metric_col].dropna().iloc[0])
    source_col = "reference.source"
    source = str(runs[source_col].dropna().iloc[0]) if source_col in runs.columns else None
    if f"{metric}_mean" not in summary.columns or "method.name" not in group_by:
        return summary, None, None
    first = runs.drop_duplicates("method.name").set_index("method.name")
    out = summary.copy()
    means, stds, diffs, flags = [], [], [], []
    for _, row in out.iterrows():
        method = row["method.name"]
        ref_mean = ref_std = None
        if method in first.index:
            r = first.loc[method]
            ref_mean = r.get(f"reference.results.{method}.mean")
            ref_std = r.get(f"reference.results.{method}.std")
        ref_mean = None if ref_mean is None or pd.isna(ref_mean) else float(ref_mean) / 100
        ref_std = None if ref_std is None or pd.isna(ref_std) else float(ref_std) / 100
        pooled = pooled_std(row[f"{metric}_std"], ref_std)
        diff = (
            (row[f"{metric}_mean"] - ref_mean) / pooled
            if ref_mean is not None and pooled is not None
            else None
        )
        means.append(ref_mean)
        stds.append(ref_std)
        diffs.append(diff)
        flags.append(diff is not None and abs(diff) > REFERENCE_FLAG_STD)
    out["paper_mean"], out["paper_std"] = means, stds
    out["paper_diff_std"], out["paper_flag"] = diffs, flags
    return out, metric, source


def _reference_cells(row: Mapping[str, Any], scale: float, digits: int) -> list[str]:
    mean, std = row.get("paper_mean"), row.get("paper_std")
    if mean is None or pd.isna(mean):
        return ["–", "–"]
    paper = f"{scale * mean:.{digits}f}"
    if std is not None and not pd.isna(std):
        paper += f" ± {scale * std:.{digits}f}"
    diff = row.get("paper_diff_std")
    if diff is None or pd.isna(diff):
        return [paper, "–"]
    text = f"{diff:+.1f}"
    if row.get("paper_flag"):
        text += " ⚠"
    return [paper, text]
