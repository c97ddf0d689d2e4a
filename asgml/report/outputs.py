"""The report as data (`ReportTable`) and the files it writes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from asgml.report import diagnostics as _diagnostics  # noqa: F401  (registers its figures)
from asgml.report.collect import _check_keys, collect, default_group_by
from asgml.report.figures import load_curves, make_figures, save_figures
from asgml.report.reference import REFERENCE_FLAG_STD, add_reference
from asgml.report.significance import MIN_TEST_N, add_significance
from asgml.report.tables import (
    Cell,
    Column,
    latex_table,
    markdown_table,
    metric_columns,
    summarize,
    table_cells,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- report
@dataclass
class ReportTable:
    """The report's table and everything needed to write it (`table`).

    Args:
        headers: column headers (units included).
        rows: one list of `Cell` per group.
        summary: the numbers (`summarize`, `add_reference` and
            `add_significance` columns), fractions.
        group_by: the group keys (the first columns).
        columns: the value columns.
        note: what the table shows (mean ± std, tests, paper), as Markdown text.
        warnings: cells computed from fewer runs than their row has (also logged).
    """

    headers: list[str]
    rows: list[list[Cell]]
    summary: pd.DataFrame
    group_by: list[str]
    columns: list[Column]
    note: str
    warnings: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The table in Markdown, bold as ``**...**``."""
        return markdown_table(self.headers, self.rows)

    def latex(self) -> str:
        """The table as a booktabs ``tabular``."""
        return latex_table(self.headers, self.rows, n_label_columns=len(self.group_by))

    def frame(self) -> pd.DataFrame:
        """The displayed cells as plain text (e.g. for a ``wandb.Table``)."""
        return pd.DataFrame([[c.text for c in r] for r in self.rows], columns=self.headers)


def table(
    runs: pd.DataFrame,
    group_by: Sequence[str] | None = None,
    with_shapley: bool = False,
    reference: str | None = "baseline",
    metric: str = "test/acc",
    source: str | None = None,
) -> ReportTable:
    """The report table of ``runs`` (`collect`).

    Args:
        runs: one row per job.
        group_by: dotted config keys (default `default_group_by`).
        with_shapley: add Shapley columns (from each run's ``eval.json``).
        reference: the method each row is tested against (``None``: no test; a method no
            run has: no test, logged).
        metric: the column the test compares.
        source: where the runs came from, for the note.
    """
    keys = list(group_by) if group_by else default_group_by(runs)
    _check_keys(runs, keys)
    cols = metric_columns(runs, with_shapley)
    found: list[str] = []
    if with_shapley and not any(c.kind == "shapley" for c in cols):
        found.append("--with-shapley: no eval.json found (run `python -m asgml.eval`)")
    summary = summarize(runs, keys, [c.key for c in cols])
    summary, ref_metric, ref_source = add_reference(summary, runs, keys)
    sig_header = None
    if reference is not None:
        methods = set(runs["method.name"].astype(str)) if "method.name" in runs else set()
        if metric not in runs.columns or runs[metric].isna().all():
            found.append(f"no significance column: no run logged {metric}")
        elif reference not in methods:
            found.append(f"no significance column: no run of method {reference!r}")
        else:
            summary = add_significance(summary, runs, keys, reference, metric)
            name = next((c.header for c in cols if c.key == metric), metric)
            sig_header = f"p vs {reference} ({name.removesuffix(' (%)')})"
    headers, rows, short = table_cells(
        summary, keys, cols, reference_metric=ref_metric, significance=sig_header
    )
    for w in found + short:
        log.warning("report: %s", w)
    note = (
        "Mean ± sample std (ddof=1) over runs (seeds), in % (pp: percentage points); "
        "best mean in bold only where higher is better (Acc, Macro-F1). "
        "Seeds: runs per row; a cell from fewer runs shows (n=k)."
    )
    if any(c.key == "imbalance/acc_gap" for c in cols):
        note += "\nAcc gap: strongest minus weakest unimodal accuracy, per run."
    if any(c.key == "imbalance/shapley_min_share" for c in cols):
        note += "\nMin Shapley share: smallest modality Shapley value / their sum, per run."
    if sig_header is not None:
        note += (
            f"\n{sig_header}: two-sided t-test of {metric} against the {reference} row; "
            f"paired t (scipy.stats.ttest_rel) over shared seeds when >= {MIN_TEST_N} are "
            "shared, otherwise Welch t (scipy.stats.ttest_ind, equal_var=False); no test "
            f"with fewer than {MIN_TEST_N} values a side (the cell says n). "
            "Holm p: Holm-adjusted over the rows tested against the same reference row. "
            "Δ: row - reference with its 95 % t interval (pp). "
            "Effect size: Cohen's d_z (paired: mean / std of the differences) "
            "or d (Welch: difference / pooled std)."
        )
    if ref_metric is not None:
        flagged = int(summary["paper_flag"].sum())
        note += (
            f"\nPaper: {ref_source}. Δ (std) = (measured - paper) / pooled std "
            f"sqrt((s_measured² + s_paper²) / 2); ⚠: |Δ| > {REFERENCE_FLAG_STD:g} "
            f"({flagged} row{'s' if flagged != 1 else ''})."
        )
    note += f"\n{len(runs)} runs" + (f" from `{source}`." if source else ".")
    return ReportTable(headers, rows, summary, keys, cols, note, found + short)


