"""diagnostics=probes|full: a pure observer of any method (asgml/methods/diagnostics.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from asgml.methods.diagnostics import (
    ImbalanceDiagnostics,
    ratio_to_mean,
    ratio_to_others,
    subsets,
)
from asgml.train import run
from tests.conftest import compose_cfg
from tests.helpers import fit, tiny_mlp_module, vector_loader
from tests.methods.resume_check import assert_resume_exact

# three modalities: the text encoder (MLP) has dropout 0.1; the train loader shuffles; OGM-GE
# draws its noise from the global RNG -- all three would expose a draw by the observer
# (text features as wide as the others: MLA and ReconBoost share one head across modalities)
RANDOM = [
    "dataset.num_modalities=3",
    "dataset.encoder_choices.text.feature_dim=64",
    "test=false",
    "trainer.limit_val_batches=1",
]
OBSERVE = [
    "diagnostics=full",
    "diagnostics.callback.eval_freq=1",
    "diagnostics.callback.probe_train_steps=2",
    "diagnostics.callback.tsne=false",
]


def _weights(tmp: Path, name: str, overrides: list[str]) -> dict[str, torch.Tensor]:
    run(compose_cfg([*RANDOM, *overrides], output_dir=tmp / name))
    return torch.load(tmp / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["baseline", "ogm", "agm", "mmpareto", "mla", "reconboost"])
def test_training_is_bitwise_unchanged(tmp_path: Path, method: str) -> None:
    plain = _weights(tmp_path, "plain", [f"method={method}"])
    watched = _weights(tmp_path, "watched", [f"method={method}", *OBSERVE])
    assert plain.keys() == watched.keys()
    for k in plain:
        assert torch.equal(plain[k], watched[k]), k
    logged = pd.read_csv(tmp_path / "watched" / "csv" / "metrics.csv")
    assert logged["diag/probe_gap"].notna().sum() == 3  # the observer measured every step
    for m in ("audio", "visual", "text"):  # each modality when forwarded (MLA: on its turn)
        assert logged[f"diag/probe_acc_{m}"].notna().sum() >= 1
        assert logged[f"diag/grad_norm_{m}"].notna().sum() == 3


class _LeakyDiagnostics(ImbalanceDiagnostics):
    """Draws one number from the global RNG per measurement: what must never happen."""

    def measure_probes(self, trainer, features, labels):
        torch.rand(1)
        return super().measure_probes(trainer, features, labels)


def test_a_global_rng_draw_would_be_caught() -> None:
    """The bitwise test can fail: an observer that draws from the global RNG changes
    training (dropout 0.5 in the encoders, shuffled loader)."""

    def train(cbs):
        torch.manual_seed(0)
        module = tiny_mlp_module()
        for enc in module.encoders.values():
            enc.net[2].p = 0.5  # Linear-ReLU-Dropout-...
        loader = vector_loader(batch_size=8)
        loader = torch.utils.data.DataLoader(loader.dataset, batch_size=8, shuffle=True)
        fit(module, loader, cbs, max_steps=6)
        return [p.detach().clone() for p in module.parameters()]

    base = train([])
    clean = train([ImbalanceDiagnostics(eval_freq=1, probe_train_steps=2, grad_norm=True)])
    leaky = train([_LeakyDiagnostics(eval_freq=1, probe_train_steps=2)])
    assert all(torch.equal(a, b) for a, b in zip(base, clean))
    assert not all(torch.equal(a, b) for a, b in zip(base, leaky))


def test_probe_numbers_equal_the_boost_monitor(tmp_path: Path) -> None:
    """Same seed and settings: the observer's probes score exactly as ``method.probe``."""
    run(
        compose_cfg(
            [
                "method=boost",
                "method.probe.eval_freq=2",
                "diagnostics=probes",
                "diagnostics.callback.eval_freq=2",
                "test=false",
            ],
            output_dir=tmp_path,
        )
    )
    df = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    for m in ("audio", "visual"):
        a = df.groupby("step")[f"diag/probe_acc_{m}"].max().dropna()
        b = df.groupby("step")[f"probe/acc_{m}"].max().dropna()
        assert list(a.index) == list(b.index) == [0, 2]
        assert a.tolist() == b.tolist()
    gap = df.groupby("step")["diag/probe_gap"].max().dropna()
    accs = df.groupby("step")[["diag/probe_acc_audio", "diag/probe_acc_visual"]].max().dropna()
    assert gap.tolist() == pytest.approx((accs.max(axis=1) - accs.min(axis=1)).tolist())


def test_full_set_subset_accuracy_is_the_validation_accuracy(tmp_path: Path) -> None:
    """The all-modalities coalition is the fused validation accuracy; each subset is the
    fusion head's accuracy with the absent modalities' features zeroed."""
    run(
        compose_cfg(
            ["diagnostics=full", "diagnostics.callback.tsne=false", "test=false"],
            output_dir=tmp_path,
        )
    )
    df = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    full = df["diag/subset_acc_audio+visual"].dropna().tolist()
    val = df["val/acc"].dropna().tolist()
    assert len(full) == len(val) == 1
    assert full[0] == pytest.approx(val[0], abs=1e-6)
    assert df["diag/subset_acc_audio"].notna().sum() == 1
    cost = (tmp_path / "diagnostics" / "cost.json").read_text()
    assert '"flops_per_step"' in cost


