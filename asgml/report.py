"""Result tables and training curves of a run or multirun directory.

``python -m asgml.report <multirun_dir> [--group-by KEY ...] [--with-shapley]
[--reference METHOD] [--metric test/acc] [--out DIR] [--no-plots]`` collects every job's
``metrics.json`` (recursively), prints a table with one row per group (method by default) and
mean ± std over seeds, and writes into the multirun directory (or ``--out``):

* ``report.md`` (the table and a note explaining it), ``report.tex`` (the same table as a
  LaTeX ``tabular`` with ``booktabs`` rules: ``\\usepackage{booktabs}``, then
  ``\\input{report.tex}``), ``report.csv`` (the numbers as fractions: ``<metric>_mean``,
  ``<metric>_std``, ``<metric>_n``, ``n``, the test of each row: ``sig_test``, ``sig_p``, ...)
  and ``runs.csv`` (one row per job);
* figures, each as PNG and PDF at 300 dpi: ``val_acc`` (fused and unimodal validation
  accuracy per epoch), ``probe_acc`` (per-modality probe accuracy over steps), ``boost_scale``
  and ``ogm_coeff``, read from each job's ``csv/metrics.csv``. A figure whose columns no job
  logged is skipped with a note.

**Table.** Cells are mean ± sample std (``ddof=1``) over the runs of a group in % (pp for
differences); the std is left out when a cell has one value. Every cell knows its own ``n``
(the runs that logged that column): a cell computed from fewer runs than its row's ``Seeds``
shows ``(n=k)`` and the report logs a warning naming the column (e.g. ``--with-shapley`` where
only some runs have an ``eval.json``). Each column has a kind (:class:`Column`): only
``score`` columns (fused accuracy, macro-F1), where higher is better, bold their best mean;
unimodal accuracies, Shapley values and imbalance measures are never bold.

**Imbalance.** ``Acc gap (pp)``: per run, the unimodal test accuracy of the strongest minus
that of the weakest modality, then mean ± std over the group. With ``--with-shapley`` also
``Min Shapley share (%)``: per run, the smallest modality Shapley value divided by their sum
(50 % for two perfectly balanced modalities, ``100 / N`` for N).

**Significance.** A column ``p vs <reference>`` tests ``--metric`` (default ``test/acc``) of
each row against the reference method's row (``--reference baseline``; ``none`` turns it off;
with several group keys the reference row is the one with equal non-``method.*`` keys, e.g.
the same dataset). Where the two rows share at least two seeds it is a paired t-test over the
shared seeds (``scipy.stats.ttest_rel``), otherwise Welch's t-test over all runs
(``scipy.stats.ttest_ind(equal_var=False)``); each cell states the test and its n. Two-sided,
no correction for multiple comparisons.

**Reference column.** A preset may carry the published numbers it reproduces (key
``reference`` of ``conf/experiment/*.yaml``: ``source``, ``metric`` and ``results: {method:
{mean, std}}`` in %). The table then shows, beside the measured mean ± std of that metric, a
``Paper`` column and ``Δ (std)``: the difference measured - paper in units of the pooled
std, ``sqrt((s_measured² + s_paper²) / 2)`` (only ``s_measured`` when the paper gives no
std). Rows whose difference exceeds 2 pooled std are flagged ``⚠``.

**Figures.** One line per group: the mean over its runs, with a ±1 std band only where at
least 3 runs contribute, clipped to the quantity's range (accuracies [0, 100] %, OGM-GE
coefficients [0, 1], boost scales [1, ``scale_max``]). Boost scales are constant between probe
measurements and are drawn as steps (``drawstyle="steps-post"``); the OGM-GE coefficient
changes every step and is drawn through its logged samples. The panels of a figure share
their y axis; accuracy panels show the chance level ``100 / num_classes``; legend labels give
each group's n; one legend per figure. A method has the same colour in every figure and every
report (:func:`method_colors`).

**Python API** (every step is a function of data frames, so ``notebooks/analysis.ipynb`` and
callbacks can reuse it)::

    runs = collect(runs_dir)                       # DataFrame, one row per job
    tbl = table(runs, group_by=None, with_shapley=False, reference="baseline",
                metric="test/acc")                 # ReportTable
    tbl.markdown(); tbl.latex(); tbl.frame()       # text / plain-cell DataFrame
    files = write_outputs(out_dir, tbl, runs)      # [report.md, report.csv, report.tex, runs.csv]
    figs = plot(runs, out_dir, group_by=None)      # [val_acc.png, val_acc.pdf, ...]
    write_report(runs_dir, out_dir)                # all of the above (the CLI)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files as package_files
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import yaml
from scipy import stats
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
    terminal and there are at least :data:`PROGRESS_MIN_RUNS` items."""
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
    derived :func:`add_imbalance` columns. ``progress``: a progress bar on stderr (``None``:
    on a terminal from :data:`PROGRESS_MIN_RUNS` runs on)."""
    dirs = find_run_dirs(root)
    if not dirs:
        raise FileNotFoundError(f"no metrics.json under {root}")
    rows = [load_run(d) for d in _progress(dirs, "collecting runs", progress)]
    return add_imbalance(pd.DataFrame(rows))


def collect(runs_dir: str | Path, progress: bool | None = None) -> pd.DataFrame:
    """The runs of a run or multirun directory (:func:`load_runs`): the report's first step."""
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


