"""asgml.report on hand-made run directories (no training).

The fake runs are written in the format training writes them: ``metrics.json`` with the
keys of :func:`asgml.run.training.run`, ``csv/metrics.csv`` as Lightning's CSVLogger writes it
(sorted columns, one row per log call, empty cells for the rest), ``eval.json`` as
:mod:`asgml.eval` writes it and Hydra's ``.hydra/overrides.yaml``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from PIL import Image
from scipy import stats

from asgml import report

matplotlib.use("Agg")

# boost/scale_visual per boost seed at steps 0, 20, 40: the std band leaves [1, scale_max]
_BOOST_SCALES = {0: (1.1, 1.0, 1.2), 1: (1.1, 1.0, 2.0), 2: (1.1, 1.9, 2.0)}


def _fake_run(
    root: Path,
    job: str,
    method: str,
    seed: int,
    acc: float,
    alpha: float = 0.5,
    dataset: str = "synthetic",
) -> Path:
    d = root / job
    (d / "csv").mkdir(parents=True)
    metrics = {
        "test/loss": 1.0,
        "test/acc": acc,
        "test/acc_audio": acc - 0.05,
        "test/acc_visual": acc - 0.2,
        "test/f1": acc - 0.1,
        "test/f1_audio": acc - 0.06,
        "test/f1_visual": acc - 0.21,
    }
    config = {
        "seed": seed,
        "dataset": {"name": dataset, "num_classes": 4},
        "method": {"name": method},
    }
    if method.startswith("boost"):
        config["method"]["boost"] = {"alpha": alpha, "scale_max": 2.0}
    (d / "metrics.json").write_text(
        json.dumps(
            {
                "metrics": metrics,
                "val_acc_best": acc,
                "optimized_metric": "val/acc_best",
                "optimized_value": acc,
                "best_checkpoint": "checkpoints/best.ckpt",
                "skipped_nonfinite_steps": 0,
                "config": config,
            },
            indent=2,
        )
    )
    rows = [
        {
            "epoch": e,
            "step": 10 * e + 9,
            "val/acc": acc * (e + 1) / 2,
            "val/acc_audio": 0.5,
            "val/acc_visual": 0.3,
        }
        for e in range(2)
    ]
    if method.startswith("boost"):
        rows += [
            {"step": s, "probe/acc_audio": 0.6, "probe/acc_visual": 0.3 + s / 100} for s in (0, 5)
        ]
        scales = _BOOST_SCALES.get(seed, (1.1, 1.2, 1.3))
        rows += [
            {"step": s, "boost/scale_audio": 1.0, "boost/scale_visual": v}
            for s, v in zip((0, 20, 40), scales)
        ]
    frame = pd.DataFrame(rows).sort_values("step", kind="stable")
    frame[sorted(frame.columns)].to_csv(d / "csv" / "metrics.csv", index=False)
    (d / ".hydra").mkdir()
    (d / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n- method={method}\n")
    return d


def _fake_eval(run_dir: Path, shapley: dict[str, float]) -> None:
    total = sum(shapley.values())
    (run_dir / "eval.json").write_text(
        json.dumps(
            {
                "metrics": {"acc": 0.6, "f1": 0.5},
                "subset_acc": {},
                "shapley": shapley,
                "shapley_share": {m: v / total for m, v in shapley.items()},
                "num_samples": 256,
            }
        )
    )


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    for i, (m, s, a) in enumerate(
        [
            ("baseline", 0, 0.60),
            ("baseline", 1, 0.62),
            ("boost", 0, 0.64),
            ("boost", 1, 0.70),
            ("boost", 2, 0.67),
        ]
    ):
        _fake_run(root, str(i), m, s, a)
    return root


def test_summary_mean_and_sample_std(multirun: Path) -> None:
    runs = report.load_runs(multirun)
    assert len(runs) == 5 and report.modalities(runs) == ["audio", "visual"]
    assert report.default_group_by(runs) == ["method.name"]
    s = report.summarize(runs, ["method.name"], ["test/acc"]).set_index("method.name")
    assert s.loc["boost", "test/acc_mean"] == pytest.approx(0.67)
    assert s.loc["boost", "test/acc_std"] == pytest.approx(
        pd.Series([0.64, 0.70, 0.67]).std(ddof=1)
    )
    assert s.loc["baseline", "n"] == 2 and s.loc["baseline", "test/acc_n"] == 2


def test_table_bolds_best_and_lists_seeds(multirun: Path) -> None:
    runs = report.load_runs(multirun)
    cols = report.metric_columns(runs)
    assert [c.key for c in cols] == [
        "test/acc",
        "test/f1",
        "test/acc_audio",
        "test/acc_visual",
        "imbalance/acc_gap",
    ]
    table = report.format_table(
        report.summarize(runs, ["method.name"], [c.key for c in cols]), ["method.name"], cols
    )
    lines = table.splitlines()
    assert lines[0].startswith("| method | Acc (%) | Macro-F1 (%)") and lines[0].endswith("Seeds |")
    assert lines[2].startswith("| baseline | 61.00 ± 1.41 |") and lines[2].endswith("| 2 |")
    assert lines[3].startswith("| boost | **67.00 ± 3.00** |") and lines[3].endswith("| 3 |")


def test_group_by_nested_key_and_unknown_key(multirun: Path) -> None:
    _fake_run(multirun, "5", "boost", 0, 0.5, alpha=1.0)
    runs = report.load_runs(multirun)
    s = report.summarize(runs, ["method.name", "method.boost.alpha"], ["test/acc"])
    assert len(s) == 3  # baseline (alpha NaN), boost 0.5, boost 1.0
    with pytest.raises(KeyError, match="unknown group key"):
        report.summarize(runs, ["method.nope"], ["test/acc"])


def test_write_report_files_and_skipped_plots(
    multirun: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert report.main([str(multirun), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| boost |" in printed and "sample std (ddof=1)" in printed
    for name in ("report.md", "report.csv", "report.tex", "runs.csv"):
        assert (out / name).stat().st_size > 0, name
    for stem in ("val_acc", "probe_acc", "boost_scale", "final_acc", "imbalance"):
        for fmt in ("png", "pdf"):
            assert (out / f"{stem}.{fmt}").stat().st_size > 0, f"{stem}.{fmt}"
        with Image.open(out / f"{stem}.png") as img:
            assert [round(v) for v in img.info["dpi"]] == [300, 300]
    assert (out / "val_acc.pdf").read_bytes().startswith(b"%PDF")
    # nothing logged OGM coefficients: skipped with a note, no crash
    assert not (out / "ogm_coeff.png").exists() and "ogm_coeff skipped" in printed
    csv = pd.read_csv(out / "report.csv")
    assert {"method.name", "test/acc_mean", "test/acc_std", "test/acc_n", "n"} <= set(csv.columns)


def test_no_runs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        report.load_runs(tmp_path)


def test_unimodal_runs_share_the_table_with_joint_methods(tmp_path: Path) -> None:
    """`method=unimodal` runs carry `method.modality`; it becomes a group key and the joint
    methods (which lack it) read `–` in that column, all in one table."""
    root = tmp_path / "mixed"
    _fake_run(root, "0", "baseline", 0, 0.6)
    _fake_run(root, "1", "mmcosine", 0, 0.62)
    for job, mod, acc in (("2", "audio", 0.55), ("3", "visual", 0.3)):
        d = _fake_run(root, job, "unimodal", 0, acc)
        data = json.loads((d / "metrics.json").read_text())
        data["config"]["method"]["modality"] = mod
        (d / "metrics.json").write_text(json.dumps(data))
        (d / ".hydra" / "overrides.yaml").write_text(
            f"- method=unimodal\n- method.modality={mod}\n"
        )
    runs = report.load_runs(root)
    keys = report.default_group_by(runs)
    assert keys == ["method.name", "method.modality"]
    cols = report.metric_columns(runs)
    table = report.format_table(report.summarize(runs, keys, [c.key for c in cols]), keys, cols)
    lines = table.splitlines()
    assert any(line.startswith("| baseline | – |") for line in lines)
    assert any(line.startswith("| mmcosine | – |") for line in lines)
    assert any(line.startswith("| unimodal | audio |") for line in lines)
    assert any(line.startswith("| unimodal | visual |") for line in lines)


def _add_reference(root: Path, values: dict) -> None:
    """Write a preset-style ``reference`` block into every run's saved config."""
    for path in root.rglob("metrics.json"):
        data = json.loads(path.read_text())
        data["config"]["reference"] = {
            "source": "test table",
            "metric": "test/acc",
            "results": values,
        }
        path.write_text(json.dumps(data))


