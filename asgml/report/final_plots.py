"""Figures of final results: the per-method dot plot (one dot per seed, mean with its 95 % t
interval) and the sweep plot (the metric against a swept key, one line per method)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from asgml.report.collect import (
    _NOT_GROUP_KEYS,
    _override_key,
)
from asgml.report.significance import t_interval
from asgml.report.style import _legend, figure_size, group_label, group_styles, method_colors

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- curves


def _metric_label(metric: str) -> str:
    stage, _, name = metric.partition("/")
    words = {"acc": "accuracy", "f1": "macro-F1"}
    return f"{stage} {words.get(name, name)} (%)" if name else metric


def plot_dots(
    runs: pd.DataFrame,
    group_by: Sequence[str],
    metric: str = "test/acc",
    style: str = "paper",
) -> Any:
    """The final ``metric`` per group: one dot per run (seed) and the mean with its
    `CONFIDENCE` t interval
    (`t_interval`; the mean alone for one run).

    Returns the figure, or ``None`` when no run has ``metric``.
    """
    if metric not in runs.columns or pd.to_numeric(runs[metric], errors="coerce").isna().all():
        return None
    styles = group_styles(runs, group_by)
    groups: dict[str, list[float]] = {}
    for _, row in runs.iterrows():
        value = pd.to_numeric(pd.Series([row[metric]]), errors="coerce").iloc[0]
        if pd.notna(value):
            groups.setdefault(group_label(row, group_by), []).append(100.0 * float(value))
    width = figure_size(1 if len(groups) <= 6 else 2, style)
    fig, ax = plt.subplots(figsize=width, layout="constrained")
    for i, (label, values) in enumerate(groups.items()):
        color = styles.get(label, {}).get("color")
        n = len(values)
        offsets = np.linspace(-0.15, 0.15, n) if n > 1 else np.zeros(1)
        ax.scatter(i + offsets, values, s=12, color=color, alpha=0.7, linewidths=0, zorder=3)
        mean = float(np.mean(values))
        low, high = t_interval(values)
        yerr = None if np.isnan(low) else [[mean - low], [high - mean]]
        ax.errorbar(
            [i + 0.3], [mean], yerr=yerr, fmt="_", color=color, capsize=3, markersize=10, zorder=4
        )
    ax.set_xticks(range(len(groups)), [f"{k}\n(n={len(v)})" for k, v in groups.items()])
    if any(len(k) > 10 for k in groups):
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(_metric_label(metric))
    ax.grid(axis="y", alpha=0.3)
    return fig


def swept_keys(runs: pd.DataFrame) -> list[str]:
    """The numeric config keys a sweep varied: keys of the runs' Hydra overrides (e.g.
    ``method.boost.alpha=0.5``, ``dataset.frames=1``) with at least two distinct numeric
    values; config groups (``method=boost``), ``seed``, paths and ``hydra.*`` keys are not
    sweeps of a value."""
    keys: list[str] = []
    for ov in runs.get("overrides", pd.Series(dtype=str)).dropna():
        for o in json.loads(ov):
            key = _override_key(o)
            if key in keys or key in _NOT_GROUP_KEYS or key.startswith("hydra."):
                continue
            if key not in runs.columns or f"{key}.name" in runs.columns:
                continue
            values = pd.to_numeric(runs[key], errors="coerce")
            if values.notna().any() and values.dropna().nunique() >= 2:
                keys.append(key)
    return keys


def plot_sweep(runs: pd.DataFrame, key: str, metric: str = "test/acc", style: str = "paper") -> Any:
    """``metric`` against the swept ``key``, one line per method: the mean over the runs at
    each value with its `CONFIDENCE` t interval as error
    bars; a method without ``key`` (e.g. the baseline) is a horizontal dashed line at its
    mean. Returns the figure, or ``None`` when no run has both ``key`` and ``metric``."""
    if metric not in runs.columns or key not in runs.columns:
        return None
    frame = pd.DataFrame(
        {
            "method": runs["method.name"].astype(str) if "method.name" in runs else "all",
            "x": pd.to_numeric(runs[key], errors="coerce"),
            "y": 100.0 * pd.to_numeric(runs[metric], errors="coerce"),
        }
    ).dropna(subset=["y"])
    swept = frame.dropna(subset=["x"])
    if swept.empty:
        return None
    colors = method_colors(frame["method"])
    fig, ax = plt.subplots(figsize=figure_size(1, style), layout="constrained")
    for method, g in swept.groupby("method", sort=False):
        per_x = g.groupby("x")["y"]
        xs = np.array(sorted(per_x.groups))
        means = per_x.mean().loc[xs].to_numpy()
        ci = [t_interval(per_x.get_group(x).to_list()) for x in xs]
        err = np.array([[m - lo, hi - m] for m, (lo, hi) in zip(means, ci)]).T
        err = np.nan_to_num(err)
        n = int(per_x.count().min())
        ax.errorbar(
            xs,
            means,
            yerr=err,
            marker="o",
            capsize=2,
            color=colors[method],
            label=f"{method} (n={n} per value)",
        )
    for method, g in frame[frame["x"].isna()].groupby("method", sort=False):
        ax.axhline(
            g["y"].mean(),
            color=colors[method],
            linestyle="--",
            linewidth=1,
            label=f"{method} (n={len(g)})",
        )
    values = sorted(swept["x"].unique())
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.set_xlabel(key)
    ax.set_ylabel(_metric_label(metric))
    ax.grid(alpha=0.3)
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))
    _legend(fig, handles, style)
    return fig
