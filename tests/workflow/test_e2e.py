"""End to end: a 2 methods x 2 seeds multirun, then report, eval and the notebook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST

REPO = Path(__file__).resolve().parents[2]
METHODS = ["baseline", "boost"]


def _run(args: list[str], cwd: Path, timeout: int = 180) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ASGML_LOG_DIR": str(cwd / "logs")}
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def multirun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("workflow")
    sweep = tmp / "multirun"
    _run(
        [
            "-m",
            "asgml.train",
            "-m",
            "seed=0,1",
            f"method={','.join(METHODS)}",
            f"hydra.sweep.dir={sweep}",
            *FAST,
        ],
        cwd=tmp,
    )
    return sweep


@pytest.mark.slow
def test_multirun_then_report(multirun: Path, tmp_path: Path) -> None:
    jobs = sorted(p.parent for p in multirun.glob("*/metrics.json"))
    assert len(jobs) == 4
    out = _run(["-m", "asgml.report", str(multirun)], cwd=tmp_path)
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | Acc (%) | Macro-F1 (%) | Acc audio (%) | Acc visual (%)")
    assert {r.split("|")[1].strip() for r in rows[1:]} == set(METHODS)
    assert all(r.endswith("| 2 |") for r in rows[1:])
    for name in ("report.md", "report.csv", "runs.csv", "val_acc.png"):
        assert (multirun / name).stat().st_size > 0, name
    assert list(multirun.glob("*.png"))


@pytest.mark.slow
def test_eval_cli_and_shapley_report(multirun: Path, tmp_path: Path) -> None:
    ckpt = multirun / "0" / "checkpoints" / "best.ckpt"
    out = _run(
        ["-m", "asgml.eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=tmp_path,
    )
    assert "Shapley" in out
    result = json.loads((multirun / "0" / "eval.json").read_text())
    assert set(result["shapley"]) == {"audio", "visual"}
    table = _run(
        [
            "-m",
            "asgml.report",
            str(multirun),
            "--with-shapley",
            "--no-plots",
            "--out",
            str(tmp_path / "rep"),
        ],
        cwd=tmp_path,
    )
    assert "Shapley audio (pp)" in table


@pytest.mark.slow
def test_notebook_executes(multirun: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("ASGML_RUN_DIR", str(multirun))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO / "notebooks")}},
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = json.dumps([o.get("data", {}).get("text/markdown", "") for o in outputs])
    assert "| baseline |" in text and "| boost |" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
