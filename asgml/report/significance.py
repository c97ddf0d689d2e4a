"""Significance of each row against the reference method's row.

Choices, each one stated in the report's note and in the docs (``docs/workflow.md``):

* **Test.** A two-sided t-test of the row's metric against the reference row's. Where the two
  rows share at least `MIN_TEST_N` seeds (and neither repeats a seed) it is the
  **paired** t-test over the shared seeds (``scipy.stats.ttest_rel``): the seed fixes the
  initialisation and the data order, so the per-seed differences remove that variance.
  Otherwise it is **Welch's** t-test over all runs (``scipy.stats.ttest_ind(equal_var=False)``),
  which does not assume equal variances.
* **No test below n = 3.** With two pairs the t distribution has one degree of freedom and the
  p-value is meaningless in practice (a 95 % interval of the mean spans +-12.7 standard
  errors); the cell then says why instead, e.g. ``n=2: no test (needs n >= 3)``.
* **95 % confidence interval** of the difference row - reference (``scipy.stats``'
  ``TtestResult.confidence_interval(0.95)``: Student t with ``n - 1`` degrees of freedom for
  the paired test, Welch-Satterthwaite degrees of freedom for Welch's); `t_interval`
  gives the same for one group's mean (the dot plot's error bars).
* **Effect size.** Paired: Cohen's ``d_z`` = mean of the differences / their sample std.
  Welch: Cohen's ``d`` = difference of the means / pooled sample std
  ``sqrt(((n1 - 1) s1² + (n2 - 1) s2²) / (n1 + n2 - 2))``.
* **Holm correction.** The rows tested against the same reference row (one family per
  reference row, e.g. per dataset) get Holm's step-down adjusted p-values (controls the
  family-wise error rate without assuming independence, uniformly more powerful than
  Bonferroni): sort the ``m`` p-values, ``p_(i) * (m - i + 1)`` made monotone and capped at 1.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from asgml.report.collect import _grouped

log = logging.getLogger(__name__)

# fewest values per side (pairs for the paired test) for a p-value
MIN_TEST_N = 3

# the confidence level of every interval of the report
CONFIDENCE = 0.95


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
        diff: the mean difference row - reference (paired: the mean of the differences).
        ci: the `CONFIDENCE` interval of ``diff`` (t distribution).
        effect: Cohen's ``d_z`` (paired) or ``d`` (Welch); NaN when the spread is zero.
        effect_name: ``"d_z"`` or ``"d"``.
    """

    test: str
    statistic: float
    p: float
    n: int | tuple[int, int]
    diff: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    effect: float = math.nan
    effect_name: str = ""


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The ``confidence`` interval of the mean of ``values`` (Student t, ``n - 1`` degrees of
    freedom, ``scipy.stats.t.interval``); ``(nan, nan)`` for fewer than two values."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float)
    if len(x) < 2:
        return (math.nan, math.nan)
    sem = float(x.std(ddof=1)) / math.sqrt(len(x))
    if sem == 0.0:
        return (float(x.mean()), float(x.mean()))
    low, high = stats.t.interval(confidence, len(x) - 1, loc=float(x.mean()), scale=sem)
    return (float(low), float(high))


def _sizes(values: pd.Series, reference: pd.Series) -> tuple[pd.Series, pd.Series, list[Any]]:
    a = pd.to_numeric(values, errors="coerce").dropna()
    b = pd.to_numeric(reference, errors="coerce").dropna()
    shared = [s for s in a.index if s in set(b.index)]
    return a, b, shared


def _paired(a: pd.Series, b: pd.Series, shared: list[Any]) -> bool:
    return len(shared) >= MIN_TEST_N and a.index.is_unique and b.index.is_unique


def untested_reason(values: pd.Series, reference: pd.Series) -> str:
    """Why `compare` gives no test for these values: ``"n=2: no test (needs n >= 3)"``
    (too few values), ``"no spread: t undefined"`` or ``""`` when a test applies."""
    a, b, shared = _sizes(values, reference)
    if _paired(a, b, shared) or (len(a) >= MIN_TEST_N and len(b) >= MIN_TEST_N):
        return "" if compare(values, reference) is not None else "no spread: t undefined"
    n = f"n={len(a)}" if len(a) == len(b) else f"n={len(a)} vs {len(b)}"
    return f"{n}: no test (needs n >= {MIN_TEST_N})"


