"""Figures of a run or multirun directory: training curves, final results, sweeps.

Every figure is drawn and saved inside a ``matplotlib.rc_context`` of its style
(`STYLES`), never by changing global ``rcParams``: ``paper`` (default) sizes a figure
for one column (`COLUMN_WIDTH_IN`, 3.5 in, one panel) or two columns
(`PAGE_WIDTH_IN`, 7 in, several panels) with 8-pt text, so it is printed at 100 %;
``screen`` draws larger figures with the legend beside them. Both embed TrueType (Type 42)
fonts in PDF and PS (``pdf.fonttype: 42``: IEEE/ACM checkers reject Type 3 fonts). No
figure has a title (the caption belongs to the paper); panels are named by their short axis
title (``fused``, ``audio``, ...). Epoch and step axes have integer ticks.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files as package_files
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from asgml.report.collect import (
    _NOT_GROUP_KEYS,
    _override_key,
    _progress,
    default_group_by,
    modalities,
)
from asgml.report.significance import t_interval

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- curves
def load_curves(
    run_dirs: Iterable[str | Path], progress: bool | None = None
) -> dict[str, pd.DataFrame]:
    """``{run_dir: csv/metrics.csv}`` for every run that has the CSV log."""
    curves = {}
    for d in _progress(list(run_dirs), "reading curves", progress):
        path = Path(d) / "csv" / "metrics.csv"
        if path.exists():
            curves[str(d)] = pd.read_csv(path)
    return curves


def group_label(row: Mapping[str, Any], group_by: Sequence[str]) -> str:
    """Legend label of a run's group, short enough for a paper: ``boost``, or with several
    keys ``boost, alpha=0.5`` (a ``*.name`` key by its value, any other by its last part;
    a key the run's config lacks, e.g. ``method.boost.alpha`` of the baseline, left out)."""
    if len(group_by) == 1:
        return str(row[group_by[0]])
    parts = []
    for k in group_by:
        v = row[k]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        parts.append(str(v) if k.endswith(".name") else f"{k.rsplit('.', 1)[-1]}={v}")
    return ", ".join(parts)


def curve_stats(
    runs: pd.DataFrame,
    curves: Mapping[str, pd.DataFrame],
    group_by: Sequence[str],
    column: str,
    x: str,
) -> dict[str, pd.DataFrame]:
    """Per group: mean and sample std of ``column`` against ``x`` over the group's runs.

    Returns ``{label: DataFrame(index=x, columns=[mean, std, n])}``; groups where no run
    logged ``column`` are left out.
    """
    out: dict[str, pd.DataFrame] = {}
    series: dict[str, list[pd.Series]] = {}
    for _, row in runs.iterrows():
        df = curves.get(str(row["run_dir"]))
        if df is None or column not in df.columns or x not in df.columns:
            continue
        s = df[[x, column]].dropna().groupby(x)[column].mean()
        if not s.empty:
            series.setdefault(group_label(row, group_by), []).append(s)
    for label, ss in series.items():
        frame = pd.concat(ss, axis=1)
        out[label] = pd.DataFrame(
            {"mean": frame.mean(axis=1), "std": frame.std(axis=1, ddof=1), "n": frame.count(axis=1)}
        )
    return out


# a fixed palette (tab10, Dark2, Set1): shipped method i of the sorted conf/method names
# (baseline excluded: it is drawn in near-black, the reference of every comparison) gets colour i
_PALETTE = (
    [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
    + [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["Dark2"].colors]
    + [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["Set1"].colors]
)


_PINNED_COLORS = {"baseline": "#222222"}


_LINESTYLES = ("-", "--", ":", "-.")


# bands need this many runs at a point: a std from two values is too rough to draw
BAND_MIN_N = 3


COLUMN_WIDTH_IN = 3.5  # one column of a two-column paper (IEEE, ACM, CVPR, NeurIPS: 3.25-3.5)
PAGE_WIDTH_IN = 7.0  # both columns (a figure* in LaTeX)

_TRUETYPE = {"pdf.fonttype": 42, "ps.fonttype": 42}

STYLES: dict[str, dict[str, Any]] = {
    "paper": {
        **_TRUETYPE,
        "font.size": 8,
        "axes.titlesize": 8,
        "axes.labelsize": 8,
        "legend.fontsize": 7,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "lines.linewidth": 1.2,
        "lines.markersize": 3,
        "axes.linewidth": 0.6,
        "savefig.bbox": "standard",
    },
    "screen": {**_TRUETYPE, "font.size": 10},
}
"""The rc parameters of each ``--style``; every figure is drawn and saved inside
``matplotlib.rc_context(STYLES[style])``."""


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"figure style {style!r}: expected one of {sorted(STYLES)}")


def figure_size(n_panels: int, style: str = "paper") -> tuple[float, float]:
    """``(width, height)`` in inches: ``paper``: one column (3.5 in) for one panel, two
    columns (7 in) for more; ``screen``: 3.6 in per panel plus room for a legend beside."""
    _check_style(style)
    if style == "paper":
        return (COLUMN_WIDTH_IN, 2.6) if n_panels <= 1 else (PAGE_WIDTH_IN, 2.6)
    return (3.6 * n_panels + 2.2, 3.2)


def _legend(fig: Any, handles: Mapping[str, Any], style: str) -> None:
    """One legend per figure: below the panels (paper: the full width is taken) or on the
    right (screen)."""
    if style == "paper":
        ncols = max(1, min(len(handles), 3 if fig.get_figwidth() <= COLUMN_WIDTH_IN else 5))
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=ncols)
    else:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize="small")


