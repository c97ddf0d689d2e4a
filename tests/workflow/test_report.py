"""asgml.report on hand-made run directories (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from asgml import report


def _fake_run(root: Path, job: str, method: str, seed: int, acc: float, alpha: float = 0.5) -> Path:
    d = root / job
    (d / "csv").mkdir(parents=True)
    metrics = {
        "test/acc": acc,
        "test/f1": acc - 0.1,
        "test/acc_audio": acc - 0.05,
        "test/acc_visual": acc - 0.2,
        "test/loss": 1.0,
    }
    config = {"seed": seed, "dataset": {"name": "synthetic"}, "method": {"name": method}}
    if method == "boost":
        config["method"]["boost"] = {"alpha": alpha}
    (d / "metrics.json").write_text(
        json.dumps({"metrics": metrics, "val_acc_best": acc, "config": config})
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
    if method == "boost":
        rows += [
            {"epoch": 0, "step": s, "probe/acc_audio": 0.6, "probe/acc_visual": 0.3 + s / 100}
            for s in (0, 5)
        ]
    pd.DataFrame(rows).to_csv(d / "csv" / "metrics.csv", index=False)
    (d / ".hydra").mkdir()
    (d / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n- method={method}\n")
    return d


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
    assert s.loc["baseline", "n"] == 2


def test_table_bolds_best_and_lists_seeds(multirun: Path) -> None:
    runs = report.load_runs(multirun)
    cols = report.metric_columns(runs)
    assert [c for c, _ in cols] == ["test/acc", "test/f1", "test/acc_audio", "test/acc_visual"]
    table = report.format_table(
        report.summarize(runs, ["method.name"], [c for c, _ in cols]), ["method.name"], cols
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
    for name in ("report.md", "report.csv", "runs.csv", "val_acc.png", "probe_acc.png"):
        assert (out / name).stat().st_size > 0, name
    # nothing logged boost scales or OGM coefficients: skipped with a note, no crash
    assert not (out / "boost_scale.png").exists()
    assert "boost_scale.png skipped" in printed and "ogm_coeff.png skipped" in printed
    csv = pd.read_csv(out / "report.csv")
    assert {"method.name", "test/acc_mean", "test/acc_std", "n"} <= set(csv.columns)


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
    table = report.format_table(
        report.summarize(runs, keys, [c for c, _ in report.metric_columns(runs)]),
        keys,
        report.metric_columns(runs),
    )
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
