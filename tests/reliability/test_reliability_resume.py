"""Exact resume, checkpoints loadable with ``weights_only=True``, and determinism.

Runs are tiny (``FAST``: 3 steps per epoch, 2 epochs, probe every 2 steps) and
deterministic on CPU. The resumed run restarts from the ``last.ckpt`` written at the end
of epoch 0 (step 3) -- an epoch-boundary resume, which is what Lightning restores exactly
with a plain ``DataLoader`` (see docs/reliability.md).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from asgml.train import run
from tests.conftest import FAST, compose_cfg

ROOT = Path(__file__).resolve().parents[2]
BASE = [
    "method=boost_ogm",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "method.probe.eval_freq=2",
]
LOGGED = ("boost/scale_", "probe/acc_", "ogm/coeff_")


def _train(out: Path, *extra: str) -> dict[str, Any]:
    return run(compose_cfg([*BASE, *extra], output_dir=out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    _train(root / "full")
    _train(root / "full_again")
    _train(root / "first", "trainer.max_epochs=1")
    _train(root / "resumed", f"ckpt_path={root / 'first' / 'checkpoints' / 'last.ckpt'}")
    return root


def _ckpt(run_dir: Path, name: str = "last") -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / f"{name}.ckpt", weights_only=True)


def _logged(run_dir: Path) -> dict[tuple[int, str], float]:
    """``{(step, key): value}`` of the method's per-step values in csv/metrics.csv."""
    out = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v and k.startswith(LOGGED):
                    out[(int(row["step"]), k)] = float(v)
    return out


def _assert_same_tensors(a: Any, b: Any, where: str = "") -> None:
    """Recursive exact equality of nested dicts/lists of tensors and primitives."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resume_matches_an_uninterrupted_run(runs: Path) -> None:
    full, resumed, first = _ckpt(runs / "full"), _ckpt(runs / "resumed"), _ckpt(runs / "first")
    assert first["global_step"] == 3
    assert full["global_step"] == resumed["global_step"] == 6
    # parameters, buffers and metric states; optimizer and scheduler states
    _assert_same_tensors(full["state_dict"], resumed["state_dict"], "state_dict")
    _assert_same_tensors(full["optimizer_states"], resumed["optimizer_states"], "optimizer")
    _assert_same_tensors(full["lr_schedulers"], resumed["lr_schedulers"], "lr_schedulers")
    # every method callback's state: probe weights + optimizer, EMA scales, OGM counters
    for key in ("ProbeMonitor", "ASGMLBoost", "OGMGE"):
        _assert_same_tensors(full["callbacks"][key], resumed["callbacks"][key], key)
    # the logged scales at every step the resumed run trained (3, 4, 5)
    a, b = _logged(runs / "full"), _logged(runs / "resumed")
    assert {s for s, _ in b} == {3, 4, 5}
    assert {k for _, k in b} >= {
        "boost/scale_audio",
        "boost/scale_visual",
        "probe/acc_audio",
        "probe/acc_visual",
        "ogm/coeff_audio",
        "ogm/coeff_visual",
    }
    assert b.keys() <= a.keys()
    assert {k: a[k] for k in b} == b
    # and the same test metrics of the best checkpoint
    ma = json.loads((runs / "full" / "metrics.json").read_text())
    mb = json.loads((runs / "resumed" / "metrics.json").read_text())
    assert ma["metrics"] == mb["metrics"] and ma["val_acc_best"] == mb["val_acc_best"]


def test_without_the_rng_state_resume_diverges(runs: Path, tmp_path: Path) -> None:
    """The global RNG state in the checkpoint matters (shuffle order, OGM-GE noise): a
    checkpoint stripped of it does not resume exactly (guards the test above)."""
    ckpt = _ckpt(runs / "first")
    del ckpt["asgml_rng"]
    stripped = tmp_path / "stripped.ckpt"
    torch.save(ckpt, stripped)
    _train(tmp_path / "run", f"ckpt_path={stripped}", "test=false")
    full, other = _ckpt(runs / "full"), _ckpt(tmp_path / "run")
    assert other["global_step"] == 6
    assert any(not torch.equal(v, other["state_dict"][k]) for k, v in full["state_dict"].items())


def _plain(x: Any, where: str = "") -> None:
    """Only containers and primitives (no OmegaConf objects, no callables)."""
    if isinstance(x, dict):
        for k, v in x.items():
            assert isinstance(k, str | int), where
            _plain(v, f"{where}.{k}")
    elif isinstance(x, list | tuple):
        for i, v in enumerate(x):
            _plain(v, f"{where}[{i}]")
    else:
        assert x is None or isinstance(x, str | int | float | bool), f"{where}: {type(x)}"


def test_checkpoints_load_with_weights_only(runs: Path) -> None:
    for name in ("last", "best"):
        ckpt = _ckpt(runs / "full", name)  # torch.load(weights_only=True)
        _plain(ckpt["hyper_parameters"], "hyper_parameters")
        _plain(ckpt["asgml_config"], "asgml_config")
        assert ckpt["asgml_config"]["method"]["name"] == "boost_ogm"
        assert set(ckpt["asgml_rng"]) >= {"torch", "numpy", "python"}
        assert "val_acc_best.max_value" in ckpt["state_dict"]
        probe = ckpt["callbacks"]["ProbeMonitor"]
        assert {"probes", "optimizer", "scores", "version", "due"} <= set(probe)
        assert set(ckpt["callbacks"]["ASGMLBoost"]["scales"]) == {"audio", "visual"}


def test_same_seed_gives_the_same_metrics_and_parameters(runs: Path) -> None:
    ma = json.loads((runs / "full" / "metrics.json").read_text())
    mb = json.loads((runs / "full_again" / "metrics.json").read_text())
    assert ma["metrics"] and ma["metrics"] == mb["metrics"]
    assert ma["val_acc_best"] == mb["val_acc_best"]
    _assert_same_tensors(
        _ckpt(runs / "full")["state_dict"], _ckpt(runs / "full_again")["state_dict"]
    )
    assert _logged(runs / "full") == _logged(runs / "full_again")


@pytest.mark.slow
def test_cli_resumes_from_last_ckpt(runs: Path, tmp_path: Path) -> None:
    """``python -m asgml.train ... ckpt_path=<last.ckpt>`` continues to the same weights."""
    last = runs / "first" / "checkpoints" / "last.ckpt"
    cmd = [
        sys.executable,
        "-m",
        "asgml.train",
        f"hydra.run.dir={tmp_path}",
        *FAST,
        *BASE,
        f"ckpt_path={last}",
    ]
    # the same intra-op thread count as this process: CPU kernels then reduce alike
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Restored all states from the checkpoint" in res.stdout + res.stderr
    resumed = _ckpt(tmp_path)
    assert resumed["global_step"] == 6
    _assert_same_tensors(_ckpt(runs / "full")["state_dict"], resumed["state_dict"])
