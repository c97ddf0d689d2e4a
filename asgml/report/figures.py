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

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from asgml.report.collect import (
    _progress,
    default_group_by,
    modalities,
)
from asgml.report.final_plots import plot_dots, plot_sweep, swept_keys
from asgml.report.style import (
    STYLES,
    _check_style,
    _integer_ticks,
    _legend,
    figure_size,
    group_label,
    group_styles,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- curves


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


# bands need this many runs at a point: a std from two values is too rough to draw
BAND_MIN_N = 3


"""The rc parameters of each ``--style``; every figure is drawn and saved inside
``matplotlib.rc_context(STYLES[style])``."""


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