def _integer_ticks(ax: Any) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def known_methods() -> list[str]:
    """The method names this library ships (``conf/method/*.yaml``), sorted."""
    folder = package_files("asgml.conf").joinpath("method")
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def method_colors(methods: Iterable[str] = ()) -> dict[str, str]:
    """A colour (hex) per method, the same in every figure and every report: ``baseline`` is
    near-black, the other shipped methods (`known_methods`) index a fixed palette in
    sorted order; any other name in ``methods`` gets the palette entry of its CRC-32."""
    shipped = [m for m in known_methods() if m not in _PINNED_COLORS]
    colors = dict(_PINNED_COLORS)
    colors.update({m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(shipped)})
    for m in methods:
        colors.setdefault(str(m), _PALETTE[zlib.crc32(str(m).encode()) % len(_PALETTE)])
    return colors


def group_styles(runs: pd.DataFrame, group_by: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{group label: {"color", "linestyle"}}``: the colour of the group's method
    (`method_colors`), a new line style for each further group of the same method
    (e.g. the values of a swept ``method.boost.alpha``)."""
    styles: dict[str, dict[str, str]] = {}
    per_method: dict[str, int] = {}
    colors = method_colors(runs["method.name"].astype(str) if "method.name" in runs else ())
    for _, row in runs.iterrows():
        label = group_label(row, group_by)
        if label in styles:
            continue
        method = str(row["method.name"]) if "method.name" in row else label
        k = per_method.get(method, 0)
        per_method[method] = k + 1
        color = colors.get(method) or method_colors([method])[method]
        styles[label] = {"color": color, "linestyle": _LINESTYLES[k % len(_LINESTYLES)]}
    return styles


@dataclass(frozen=True)
class FigureSpec:
    """One standard figure: a row of panels over a shared x axis.

    Args:
        panels: ``(column of csv/metrics.csv, panel title)`` pairs.
        x: the x column (``epoch`` or ``step``).
        ylabel: the y axis label, unit included.
        title: what the figure shows (for captions and alt text; never drawn).
        scale: multiplies the values (100: fractions to %).
        valid_range: ``(low, high)`` of the quantity after ``scale`` (None: unbounded);
            std bands are clipped to it.
        steps: the quantity is constant between measurements: ``drawstyle="steps-post"``.
        chance: draw the chance level ``100 / num_classes`` (accuracy panels).
    """

    panels: tuple[tuple[str, str], ...]
    x: str
    ylabel: str
    title: str
    scale: float = 1.0
    valid_range: tuple[float | None, float | None] = (None, None)
    steps: bool = False
    chance: bool = False


# the derived per-epoch imbalance column (add_curve_imbalance)
IMBALANCE_COLUMN = "imbalance/val_acc_gap"


def add_curve_imbalance(curves: Mapping[str, pd.DataFrame], mods: Sequence[str]) -> dict:
    """``curves`` with a column `IMBALANCE_COLUMN` where at least two modalities'
    ``val/acc_<m>`` are logged in a row: the largest minus the smallest (a fraction)."""
    out = {}
    for key, df in curves.items():
        cols = [f"val/acc_{m}" for m in mods if f"val/acc_{m}" in df.columns]
        if len(cols) >= 2:
            acc = df[cols].apply(pd.to_numeric, errors="coerce")
            gap = (acc.max(axis=1) - acc.min(axis=1)).where(acc.notna().sum(axis=1) >= 2)
            df = df.assign(**{IMBALANCE_COLUMN: gap})
        out[key] = df
    return out


def figure_specs(mods: Sequence[str], scale_max: float | None = None) -> dict[str, FigureSpec]:
    """The standard figures for modalities ``mods``: file stem -> `FigureSpec`
    (``scale_max``: the boost scale's upper bound, ``method.boost.scale_max``)."""
    acc = {"scale": 100.0, "valid_range": (0.0, 100.0), "chance": True}
    return {
        "val_acc": FigureSpec(
            (("val/acc", "fused"), *((f"val/acc_{m}", m) for m in mods)),
            "epoch",
            "validation accuracy (%)",
            "Validation accuracy per epoch (fused, unimodal)",
            **acc,
        ),
        "probe_acc": FigureSpec(
            tuple((f"probe/acc_{m}", m) for m in mods),
            "step",
            "probe accuracy (%)",
            "Probe accuracy over training steps",
            **acc,
        ),
        "boost_scale": FigureSpec(
            tuple((f"boost/scale_{m}", m) for m in mods),
            "step",
            "boost scale",
            "Boost scale over training steps (constant between probe measurements)",
            valid_range=(1.0, scale_max),
            steps=True,
        ),
        "ogm_coeff": FigureSpec(
            tuple((f"ogm/coeff_{m}", m) for m in mods),
            "step",
            "OGM-GE coefficient",
            "OGM-GE coefficient over training steps (logged samples)",
            valid_range=(0.0, 1.0),
        ),
        "modality_loss": FigureSpec(
            tuple((f"train/loss_{m}", m) for m in mods),
            "epoch",
            "training loss",
            "Per-modality training loss per epoch (epoch mean)",
            valid_range=(0.0, None),
        ),
        "grad_norm": FigureSpec(
            tuple((f"train/grad_norm_{m}", m) for m in mods),
            "step",
            "encoder gradient norm",
            "Per-modality encoder gradient norm (L2) over training steps",
            valid_range=(0.0, None),
        ),
        "imbalance": FigureSpec(
            ((IMBALANCE_COLUMN, "unimodal gap"),),
            "epoch",
            "val. accuracy gap (pp)",
            "Imbalance per epoch: strongest minus weakest unimodal validation accuracy",
            scale=100.0,
            valid_range=(0.0, 100.0),
        ),
    }


def _unique_number(runs: pd.DataFrame, key: str, how: str = "unique") -> float | None:
    if key not in runs.columns:
        return None
    values = pd.to_numeric(runs[key], errors="coerce").dropna()
    if values.empty or (how == "unique" and values.nunique() > 1):
        return None
    return float(values.max())


def plot_curves(
    runs: pd.DataFrame,
    curves: Mapping[str, pd.DataFrame],
    group_by: Sequence[str],
    spec: FigureSpec,
    num_classes: int | None = None,
    style: str = "paper",
) -> Any:
    """A row of panels (shared y), one line per group: the mean over its runs, a ±1 std band
    where at least `BAND_MIN_N` runs contribute (clipped to ``spec.valid_range``), the
    chance line ``100 / num_classes`` on accuracy panels, one legend with each group's n,
    integer ticks on the x axis, no figure title; sized by `figure_size` in ``style``
    (drawn inside its rc context: save it inside the same, as `plot` does).

    Returns the matplotlib figure, or ``None`` when no run logged any panel's column.
    """
    stats_ = [(name, curve_stats(runs, curves, group_by, col, spec.x)) for col, name in spec.panels]
    stats_ = [s for s in stats_ if s[1]]
    if not stats_:
        return None
    styles = group_styles(runs, group_by)
    n_runs: dict[str, int] = {}
    for _, per_group in stats_:
        for label, st in per_group.items():
            n_runs[label] = max(n_runs.get(label, 0), int(st["n"].max()))
    fig, axes = plt.subplots(
        1,
        len(stats_),
        figsize=figure_size(len(stats_), style),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    low, high = spec.valid_range
    drawstyle = "steps-post" if spec.steps else "default"
    for ax, (name, per_group) in zip(axes[0], stats_):
        for label, st in per_group.items():
            line_style = styles.get(label, {})
            mean = spec.scale * st["mean"]
            marker = "o" if len(st) <= 25 else None  # short curves: show the points
            ax.plot(
                st.index,
                mean,
                label=f"{label} (n={n_runs[label]})",
                marker=marker,
                markersize=3,
                drawstyle=drawstyle,
                **line_style,
            )
            banded = (st["n"] >= BAND_MIN_N).to_numpy()
            if banded.any():
                std = spec.scale * st["std"].fillna(0.0)
                ax.fill_between(
                    st.index,
                    (mean - std).clip(lower=low, upper=high),
                    (mean + std).clip(lower=low, upper=high),
                    where=banded,
                    step="post" if spec.steps else None,
                    alpha=0.2,
                    color=line_style.get("color"),
                    linewidth=0,
                )
        if spec.chance and num_classes:
            chance = 100.0 / num_classes
            ax.axhline(
                chance, color="0.45", linestyle=":", linewidth=1, label=f"chance ({chance:.3g} %)"
            )
        if len(spec.panels) > 1:  # a one-panel figure is named by its y label
            ax.set_title(name)
        ax.set_xlabel(spec.x)
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(spec.ylabel)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    _legend(fig, handles, style)
    return fig


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


# further figure families, each ``(runs, curves, group_by) -> {stem: figure}``, added to the
# standard ones by make_figures (asgml.report.diagnostics registers its own)
FIGURE_HOOKS: list[Callable[..., dict[str, Any]]] = []


def make_figures(
    runs: pd.DataFrame,
    curves: Mapping[str, pd.DataFrame],
    group_by: Sequence[str],
    metric: str = "test/acc",
    style: str = "paper",
) -> dict[str, Any]:
    """``{stem: figure or None}`` (None: nothing logged for it): the curves of
    `figure_specs`, the dot plot ``final_<metric>`` (`plot_dots`) and one sweep plot
    ``sweep_<key>`` per swept numeric key (`swept_keys`, `plot_sweep`). Drawn in
    ``style``'s rc context (`STYLES`); save them in it too (`save_figures`). Then those of
    `FIGURE_HOOKS` (e.g. the diagnostics' ``diag_*`` figures)."""
    _check_style(style)
    mods = modalities(runs)
    specs = figure_specs(mods, _unique_number(runs, "method.boost.scale_max", "max"))
    num_classes = _unique_number(runs, "dataset.num_classes")
    curves = add_curve_imbalance(curves, mods)
    with plt.rc_context(STYLES[style]):
        figures = {
            stem: plot_curves(
                runs, curves, group_by, spec, int(num_classes) if num_classes else None, style
            )
            for stem, spec in specs.items()
        }
        figures[f"final_{metric.split('/')[-1]}"] = plot_dots(runs, group_by, metric, style)
        for key in swept_keys(runs):
            figures[f"sweep_{key.replace('.', '_')}"] = plot_sweep(runs, key, metric, style)
        for hook in FIGURE_HOOKS:
            figures.update(hook(runs, curves, group_by))
    return figures


FIGURE_FORMATS = ("png", "pdf")


FIGURE_DPI = 300


def save_figures(
    figures: Mapping[str, Any],
    out_dir: Path,
    formats: Sequence[str] = FIGURE_FORMATS,
    dpi: int = FIGURE_DPI,
    style: str = "paper",
) -> tuple[list[Path], list[str]]:
    """Save (inside ``style``'s rc context: TrueType fonts) and close every figure; returns
    the written paths and a note per skipped one."""
    _check_style(style)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    with plt.rc_context(STYLES[style]):
        for stem, fig in figures.items():
            if fig is None:
                skipped.append(f"{stem} skipped: no run logged its columns")
                continue
            for fmt in formats:
                path = out_dir / f"{stem}.{fmt}"
                fig.savefig(path, dpi=dpi)
                written.append(path)
            plt.close(fig)
    return written, skipped


def plot(
    runs: pd.DataFrame,
    out_dir: str | Path,
    group_by: Sequence[str] | None = None,
    curves: Mapping[str, pd.DataFrame] | None = None,
    formats: Sequence[str] = FIGURE_FORMATS,
    dpi: int = FIGURE_DPI,
    metric: str = "test/acc",
    style: str = "paper",
) -> list[Path]:
    """Write the standard figures of ``runs`` (`make_figures`) into ``out_dir`` in
    each of ``formats``; returns the written paths. ``curves`` defaults to
    `load_curves` of the runs; figures nothing was logged for are skipped (logged)."""
    keys = list(group_by) if group_by else default_group_by(runs)
    if curves is None:
        curves = load_curves(runs["run_dir"])
    figures = make_figures(runs, curves, keys, metric, style)
    written, skipped = save_figures(figures, Path(out_dir), formats, dpi, style)
    for note in skipped:
        log.info("%s", note)
    return written
