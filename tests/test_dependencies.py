"""Optional dependencies: scikit-learn (method=relearning) and the Optuna sweeper
(hparams_search=...) are extras of pyproject.toml with a clear error when missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asgml.methods.relearning import SKLEARN_MISSING, ReLearning

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_sklearn_and_the_optuna_sweeper_are_extras_and_ci_installs_them() -> None:
    project = _pyproject()["project"]
    core = " ".join(project["dependencies"])
    assert "scikit-learn" not in core and "optuna" not in core
    extras = project["optional-dependencies"]
    assert any(d.startswith("scikit-learn") for d in extras["relearning"])
    assert any(d.startswith("hydra-optuna-sweeper") for d in extras["optuna"])
    ci = (ROOT / ".ci" / "run").read_text()
    assert "relearning" in ci and "optuna" in ci


def test_relearning_without_sklearn_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    ReLearning()  # installed here: builds
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` now fails
    with pytest.raises(ImportError) as err:
        ReLearning()
    assert str(err.value) == SKLEARN_MISSING
    assert "pip install 'asgml[relearning]'" in SKLEARN_MISSING


def test_optuna_search_without_the_sweeper_says_which_extra(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['hydra_plugins.hydra_optuna_sweeper'] = None  # as if not installed\n"
        "sys.argv = ['asgml-train', 'hparams_search=boost_optuna']\n"
        "from asgml.train import main\n"
        "main()\n"
    )
    env = {**os.environ, "ASGML_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Could not find 'hydra/sweeper/optuna'" in proc.stderr  # Hydra's message
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        "hydra/sweeper/optuna is a Hydra plugin (hydra-optuna-sweeper): pip install 'asgml[optuna]'"
    )
