"""asgml/report/diagnostics.py: the diag_* figures and the per-epoch Shapley values."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from asgml.report.diagnostics import diagnostic_figures, with_shapley  # noqa: E402
from asgml.report.figures import FIGURE_HOOKS, make_figures  # noqa: E402


def test_shapley_per_epoch_from_subset_accuracies() -> None:
    """Two players: phi_a = (v(a) - v0 + v(ab) - v(b)) / 2, and they sum to v(ab) - v0."""
    df = pd.DataFrame(
        {
            "epoch": [0, 1, 1],
            "diag/subset_acc_none": [0.25, 0.25, None],
            "diag/subset_acc_a": [0.75, 0.5, None],
            "diag/subset_acc_b": [0.25, 0.5, None],
            "diag/subset_acc_a+b": [0.75, 0.75, None],
        }
    )
    out = with_shapley(df, ["a", "b"])
    assert out.loc[0, "diag/shapley_a"] == pytest.approx(((0.75 - 0.25) + (0.75 - 0.25)) / 2)
    assert out.loc[0, "diag/shapley_b"] == pytest.approx(0.0)
    assert out.loc[1, "diag/shapley_a"] == pytest.approx(0.25)
    assert out.loc[1, "diag/shapley_b"] == pytest.approx(0.25)
    assert pd.isna(out.loc[2, "diag/shapley_a"])
    # a subset missing: no Shapley columns (not a wrong value)
    assert "diag/shapley_a" not in with_shapley(df.drop(columns="diag/subset_acc_none"), ["a", "b"])


def _runs() -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    runs = pd.DataFrame(
        {
            "run_dir": ["r1", "r2"],
            "method.name": ["baseline", "ogm"],
            "model.encoders.audio._target_": ["x", "x"],
            "model.encoders.visual._target_": ["x", "x"],
            "dataset.num_classes": [4, 4],
        }
    )
    curve = pd.DataFrame(
        {
            "step": [0, 1],
            "diag/probe_acc_audio": [0.5, 0.75],
            "diag/probe_acc_visual": [0.25, 0.5],
        }
    )
    return runs, {"r1": curve, "r2": curve}


def test_one_panel_per_method_modalities_as_lines() -> None:
    runs, curves = _runs()
    figs = diagnostic_figures(runs, curves, ["method.name"])
    assert list(figs) == ["diag_probe_acc"]  # only what was logged
    axes = figs["diag_probe_acc"].axes
    assert [ax.get_title() for ax in axes] == ["baseline (n=1)", "ogm (n=1)"]
    lines = [ln for ln in axes[0].get_lines() if ln.get_label() in ("audio", "visual")]
    assert [ln.get_label() for ln in lines] == ["audio", "visual"]
    assert list(lines[0].get_ydata()) == [50.0, 75.0]
    plt.close("all")


def test_runs_without_diagnostics_add_no_figure() -> None:
    runs, _ = _runs()
    plain = {"r1": pd.DataFrame({"step": [0], "val/acc": [0.5]})}
    assert diagnostic_figures(runs, plain, ["method.name"]) == {}
    assert diagnostic_figures in FIGURE_HOOKS
    figs = make_figures(runs, _runs()[1], ["method.name"])  # through the hook
    assert "diag_probe_acc" in figs
    plt.close("all")