def write_outputs(
    out_dir: str | Path, tbl: ReportTable, runs: pd.DataFrame | None = None
) -> list[Path]:
    """Write ``report.md`` (table + note), ``report.csv`` (the numbers), ``report.tex``
    (booktabs tabular) and, given ``runs``, ``runs.csv`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv, tex = out / "report.md", out / "report.csv", out / "report.tex"
    md.write_text(tbl.markdown() + "\n\n" + tbl.note + "\n")
    tbl.summary.to_csv(csv, index=False)
    comment = "\n".join("% " + line for line in tbl.note.splitlines())
    tex.write_text(comment + "\n" + tbl.latex() + "\n")
    written = [md, csv, tex]
    if runs is not None:
        keep = ["run_dir", *tbl.group_by, "seed", *(c.key for c in tbl.columns), "val_acc_best"]
        path = out / "runs.csv"
        runs[[c for c in dict.fromkeys(keep) if c in runs.columns]].to_csv(path, index=False)
        written.append(path)
    return written


def write_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    group_by: Sequence[str] | None = None,
    with_shapley: bool = False,
    plots: bool = True,
    reference: str | None = "baseline",
    metric: str = "test/acc",
    progress: bool | None = None,
    style: str = "paper",
) -> dict[str, Any]:
    """Collect ``root``, write the table files and figures to ``out_dir`` (default ``root``);
    ``style``: the figures' style (``paper`` or ``screen``, `STYLES`).

    Returns ``{"table": markdown, "latex": tabular, "note": text, "report": ReportTable,
    "summary": frame, "runs": frame, "files": [paths], "skipped": [notes],
    "warnings": [texts]}``.
    """
    runs = collect(root, progress)
    tbl = table(runs, group_by, with_shapley, reference, metric, source=str(root))
    out = Path(out_dir) if out_dir else Path(root)
    files = write_outputs(out, tbl, runs)
    skipped: list[str] = []
    if plots:
        curves = load_curves(runs["run_dir"], progress)
        figs = make_figures(runs, curves, tbl.group_by, metric, style)
        figures, skipped = save_figures(figs, out, style=style)
        files += figures
    return {
        "table": tbl.markdown(),
        "latex": tbl.latex(),
        "note": tbl.note,
        "report": tbl,
        "summary": tbl.summary,
        "runs": runs,
        "files": files,
        "skipped": skipped,
        "warnings": tbl.warnings,
    }
