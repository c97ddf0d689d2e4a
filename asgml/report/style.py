"""Figure styles: ``paper`` and ``screen`` sizes and fonts (TrueType in PDF), the legend,
integer ticks, and one colour per method in every figure and report."""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from importlib.resources import files as package_files
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.ticker import MaxNLocator

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- curves


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


# a fixed palette (tab10, Dark2, Set1): shipped method i of the sorted conf/method names
# (baseline excluded: it is drawn in near-black, the reference of every comparison) gets colour i
_PALETTE = (
    [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
    + [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["Dark2"].colors]
    + [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["Set1"].colors]
)


_PINNED_COLORS = {"baseline": "#222222"}


_LINESTYLES = ("-", "--", ":", "-.")


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
