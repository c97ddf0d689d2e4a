"""Mean ± std tables: column kinds, cells, Markdown and LaTeX rendering."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from asgml.report.collect import _grouped, _is_nan, modalities
from asgml.report.reference import _reference_cells
from asgml.report.significance import _significance_cells, significance_headers

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = frozenset({"score"})


# --------------------------------------------------------------------------- tables
# column kinds: which way is better decides whether the best mean is bold
COLUMN_KINDS: dict[str, str] = {
    "score": "fused test accuracy / macro-F1: higher is better, best mean in bold",
    "unimodal": "one modality's test accuracy: a diagnostic, never bold",
    "shapley": "a modality's Shapley value: a share of the fused accuracy, never bold",
    "imbalance": "a gap or share between modalities: neither direction is better, never bold",
}


@dataclass(frozen=True)
class Column:
    """One value column of the table.

    Args:
        key: the column of the runs frame (``test/acc``, ``eval/shapley_audio``, ...).
        header: the table header, unit included (``Acc (%)``, ``Shapley audio (pp)``).
        kind: one of `COLUMN_KINDS`; only `HIGHER_IS_BETTER` kinds are bold.
    """

    key: str
    header: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in COLUMN_KINDS:
            raise ValueError(f"column {self.key}: kind {self.kind!r} not in {list(COLUMN_KINDS)}")

    @property
    def bold_best(self) -> bool:
        """Whether the best (highest) mean of this column is bold."""
        return self.kind in HIGHER_IS_BETTER


def metric_columns(runs: pd.DataFrame, with_shapley: bool = False) -> list[Column]:
    """The table's value columns present in ``runs``: test accuracy and macro-F1, each
    modality's unimodal accuracy, the accuracy gap, and with ``with_shapley`` each modality's
    Shapley value and the smallest Shapley share."""
    mods = modalities(runs)
    cols = [Column("test/acc", "Acc (%)", "score"), Column("test/f1", "Macro-F1 (%)", "score")]
    cols += [Column(f"test/acc_{m}", f"Acc {m} (%)", "unimodal") for m in mods]
    cols.append(Column("imbalance/acc_gap", "Acc gap (pp)", "imbalance"))
    if with_shapley:
        cols += [Column(f"eval/shapley_{m}", f"Shapley {m} (pp)", "shapley") for m in mods]
        cols.append(Column("imbalance/shapley_min_share", "Min Shapley share (%)", "imbalance"))
    return [c for c in cols if c.key in runs.columns and runs[c.key].notna().any()]


def summarize(runs: pd.DataFrame, group_by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and count of ``columns`` per group, in first-seen order.

    Returns one row per group with the group keys as columns, then ``<col>_mean``,
    ``<col>_std`` and ``<col>_n`` (runs with a value in that column) for each column, and
    ``n`` (runs in the group).
    """
    grouped = _grouped(runs, group_by)
    keyed = grouped.obj
    numeric = keyed[list(columns)].apply(pd.to_numeric, errors="coerce")
    numeric[list(group_by)] = keyed[list(group_by)]
    g = numeric.groupby(list(group_by), sort=False, dropna=False)
    out = pd.concat(
        [
            g[list(columns)].mean().add_suffix("_mean"),
            g[list(columns)].std(ddof=1).add_suffix("_std"),
            g[list(columns)].count().add_suffix("_n"),
        ],
        axis=1,
    )
    out["n"] = grouped.size()
    ordered = [f"{c}_{s}" for c in columns for s in ("mean", "std", "n")] + ["n"]
    return out[ordered].reset_index()


