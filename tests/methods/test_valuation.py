"""Sample-level modality valuation: Shapley contributions, copy bands, train-set plans,
the masked training step, the valuation pass, end-to-end runs and resume."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from asgml.core.step_plan import StepPlan
from asgml.core.train_set_plan import PRESENT_KEY, PlannedDataset, TrainSetPlan
from asgml.methods.valuation import (
    SampleValuation,
    band_copies,
    modality_level_plan,
    sample_level_plan,
    sample_shapley,
    subset_correct,
    subset_values,
)
from asgml.report.shapley import shapley_values
from asgml.train import run
from tests.helpers import GradRecorder, fit, tiny_mlp_module, vector_loader
from tests.methods.resume_check import assert_resume_exact


def _official_two_modality(all_ok: bool, a_ok: bool, v_ok: bool) -> tuple[float, float]:
    """code/sample_level.py:execute_modulation, written out as the official does it."""
    value_all = 2.0 if all_ok else 0.0
    value_a = 1.0 if a_ok else 0.0
    value_v = 1.0 if v_ok else 0.0
    return (value_a + value_all - value_v) / 2.0, (value_v + value_all - value_a) / 2.0


def test_two_modality_contributions_equal_the_official_formula() -> None:
    cases = list(itertools.product([False, True], repeat=3))  # (all, a, v)
    correct = torch.zeros(len(cases), 4, dtype=torch.bool)  # bit 0: audio, bit 1: visual
    for i, (all_ok, a_ok, v_ok) in enumerate(cases):
        correct[i, 0b01], correct[i, 0b10], correct[i, 0b11] = a_ok, v_ok, all_ok
    correct[:, 0] = True  # the empty subset is worth 0 whatever it predicts
    phi = sample_shapley(subset_values(correct), 2)
    expect = torch.tensor([_official_two_modality(*c) for c in cases], dtype=torch.float64)
    assert torch.equal(phi, expect)
    # e.g. fused right, only visual right alone: audio 0.5, visual 1.5
    assert phi[cases.index((True, False, True))].tolist() == [0.5, 1.5]


def test_three_modality_contributions_hand_computed() -> None:
    # only {a} and {a, b, c} right: v(a) = 1, v(abc) = 3, all else 0
    correct = torch.zeros(1, 8, dtype=torch.bool)
    correct[0, 0b001] = correct[0, 0b111] = True
    phi = sample_shapley(subset_values(correct), 3)[0]
    # a: 1/3 (v(a) - 0) + 1/3 (v(abc) - v(bc)) = 1/3 + 1 ; b: 1/3 (3 - v(ac)) + 1/6 (v(ab) - v(a))
    assert phi.tolist() == pytest.approx([4 / 3, 5 / 6, 5 / 6], abs=1e-12)
    assert float(phi.sum()) == pytest.approx(3.0)  # efficiency: v(N) - v(empty)


def test_contributions_agree_with_the_library_shapley() -> None:
    g = torch.Generator().manual_seed(0)
    correct = torch.rand(5, 8, generator=g) > 0.5
    values = subset_values(correct)
    phi = sample_shapley(values, 3)
    mods = ["a", "b", "c"]
    for i in range(5):

        def v(s, i=i):
            return float(values[i, sum(1 << k for k, m in enumerate(mods) if m in s)])

        ref = shapley_values(v, mods)
        assert phi[i].tolist() == pytest.approx([ref[m] for m in mods], abs=1e-12)


def test_copy_bands_are_the_official_strict_inequalities() -> None:
    contrib = torch.tensor(
        [[-0.5, 0.0], [0.5, 1.0], [1.5, 0.4], [-0.1, 0.99], [0.41, -0.11]], dtype=torch.float64
    )
    # 0.4 < c < 1 -> 1; -0.1 < c < 0.4 -> 2; c < -0.1 -> 3; the boundaries 0.4, -0.1, >= 1 -> 0
    expect = torch.tensor([[3, 2], [1, 0], [0, 0], [0, 1], [1, 3]])
    assert torch.equal(band_copies(contrib), expect)
    assert torch.equal(band_copies(contrib, [[None, None, 7]]), torch.full((5, 2), 7))


def test_sample_plan_adds_single_modality_copies_and_keeps_the_originals() -> None:
    copies = torch.tensor([[1, 0], [0, 2], [0, 0]])
    plan = sample_level_plan(copies, ["audio", "visual"])
    assert plan.indices.tolist() == [0, 1, 2, 0, 1, 1]
    assert plan.present.tolist() == [
        [True, True],
        [True, True],
        [True, True],
        [True, False],  # sample 0, audio enhanced: only audio present
        [False, True],  # sample 1, visual enhanced twice
        [False, True],
    ]


def test_modality_plan_hand_computed() -> None:
    # every sample: audio 1.5, visual -0.5 -> gaps -0.5 / 1.5, d = 2 * 2/3 = 4/3, 13 copies
    contrib = torch.tensor([[1.5, -0.5]] * 10, dtype=torch.float64)
    plan, part, d = modality_level_plan(
        contrib, ["audio", "visual"], 0.2, 1.0, torch.Generator().manual_seed(0)
    )
    assert part.tolist() == [1.5, -0.5] and d == pytest.approx(4 / 3)
    assert len(plan) == 10 + 13
    assert plan.present[:10].all() and plan.present[10:].tolist() == [[False, True]] * 13
    plan, _, d = modality_level_plan(
        contrib, ["audio", "visual"], 0.2, 0.5, torch.Generator().manual_seed(0)
    )
    assert d == pytest.approx(2 / 3) and len(plan) == 10 + 6  # int(2/3 * 10)
    # equal contributions: nothing is resampled
    plan, _, d = modality_level_plan(
        torch.zeros(10, 2, dtype=torch.float64), ["a", "b"], 0.2, 1.0, torch.Generator()
    )
    assert d == 0.0 and len(plan) == 10


def test_planned_dataset_items_and_bad_plans() -> None:
    base = vector_loader(n=4).dataset
    plan = sample_level_plan(torch.tensor([[0, 0], [2, 0], [0, 0], [0, 1]]), ["audio", "visual"])
    ds = PlannedDataset(base, plan)
    assert len(ds) == 7
    for j in range(7):
        item, ref = ds[j], base[int(plan.indices[j])]
        assert torch.equal(item["audio"], ref["audio"]) and item["label"] == ref["label"]
        assert item[PRESENT_KEY].tolist() == plan.present[j].float().tolist()
    with pytest.raises(ValueError, match="the train split has 4 items"):
        PlannedDataset(base, TrainSetPlan.identity(5, ["audio", "visual"]))
    bad = TrainSetPlan(torch.tensor([0]), torch.tensor([[False, False]]), ("audio", "visual"))
    with pytest.raises(ValueError, match="every modality absent"):
        PlannedDataset(base, bad)


def _grads(plan: TrainSetPlan | None) -> dict[str, torch.Tensor]:
    base = vector_loader(n=8, batch_size=8).dataset
    ds = base if plan is None else PlannedDataset(base, plan)
    module = tiny_mlp_module()
    rec = GradRecorder()
    fit(module, DataLoader(ds, batch_size=8, shuffle=False), [rec], max_steps=1)
    return rec.grads[0]


def test_absent_modalities_are_zeroed_and_present_ones_unchanged() -> None:
    mods = ["audio", "visual"]
    plain = _grads(None)
    ident = _grads(TrainSetPlan.identity(8, mods))
    assert plain.keys() == ident.keys()
    for k in plain:  # an all-present plan trains exactly as the plain split
        assert torch.equal(plain[k], ident[k]), k
    only_audio = TrainSetPlan(torch.arange(8), torch.tensor([[True, False]] * 8), tuple(mods))
    g = _grads(only_audio)
    vis = [k for k in g if k.startswith("encoders.visual.")]
    aud = [k for k in g if k.startswith("encoders.audio.")]
    assert vis and all(float(g[k].abs().max()) == 0.0 for k in vis)
    assert all(float(g[k].abs().max()) > 0.0 for k in aud)


def test_masked_logits_are_the_fusion_of_zeroed_features() -> None:
    module = tiny_mlp_module()
    batch = next(iter(vector_loader(n=4, batch_size=4)))
    batch[PRESENT_KEY] = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    module.trainer = None  # planned_forward outside a fit: no callbacks
    module._balancing_callbacks = lambda: []
    inputs, lengths, _ = module.split_batch(batch)
    logits, _, feats = module.planned_forward(
        inputs, lengths, StepPlan.default(module.modalities), batch
    )
    plain, _, _ = module(inputs, lengths)
    assert torch.equal(logits[[0, 3]], plain[[0, 3]])  # unaffected samples: unchanged
    a, v = feats["audio"], feats["visual"]
    only_a = module.fusion({"audio": a[1:2], "visual": torch.zeros_like(v[1:2])})
    only_v = module.fusion({"audio": torch.zeros_like(a[2:3]), "visual": v[2:3]})
    assert torch.allclose(logits[1:2], only_a) and torch.allclose(logits[2:3], only_v)


def test_valuation_pass_shards_ranks_and_matches_direct_computation() -> None:
    module = tiny_mlp_module()
    ds = vector_loader(n=10).dataset
    full_batch = next(iter(DataLoader(ds, batch_size=10)))
    module.eval()
    direct = sample_shapley(subset_values(subset_correct(module, full_batch)), 2)
    module.train()
    cb = SampleValuation(batch_size=3)
    dm = SimpleNamespace(batch_size=4, num_workers=0)
    one = cb.value(SimpleNamespace(world_size=1, global_rank=0, datamodule=dm), module, ds)
    assert torch.equal(one, direct) and module.training
    # two ranks: each values every other sample; the reduction sums the two halves
    halves = []
    for r in range(2):
        strategy = SimpleNamespace(reduce=lambda t, reduce_op: t)  # the rank's own part
        tr = SimpleNamespace(world_size=2, global_rank=r, datamodule=dm, strategy=strategy)
        halves.append(cb.value(tr, module, ds))
    assert torch.equal(halves[0][1::2], torch.zeros(5, 2, dtype=torch.float64))
    assert torch.equal(halves[0] + halves[1], direct)


def test_warmup_and_a_stored_plan_for_the_current_epoch() -> None:
    cb = SampleValuation(warmup=2)
    logged = []
    cb.log_now = lambda trainer, metrics: logged.append(metrics)
    module = tiny_mlp_module()
    ds = vector_loader(n=6).dataset
    dm = SimpleNamespace(batch_size=4, num_workers=0, eval_view=lambda split: ds)
    trainer = SimpleNamespace(current_epoch=1, world_size=1, global_rank=0, datamodule=dm)
    assert cb.on_train_set_plan(trainer, module, dm) is None  # warm-up epoch
    trainer.current_epoch = 2
    plan = cb.on_train_set_plan(trainer, module, dm)
    assert plan is not None and cb.plan_epoch == 2 and len(logged) == 1
    expect = sample_level_plan(band_copies(cb.contributions), module.modalities)
    assert torch.equal(plan.indices, expect.indices)
    assert logged[0]["valuation/train_size"] == len(plan)
    copies = band_copies(cb.contributions)
    assert logged[0]["valuation/copies_audio"] == float(copies[:, 0].sum())
    # resumed inside epoch 2: the stored plan, no new valuation (the weights moved since)
    again = SampleValuation(warmup=2)
    again.load_state_dict(cb.state_dict())
    dm.eval_view = None  # would fail if it valued again
    assert torch.equal(again.on_train_set_plan(trainer, module, dm).present, plan.present)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="method.valuation.mode"):
        SampleValuation(mode="global")
    with pytest.raises(ValueError, match="method.valuation.bands"):
        SampleValuation(bands=[[0.0, 1.0]])
    with pytest.raises(ValueError, match="method.valuation.part_ratio"):
        SampleValuation(part_ratio=0.0)
    module = tiny_mlp_module()
    with pytest.raises(ValueError, match="needs a datamodule"):
        fit(module, vector_loader(), [SampleValuation()], max_steps=1)


def _logged(run_dir: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    return [r for r in rows if r.get("valuation/train_size")]


THREE = ["dataset.num_modalities=3"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sample", "modality"])
@pytest.mark.parametrize("extra", [[], THREE])
def test_runs_end_to_end(make_cfg, tmp_path: Path, extra, mode) -> None:
    cfg = make_cfg(
        ["method=sample_valuation", "method.valuation.warmup=0", f"method.valuation.mode={mode}"]
        + extra
    )
    m = run(cfg)
    assert m["metrics"]["test/acc"] >= 0
    rows = _logged(tmp_path)
    assert len(rows) == 1  # one planned epoch
    n = 3 if extra else 2
    assert all(rows[0].get(f"valuation/contribution_{k}") for k in ["audio", "visual", "text"][:n])
    copies = sum(float(r) for k, r in rows[0].items() if k.startswith("valuation/copies_") and r)
    assert float(rows[0]["valuation/train_size"]) == 96 + copies


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sample", "modality"])
def test_resume_is_exact(tmp_path: Path, mode: str) -> None:
    overrides = [
        "method=sample_valuation",
        "method.valuation.warmup=1",
        f"method.valuation.mode={mode}",
    ]
    full = assert_resume_exact(tmp_path, overrides, "SampleValuation", epochs=3)
    state = full["callbacks"]["SampleValuation"]
    assert state["plan_epoch"] == 2 and state["plan"] is not None


def test_modality_plan_three_modalities_tie_keeps_the_later() -> None:
    # gaps 1, 1, -0.5: a tie between a and b -> b (the official keeps the later one, visual)
    contrib = torch.tensor([[0.0, 0.0, 1.5]] * 6, dtype=torch.float64)
    plan, _, d = modality_level_plan(
        contrib, ["a", "b", "c"], 0.5, 1.0, torch.Generator().manual_seed(0)
    )
    assert d == pytest.approx(1.0) and len(plan) == 12
    assert plan.present[6:].tolist() == [[False, True, False]] * 6