def test_reference_column_difference_in_pooled_std_and_flag(multirun: Path) -> None:
    # baseline measured 61.00 ± 1.414 (n 2), boost 67.00 ± 3.00 (n 3)
    _add_reference(multirun, {"baseline": {"mean": 60.0, "std": 1.0}, "boost": {"mean": 50.0}})
    rep = report.write_report(multirun, plots=False)
    s = rep["summary"].set_index("method.name")
    pooled = ((0.0141421356**2 + 0.01**2) / 2) ** 0.5  # sqrt((s_m^2 + s_p^2) / 2)
    assert s.loc["baseline", "paper_diff_std"] == pytest.approx((0.61 - 0.60) / pooled, rel=1e-5)
    assert not s.loc["baseline", "paper_flag"]
    # no paper std: the measured std alone; (67 - 50) / 3 = 5.67 std -> flagged
    assert s.loc["boost", "paper_diff_std"] == pytest.approx(17 / 3, rel=1e-6)
    assert s.loc["boost", "paper_flag"]
    lines = rep["table"].splitlines()
    assert lines[0].startswith("| method | Acc (%) | Paper (%) | Δ (std) | Macro-F1 (%)")
    assert lines[2].startswith("| baseline | 61.00 ± 1.41 | 60.00 ± 1.00 | +0.8 | ")
    assert lines[3].startswith("| boost | **67.00 ± 3.00** | 50.00 | +5.7 ⚠ | ")
    assert "Paper: test table" in rep["note"] and "(1 row)" in rep["note"]


