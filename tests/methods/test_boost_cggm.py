"""boost + CGGM composed by config alone: order and an end-to-end run."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from asgml.methods.boost import ASGMLBoost
from asgml.methods.cggm import CGGM
from asgml.methods.probe import ProbeMonitor
from asgml.run.config import method_callback_configs
from asgml.train import run
from tests.conftest import compose_cfg


def test_composes_throttle_then_probe_then_boost() -> None:
    cfg = compose_cfg(["method=boost_cggm"])
    assert cfg.method.name == "boost_cggm"
    assert [k for k, _ in method_callback_configs(cfg.method)] == ["cggm", "probe", "boost"]
    cbs = [instantiate(c) for _, c in method_callback_configs(cfg.method)]
    assert [type(c) for c in cbs] == [CGGM, ProbeMonitor, ASGMLBoost]
    # options of either part stay overridable
    cfg = compose_cfg(["method=boost_cggm", "method.cggm.rou=1.0", "method.boost.alpha=0.3"])
    assert cfg.method.cggm.rou == 1.0 and cfg.method.boost.alpha == 0.3


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=boost_cggm", *extra]))
    assert m["metrics"]["test/acc"] >= 0
