"""ReLearning: purity, weights, the soft re-initialisation, end-to-end and resume."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from asgml.methods.relearning import (
    ReLearning,
    cluster_purity,
    purity,
    relearn_weight,
    soft_reinit_,
)
from asgml.train import run
from tests.helpers import tiny_mlp_module, vector_loader
from tests.methods.resume_check import assert_resume_exact


def test_purity_and_weight_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2])
    clusters = np.array([5, 5, 5, 7, 7, 7])  # majorities: 0 (2 of 3), 1 (2 of 3)
    assert purity(labels, clusters) == pytest.approx(4 / 6)
    assert relearn_weight(0.9, 0.6, 3.0) == pytest.approx(math.tanh(0.9))
    # two well separated blobs per class: k-means recovers them exactly
    x = np.concatenate([np.zeros((5, 2)), np.full((5, 2), 10.0)])
    y = np.array([0] * 5 + [1] * 5)
    assert cluster_purity(x, y, 2) == 1.0


def test_kmeans_restarts_default_to_the_official_sklearn_default() -> None:
    from hydra.utils import instantiate
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import MinMaxScaler

    from tests.conftest import compose_cfg

    # data on which 10 restarts and one ("auto") cluster differently
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.integers(0, 3, 30)
    scaled = MinMaxScaler(feature_range=(-1, 1)).fit_transform(x)
    # code/ours.py:110 under scikit-learn < 1.4: KMeans(n_clusters, random_state=0), n_init=10
    official = purity(y, KMeans(n_clusters=3, random_state=0, n_init=10).fit_predict(scaled))
    assert cluster_purity(x, y, 3) == official == pytest.approx(13 / 30)
    assert cluster_purity(x, y, 3, n_init="auto") == pytest.approx(12 / 30)
    assert instantiate(compose_cfg(["method=relearning"]).method.relearning).n_init == 10
    with pytest.raises(ValueError, match="method.relearning.n_init"):
        ReLearning(n_init=0)


def test_soft_reinit_hand_computed() -> None:
    p = torch.nn.Parameter(torch.tensor([4.0, 8.0]))
    soft_reinit_({"w": p}, {"w": torch.tensor([0.0, 0.0])}, 0.25)
    assert torch.equal(p.data, torch.tensor([3.0, 6.0]))


def test_reinit_moves_encoders_only_and_by_their_own_weight() -> None:
    module = tiny_mlp_module()
    cb = ReLearning(move_lambda=3.0, reinit_epoch=1, reinit_num=1)
    trainer = SimpleNamespace(
        current_epoch=2,  # after epoch 1 (0-based), the first multiple of reinit_epoch
        datamodule=SimpleNamespace(
            train_dataloader=lambda: vector_loader(n=32), val_dataloader=lambda: vector_loader(n=16)
        ),
        strategy=SimpleNamespace(broadcast=lambda x, src=0: x),
        is_global_zero=True,
        loggers=[],
        global_step=0,
    )
    cb.on_train_start(trainer, module)
    with torch.no_grad():  # pretend training moved everything
        for p in module.parameters():
            p.add_(0.5)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cb.on_train_epoch_start(trainer, module)
    assert cb.done == 1 and len(cb.history) == 1
    rec = cb.history[0]
    for k, v in module.state_dict().items():
        if k.startswith("encoders."):
            m = k.split(".")[1]
            w = rec[f"weight_{m}"]
            init = cb.init[m][k.split(".", 2)[2]]
            assert torch.allclose(v, w * init + (1 - w) * before[k], atol=1e-6), k
        else:
            assert torch.equal(v, before[k]), k
    assert 0 <= rec["weight_audio"] <= 1 and rec["weight_audio"] == pytest.approx(
        math.tanh(3.0 * abs(rec["purity_train_audio"] - rec["purity_val_audio"]))
    )
    trainer.current_epoch = 3
    cb.on_train_epoch_start(trainer, module)  # reinit_num = 1: no second one
    assert cb.done == 1


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    cfg = ["method=relearning", "method.relearning.reinit_epoch=1", "trainer.max_epochs=3"]
    m = run(make_cfg([*cfg, *extra]))
    assert m["metrics"]["test/acc"] >= 0


@pytest.mark.slow
def test_resume_is_exact_across_a_pending_reinit(tmp_path: Path) -> None:
    full = assert_resume_exact(
        tmp_path, ["method=relearning", "method.relearning.reinit_epoch=1"], "ReLearning", epochs=3
    )
    assert full["callbacks"]["ReLearning"]["done"] == 1  # it fired at the start of epoch 2
