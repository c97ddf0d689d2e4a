"""DDP (2 CPU processes, gloo): every modulation coefficient, boost scale and probe score is
identical on all ranks, and so are the parameters at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_boost_ogm_keeps_ranks_identical(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "asgml.train",
        f"hydra.run.dir={tmp_path}",
        "trainer=ddp_cpu",
        "method=boost_ogm",
        *FAST,
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "trainer.log_every_n_steps=1",
        "method.probe.eval_freq=2",
        "test=false",
        "+callbacks.rank_dump._target_=tests.reliability.rank_dump.RankDump",
        f"+callbacks.rank_dump.out_dir={tmp_path}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert res.returncode == 0, res.stderr[-4000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["global_step"] == r1["global_step"] == 6
    # the method's values at every step: OGM-GE coefficients/ratios (from all-reduced
    # scores), probe scores (from all-gathered features) and boost scales
    assert len(r0["steps"]) == len(r1["steps"]) == 6
    assert r0["steps"] == r1["steps"]
    keys = set().union(*r0["steps"])
    assert {"ogm/coeff_audio", "ogm/coeff_visual", "scale_audio", "scale_visual"} <= keys
    assert any(s["scale_audio"] != 1.0 or s["scale_visual"] != 1.0 for s in r0["steps"]), (
        "the boost never acted"
    )
    assert any(s["ogm/coeff_audio"] != 1.0 or s["ogm/coeff_visual"] != 1.0 for s in r0["steps"])
    for name in ("params", "probes"):
        assert r0[name].keys() == r1[name].keys()
        for k, v in r0[name].items():
            assert torch.equal(v, r1[name][k]), f"{name}.{k} differs across ranks"
