"""Training curves: per-epoch and per-step figures of a run or multirun directory."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files as package_files
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from asgml.report.collect import _progress, default_group_by, modalities

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
    """Legend label of a run's group: ``boost`` or ``method=boost, method.boost.alpha=0.5``."""
    if len(group_by) == 1:
        return str(row[group_by[0]])
    return ", ".join(f"{k.removesuffix('.name')}={row[k]}" for k in group_by)


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


def known_methods() -> list[str]:
    """The method names this library ships (``conf/method/*.yaml``), sorted."""
    folder = package_files("asgml.conf").joinpath("method")
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def method_colors(methods: Iterable[str] = ()) -> dict[str, str]:
    """A colour (hex) per method, the same in every figure and every report: ``baseline`` is
    near-black, the other shipped methods (:func:`known_methods`) index a fixed palette in
    sorted order; any other name in ``methods`` gets the palette entry of its CRC-32."""
    shipped = [m for m in known_methods() if m not in _PINNED_COLORS]
    colors = dict(_PINNED_COLORS)
    colors.update({m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(shipped)})
    for m in methods:
        colors.setdefault(str(m), _PALETTE[zlib.crc32(str(m).encode()) % len(_PALETTE)])
    return colors


def group_styles(runs: pd.DataFrame, group_by: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{group label: {"color", "linestyle"}}``: the colour of the group's method
    (:func:`method_colors`), a new line style for each further group of the same method
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
        title: the figure title.
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


def figure_specs(mods: Sequence[str], scale_max: float | None = None) -> dict[str, FigureSpec]:
    """The standard figures for modalities ``mods``: file stem -> :class:`FigureSpec`
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
) -> Any:
    """A row of panels (shared y), one line per group: the mean over its runs, a ±1 std band
    where at least :data:`BAND_MIN_N` runs contribute (clipped to ``spec.valid_range``), the
    chance line ``100 / num_classes`` on accuracy panels, one legend with each group's n.

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
        figsize=(3.6 * len(stats_) + 2.2, 3.2),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    low, high = spec.valid_range
    drawstyle = "steps-post" if spec.steps else "default"
    for ax, (name, per_group) in zip(axes[0], stats_):
        for label, st in per_group.items():
            style = styles.get(label, {})
            mean = spec.scale * st["mean"]
            marker = "o" if len(st) <= 25 else None  # short curves: show the points
            ax.plot(
                st.index,
                mean,
                label=f"{label} (n={n_runs[label]})",
                marker=marker,
                markersize=3,
                drawstyle=drawstyle,
                **style,
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
                    color=style.get("color"),
                    linewidth=0,
                )
        if spec.chance and num_classes:
            chance = 100.0 / num_classes
            ax.axhline(
                chance, color="0.45", linestyle=":", linewidth=1, label=f"chance ({chance:.3g} %)"
            )
        ax.set_title(name)
        ax.set_xlabel(spec.x)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(spec.ylabel)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize="small")
    fig.suptitle(spec.title)
    return fig


# further figure families, each ``(runs, curves, group_by) -> {stem: figure}``, added to the
# standard ones by make_figures (asgml.report.diagnostics registers its own)
FIGURE_HOOKS: list[Callable[..., dict[str, Any]]] = []


def make_figures(
    runs: pd.DataFrame, curves: Mapping[str, pd.DataFrame], group_by: Sequence[str]
) -> dict[str, Any]:
    """``{stem: figure or None}`` for every standard figure (None: nothing logged for it),
    then those of :data:`FIGURE_HOOKS`."""
    specs = figure_specs(modalities(runs), _unique_number(runs, "method.boost.scale_max", "max"))
    num_classes = _unique_number(runs, "dataset.num_classes")
    figures = {
        stem: plot_curves(runs, curves, group_by, spec, int(num_classes) if num_classes else None)
        for stem, spec in specs.items()
    }
    for hook in FIGURE_HOOKS:
        figures.update(hook(runs, curves, group_by))
    return figures


FIGURE_FORMATS = ("png", "pdf")


FIGURE_DPI = 300


def _save_figures(
    figures: Mapping[str, Any],
    out_dir: Path,
    formats: Sequence[str] = FIGURE_FORMATS,
    dpi: int = FIGURE_DPI,
) -> tuple[list[Path], list[str]]:
    """Save and close every figure; returns the written paths and a note per skipped one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
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
) -> list[Path]:
    """Write the standard figures of ``runs`` (:func:`make_figures`) into ``out_dir`` in
    each of ``formats``; returns the written paths. ``curves`` defaults to
    :func:`load_curves` of the runs; figures nothing was logged for are skipped (logged)."""
    keys = list(group_by) if group_by else default_group_by(runs)
    if curves is None:
        curves = load_curves(runs["run_dir"])
    written, skipped = _save_figures(make_figures(runs, curves, keys), Path(out_dir), formats, dpi)
    for note in skipped:
        log.info("%s", note)
    return written
