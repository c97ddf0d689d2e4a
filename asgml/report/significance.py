"""Significance of each row against the reference method's row."""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from scipy import stats

from asgml.report.collect import _grouped

log = logging.getLogger(__name__)


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