def _fmt(mean: float, std: float, n: int, scale: float, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{scale * mean:.{digits}f}"
    if n > 1 and std is not None and not math.isnan(std):
        text += f" ± {scale * std:.{digits}f}"
    return text


@dataclass(frozen=True)
class Cell:
    """One table cell: its text (no markup) and whether it is bold."""

    text: str
    bold: bool = False


def _group_name(row: Mapping[str, Any], group_by: Sequence[str]) -> str:
    return ", ".join(f"{k}={row[k]}" for k in group_by)


def table_cells(
    summary: pd.DataFrame,
    group_by: Sequence[str],
    columns: Sequence[Column],
    scale: float = 100.0,
    digits: int = 2,
    reference_metric: str | None = None,
    significance: str | None = None,
) -> tuple[list[str], list[list[Cell]], list[str]]:
    """Headers, rows of `Cell` and warnings of a `summarize` output.

    Values are multiplied by ``scale`` (percent). A ``score`` column's highest mean is bold.
    A cell from fewer runs than its row's ``Seeds`` shows ``(n=k)``, and each such column
    gives one warning. With ``reference_metric`` (and `add_reference` columns)
    ``Paper (%)`` and ``Δ (std)`` follow that metric's column; with ``significance`` (the
    header of `add_significance` columns) the p-value, its Holm-adjusted value, the
    difference to the reference with its 95 % interval and the effect size precede ``Seeds``.
    """
    headers = [k.split(".")[0] if k.endswith(".name") else k for k in group_by]
    for col in columns:
        headers.append(col.header)
        if col.key == reference_metric:
            headers += ["Paper (%)", "Δ (std)"]
    if significance is not None:
        headers += significance_headers(significance)
    headers.append("Seeds")
    best = {}
    for col in columns:
        means = pd.to_numeric(summary[f"{col.key}_mean"], errors="coerce")
        best[col.key] = means.max() if col.bold_best and means.notna().any() else None
    rows: list[list[Cell]] = []
    short: dict[str, list[str]] = {}
    for _, row in summary.iterrows():
        runs_n = int(row["n"])
        # a key some runs' configs lack (e.g. method.modality of method=unimodal) reads -
        cells = [Cell("–" if _is_nan(row[k]) else str(row[k])) for k in group_by]
        for col in columns:
            mean, std = row[f"{col.key}_mean"], row[f"{col.key}_std"]
            n = int(row.get(f"{col.key}_n", runs_n))
            text = _fmt(mean, std, n, scale, digits)
            if n < runs_n:  # n = 0 reads "–"; it is still named in the warning
                text += f" (n={n})" if n else ""
                short.setdefault(col.header, []).append(
                    f"{_group_name(row, group_by)}: n={n} of {runs_n}"
                )
            bold = best[col.key] is not None and not pd.isna(mean)
            cells.append(Cell(text, bold and math.isclose(mean, best[col.key])))
            if col.key == reference_metric:
                cells += [Cell(t) for t in _reference_cells(row, scale, digits)]
        if significance is not None:
            cells += [Cell(t) for t in _significance_cells(row, scale, digits)]
        cells.append(Cell(str(runs_n)))
        rows.append(cells)
    notes = [
        f"column {header!r} has fewer values than runs: {'; '.join(groups)}"
        for header, groups in short.items()
    ]
    return headers, rows, notes


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """A Markdown (GitHub) table; bold cells as ``**text**``."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for cells in rows:
        lines.append("| " + " | ".join(f"**{c.text}**" if c.bold else c.text for c in cells) + " |")
    return "\n".join(lines)


# characters special to LaTeX (text mode) and the Unicode signs the table uses
_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"$<$",
    ">": r"$>$",
    "±": r"$\pm$",
    "–": "--",
    "−": "$-$",
    "Δ": r"$\Delta$",
    "⚠": r"$^\dagger$",
    "²": r"$^2$",
}


def latex_escape(text: str) -> str:
    """``text`` safe in a LaTeX tabular cell (specials escaped, ``±`` -> ``$\\pm$``, ...)."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def latex_table(
    headers: Sequence[str], rows: Sequence[Sequence[Cell]], n_label_columns: int = 1
) -> str:
    """A LaTeX ``tabular`` with ``booktabs`` rules; the first ``n_label_columns`` columns
    left-aligned, the rest right-aligned; bold cells as ``\\textbf{...}``."""
    spec = "l" * n_label_columns + "r" * (len(headers) - n_label_columns)

    def line(cells: Iterable[str]) -> str:
        return " & ".join(cells) + r" \\"

    body = [
        "% needs \\usepackage{booktabs}",
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        line(latex_escape(h) for h in headers),
        r"\midrule",
    ]
    for cells in rows:
        body.append(
            line(
                f"\\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text)
                for c in cells
            )
        )
    body += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(body)


def format_table(
    summary: pd.DataFrame,
    group_by: Sequence[str],
    columns: Sequence[Column],
    scale: float = 100.0,
    digits: int = 2,
    reference_metric: str | None = None,
) -> str:
    """A Markdown table of `summarize` output (see `table_cells`)."""
    headers, rows, _ = table_cells(summary, group_by, columns, scale, digits, reference_metric)
    return markdown_table(headers, rows)