def test_subset_accuracy_on_fixed_features() -> None:
    """on_eval_logits zeroes the absent modalities' features, returns the logits unchanged."""
    module = tiny_mlp_module(("a", "b", "c"))
    diag = ImbalanceDiagnostics(probes=False, shapley=True)

    class T:
        validating, sanity_checking, is_global_zero = True, False, True

    feats = {
        m: torch.randn(5, 8, generator=torch.Generator().manual_seed(i))
        for i, m in enumerate("abc")
    }
    logits = torch.randn(5, 3)
    assert diag.on_eval_logits(T(), module, logits, {}, feats) is logits
    preds = diag._subset_preds[0]
    assert list(preds) == subsets(["a", "b", "c"])
    assert len(preds) == 8 and list(preds)[0] == () and list(preds)[-1] == ("a", "b", "c")
    with torch.no_grad():
        only_b = module.fusion({"a": torch.zeros(5, 8), "b": feats["b"], "c": torch.zeros(5, 8)})
    assert torch.equal(preds[("b",)], only_b.argmax(1))


def test_cost_counts_the_step_flops(tmp_path) -> None:
    """FLOPs of one step of a tiny MLP model, by hand: 2*B*in*out per matmul; backward
    computes each layer's weight gradient and (except the first layers) its input gradient."""
    module = tiny_mlp_module()  # 2 x [Linear(4, 8) ReLU Dropout Linear(8, 8) ReLU], Linear(16, 3)
    # probes on at the counted step: their own fit must not be counted
    diag = ImbalanceDiagnostics(probes=True, eval_freq=1, cost=True)
    fit(module, vector_loader(batch_size=8), [diag], max_steps=2, default_root_dir=tmp_path)
    b = 8
    fwd = 2 * (2 * b * 4 * 8 + 2 * b * 8 * 8) + 2 * b * 16 * 3
    fwd += 2 * (2 * b * 8 * 3)  # the unimodal logits (fusion-weight slices; no loss: gamma=0)
    bwd = 2 * (2 * b * 4 * 8 + 2 * 2 * b * 8 * 8) + 2 * 2 * b * 16 * 3
    assert diag.cost_result["flops_per_step"] == fwd + bwd
    assert diag.cost_result["params"] == sum(p.numel() for p in module.parameters())
    assert diag.cost_done
    written = (tmp_path / "diagnostics" / "cost.json").read_text()
    assert f'"flops_per_step": {fwd + bwd}' in written


def test_ratios_on_fixed_values() -> None:
    assert ratio_to_others({"a": 0.6, "v": 0.3}) == {"a": 2.0, "v": 0.5}  # OGM-GE's ratio
    r = ratio_to_others({"a": 0.6, "v": 0.3, "t": 0.3})
    assert r["a"] == pytest.approx(2.0) and r["v"] == pytest.approx(0.3 / 0.45)
    assert ratio_to_mean({"a": 3.0, "v": 1.0}) == {"a": 1.5, "v": 0.5}


def test_grad_norm_and_ogm_score_on_a_step() -> None:
    module = tiny_mlp_module(("a", "b", "c"))
    diag = ImbalanceDiagnostics(probes=False, grad_norm=True, ogm_score=True, eval_freq=1)
    seen = []
    diag.log_now = lambda trainer, m: seen.append(dict(m))  # type: ignore[method-assign]
    fit(module, vector_loader(("a", "b", "c"), batch_size=8), [diag], max_steps=1)
    got = seen[0]
    norms = [got[f"diag/grad_norm_{m}"] for m in "abc"]
    assert all(n > 0 for n in norms)
    assert got["diag/grad_ratio_a"] == pytest.approx(3 * norms[0] / sum(norms))
    s = [got[f"diag/ogm_score_{m}"] for m in "abc"]
    assert all(0 < v < 1 for v in s)
    assert got["diag/ogm_ratio_b"] == pytest.approx(s[1] / ((s[0] + s[2]) / 2))


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ValueError, match="eval_freq must be an integer >= 1"):
        ImbalanceDiagnostics(eval_freq=0)
    with pytest.raises(ValueError, match="tsne must be true, false or auto"):
        ImbalanceDiagnostics(tsne="yes")


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    assert_resume_exact(
        tmp_path,
        ["method=ogm", *OBSERVE[:3], "trainer.limit_val_batches=1"],
        "ImbalanceDiagnostics",
    )


def test_probes_measure_the_modalities_a_step_forwards() -> None:
    """A method may forward a subset of the modalities (ReconBoost's stages, unimodal): the
    probes of the others are neither trained nor scored at that step."""
    from asgml.core.base import BalancingCallback

    class OnlyA(BalancingCallback):
        def on_step_plan(self, trainer, module, plan, batch):
            plan.forward = {"a"}

    diag = ImbalanceDiagnostics(eval_freq=1, probe_train_steps=2)
    seen = []
    diag.log_now = lambda trainer, m: seen.append(dict(m))  # type: ignore[method-assign]
    fit(tiny_mlp_module(("a", "b")), vector_loader(("a", "b"), batch_size=8), [OnlyA(), diag], 1)
    assert "diag/probe_acc_a" in seen[0] and "diag/probe_acc_b" not in seen[0]
    assert seen[0]["diag/probe_gap"] == 0.0
