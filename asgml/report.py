"""Result tables and training curves of a run or multirun directory.

``python -m asgml.report <multirun_dir> [--group-by method.name method.boost.alpha]
[--with-shapley] [--out DIR]`` collects every job's ``metrics.json`` (recursively), prints
a Markdown table with one row per group (method by default) and mean ± std over seeds,
and writes into the multirun directory (or ``--out``):

* ``report.md``: the table; ``report.csv``: the same numbers (fractions, ``<metric>_mean``,
  ``<metric>_std``, ``n``); ``runs.csv``: one row per job;
* ``val_acc.png`` (fused and unimodal validation accuracy per epoch), ``probe_acc.png``
  (per-modality probe accuracy over steps), ``boost_scale.png`` and ``ogm_coeff.png``:
  one line per group, the mean over seeds with a ±1 std band, read from each job's
  ``csv/metrics.csv``. A plot whose columns no job logged is skipped with a note.

The std is the sample standard deviation (``ddof=1``) over the runs of a group (normally
its seeds); with one run it is left blank. The best mean of each column is in bold.

**Reference column.** A preset may carry the published numbers it reproduces (key
``reference`` of ``conf/experiment/*.yaml``: ``source``, ``metric`` and ``results: {method:
{mean, std}}`` in %). The table then shows, beside the measured mean ± std of that metric, a
``Paper`` column and ``Δ (std)``: the difference measured - paper in units of the pooled
std, ``sqrt((s_measured² + s_paper²) / 2)`` (only ``s_measured`` when the paper gives no
std). Rows whose difference exceeds 2 pooled std are flagged ``⚠``.

Every step is a pure function of data frames so ``notebooks/analysis.ipynb`` can reuse it.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

DEFAULT_GROUP_BY = ("method.name",)
# keys never used as automatic group keys (they vary within a group by design)
_NOT_GROUP_KEYS = {"seed", "ckpt_path", "data_dir", "paths.output_dir", "paths.log_dir"}

# (column prefix in runs frame, header) in table order; modalities are appended
_PER_STEP_PLOTS = {
    "probe_acc": ("probe/acc_{m}", "probe accuracy"),
    "boost_scale": ("boost/scale_{m}", "boost scale"),
    "ogm_coeff": ("ogm/coeff_{m}", "OGM-GE coefficient"),
}


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


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """One job as a flat dict: config keys (dotted), ``test/...`` metrics, eval results."""
    run_dir = Path(run_dir)
    data = json.loads((run_dir / "metrics.json").read_text())
    row: dict[str, Any] = _flatten(data.get("config") or {})
    row.update({k: v for k, v in (data.get("metrics") or {}).items()})
    row["val_acc_best"] = data.get("val_acc_best")
    row["skipped_nonfinite_steps"] = data.get("skipped_nonfinite_steps")
    row["best_checkpoint"] = data.get("best_checkpoint")
    eval_path = run_dir / "eval.json"
    if eval_path.exists():
        ev = json.loads(eval_path.read_text())
        row.update({f"eval/{k}": v for k, v in (ev.get("metrics") or {}).items()})
        row.update({f"eval/shapley_{m}": v for m, v in (ev.get("shapley") or {}).items()})
    row["overrides"] = json.dumps(read_overrides(run_dir))
    row["run_dir"] = str(run_dir)
    return row


def load_runs(root: str | Path) -> pd.DataFrame:
    """Every job under ``root`` (a run or multirun directory), one row each."""
    dirs = find_run_dirs(root)
    if not dirs:
        raise FileNotFoundError(f"no metrics.json under {root}")
    return pd.DataFrame([load_run(d) for d in dirs])


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
def metric_columns(runs: pd.DataFrame, with_shapley: bool = False) -> list[tuple[str, str]]:
    """``(column, header)`` of the table: test acc, macro-F1, unimodal accs (+ Shapley)."""
    cols = [("test/acc", "Acc"), ("test/f1", "Macro-F1")]
    mods = modalities(runs)
    cols += [(f"test/acc_{m}", f"Acc {m}") for m in mods]
    if with_shapley:
        cols += [(f"eval/shapley_{m}", f"Shapley {m} (pp)") for m in mods]
    return [(c, h) for c, h in cols if c in runs.columns]


def _check_keys(runs: pd.DataFrame, keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in runs.columns]
    if missing:
        known = sorted(c for c in runs.columns if "/" not in c)
        raise KeyError(f"unknown group key(s) {missing}; config keys of these runs: {known}")


def summarize(runs: pd.DataFrame, group_by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and count of ``columns`` per group, in first-seen order.

    Returns one row per group with the group keys as columns, then ``<col>_mean``,
    ``<col>_std`` for each column and ``n`` (runs in the group).
    """
    _check_keys(runs, group_by)
    keyed = runs.copy()
    for k in group_by:  # group on printable values (lists/None stay groupable)
        keyed[k] = keyed[k].map(lambda v: "null" if v is None else v)
    grouped = keyed.groupby(list(group_by), sort=False, dropna=False)
    numeric = keyed[list(columns)].apply(pd.to_numeric, errors="coerce")
    numeric[list(group_by)] = keyed[list(group_by)]
    g = numeric.groupby(list(group_by), sort=False, dropna=False)
    out = pd.concat(
        [
            g[list(columns)].mean().add_suffix("_mean"),
            g[list(columns)].std(ddof=1).add_suffix("_std"),
        ],
        axis=1,
    )
    out["n"] = grouped.size()
    ordered = [f"{c}_{s}" for c in columns for s in ("mean", "std")] + ["n"]
    return out[ordered].reset_index()


