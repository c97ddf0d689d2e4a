"""The Python API (``asgml.fit``): the same config and the same numbers as the command line,
and metrics.json's provenance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import asgml
from asgml.api import compose_config, override_value
from asgml.report import collect
from asgml.run.precheck import PreCheckError
from tests.conftest import FAST

COLUMNS = ["test/acc", "test/f1", "test/acc_audio", "test/acc_visual", "val_acc_best"]


def test_override_values_and_keyword_options_compose_like_the_command_line() -> None:
    assert override_value(True) == "true" and override_value(None) == "null"
    assert override_value([1, 2]) == "[1,2]"
    assert override_value("a b") == '"a b"'
    cli = compose_config(["method=boost_ogm", "method.boost.alpha=1.5", "trainer.max_epochs=3"])
    fit_like = compose_config(
        ["method=boost_ogm", f"method.boost.alpha={override_value(1.5)}"]
        + [f"trainer.max_epochs={override_value(3)}"]
    )
    assert cli == fit_like
    assert cli.method.boost.alpha == 1.5 and cli.trainer.max_epochs == 3


def test_fit_refuses_missing_data_before_training(tmp_path: Path) -> None:
    with pytest.raises(PreCheckError, match="cremad: data_dir"):
        asgml.fit(dataset="cremad", method="baseline", seeds=[0], root=tmp_path, data_dir=None)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_fit_two_methods_two_seeds_equals_the_cli(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command line below (OMP_NUM_THREADS=1)
    try:
        runs = asgml.fit(
            method=["baseline", "boost_ogm"], seeds=[0, 1], overrides=FAST, root=tmp_path / "api"
        )
    finally:
        torch.set_num_threads(threads)
    assert list(zip(runs["method.name"], runs["seed"])) == [
        ("baseline", 0),
        ("baseline", 1),
        ("boost_ogm", 0),
        ("boost_ogm", 1),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ASGML_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asgml.train",
            "-m",
            "method=baseline,boost_ogm",
            "seed=0,1",
            f"hydra.sweep.dir={tmp_path / 'cli'}",
            "hydra.callbacks.sweep_report.enabled=false",
            *FAST,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cli = collect(tmp_path / "cli", progress=False)
    cli = cli.sort_values(["method.name", "seed"]).reset_index(drop=True)
    assert runs[COLUMNS].notna().all().all()
    assert runs[COLUMNS].to_dict("records") == cli[COLUMNS].to_dict("records")
    # the two methods trained differently (the table is not one run four times)
    assert runs["test/acc"].nunique() > 1 or runs["val_acc_best"].nunique() > 1


@pytest.mark.slow
def test_metrics_json_records_the_code(tmp_path: Path) -> None:
    import json

    import lightning

    from asgml.run.provenance import git_state

    asgml.fit(method="baseline", seeds=[0], overrides=FAST, root=tmp_path)
    (metrics,) = tmp_path.glob("*/metrics.json")
    prov = json.loads(metrics.read_text())["provenance"]
    versions = prov["versions"]
    assert versions["lightning"] == lightning.__version__
    assert versions["asgml"] == asgml.__version__
    assert torch.__version__.startswith(versions["torch"])
    state = git_state()
    assert prov["commit"] == state["commit"] and prov["dirty"] == state["dirty"]
