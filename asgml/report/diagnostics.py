"""Figures of the imbalance diagnostics (``diagnostics=probes|full``, docs/diagnosing.md).

Each series figure has **one panel per group** (method, by default) side by side and the
modalities as lines (mean over the group's runs, ±1 std band from
`BAND_MIN_N` runs on), read from each job's ``csv/metrics.csv``:

* ``diag_probe_acc``: probe accuracy per modality over steps (``diag/probe_acc_<m>``);
* ``diag_grad_ratio``: each encoder's gradient norm over the mean of all encoders'
  (``diag/grad_ratio_<m>``; 1 = balanced);
* ``diag_ogm_score``: OGM-GE's discrepancy score, the mean true-class probability of each
  unimodal head (``diag/ogm_score_<m>``);
* ``diag_shapley``: per-epoch Shapley value of each modality on the validation split, from
  the logged subset accuracies ``diag/subset_acc_<S>`` with
  `asgml.report.shapley.shapley_values` (the values sum to v(all) - v(none));
* ``diag_cost``: GFLOPs per training step and parameters (millions) per group, from each
  job's ``diagnostics/cost.json``;
* ``diag_tsne``: the t-SNE of each modality's validation features at the end of training
  (``diagnostics/tsne.csv``) of the first run of each group, one row per group.

Registered with `asgml.report.figures.FIGURE_HOOKS`; runs without diagnostics add
no figure (and no "skipped" note).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from asgml.report.collect import modalities
from asgml.report.figures import BAND_MIN_N, FIGURE_HOOKS, curve_stats
from asgml.report.shapley import shapley_values
from asgml.report.style import group_label, method_colors

log = logging.getLogger(__name__)

PREFIX = "diag"

# stem -> (column pattern with {m}, x, y label, title, scale, chance line)
SERIES: dict[str, tuple[str, str, str, str, float, bool]] = {
    "diag_probe_acc": (
        "diag/probe_acc_{m}",
        "step",
        "probe accuracy (%)",
        "Probe accuracy per modality (held-out half of each measured batch)",
        100.0,
        True,
    ),
    "diag_grad_ratio": (
        "diag/grad_ratio_{m}",
        "step",
        "encoder grad norm / mean",
        "Encoder gradient-norm ratio (1 = balanced)",
        1.0,
        False,
    ),
    "diag_ogm_score": (
        "diag/ogm_score_{m}",
        "step",
        "mean true-class probability",
        "OGM-GE discrepancy score per modality",
        1.0,
        False,
    ),
    "diag_shapley": (
        "diag/shapley_{m}",
        "epoch",
        "Shapley value (pp of val accuracy)",
        "Per-epoch Shapley contribution on the validation split",
        100.0,
        False,
    ),
}


def _subset_columns(df: pd.DataFrame) -> dict[frozenset[str], str]:
    out = {}
    for c in df.columns:
        if c.startswith(f"{PREFIX}/subset_acc_"):
            name = c.removeprefix(f"{PREFIX}/subset_acc_")
            out[frozenset() if name == "none" else frozenset(name.split("+"))] = c
    return out


def with_shapley(df: pd.DataFrame, mods: Sequence[str]) -> pd.DataFrame:
    """``df`` plus ``diag/shapley_<m>`` on every row with all subset accuracies logged
    (exact Shapley over the modalities ``mods``); unchanged when they are not all there."""
    cols = _subset_columns(df)
    players = [m for m in mods if any(m in s for s in cols)]
    if not players or len(cols) != 2 ** len(players):
        return df
    rows = df[list(cols.values())].notna().all(axis=1)
    df = df.copy()
    for m in players:
        df[f"{PREFIX}/shapley_{m}"] = float("nan")
    for i in df.index[rows]:
        values = {s: float(df.at[i, c]) for s, c in cols.items()}
        phi = shapley_values(values.__getitem__, players)
        for m, v in phi.items():
            df.at[i, f"{PREFIX}/shapley_{m}"] = v
    return df


def plot_panels_per_group(
    runs: pd.DataFrame,
    curves: Mapping[str, pd.DataFrame],
    group_by: Sequence[str],
    pattern: str,
    x: str,
    ylabel: str,
    title: str,
    scale: float = 1.0,
    chance: float | None = None,
    mods: Sequence[str] = (),
) -> Any:
    """One panel per group, one line per modality of ``mods`` (default: the runs' test
    modalities; mean over the group's runs; a ±1 std band where at least ``BAND_MIN_N`` runs
    contribute). ``None`` when nothing was logged."""
    mods = list(mods) or modalities(runs)
    per_mod = {m: curve_stats(runs, curves, group_by, pattern.format(m=m), x) for m in mods}
    groups = list(dict.fromkeys(g for st in per_mod.values() for g in st))
    if not groups:
        return None
    colors = method_colors(mods)  # a modality's colour is the same in every panel
    fig, axes = plt.subplots(
        1,
        len(groups),
        figsize=(3.4 * len(groups) + 1.6, 3.0),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, g in zip(axes[0], groups):
        for m in mods:
            st = per_mod[m].get(g)
            if st is None:
                continue
            mean = scale * st["mean"]
            ax.plot(
                st.index,
                mean,
                label=m,
                color=colors[m],
                marker="o" if len(st) <= 25 else None,
                markersize=3,
            )
            banded = (st["n"] >= BAND_MIN_N).to_numpy()
            if banded.any():
                std = scale * st["std"].fillna(0.0)
                ax.fill_between(
                    st.index,
                    mean - std,
                    mean + std,
                    where=banded,
                    alpha=0.2,
                    color=colors[m],
                    linewidth=0,
                )
        if chance is not None:
            ax.axhline(chance, color="0.45", linestyle=":", linewidth=1, label="chance")
        n = max(int(st["n"].max()) for st in (per_mod[m].get(g) for m in mods) if st is not None)
        ax.set_title(f"{g} (n={n})")
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize="small")
    fig.suptitle(title)
    return fig


def cost_table(runs: pd.DataFrame, group_by: Sequence[str]) -> pd.DataFrame:
    """Per group: mean FLOPs per training step and parameters (``diagnostics/cost.json``)."""
    rows = []
    for _, row in runs.iterrows():
        path = Path(str(row["run_dir"])) / "diagnostics" / "cost.json"
        if path.exists():
            cost = json.loads(path.read_text())
            rows.append({"group": group_label(row, group_by), **cost})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    return df.groupby("group", sort=False)[["flops_per_step", "params"]].mean()


def plot_cost(runs: pd.DataFrame, group_by: Sequence[str]) -> Any:
    table = cost_table(runs, group_by)
    if table.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(2.0 + 0.7 * len(table) * 2, 3.0), layout="constrained")
    colors = method_colors(table.index)
    for ax, col, scale, label in (
        (axes[0], "flops_per_step", 1e-9, "GFLOPs per training step"),
        (axes[1], "params", 1e-6, "parameters (millions)"),
    ):
        values = table[col] * scale
        ax.bar(range(len(values)), values, color=[colors[g] for g in table.index])
        ax.set_xticks(range(len(values)), table.index, rotation=45, ha="right")
        ax.set_title(label)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize="small")
    fig.suptitle("Compute cost (FlopCounterMode, first training step)")
    return fig


def plot_tsne(runs: pd.DataFrame, group_by: Sequence[str]) -> Any:
    first: dict[str, Path] = {}
    for _, row in runs.iterrows():
        path = Path(str(row["run_dir"])) / "diagnostics" / "tsne.csv"
        label = group_label(row, group_by)
        if path.exists() and label not in first:
            first[label] = path
    if not first:
        return None
    frames = {g: pd.read_csv(p) for g, p in first.items()}
    mods = list(dict.fromkeys(m for df in frames.values() for m in df["modality"]))
    fig, axes = plt.subplots(
        len(frames),
        len(mods),
        figsize=(2.6 * len(mods) + 0.6, 2.4 * len(frames)),
        squeeze=False,
        layout="constrained",
    )
    for r, (g, df) in enumerate(frames.items()):
        for c, m in enumerate(mods):
            ax = axes[r][c]
            part = df[df["modality"] == m]
            ax.scatter(part["x"], part["y"], c=part["label"], cmap="tab10", s=4)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(m)
            if c == 0:
                ax.set_ylabel(g)
    fig.suptitle("t-SNE of validation features at the end of training (colour = class)")
    return fig


def logged_modalities(runs: pd.DataFrame, curves: Mapping[str, pd.DataFrame]) -> list[str]:
    """The runs' modalities (``test/acc_<m>``), else those the diagnostics logged (runs
    without a test stage)."""
    mods = modalities(runs)
    for df in curves.values():
        for c in df.columns:
            for head in ("probe_acc_", "grad_norm_", "ogm_score_"):
                name = c.removeprefix(f"{PREFIX}/{head}")
                if c.startswith(f"{PREFIX}/{head}") and name not in mods:
                    mods.append(name)
    return mods


def diagnostic_figures(
    runs: pd.DataFrame, curves: Mapping[str, pd.DataFrame], group_by: Sequence[str]
) -> dict[str, Any]:
    """``{stem: figure}`` of the diagnostics the runs logged (nothing when none did)."""
    if not any(any(c.startswith(f"{PREFIX}/") for c in df.columns) for df in curves.values()):
        return {}
    mods = logged_modalities(runs, curves)
    curves = {k: with_shapley(df, mods) for k, df in curves.items()}
    n_classes = pd.to_numeric(runs.get("dataset.num_classes"), errors="coerce")
    chance = (
        100.0 / float(n_classes.max())
        if n_classes is not None and n_classes.notna().any()
        else None
    )
    out: dict[str, Any] = {}
    for stem, (pattern, x, ylabel, title, scale, draw_chance) in SERIES.items():
        fig = plot_panels_per_group(
            runs,
            curves,
            group_by,
            pattern,
            x,
            ylabel,
            title,
            scale,
            chance if draw_chance else None,
            mods,
        )
        if fig is not None:
            out[stem] = fig
    for stem, fig in (
        ("diag_cost", plot_cost(runs, group_by)),
        ("diag_tsne", plot_tsne(runs, group_by)),
    ):
        if fig is not None:
            out[stem] = fig
    return out


FIGURE_HOOKS.append(diagnostic_figures)