def _cohen_d(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = len(a), len(b)
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    return (a.mean() - b.mean()) / pooled if pooled > 0 else math.nan


def compare(values: pd.Series, reference: pd.Series) -> SignificanceResult | None:
    """Test ``values`` against ``reference`` (both indexed by seed; NaN dropped).

    Paired t-test over the seeds both have when there are at least `MIN_TEST_N` and
    neither repeats a seed; otherwise Welch's t-test, which needs `MIN_TEST_N` values on
    each side. Returns ``None`` when neither applies (`untested_reason` says why) or
    scipy's result is not finite (no spread: identical values, or paired differences that are
    all equal, where the t statistic is undefined).
    """
    a, b, shared = _sizes(values, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate inputs: judged by the finite check below
        if _paired(a, b, shared):
            x, y = a.loc[shared].to_numpy(float), b.loc[shared].to_numpy(float)
            res = stats.ttest_rel(x, y)
            d = x - y
            sd = d.std(ddof=1)
            out_args = ("paired t", len(shared), float(d.mean()), "d_z")
            effect = float(d.mean() / sd) if sd > 0 else math.nan
        elif len(a) >= MIN_TEST_N and len(b) >= MIN_TEST_N:
            x, y = a.to_numpy(float), b.to_numpy(float)
            res = stats.ttest_ind(x, y, equal_var=False)
            out_args = ("Welch t", (len(a), len(b)), float(x.mean() - y.mean()), "d")
            effect = float(_cohen_d(x, y))
        else:
            return None
        if not (math.isfinite(res.pvalue) and math.isfinite(res.statistic)):
            return None
        ci = res.confidence_interval(CONFIDENCE)
    test, n, diff, effect_name = out_args
    return SignificanceResult(
        test,
        float(res.statistic),
        float(res.pvalue),
        n,
        diff,
        (float(ci.low), float(ci.high)),
        effect,
        effect_name,
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of one family, in the input order (NaN stays NaN
    and does not count towards the family size)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    idx = [i for i in np.argsort(p, kind="stable") if math.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def _scope(row: Mapping[str, Any], group_by: Sequence[str]) -> tuple[str, ...]:
    """The non-``method.*`` group keys of a row: where a reference row must agree."""
    return tuple(str(row[k]) for k in group_by if not k.startswith("method."))


SIGNIFICANCE_COLUMNS = (
    "sig_test",
    "sig_p",
    "sig_p_holm",
    "sig_t",
    "sig_n",
    "sig_diff",
    "sig_ci_low",
    "sig_ci_high",
    "sig_effect",
    "sig_effect_name",
    "sig_note",
)


def add_significance(
    summary: pd.DataFrame,
    runs: pd.DataFrame,
    group_by: Sequence[str],
    reference: str,
    metric: str = "test/acc",
) -> pd.DataFrame:
    """The `SIGNIFICANCE_COLUMNS` of `compare` for each row of `summarize`
    output against the row of ``method.name == reference`` with the same non-``method.*``
    group keys: ``sig_test`` (``"reference"`` on that row; empty where there is no such single
    row or no test applies), ``sig_p``, ``sig_p_holm`` (Holm over the rows tested against the
    same reference row), ``sig_t``, ``sig_n`` (JSON), ``sig_diff`` with its interval
    ``sig_ci_low``/``sig_ci_high`` (fractions), ``sig_effect`` (``sig_effect_name``: ``d_z`` or
    ``d``) and ``sig_note`` (why a row has no test, e.g. ``n=2: no test (needs n >= 3)``).

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

    cols: dict[str, list[Any]] = {c: [] for c in SIGNIFICANCE_COLUMNS}
    family: dict[int, list[int]] = {}  # reference row -> rows tested against it
    for i in range(len(groups)):
        refs = ref_rows.get(scopes[i], [])
        res, test, note = None, "", ""
        if i in refs:
            test = "reference"
        elif len(refs) == 1:
            res = compare(by_seed(i), by_seed(refs[0]))
            test = res.test if res else ""
            note = "" if res else untested_reason(by_seed(i), by_seed(refs[0]))
            if res:
                family.setdefault(refs[0], []).append(i)
        cols["sig_test"].append(test)
        cols["sig_note"].append(note)
        cols["sig_p"].append(res.p if res else math.nan)
        cols["sig_t"].append(res.statistic if res else math.nan)
        cols["sig_n"].append(json.dumps(res.n) if res else "")
        cols["sig_diff"].append(res.diff if res else math.nan)
        cols["sig_ci_low"].append(res.ci[0] if res else math.nan)
        cols["sig_ci_high"].append(res.ci[1] if res else math.nan)
        cols["sig_effect"].append(res.effect if res else math.nan)
        cols["sig_effect_name"].append(res.effect_name if res else "")
    cols["sig_p_holm"] = [math.nan] * len(groups)
    for members in family.values():
        for i, adjusted in zip(members, holm([cols["sig_p"][i] for i in members])):
            cols["sig_p_holm"][i] = adjusted
    out = summary.copy()
    for c in SIGNIFICANCE_COLUMNS:
        out[c] = cols[c]
    return out


def format_p(p: float) -> str:
    """``0.034``, ``0.21``, ``<0.001``."""
    return "<0.001" if p < 0.001 else f"{p:.2g}" if p >= 0.1 else f"{p:.3f}"


def significance_headers(header: str, unit: str = "pp") -> list[str]:
    """The table headers of the significance columns: ``header`` (the p-value), then
    ``Holm p``, ``Δ (95 % CI, pp)`` and ``Effect size``."""
    return [header, "Holm p", f"Δ ({round(100 * CONFIDENCE)} % CI, {unit})", "Effect size"]


def _significance_cells(row: Mapping[str, Any], scale: float = 100.0, digits: int = 2) -> list[str]:
    """The cells of `significance_headers` for one `add_significance` row."""
    test = row.get("sig_test")
    if test == "reference":
        return ["reference", "–", "–", "–"]
    p = row.get("sig_p")
    if not test or p is None or pd.isna(p):
        note = row.get("sig_note")
        return [note if isinstance(note, str) and note else "–", "–", "–", "–"]
    n = json.loads(row["sig_n"])
    size = f"n={n}" if isinstance(n, int) else f"n={n[0]} vs {n[1]}"
    holm_p = row.get("sig_p_holm")
    holm_cell = "–" if holm_p is None or pd.isna(holm_p) else format_p(float(holm_p))
    diff, low, high = (scale * float(row[k]) for k in ("sig_diff", "sig_ci_low", "sig_ci_high"))
    ci_cell = f"{diff:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
    effect = row.get("sig_effect")
    effect_cell = (
        "–" if effect is None or pd.isna(effect) else f"{row['sig_effect_name']} = {effect:.2f}"
    )
    return [f"{format_p(float(p))} ({test}, {size})", holm_cell, ci_cell, effect_cell]
