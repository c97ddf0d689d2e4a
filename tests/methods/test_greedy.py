"""Greedy: relative gradient energy, BDR and decision, the gated step, re-balancing steps,
end-to-end and resume."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asgml.core.module import MultimodalModule
from asgml.methods.greedy import (
    MMTM,
    Greedy,
    GreedyMMTM,
    greedy_bdr,
    greedy_decision,
    relative_grad_energy,
)
from asgml.models.encoders import MLPEncoder
from asgml.train import run
from tests.helpers import (
    GradRecorder,
    NaNLossAt,
    StateAfterStep,
    fit,
    tiny_mlp_module,
    vector_loader,
)
from tests.methods.resume_check import assert_resume_exact


def test_relative_grad_energy_bdr_and_decision_hand_computed() -> None:
    a = nn.Parameter(torch.tensor([1.0, 2.0]))
    b = nn.Parameter(torch.tensor([2.0]))
    a.grad = torch.tensor([0.5, 0.5])
    # (0.25 + 0.25 + 0) / (1 + 4 + 4); b has no gradient
    assert relative_grad_energy([a, b]) == pytest.approx(0.5 / 9)
    assert relative_grad_energy([a, b], grad_scale=2.0) == pytest.approx(0.5 / 9 / 4)
    bdr = greedy_bdr([1.0, 0.1], [0.1, 1.0])
    assert bdr == pytest.approx([1.0, -1.0])
    assert greedy_decision(bdr, 0.01) == (pytest.approx(2.0), 0)
    assert greedy_decision([-0.5, 0.5], 0.01) == (pytest.approx(-1.0), 1)
    assert greedy_decision([0.2, 0.195], 0.01)[1] is None  # |d| <= epsilon: no window
    d, c = greedy_decision([0.1, 0.7, -0.2], 0.5)  # N = 3: max - min, argmax cares
    assert d == pytest.approx(0.9) and c == 1
    assert greedy_decision([math.nan, 0.0], 0.01)[1] is None


def test_mmtm_gates_hand_computed() -> None:
    mmtm = GreedyMMTM({"a": 1, "b": 1}, ratio=4.0)  # hidden = int(2 * 2 / 4) = 1
    with torch.no_grad():
        mmtm.squeeze.weight.copy_(torch.tensor([[1.0, -1.0]]))
        mmtm.squeeze.bias.fill_(0.5)
        mmtm.excite["a"].weight.fill_(2.0)
        mmtm.excite["a"].bias.fill_(0.0)
        mmtm.excite["b"].weight.fill_(-1.0)
        mmtm.excite["b"].bias.fill_(1.0)
    g = mmtm({"a": torch.tensor([[3.0]]), "b": torch.tensor([[1.0]])})
    e = 3.0 - 1.0 + 0.5
    assert g["a"].item() == pytest.approx(1 / (1 + math.exp(-2 * e)))
    assert g["b"].item() == pytest.approx(1 / (1 + math.exp(-(1 - e))))


def test_running_average_own_and_official() -> None:
    gates = {"a": torch.tensor([[0.2, 0.4], [0.4, 0.8]]), "b": torch.tensor([[1.0, 0.0]] * 2)}
    own = Greedy()
    own.avg_gates, own.avg_count = {"a": torch.tensor([0.0, 0.0]), "b": torch.ones(2)}, 1
    own._update_average(None, ["a", "b"], gates)  # type: ignore[arg-type]
    avg, count = own._pending_avg  # kept once the step is applied
    assert count == 2
    assert torch.allclose(avg["a"], torch.tensor([0.15, 0.3]))  # (0.3 + 0) / 2
    assert torch.allclose(avg["b"], torch.tensor([1.0, 0.5]))
    official = Greedy(running_average="official")  # b reads a's gates (the official typo)
    official._update_average(None, ["a", "b"], gates)  # type: ignore[arg-type]
    assert torch.allclose(official._pending_avg[0]["b"], torch.tensor([0.3, 0.6]))
    with pytest.raises(ValueError, match="running_average=official"):
        encs = {
            m: MLPEncoder(input_dim=4, hidden_dim=8, feature_dim=d) for m, d in [("a", 8), ("b", 6)]
        }
        official.setup(None, MultimodalModule(encs, num_classes=3, fusion="sum"), "fit")  # type: ignore[arg-type]


def _gated_module(fusion: str = "concat"):
    module = tiny_mlp_module(fusion=fusion)
    module.add_module(MMTM, GreedyMMTM(module.feature_dims, ratio=4.0))
    return module


def test_one_step_equals_the_hand_built_gated_loss() -> None:
    module = _gated_module()
    ref = copy.deepcopy(module)
    rec = GradRecorder()
    fit(module, vector_loader(), [Greedy(starting_epoch=0, head="fused"), rec], max_steps=1)

    batch = next(iter(vector_loader()))
    f = ref.encode({m: batch[m] for m in ref.modalities})
    g = getattr(ref, MMTM)(f)
    F.cross_entropy(ref.fusion({m: f[m] * g[m] for m in f}), batch["label"]).backward()
    for n, p in ref.named_parameters():
        assert torch.allclose(rec.grads[0][n], p.grad, atol=1e-6), n


def test_rebalancing_step_freezes_the_caring_gate_only() -> None:
    module = _gated_module()
    ref = copy.deepcopy(module)
    cb = Greedy(starting_epoch=0, window=5, head="fused")
    cb.setup(None, module, "fit")  # type: ignore[arg-type]
    avg = {m: torch.full((8,), 0.3) for m in module.modalities}
    cb.avg_gates, cb.avg_count = copy.deepcopy(avg), 3
    cb.curation, cb.caring = True, 0  # audio cares: its gate is the running average
    rec = GradRecorder()
    fit(module, vector_loader(), [cb, rec], max_steps=1)
    grads = rec.grads[0]
    assert "greedy_mmtm.excite.audio.weight" not in grads  # the frozen gate gets nothing
    assert grads["greedy_mmtm.excite.visual.weight"].abs().sum() > 0

    batch = next(iter(vector_loader()))
    f = ref.encode({m: batch[m] for m in ref.modalities})
    g = getattr(ref, MMTM)(f)
    new_audio = g["audio"].detach().mean(0)
    frozen = (new_audio + 0.3 * 3) / 4  # running average including this batch
    scaled = {"audio": f["audio"] * frozen, "visual": f["visual"] * g["visual"]}
    F.cross_entropy(ref.fusion(scaled), batch["label"]).backward()
    for n, p in ref.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[n], p.grad, atol=1e-6), n
    assert cb.curation_step == 1 and cb.curation  # one of five window steps used


class _Modes(L.Callback):
    def __init__(self, cb: Greedy) -> None:
        self.cb, self.modes = cb, []

    def on_train_batch_start(self, trainer, pl_module, batch, i) -> None:
        self.modes.append(self.cb.curation)


def test_windows_follow_the_decision() -> None:
    cb = Greedy(epsilon=0.0, window=2, starting_epoch=0, head="fused")
    modes = _Modes(cb)
    fit(_gated_module(), vector_loader(n=40), [cb, modes], max_steps=5)
    # measure -> 2 re-balancing steps -> measure -> re-balancing
    assert modes.modes == [False, True, True, False, True]
    late = Greedy(epsilon=0.0, window=2, starting_epoch=2, head="fused")  # from the 2nd epoch
    modes = _Modes(late)
    fit(_gated_module(), vector_loader(n=40), [late, modes], max_steps=4)
    assert modes.modes == [False] * 4 and all(v > 0 for v in late.m_main)


class _OfficialStrong:
    """The control flow of ``Bias_Mitigation_Strong`` (``src/callbacks.py:174-267`` @ a190e03)
    driven as ``src/framework.py:293-313`` does (epochs from 1), with ``|d| > epsilon`` at every
    measurement: which steps run in ``curation_mode``."""

    def __init__(self, window: int, starting_epoch: int) -> None:
        self.window, self.starting_epoch = window, starting_epoch
        self.curation_mode, self.unlock = False, False

    def run(self, epochs: int, steps: int) -> list[bool]:
        modes = []
        for epoch in range(1, epochs + 1):
            if epoch >= self.starting_epoch:  # on_epoch_begin
                self.unlock = True
            for _ in range(steps):
                modes.append(self.curation_mode)  # the forward reads it
                if self.unlock:  # on_backward_end
                    if not self.curation_mode:
                        self.curation_mode, self.curation_step = True, 0
                    else:
                        self.curation_step += 1
                        if self.curation_step == self.window:
                            self.curation_mode = False
                else:
                    self.curation_mode = False
        return modes


def test_rebalancing_starts_in_the_epoch_the_official_loop_does() -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_cfg

    cfg = compose_cfg(["method=greedy", "method.greedy.epsilon=0.0", "method.greedy.window=1"])
    cb = instantiate(cfg.method.greedy)
    assert cb.starting_epoch == 2  # configs/training_guided.gin:16
    modes = _Modes(cb)
    # 3 steps per epoch, 3 epochs; epsilon 0: every measurement starts a window
    fit(
        _gated_module("sum"),
        vector_loader(n=24, batch_size=8),
        [cb, modes],
        max_steps=-1,
        max_epochs=3,
    )
    official = _OfficialStrong(window=1, starting_epoch=2).run(epochs=3, steps=3)
    assert official[:4] == [False] * 4 and official[4]  # 2nd step of the 2nd epoch
    assert modes.modes == official


def test_branch_loss_is_the_sum_of_branch_ces_and_the_prediction_their_mean() -> None:
    module = _gated_module("sum")
    ref = copy.deepcopy(module)
    rec = GradRecorder()
    fit(module, vector_loader(), [Greedy(starting_epoch=0), rec], max_steps=1)
    batch = next(iter(vector_loader()))
    f = ref.encode({m: batch[m] for m in ref.modalities})
    g = getattr(ref, MMTM)(f)
    # train.py:22-28 (blend_loss): sum of the per-branch CEs, each branch with its own fc
    loss = sum(F.cross_entropy(ref.fusion.fc[m](f[m] * g[m]), batch["label"]) for m in f)
    loss.backward()
    for n, p in ref.named_parameters():
        assert torch.allclose(rec.grads[0][n], p.grad, atol=1e-6), n
    # evaluation: the mean of the branch logits (src/model.py:108); unimodal = gated branches
    cb = Greedy(eval_state="live")
    cb.setup(None, ref, "fit")  # type: ignore[arg-type]
    with torch.no_grad():
        logits, uni, feats = ref({m: batch[m] for m in ref.modalities})
        out = cb.on_eval_logits(None, ref, logits, uni, feats)
        g = getattr(ref, MMTM)(feats)
        branch = {m: ref.fusion.fc[m](feats[m] * g[m]) for m in feats}
    assert torch.allclose(out, (branch["audio"] + branch["visual"]) / 2)
    assert torch.allclose(uni["visual"], branch["visual"])


def test_evaluation_keeps_the_last_training_steps_rebalancing_state() -> None:
    module = _gated_module("sum")
    batch = next(iter(vector_loader()))
    feats = module.encode({m: batch[m] for m in module.modalities})
    with torch.no_grad():
        g = getattr(module, MMTM)(feats)
        avg = torch.full((8,), 0.3)
        outs = {}
        for state in ("training", "live"):
            cb = Greedy(eval_state=state)
            cb.setup(None, module, "fit")  # type: ignore[arg-type]
            cb.curation, cb.caring = True, 1  # inside a window, visual cares
            cb.avg_gates = {"audio": torch.full((8,), 0.9), "visual": avg}
            outs[state] = cb.on_eval_logits(None, module, *module.heads(feats), feats)
        frozen = module.fusion.fc["visual"](feats["visual"] * avg)
        live = module.fusion.fc["visual"](feats["visual"] * g["visual"])
        audio = module.fusion.fc["audio"](feats["audio"] * g["audio"])
    assert torch.allclose(outs["training"], (audio + frozen) / 2)
    assert torch.allclose(outs["live"], (audio + live) / 2)
    cb = Greedy()
    cb.setup(None, module, "fit")  # type: ignore[arg-type]
    cb.curation, cb.caring = False, 1  # outside a window: live gates either way
    cb.avg_gates = {"audio": torch.full((8,), 0.9), "visual": avg}
    with torch.no_grad():
        assert torch.allclose(
            cb.on_eval_logits(None, module, *module.heads(feats), feats), outs["live"]
        )


def test_branches_need_the_sum_head() -> None:
    with pytest.raises(ValueError, match="model.fusion=sum"):
        Greedy().setup(None, _gated_module("concat"), "fit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model.gamma=0"):
        Greedy().setup(None, tiny_mlp_module(fusion="sum", gamma=0.5), "fit")  # type: ignore[arg-type]


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="method.greedy.window"):
        Greedy(window=0)
    with pytest.raises(ValueError, match="method.greedy.running_average"):
        Greedy(running_average="mine")
    with pytest.raises(ValueError, match="method.greedy.head"):
        Greedy(head="concat")
    with pytest.raises(ValueError, match="method.greedy.eval_state"):
        Greedy(eval_state="eval")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=greedy", "method.greedy.starting_epoch=0", *extra]))
    assert m["metrics"]["test/acc"] >= 0


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    full = assert_resume_exact(
        tmp_path, ["method=greedy", "method.greedy.starting_epoch=0"], "Greedy"
    )
    assert full["callbacks"]["Greedy"]["avg_count"] > 0


def test_plain_ddp_is_refused_with_the_strategy_to_use() -> None:
    plain = SimpleNamespace(world_size=2, strategy=SimpleNamespace(_ddp_kwargs={}))
    with pytest.raises(ValueError, match="Greedy under DDP needs"):
        Greedy().setup(plain, tiny_mlp_module(), "fit")


def test_a_skipped_step_leaves_the_statistics_unchanged() -> None:
    cb = Greedy(epsilon=10.0, starting_epoch=0, head="fused")  # never re-balancing
    snaps = StateAfterStep(cb)
    with pytest.warns(UserWarning, match="non-finite"):
        fit(_gated_module(), vector_loader(), [NaNLossAt({1}), cb, snaps], max_steps=2)
    before, skipped, after = snaps.states
    for key in ("m_bypass", "m_main", "avg_count"):
        assert skipped[key] == before[key], key
        assert after[key] != skipped[key], key  # the next applied step does count
    for m in before["avg_gates"]:
        assert torch.equal(skipped["avg_gates"][m], before["avg_gates"][m]), m
    assert skipped["nonfinite_steps"] == 1