# --------------------------------------------------------------------------- tables
# column kinds: which way is better decides whether the best mean is bold
COLUMN_KINDS: dict[str, str] = {
    "score": "fused test accuracy / macro-F1: higher is better, best mean in bold",
    "unimodal": "one modality's test accuracy: a diagnostic, never bold",
    "shapley": "a modality's Shapley value: a share of the fused accuracy, never bold",
    "imbalance": "a gap or share between modalities: neither direction is better, never bold",
}
HIGHER_IS_BETTER = frozenset({"score"})


@dataclass(frozen=True)
class Column:
    """One value column of the table.

    Args:
        key: the column of the runs frame (``test/acc``, ``eval/shapley_audio``, ...).
        header: the table header, unit included (``Acc (%)``, ``Shapley audio (pp)``).
        kind: one of :data:`COLUMN_KINDS`; only :data:`HIGHER_IS_BETTER` kinds are bold.
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


def _check_keys(runs: pd.DataFrame, keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in runs.columns]
    if missing:
        known = sorted(c for c in runs.columns if "/" not in c)
        raise KeyError(f"unknown group key(s) {missing}; config keys of these runs: {known}")


def _grouped(runs: pd.DataFrame, group_by: Sequence[str]) -> Any:
    """``runs`` grouped by printable values of ``group_by`` in first-seen order (the order of
    :func:`summarize`'s rows)."""
    _check_keys(runs, group_by)
    keyed = runs.copy()
    for k in group_by:  # group on printable values (lists/None stay groupable)
        keyed[k] = keyed[k].map(lambda v: "null" if v is None else v)
    return keyed.groupby(list(group_by), sort=False, dropna=False)


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
    """Headers, rows of :class:`Cell` and warnings of a :func:`summarize` output.

    Values are multiplied by ``scale`` (percent). A ``score`` column's highest mean is bold.
    A cell from fewer runs than its row's ``Seeds`` shows ``(n=k)``, and each such column
    gives one warning. With ``reference_metric`` (and :func:`add_reference` columns)
    ``Paper (%)`` and ``Δ (std)`` follow that metric's column; with ``significance`` (the
    header of :func:`add_significance` columns) a p-value column precedes ``Seeds``.
    """
    headers = [k.split(".")[0] if k.endswith(".name") else k for k in group_by]
    for col in columns:
        headers.append(col.header)
        if col.key == reference_metric:
            headers += ["Paper (%)", "Δ (std)"]
    if significance is not None:
        headers.append(significance)
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
            cells.append(Cell(_significance_cell(row)))
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
    """A Markdown table of :func:`summarize` output (see :func:`table_cells`)."""
    headers, rows, _ = table_cells(summary, group_by, columns, scale, digits, reference_metric)
    return markdown_table(headers, rows)


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
    """Attach the preset's reference numbers to :func:`summarize` output.

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


# ------------------------------------------------------------------------ significance
@dataclass(frozen=True)
class SignificanceResult:
    """A two-sided t-test of one row against the reference row.

    Args:
        test: ``"paired t"`` (``scipy.stats.ttest_rel`` over shared seeds) or ``"Welch t"``
            (``scipy.stats.ttest_ind(equal_var=False)`` over all runs).
        statistic: the t statistic (row minus reference).
        p: the two-sided p-value.
        n: the number of pairs (paired) or ``(n_row, n_reference)`` (Welch).
    """

    test: str
    statistic: float
    p: float
    n: int | tuple[int, int]


def compare(values: pd.Series, reference: pd.Series) -> SignificanceResult | None:
    """Test ``values`` against ``reference`` (both indexed by seed; NaN dropped).

    Paired t-test over the seeds both have when there are at least two and neither repeats
    a seed; otherwise Welch's t-test, which needs two values on each side. Returns ``None``
    when neither applies or scipy's result is not finite (no spread: identical values, or
    paired differences that are all equal, where the t statistic is undefined).
    """
    a = pd.to_numeric(values, errors="coerce").dropna()
    b = pd.to_numeric(reference, errors="coerce").dropna()
    shared = [s for s in a.index if s in set(b.index)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate inputs: judged by the finite check below
        if len(shared) >= 2 and a.index.is_unique and b.index.is_unique:
            res = stats.ttest_rel(a.loc[shared].to_numpy(), b.loc[shared].to_numpy())
            out = SignificanceResult(
                "paired t", float(res.statistic), float(res.pvalue), len(shared)
            )
        elif len(a) >= 2 and len(b) >= 2:
            res = stats.ttest_ind(a.to_numpy(), b.to_numpy(), equal_var=False)
            out = SignificanceResult(
                "Welch t", float(res.statistic), float(res.pvalue), (len(a), len(b))
            )
        else:
            return None
    return out if math.isfinite(out.p) and math.isfinite(out.statistic) else None


def _scope(row: Mapping[str, Any], group_by: Sequence[str]) -> tuple[str, ...]:
    """The non-``method.*`` group keys of a row: where a reference row must agree."""
    return tuple(str(row[k]) for k in group_by if not k.startswith("method."))


def add_significance(
    summary: pd.DataFrame,
    runs: pd.DataFrame,
    group_by: Sequence[str],
    reference: str,
    metric: str = "test/acc",
) -> pd.DataFrame:
    """Columns ``sig_test``, ``sig_p``, ``sig_t`` and ``sig_n`` of :func:`compare` for each
    row of :func:`summarize` output against the row of ``method.name == reference`` with the
    same non-``method.*`` group keys (``sig_test`` ``"reference"`` on that row; empty where
    there is no such single row or no test applies).

    Raises:
        KeyError: when ``metric`` or ``method.name`` is not a column of ``runs``, or no run
            has ``method.name == reference``.
    """
    for key in (metric, "method.name"):
        if key not in runs.columns:
            raise KeyError(f"significance: runs have no column {key!r}")
    if reference not in set(runs["method.name"].astype(str)):
        known = sorted(set(runs["method.name"].astype(str)))
        raise KeyError(f"--reference {reference!r}: no run of that method; methods: {known}")
    groups = [g for _, g in _grouped(runs, group_by)]
    if len(groups) != len(summary):
        raise ValueError("summary does not match runs grouped by group_by")
    scopes = [_scope(row, group_by) for _, row in summary.iterrows()]
    ref_rows: dict[tuple[str, ...], list[int]] = {}
    for i, g in enumerate(groups):
        if (g["method.name"].astype(str) == reference).all():
            ref_rows.setdefault(scopes[i], []).append(i)

    def by_seed(i: int) -> pd.Series:
        g = groups[i]
        # without seeds no run pairs with another: Welch's test
        index = g["seed"] if "seed" in g.columns else [f"{i}:{j}" for j in range(len(g))]
        return pd.Series(pd.to_numeric(g[metric], errors="coerce").to_numpy(), index=index)

    tests, ps, ts, ns = [], [], [], []
    for i in range(len(groups)):
        refs = ref_rows.get(scopes[i], [])
        res = None
        if i in refs:
            tests.append("reference")
        elif len(refs) != 1:
            tests.append("")
        else:
            res = compare(by_seed(i), by_seed(refs[0]))
            tests.append(res.test if res else "")
        ps.append(res.p if res else math.nan)
        ts.append(res.statistic if res else math.nan)
        ns.append(json.dumps(res.n) if res else "")
    out = summary.copy()
    out["sig_test"], out["sig_p"], out["sig_t"], out["sig_n"] = tests, ps, ts, ns
    return out


def format_p(p: float) -> str:
    """``0.034``, ``0.21``, ``<0.001``."""
    return "<0.001" if p < 0.001 else f"{p:.2g}" if p >= 0.1 else f"{p:.3f}"


def _significance_cell(row: Mapping[str, Any]) -> str:
    test = row.get("sig_test")
    if test == "reference":
        return "reference"
    p = row.get("sig_p")
    if not test or p is None or pd.isna(p):
        return "–"
    n = json.loads(row["sig_n"])
    size = f"n={n}" if isinstance(n, int) else f"n={n[0]} vs {n[1]}"
    return f"{format_p(float(p))} ({test}, {size})"


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


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


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


def make_figures(
    runs: pd.DataFrame, curves: Mapping[str, pd.DataFrame], group_by: Sequence[str]
) -> dict[str, Any]:
    """``{stem: figure or None}`` for every standard figure (None: nothing logged for it)."""
    specs = figure_specs(modalities(runs), _unique_number(runs, "method.boost.scale_max", "max"))
    num_classes = _unique_number(runs, "dataset.num_classes")
    return {
        stem: plot_curves(runs, curves, group_by, spec, int(num_classes) if num_classes else None)
        for stem, spec in specs.items()
    }


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


# ----------------------------------------------------------------------------- report
@dataclass
class ReportTable:
    """The report's table and everything needed to write it (:func:`table`).

    Args:
        headers: column headers (units included).
        rows: one list of :class:`Cell` per group.
        summary: the numbers (:func:`summarize`, :func:`add_reference` and
            :func:`add_significance` columns), fractions.
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
    """The report table of ``runs`` (:func:`collect`).

    Args:
        runs: one row per job.
        group_by: dotted config keys (default :func:`default_group_by`).
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
            "paired t (scipy.stats.ttest_rel) over shared seeds when >= 2 are shared, "
            "otherwise Welch t (scipy.stats.ttest_ind, equal_var=False); "
            "no multiple-comparison correction."
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
) -> dict[str, Any]:
    """Collect ``root``, write the table files and figures to ``out_dir`` (default ``root``).

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
        figures, skipped = _save_figures(make_figures(runs, curves, tbl.group_by), out)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m asgml.report",
        description="Table (mean ± std over seeds, significance against a reference method) "
        "and figures of a run/multirun directory: report.md/.csv/.tex, PNG and PDF figures.",
    )
    p.add_argument("run_dir", help="a run or multirun directory (searched recursively)")
    p.add_argument(
        "--group-by",
        nargs="+",
        default=None,
        metavar="KEY",
        help="dotted config key(s) to group by, e.g. method.name dataset.name "
        "method.boost.alpha (default: method.name plus the swept keys that vary)",
    )
    p.add_argument("--with-shapley", action="store_true", help="add Shapley columns from eval.json")
    p.add_argument(
        "--reference",
        default="baseline",
        metavar="METHOD",
        help="method every row is t-tested against (default: baseline; 'none': no test)",
    )
    p.add_argument(
        "--metric", default="test/acc", help="metric of the significance test (default test/acc)"
    )
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--out", default=None, help="output folder (default: run_dir)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    matplotlib.use("Agg")  # files only, no display needed
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    rep = write_report(
        args.run_dir,
        args.out,
        args.group_by,
        args.with_shapley,
        plots=not args.no_plots,
        reference=None if args.reference.lower() == "none" else args.reference,
        metric=args.metric,
    )
    print(rep["table"])
    print()
    print(rep["note"])
    for s in rep["skipped"]:
        print(f"note: {s}")
    print("wrote " + ", ".join(str(f) for f in rep["files"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