def test_reference_column_absent_without_reference_and_for_unlisted_method(
    multirun: Path,
) -> None:
    assert "Paper" not in report.write_report(multirun, plots=False)["table"]
    _add_reference(multirun, {"baseline": {"mean": 61.0, "std": 1.0}})
    lines = report.write_report(multirun, plots=False)["table"].splitlines()
    assert lines[2].startswith("| baseline | 61.00 ± 1.41 | 61.00 ± 1.00 | +0.0 | ")
    assert lines[3].startswith("| boost | **67.00 ± 3.00** | – | – | ")


# ----------------------------------------------------------------- per-column n
def test_unequal_n_per_column_shows_n_and_warns(
    multirun: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`--with-shapley` where only one of the two baseline runs has an eval.json: the
    baseline Shapley cells come from one run while Seeds says 2."""
    _fake_eval(multirun / "0", {"audio": 0.30, "visual": 0.10})
    for job in ("2", "3", "4"):
        _fake_eval(multirun / job, {"audio": 0.25, "visual": 0.15})
    _fake_run(multirun, "5", "ogm", 0, 0.63)  # no eval.json at all
    with caplog.at_level("WARNING", logger="asgml.report"):
        rep = report.write_report(multirun, with_shapley=True, plots=False)
    tbl = rep["report"]
    s = rep["summary"].set_index("method.name")
    assert s.loc["baseline", "eval/shapley_audio_n"] == 1 and s.loc["baseline", "n"] == 2
    assert s.loc["boost", "eval/shapley_audio_n"] == 3
    cells = dict(zip(tbl.headers, (c.text for c in tbl.rows[0])))
    assert cells["Shapley audio (pp)"] == "30.00 (n=1)"
    assert cells["Min Shapley share (%)"] == "25.00 (n=1)"  # 0.10 / 0.40
    assert cells["Acc (%)"] == "61.00 ± 1.41" and cells["Seeds"] == "2"
    boost = dict(zip(tbl.headers, (c.text for c in tbl.rows[1])))
    assert boost["Shapley audio (pp)"] == "25.00 ± 0.00" and "(n=" not in "".join(boost.values())
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "'Shapley audio (pp)'" in w and "method.name=baseline: n=1 of 2" in w for w in warned
    ), warned
    assert not any("'Acc (%)'" in w for w in warned)
    assert any("'Shapley visual (pp)'" in w and "method.name=ogm: n=0 of 1" in w for w in warned)
    ogm = dict(zip(tbl.headers, (c.text for c in tbl.rows[2])))
    assert ogm["Shapley visual (pp)"] == "–" and ogm["Acc (%)"] == "63.00"
    assert "(n=1)" in (multirun / "report.md").read_text()


def test_equal_n_gives_no_warning(multirun: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="asgml.report"):
        rep = report.write_report(multirun, plots=False)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert "(n=" not in rep["table"] and rep["warnings"] == []


# ------------------------------------------------------------------ bold per kind
def test_bold_only_where_higher_is_better(multirun: Path) -> None:
    # boost has the highest mean in every column: accuracy, F1, unimodal, Shapley, gap
    for job in ("0", "1"):
        _fake_eval(multirun / job, {"audio": 0.20, "visual": 0.05})
    for job in ("2", "3", "4"):
        _fake_eval(multirun / job, {"audio": 0.25, "visual": 0.15})
    _fake_run(multirun, "5", "baseline", 2, 0.40)  # lowers baseline's unimodal accs too
    _fake_eval(multirun / "5", {"audio": 0.20, "visual": 0.05})
    tbl = report.table(report.collect(multirun), with_shapley=True, reference=None)
    kinds = {c.header: c.kind for c in tbl.columns}
    assert set(kinds.values()) == {"score", "unimodal", "shapley", "imbalance"}
    s = tbl.summary.set_index("method.name")
    for c in tbl.columns:  # boost's mean is the highest (the gap: equal) everywhere
        assert s.loc["boost", f"{c.key}_mean"] >= s.loc["baseline", f"{c.key}_mean"] - 1e-9
    bold = {h for row in tbl.rows for h, c in zip(tbl.headers, row) if c.bold}
    assert bold == {"Acc (%)", "Macro-F1 (%)"}
    assert {h for h, k in kinds.items() if k == "score"} == bold
    assert all(c.bold for h, c in zip(tbl.headers, tbl.rows[1]) if h in bold)  # boost's
    with pytest.raises(ValueError, match="kind"):
        report.Column("test/acc", "Acc (%)", "fast")


# ------------------------------------------------------------------- significance
def _sig_multirun(root: Path) -> Path:
    values = {
        "baseline": {0: 0.60, 1: 0.62, 2: 0.61},
        # written in another order than baseline: pairing must follow the seed
        "boost": {2: 0.67, 0: 0.64, 1: 0.70},
        "ogm": {3: 0.63, 4: 0.66, 6: 0.64},  # no shared seed -> Welch
        "mla": {0: 0.66, 1: 0.64, 7: 0.69},  # two shared seeds (< 3 pairs) -> Welch
        "mmcosine": {0: 0.65, 5: 0.61},  # two runs -> no test, the cell says why
        "greedy": {0: 0.66},  # one run, one shared seed -> no test
    }
    job = 0
    for method, per_seed in values.items():
        for seed, acc in per_seed.items():
            _fake_run(root, str(job), method, seed, acc)
            job += 1
    return root


def test_significance_paired_and_welch_equal_scipy(tmp_path: Path) -> None:
    root = _sig_multirun(tmp_path / "sig")
    rep = report.write_report(root, plots=False, reference="baseline")
    s = rep["summary"].set_index("method.name")
    paired = stats.ttest_rel([0.64, 0.70, 0.67], [0.60, 0.62, 0.61])
    welch = stats.ttest_ind([0.63, 0.66, 0.64], [0.60, 0.62, 0.61], equal_var=False)
    welch_two_shared = stats.ttest_ind([0.66, 0.64, 0.69], [0.60, 0.62, 0.61], equal_var=False)
    assert s.loc["boost", "sig_test"] == "paired t"
    assert s.loc["boost", "sig_p"] == pytest.approx(paired.pvalue, rel=1e-12)
    assert s.loc["boost", "sig_t"] == pytest.approx(paired.statistic, rel=1e-12)
    assert s.loc["ogm", "sig_test"] == "Welch t"
    assert s.loc["ogm", "sig_p"] == pytest.approx(welch.pvalue, rel=1e-12)
    assert s.loc["mla", "sig_test"] == "Welch t"
    assert s.loc["mla", "sig_p"] == pytest.approx(welch_two_shared.pvalue, rel=1e-12)
    assert s.loc["baseline", "sig_test"] == "reference"
    for method in ("mmcosine", "greedy"):  # fewer than 3 values: no p-value
        assert s.loc[method, "sig_test"] == "" and pd.isna(s.loc[method, "sig_p"])
    tbl = rep["report"]
    col = tbl.headers.index("p vs baseline (Acc)")
    cells = {row[0].text: row[col].text for row in tbl.rows}
    assert cells["boost"] == f"{report.format_p(paired.pvalue)} (paired t, n=3)"
    assert cells["ogm"] == f"{report.format_p(welch.pvalue)} (Welch t, n=3 vs 3)"
    assert cells["baseline"] == "reference"
    # the cell says why there is no test
    assert cells["mmcosine"] == "n=2 vs 3: no test (needs n >= 3)"
    assert cells["greedy"] == "n=1 vs 3: no test (needs n >= 3)"
    assert "ttest_rel" in rep["note"] and "equal_var=False" in rep["note"]
    assert "Holm" in rep["note"] and "d_z" in rep["note"]
    csv = pd.read_csv(root / "report.csv").set_index("method.name")
    assert csv.loc["boost", "sig_p"] == pytest.approx(paired.pvalue)


def test_significance_interval_effect_size_and_holm(tmp_path: Path) -> None:
    root = _sig_multirun(tmp_path / "sig")
    rep = report.write_report(root, plots=False, reference="baseline")
    s = rep["summary"].set_index("method.name")
    base = np.array([0.60, 0.62, 0.61])
    # paired (boost, seeds 0, 1, 2): the differences' mean, t interval and d_z
    d = np.array([0.64, 0.70, 0.67]) - base
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert s.loc["boost", "sig_diff"] == pytest.approx(d.mean(), rel=1e-12)
    assert s.loc["boost", "sig_ci_low"] == pytest.approx(d.mean() - half, rel=1e-9)
    assert s.loc["boost", "sig_ci_high"] == pytest.approx(d.mean() + half, rel=1e-9)
    assert s.loc["boost", "sig_effect"] == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-12)
    assert s.loc["boost", "sig_effect_name"] == "d_z"
    # Welch (ogm): Welch-Satterthwaite interval and Cohen's d with the pooled std
    ogm = np.array([0.63, 0.66, 0.64])
    va, vb = ogm.var(ddof=1) / 3, base.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    diff = ogm.mean() - base.mean()
    assert s.loc["ogm", "sig_ci_low"] == pytest.approx(diff - half, rel=1e-9)
    assert s.loc["ogm", "sig_ci_high"] == pytest.approx(diff + half, rel=1e-9)
    pooled = np.sqrt((ogm.var(ddof=1) + base.var(ddof=1)) / 2)
    assert s.loc["ogm", "sig_effect"] == pytest.approx(diff / pooled, rel=1e-12)
    assert s.loc["ogm", "sig_effect_name"] == "d"
    # Holm over the three tested rows: sorted p times (3, 2, 1), running max, capped at 1
    tested = ["boost", "ogm", "mla"]
    p = {m: s.loc[m, "sig_p"] for m in tested}
    order = sorted(tested, key=p.get)
    expected, running = {}, 0.0
    for k, m in enumerate(order):
        running = max(running, min(1.0, (3 - k) * p[m]))
        expected[m] = running
    for m in tested:
        assert s.loc[m, "sig_p_holm"] == pytest.approx(expected[m], rel=1e-12)
    assert expected[order[0]] == pytest.approx(3 * p[order[0]])  # not the raw p
    assert pd.isna(s.loc["mmcosine", "sig_p_holm"]) and pd.isna(s.loc["baseline", "sig_p_holm"])
    # the table: Holm p, Δ [95 % CI] in pp, effect size
    tbl = rep["report"]
    row = next(r for r in tbl.rows if r[0].text == "boost")
    cell = {h: c.text for h, c in zip(tbl.headers, row)}
    assert cell["Holm p"] == report.format_p(expected["boost"])
    lo, hi = 100 * s.loc["boost", "sig_ci_low"], 100 * s.loc["boost", "sig_ci_high"]
    assert cell["Δ (95 % CI, pp)"] == f"{100 * d.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]"
    assert cell["Effect size"] == f"d_z = {d.mean() / d.std(ddof=1):.2f}"


def test_holm_and_t_interval() -> None:
    assert report.holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx(
        [0.03, 0.06, float("nan"), 0.06], nan_ok=True
    )
    assert report.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    low, high = report.t_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half))
    assert all(np.isnan(report.t_interval([1.0])))


def test_significance_reference_within_the_same_dataset(tmp_path: Path) -> None:
    root = tmp_path / "two"
    job = 0
    data = {
        "a": ((0.5, 0.52, 0.51), (0.6, 0.63, 0.64)),
        "b": ((0.8, 0.83, 0.81), (0.7, 0.7, 0.72)),
        "c": ((0.5, 0.52), (0.6, 0.63)),  # two seeds: no p-value
    }
    for dataset, (base, boost) in data.items():
        for method, accs in (("baseline", base), ("boost", boost)):
            for seed, acc in enumerate(accs):
                _fake_run(root, str(job), method, seed, acc, dataset=dataset)
                job += 1
    tbl = report.table(report.collect(root), ["dataset.name", "method.name"])
    s = tbl.summary.set_index(["dataset.name", "method.name"])
    for dataset in ("a", "b"):
        base, boost = data[dataset]
        expected = stats.ttest_rel(boost, base).pvalue
        assert s.loc[(dataset, "boost"), "sig_p"] == pytest.approx(expected, rel=1e-12)
        # one comparison per dataset: Holm leaves it as it is
        assert s.loc[(dataset, "boost"), "sig_p_holm"] == pytest.approx(expected, rel=1e-12)
    assert pd.isna(s.loc[("c", "boost"), "sig_p"])
    col = tbl.headers.index("p vs baseline (Acc)")
    cells = {(r[0].text, r[1].text): r[col].text for r in tbl.rows}
    assert cells[("c", "boost")] == "n=2: no test (needs n >= 3)"
    assert "n=2: no test" in tbl.markdown()


def test_significance_off_or_without_reference_runs(
    multirun: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert "p vs" not in report.table(report.collect(multirun), reference=None).markdown()
    with caplog.at_level("WARNING", logger="asgml.report"):
        tbl = report.table(report.collect(multirun), reference="ogm")
    assert "p vs" not in tbl.markdown()
    assert any("no run of method 'ogm'" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- LaTeX
def _tabular(tex: str) -> tuple[str, list[str]]:
    lines = tex.splitlines()
    begin = [i for i, line in enumerate(lines) if line.startswith(r"\begin{tabular}")]
    end = [i for i, line in enumerate(lines) if line == r"\end{tabular}"]
    assert len(begin) == 1 and len(end) == 1 and begin[0] < end[0]
    spec = re.fullmatch(r"\\begin\{tabular\}\{([lcr]+)\}", lines[begin[0]])
    assert spec, lines[begin[0]]
    return spec.group(1), lines[begin[0] + 1 : end[0]]


def test_latex_output_is_a_booktabs_tabular(multirun: Path) -> None:
    _fake_run(multirun, "5", "boost_ogm", 0, 0.66)
    _fake_run(multirun, "6", "boost_ogm", 1, 0.69)
    rep = report.write_report(multirun, plots=False)
    tex = (multirun / "report.tex").read_text()
    assert tex.rstrip().endswith(rep["latex"])
    spec, body = _tabular(tex)
    assert [body[0], body[2], body[-1]] == [r"\toprule", r"\midrule", r"\bottomrule"]
    rows = body[1:2] + body[3:-1]
    assert len(rows) == 1 + 3  # header + baseline, boost, boost_ogm
    for row in rows:
        assert row.endswith(r" \\")
        cells = row.removesuffix(r" \\").split(" & ")
        assert len(cells) == len(spec), row
        for cell in cells:  # specials escaped, Unicode signs in math
            assert not re.search(r"(?<!\\)[_%&#]", cell), cell
            assert "±" not in cell and "–" not in cell
            # groups and math mode balanced within the cell
            assert len(re.findall(r"(?<!\\)\{", cell)) == len(re.findall(r"(?<!\\)\}", cell))
            assert len(re.findall(r"(?<!\\)\$", cell)) % 2 == 0, cell
    header, *body_cells = [r.removesuffix(r" \\").split(" & ") for r in rows]
    assert header[0] == "method" and r"Acc (\%)" in header and header[-1] == "Seeds"
    body_rows = {cells[0]: cells for cells in body_cells}
    assert set(body_rows) == {"baseline", "boost", r"boost\_ogm"}
    assert body_rows[r"boost\_ogm"][1] == r"\textbf{67.50 $\pm$ 2.12}"
    assert body_rows["boost"][1] == r"67.00 $\pm$ 3.00"
    assert body_rows["baseline"][1] == r"61.00 $\pm$ 1.41"
    assert body_rows["baseline"][header.index("p vs baseline (Acc)")] == "reference"
    assert spec == "l" + "r" * (len(header) - 1)


def test_latex_escape() -> None:
    assert report.latex_escape("a_b 50% & #1 ± 2 – Δ <0.001 {x}") == (
        r"a\_b 50\% \& \#1 $\pm$ 2 -- $\Delta$ $<$0.001 \{x\}"
    )


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_output_compiles(multirun: Path, tmp_path: Path) -> None:
    report.write_report(multirun, plots=False)
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        f"\\input{{{(multirun / 'report.tex').as_posix()}}}\n\\end{{document}}\n"
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


# ------------------------------------------------------------------------ figures
@pytest.fixture(autouse=True)
def _close_figures() -> None:
    yield
    matplotlib.pyplot.close("all")


def _figures(root: Path) -> dict:
    runs = report.collect(root)
    return report.make_figures(runs, report.load_curves(runs["run_dir"]), ["method.name"])


def _lines(fig: matplotlib.figure.Figure) -> list:
    return [line for ax in fig.axes for line in ax.get_lines() if "(n=" in line.get_label()]


def test_figures_steps_bands_shared_y_legend_and_chance(multirun: Path) -> None:
    figs = _figures(multirun)
    val, scale = figs["val_acc"], figs["boost_scale"]
    assert figs["ogm_coeff"] is None
    # boost scales are piecewise constant: steps; accuracies are lines
    assert {line.get_drawstyle() for line in _lines(scale)} == {"steps-post"}
    assert {line.get_drawstyle() for line in _lines(val)} == {"default"}
    # shared y: one range for all panels of a figure
    for fig in (val, scale):
        assert len(fig.axes) == 3 if fig is val else len(fig.axes) == 2
        assert len({ax.get_ylim() for ax in fig.axes}) == 1
        assert all(fig.axes[0].get_shared_y_axes().joined(fig.axes[0], ax) for ax in fig.axes)
    # % units: boost's fused mean at epoch 1 is 67 %, not 0.67
    boost_fused = next(
        line for line in val.axes[0].get_lines() if line.get_label() == "boost (n=3)"
    )
    assert list(boost_fused.get_ydata()) == pytest.approx([33.5, 67.0])
    # chance 100 / num_classes on every accuracy panel
    for ax in val.axes:
        chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
        assert len(chance) == 1 and list(chance[0].get_ydata()) == [25.0, 25.0]
    # one legend per figure, with n
    assert len(val.legends) == 1 and all(ax.get_legend() is None for ax in val.axes)
    labels = [t.get_text() for t in val.legends[0].get_texts()]
    assert labels == ["baseline (n=2)", "boost (n=3)", "chance (25 %)"]


def _bands(ax: matplotlib.axes.Axes) -> list[PolyCollection]:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_bands_only_from_three_runs_and_clipped_to_the_range(multirun: Path) -> None:
    figs = _figures(multirun)
    boost_color = matplotlib.colors.to_rgb(report.method_colors()["boost"])
    for ax in figs["val_acc"].axes:  # baseline n=2: no band; boost n=3: one
        bands = _bands(ax)
        assert len(bands) == 1
        assert tuple(bands[0].get_facecolor()[0][:3]) == pytest.approx(boost_color)
    visual = figs["boost_scale"].axes[1]
    (band,) = _bands(visual)
    ys = band.get_paths()[0].vertices[:, 1]
    # mean - std at step 20 is 1.3 - 0.52 and mean + std at step 40 is 1.73 + 0.46: both
    # leave [1, scale_max = 2] and are clipped to it
    assert ys.min() == pytest.approx(1.0) and ys.max() == pytest.approx(2.0)


def test_no_band_when_every_group_has_fewer_than_three_runs(multirun: Path) -> None:
    for job in ("3", "4"):
        shutil.rmtree(multirun / job)
    figs = _figures(multirun)
    assert all(not _bands(ax) for fig in figs.values() if fig for ax in fig.axes)


def test_method_colour_is_fixed_across_figures_and_reports(multirun: Path) -> None:
    figs = _figures(multirun)
    colors = report.method_colors()

    def color_of(fig: matplotlib.figure.Figure, method: str) -> set[str]:
        return {
            matplotlib.colors.to_hex(line.get_color())
            for line in _lines(fig)
            if line.get_label().startswith(f"{method} (")
        }

    for fig in (figs["val_acc"], figs["probe_acc"], figs["boost_scale"]):
        assert color_of(fig, "boost") == {colors["boost"]}
    assert color_of(figs["val_acc"], "baseline") == {colors["baseline"]}
    assert colors["baseline"] != colors["boost"]
    # the colour depends on the method's name, not on the other methods of a sweep
    only_boost = report.collect(multirun)
    only_boost = only_boost[only_boost["method.name"] == "boost"]
    fig = report.make_figures(
        only_boost, report.load_curves(only_boost["run_dir"]), ["method.name"]
    )
    assert color_of(fig["val_acc"], "boost") == {colors["boost"]}
    assert len(set(colors.values())) == len(colors)  # every shipped method its own colour


def test_plot_returns_written_files(multirun: Path, tmp_path: Path) -> None:
    paths = report.plot(report.collect(multirun), tmp_path / "figs")
    stems = ("val_acc", "probe_acc", "boost_scale", "imbalance", "final_acc")
    assert [p.name for p in paths] == [f"{s}.{f}" for s in stems for f in ("png", "pdf")]
    assert all(p.stat().st_size > 0 for p in paths)


def test_write_outputs_returns_written_files(multirun: Path, tmp_path: Path) -> None:
    runs = report.collect(multirun)
    paths = report.write_outputs(tmp_path / "t", report.table(runs), runs)
    assert [p.name for p in paths] == ["report.md", "report.csv", "report.tex", "runs.csv"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_progress_bar_only_when_asked_or_on_a_terminal(
    multirun: Path, capsys: pytest.CaptureFixture
) -> None:
    report.collect(multirun)  # 5 runs, stderr not a terminal: quiet
    assert capsys.readouterr().err == ""
    report.collect(multirun, progress=True)
    assert "collecting runs" in capsys.readouterr().err


def test_broken_metrics_json_names_the_file(multirun: Path) -> None:
    (multirun / "3" / "metrics.json").write_text('{"metrics": {"test/acc": 0.')
    with pytest.raises(ValueError, match=r"3/metrics.json: not valid JSON"):
        report.collect(multirun)


def test_compare_falls_back_to_welch_on_repeated_seeds() -> None:
    ref = pd.Series([0.60, 0.62, 0.61], index=[0, 1, 2])
    repeated = pd.Series([0.64, 0.66, 0.70], index=[0, 0, 1])  # two runs of seed 0
    res = report.compare(repeated, ref)
    expected = stats.ttest_ind([0.64, 0.66, 0.70], [0.60, 0.62, 0.61], equal_var=False)
    assert res is not None and res.test == "Welch t" and res.n == (3, 3)
    assert res.p == pytest.approx(expected.pvalue, rel=1e-12)
    assert report.compare(pd.Series([0.7], index=[5]), ref) is None  # one run: no test
    assert report.compare(ref + 0.01, ref) is None  # constant difference: no finite p


# ------------------------------------------------------------ paper-ready figures
def _alpha_sweep(root: Path) -> Path:
    """baseline x 3 seeds and boost at alpha 0.5 and 1.0 x 3 seeds, swept by override."""
    job = 0
    for seed, acc in enumerate((0.60, 0.62, 0.61)):
        _fake_run(root, str(job), "baseline", seed, acc)
        job += 1
    for alpha, accs in ((0.5, (0.64, 0.66, 0.65)), (1.0, (0.70, 0.66, 0.68))):
        for seed, acc in enumerate(accs):
            d = _fake_run(root, str(job), "boost", seed, acc, alpha=alpha)
            with open(d / ".hydra" / "overrides.yaml", "a") as f:
                f.write(f"- method.boost.alpha={alpha}\n")
            job += 1
    return root


_FONT_SUBTYPE = re.compile(rb"/Subtype\s*/(Type3|TrueType|CIDFontType2|Type1|Type0)\b")


def test_report_pdfs_embed_no_type3_font(tmp_path: Path) -> None:
    """Every PDF the CLI writes embeds TrueType (Type 42) fonts: the font dictionaries of
    the uncompressed PDF name no /Type3 font."""
    root = _alpha_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    before = matplotlib.rcParams["pdf.fonttype"]
    with matplotlib.rc_context({"pdf.compression": 0}):  # plain-text objects to read
        assert report.main([str(root), "--out", str(out)]) == 0
    pdfs = sorted(out.glob("*.pdf"))
    assert {"final_acc.pdf", "sweep_method_boost_alpha.pdf", "val_acc.pdf"} <= {
        p.name for p in pdfs
    }
    for pdf in pdfs:
        subtypes = {m.decode() for m in _FONT_SUBTYPE.findall(pdf.read_bytes())}
        assert "Type3" not in subtypes, pdf.name
        assert {"Type0", "CIDFontType2"} <= subtypes or "TrueType" in subtypes, (pdf.name, subtypes)
    # global state untouched: the rc context ends with the report
    assert matplotlib.rcParams["pdf.fonttype"] == before


def test_paper_sizes_no_title_integer_epoch_ticks(multirun: Path) -> None:
    runs = report.collect(multirun)
    curves = report.load_curves(runs["run_dir"])
    paper = report.make_figures(runs, curves, ["method.name"])
    val, gap, dots = paper["val_acc"], paper["imbalance"], paper["final_acc"]
    assert tuple(val.get_size_inches()) == pytest.approx((7.0, 2.6))  # two columns
    assert tuple(gap.get_size_inches()) == pytest.approx((3.5, 2.6))  # one column
    assert tuple(dots.get_size_inches()) == pytest.approx((3.5, 2.6))
    for fig in (f for f in paper.values() if f is not None):
        assert fig._suptitle is None  # no baked title: the caption belongs to the paper
    # a 2-epoch run: integer epoch ticks only
    for ax in val.axes + gap.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    # the legend below the panels (the full width of the page), beside them on screen
    val.canvas.draw()
    legend_box = val.legends[0].get_window_extent()
    assert legend_box.y1 <= min(ax.get_window_extent().y0 for ax in val.axes)
    # 8-pt axis labels in the paper style, larger on screen, global rc untouched
    assert val.axes[0].yaxis.label.get_fontsize() == 8
    screen = report.make_figures(runs, curves, ["method.name"], style="screen")
    assert screen["val_acc"].get_size_inches()[0] > 7.0
    assert screen["val_acc"].axes[0].yaxis.label.get_fontsize() == 10
    screen["val_acc"].canvas.draw()
    legend_box = screen["val_acc"].legends[0].get_window_extent()
    assert legend_box.x0 >= max(ax.get_window_extent().x1 for ax in screen["val_acc"].axes)
    assert matplotlib.rcParams["font.size"] == matplotlib.rcParamsDefault["font.size"]
    with pytest.raises(ValueError, match="figure style 'poster'"):
        report.make_figures(runs, curves, ["method.name"], style="poster")


def test_dot_plot_one_dot_per_seed_and_t_interval(multirun: Path) -> None:
    runs = report.collect(multirun)
    fig = report.plot_dots(runs, ["method.name"])
    (ax,) = fig.axes
    dots = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)]
    ys = sorted(y for c in dots for y in c.get_offsets()[:, 1])
    assert ys == pytest.approx(sorted([60.0, 62.0, 64.0, 70.0, 67.0]))
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["baseline\n(n=2)", "boost\n(n=3)"]
    # boost: mean 67 with the 95 % t interval (2 degrees of freedom) as error bar
    half = stats.t.ppf(0.975, 2) * 3.0 / np.sqrt(3)
    bars = [c for c in ax.collections if isinstance(c, matplotlib.collections.LineCollection)]
    segments = [seg for c in bars for seg in c.get_segments()]
    spans = sorted((float(seg[0][1]), float(seg[1][1])) for seg in segments)
    assert (67.0 - half, 67.0 + half) == pytest.approx(spans[-1])


def test_sweep_plot_over_the_swept_override(tmp_path: Path) -> None:
    root = _alpha_sweep(tmp_path / "sweep")
    runs = report.collect(root)
    assert report.swept_keys(runs) == ["method.boost.alpha"]
    figs = report.make_figures(runs, report.load_curves(runs["run_dir"]), ["method.name"])
    (ax,) = figs["sweep_method_boost_alpha"].axes
    assert ax.get_xlabel() == "method.boost.alpha"
    (container,) = ax.containers  # the error-bar line of boost, labelled with its n
    assert container.get_label() == "boost (n=3 per value)"
    boost = container.lines[0]
    assert list(boost.get_xdata()) == [0.5, 1.0]
    assert list(boost.get_ydata()) == pytest.approx([65.0, 68.0])
    base = next(line for line in ax.get_lines() if line.get_label().startswith("baseline"))
    assert list(base.get_ydata()) == pytest.approx([61.0, 61.0])  # no alpha: a level line
    assert matplotlib.colors.to_hex(boost.get_color()) == report.method_colors()["boost"]
    # no sweep without a swept numeric override
    assert report.swept_keys(report.collect(_sig_multirun(tmp_path / "sig"))) == []


def test_imbalance_curve_is_the_unimodal_gap(multirun: Path) -> None:
    figs = _figures(multirun)
    (ax,) = figs["imbalance"].axes
    line = next(line for line in ax.get_lines() if line.get_label() == "boost (n=3)")
    # val/acc_audio 0.5 and val/acc_visual 0.3 in every epoch: a 20 pp gap
    assert list(line.get_xdata()) == [0, 1] and list(line.get_ydata()) == pytest.approx([20, 20])
    assert figs["modality_loss"] is None and figs["grad_norm"] is None  # not logged here