def _fmt(mean: float, std: float, n: int, scale: float, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{scale * mean:.{digits}f}"
    if n > 1 and std is not None and not math.isnan(std):
        text += f" ± {scale * std:.{digits}f}"
    return text


def format_table(
    summary: pd.DataFrame,
    group_by: Sequence[str],
    columns: Sequence[tuple[str, str]],
    scale: float = 100.0,
    digits: int = 2,
    reference_metric: str | None = None,
) -> str:
    """A Markdown table of :func:`summarize` output (values x ``scale``: percent), the best
    (highest) mean of each column in bold, one row per group. With ``reference_metric``
    (and :func:`add_reference` columns in ``summary``), ``Paper (%)`` and ``Δ (std)``
    columns follow that metric's column."""
    headers = [k.split(".")[0] if k.endswith(".name") else k for k in group_by]
    for col, h in columns:
        headers.append(f"{h} (%)" if not h.endswith(")") else h)
        if col == reference_metric:
            headers += ["Paper (%)", "Δ (std)"]
    headers += ["Seeds"]
    best = {}
    for col, _ in columns:
        means = pd.to_numeric(summary[f"{col}_mean"], errors="coerce")
        best[col] = means.max() if means.notna().any() else None
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for _, row in summary.iterrows():
        # a key some runs' configs lack (e.g. method.modality of method=unimodal) reads -
        cells = ["–" if _is_nan(row[k]) else str(row[k]) for k in group_by]
        for col, _ in columns:
            mean, std = row[f"{col}_mean"], row[f"{col}_std"]
            text = _fmt(mean, std, int(row["n"]), scale, digits)
            if best[col] is not None and not pd.isna(mean) and math.isclose(mean, best[col]):
                text = f"**{text}**"
            cells.append(text)
            if col == reference_metric:
                cells += _reference_cells(row, scale, digits)
        cells.append(str(int(row["n"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


# --------------------------------------------------------------------------- curves
def load_curves(run_dirs: Iterable[str | Path]) -> dict[str, pd.DataFrame]:
    """``{run_dir: csv/metrics.csv}`` for every run that has the CSV log."""
    curves = {}
    for d in run_dirs:
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


def plot_curves(
    runs: pd.DataFrame,
    curves: Mapping[str, pd.DataFrame],
    group_by: Sequence[str],
    panels: Sequence[tuple[str, str]],
    x: str,
    ylabel: str,
    title: str,
) -> Any:
    """A row of panels (``(column, panel title)``), one line per group with a ±1 std band.

    Returns the matplotlib figure, or ``None`` when no run logged any panel's column.
    """
    import matplotlib.pyplot as plt

    stats = [(col, name, curve_stats(runs, curves, group_by, col, x)) for col, name in panels]
    stats = [s for s in stats if s[2]]
    if not stats:
        return None
    fig, axes = plt.subplots(1, len(stats), figsize=(4.5 * len(stats), 3.4), squeeze=False)
    for ax, (_, name, per_group) in zip(axes[0], stats):
        for label, st in per_group.items():
            marker = "o" if len(st) <= 25 else None  # short curves: show the points
            (line,) = ax.plot(st.index, st["mean"], label=label, marker=marker, markersize=3)
            band = st["std"].fillna(0.0)
            ax.fill_between(
                st.index, st["mean"] - band, st["mean"] + band, alpha=0.2, color=line.get_color()
            )
        ax.set_title(name)
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_specs(mods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The standard plots: file stem -> panels, x axis, labels."""
    specs: dict[str, dict[str, Any]] = {
        "val_acc": {
            "panels": [("val/acc", "fused")] + [(f"val/acc_{m}", m) for m in mods],
            "x": "epoch",
            "ylabel": "validation accuracy",
            "title": "Validation accuracy per epoch (fused, unimodal)",
        }
    }
    for stem, (pattern, ylabel) in _PER_STEP_PLOTS.items():
        specs[stem] = {
            "panels": [(pattern.format(m=m), m) for m in mods],
            "x": "step",
            "ylabel": ylabel,
            "title": f"{ylabel[0].upper()}{ylabel[1:]} over training steps",
        }
    return specs


def make_figures(
    runs: pd.DataFrame, curves: Mapping[str, pd.DataFrame], group_by: Sequence[str]
) -> dict[str, Any]:
    """``{stem: figure or None}`` for every standard plot (None: nothing logged for it)."""
    mods = modalities(runs)
    return {
        stem: plot_curves(runs, curves, group_by, s["panels"], s["x"], s["ylabel"], s["title"])
        for stem, s in figure_specs(mods).items()
    }


# ----------------------------------------------------------------------------- CLI
def write_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    group_by: Sequence[str] | None = None,
    with_shapley: bool = False,
    plots: bool = True,
) -> dict[str, Any]:
    """Load ``root``, write table/CSV/plots to ``out_dir`` (default ``root``).

    Returns ``{"table": markdown, "summary": frame, "runs": frame, "files": [paths],
    "skipped": [notes]}``.
    """
    runs = load_runs(root)
    keys = list(group_by) if group_by else default_group_by(runs)
    _check_keys(runs, keys)
    cols = metric_columns(runs, with_shapley)
    if with_shapley and not any(c.startswith("eval/shapley_") for c, _ in cols):
        print("note: --with-shapley: no eval.json found (run `python -m asgml.eval`)")
    summary = summarize(runs, keys, [c for c, _ in cols])
    summary, ref_metric, ref_source = add_reference(summary, runs, keys)
    table = format_table(summary, keys, cols, reference_metric=ref_metric)
    out = Path(out_dir) if out_dir else Path(root)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.md", out / "report.csv", out / "runs.csv"]
    note = (
        f"Mean ± sample std (ddof=1) over runs (seeds), in %; best mean per column in bold. "
        f"{len(runs)} runs from `{root}`."
    )
    if ref_metric is not None:
        flagged = int(summary["paper_flag"].sum())
        note += (
            f"\nPaper: {ref_source}. Δ (std) = (measured - paper) / pooled std "
            f"sqrt((s_measured² + s_paper²) / 2); ⚠: |Δ| > {REFERENCE_FLAG_STD:g} "
            f"({flagged} row{'s' if flagged != 1 else ''})."
        )
    files[0].write_text(table + "\n\n" + note + "\n")
    summary.to_csv(files[1], index=False)
    keep = ["run_dir", *keys, "seed", *(c for c, _ in cols), "val_acc_best"]
    runs[[c for c in dict.fromkeys(keep) if c in runs.columns]].to_csv(files[2], index=False)
    skipped = []
    if plots:
        import matplotlib.pyplot as plt

        curves = load_curves(runs["run_dir"])
        for stem, fig in make_figures(runs, curves, keys).items():
            if fig is None:
                skipped.append(f"{stem}.png skipped: no run logged its columns")
                continue
            fig.savefig(out / f"{stem}.png", dpi=120)
            plt.close(fig)
            files.append(out / f"{stem}.png")
    return {
        "table": table,
        "note": note,
        "summary": summary,
        "runs": runs,
        "files": files,
        "skipped": skipped,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m asgml.report",
        description="Table (mean ± std over seeds) and curves of a run/multirun directory.",
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
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--out", default=None, help="output folder (default: run_dir)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    args = build_parser().parse_args(argv)
    rep = write_report(
        args.run_dir, args.out, args.group_by, args.with_shapley, plots=not args.no_plots
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
