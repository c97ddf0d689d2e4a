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
  accuracy per epoch), ``probe_acc`` (per-modality probe accuracy over steps), ``boost_scale``,
  ``ogm_coeff``, ``modality_loss``, ``grad_norm`` and ``imbalance`` (unimodal validation
  accuracy gap per epoch), read from each job's ``csv/metrics.csv``; ``final_acc`` (one dot
  per seed and the mean with its 95 % t interval) and ``sweep_<key>`` for each numeric key the
  sweep varied (`swept_keys`). A figure whose columns no job logged is skipped with a
  note. ``--style paper`` (default: 3.5 / 7 in wide, 8-pt, legend below) or ``screen``; PDFs
  embed TrueType fonts (`STYLES`).
  Runs with ``diagnostics=probes|full`` add the ``diag_*`` figures of
  `asgml.report.diagnostics` (one panel per method, modalities as lines).

**Table.** Cells are mean ± sample std (``ddof=1``) over the runs of a group in % (pp for
differences); the std is left out when a cell has one value. Every cell knows its own ``n``
(the runs that logged that column): a cell computed from fewer runs than its row's ``Seeds``
shows ``(n=k)`` and the report logs a warning naming the column (e.g. ``--with-shapley`` where
only some runs have an ``eval.json``). Each column has a kind (`Column`): only
``score`` columns (fused accuracy, macro-F1), where higher is better, bold their best mean;
unimodal accuracies, Shapley values and imbalance measures are never bold.

**Imbalance.** ``Acc gap (pp)``: per run, the unimodal test accuracy of the strongest minus
that of the weakest modality, then mean ± std over the group. With ``--with-shapley`` also
``Min Shapley share (%)``: per run, the smallest modality Shapley value divided by their sum
(50 % for two perfectly balanced modalities, ``100 / N`` for N).

**Significance.** Columns ``p vs <reference>``, ``Holm p``, ``Δ (95 % CI, pp)`` and ``Effect
size`` test ``--metric`` (default ``test/acc``) of each row against the reference method's row
(``--reference baseline``; ``none`` turns it off; with several group keys the reference row is
the one with equal non-``method.*`` keys, e.g. the same dataset): a paired t-test over at least
3 shared seeds (``scipy.stats.ttest_rel``), otherwise Welch's t-test
(``scipy.stats.ttest_ind(equal_var=False)``) with at least 3 runs a side; below n = 3 the cell
says why there is no test. Holm's correction over the rows tested against one reference row,
the 95 % t interval of the difference, Cohen's ``d_z`` (paired) or ``d`` (Welch): see
`asgml.report.significance` for each choice.

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
report (`method_colors`).

**Python API** (every step is a function of data frames, so ``notebooks/analysis.ipynb`` and
callbacks can reuse it)::

    runs = collect(runs_dir)                       # DataFrame, one row per job
    tbl = table(runs, group_by=None, with_shapley=False, reference="baseline",
                metric="test/acc")                 # ReportTable
    tbl.markdown(); tbl.latex(); tbl.frame()       # text / plain-cell DataFrame
    files = write_outputs(out_dir, tbl, runs)      # [report.md, report.csv, report.tex, runs.csv]
    figs = plot(runs, out_dir, group_by=None)      # [val_acc.png, val_acc.pdf, ...]
    write_report(runs_dir, out_dir)                # all of the above (the CLI)


The package is split by concern: `collect` (runs to a data frame),
`tables` (cells, Markdown, LaTeX), `reference` (the
paper column), `significance`, `figures`,
`outputs` (the report as data and its files), `cli`
and `shapley`. It imports no training code.
"""

from __future__ import annotations

from asgml.report.cli import build_parser, main
from asgml.report.collect import (
    DEFAULT_GROUP_BY,
    PROGRESS_MIN_RUNS,
    add_imbalance,
    collect,
    default_group_by,
    find_run_dirs,
    load_run,
    load_runs,
    modalities,
    read_overrides,
)
from asgml.report.figures import (
    BAND_MIN_N,
    FIGURE_DPI,
    FIGURE_FORMATS,
    IMBALANCE_COLUMN,
    FigureSpec,
    add_curve_imbalance,
    curve_stats,
    figure_specs,
    load_curves,
    make_figures,
    plot,
    plot_curves,
    save_figures,
)
from asgml.report.final_plots import (
    plot_dots,
    plot_sweep,
    swept_keys,
)
from asgml.report.outputs import ReportTable, table, write_outputs, write_report
from asgml.report.reference import REFERENCE_FLAG_STD, add_reference, pooled_std
from asgml.report.significance import (
    CONFIDENCE,
    MIN_TEST_N,
    SignificanceResult,
    add_significance,
    compare,
    format_p,
    holm,
    t_interval,
    untested_reason,
)
from asgml.report.style import (
    COLUMN_WIDTH_IN,
    PAGE_WIDTH_IN,
    STYLES,
    figure_size,
    group_label,
    group_styles,
    known_methods,
    method_colors,
)
from asgml.report.tables import (
    COLUMN_KINDS,
    HIGHER_IS_BETTER,
    Cell,
    Column,
    format_table,
    latex_escape,
    latex_table,
    markdown_table,
    metric_columns,
    summarize,
    table_cells,
)

__all__ = [
    "swept_keys",
    "save_figures",
    "plot_sweep",
    "plot_dots",
    "figure_size",
    "add_curve_imbalance",
    "STYLES",
    "COLUMN_WIDTH_IN",
    "PAGE_WIDTH_IN",
    "IMBALANCE_COLUMN",
    "untested_reason",
    "t_interval",
    "holm",
    "MIN_TEST_N",
    "CONFIDENCE",
    "BAND_MIN_N",
    "COLUMN_KINDS",
    "Cell",
    "Column",
    "DEFAULT_GROUP_BY",
    "FIGURE_DPI",
    "FIGURE_FORMATS",
    "FigureSpec",
    "HIGHER_IS_BETTER",
    "PROGRESS_MIN_RUNS",
    "REFERENCE_FLAG_STD",
    "ReportTable",
    "SignificanceResult",
    "add_imbalance",
    "add_reference",
    "add_significance",
    "build_parser",
    "collect",
    "compare",
    "curve_stats",
    "default_group_by",
    "figure_specs",
    "find_run_dirs",
    "format_p",
    "format_table",
    "group_label",
    "group_styles",
    "known_methods",
    "latex_escape",
    "latex_table",
    "load_curves",
    "load_run",
    "load_runs",
    "main",
    "make_figures",
    "markdown_table",
    "method_colors",
    "metric_columns",
    "modalities",
    "plot",
    "plot_curves",
    "pooled_std",
    "read_overrides",
    "summarize",
    "table",
    "table_cells",
    "write_outputs",
    "write_report",
]
