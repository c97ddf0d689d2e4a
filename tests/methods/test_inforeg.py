"""InfoReg: PLW statistic, betas, proximal gradient term, Fisher trace, end-to-end runs."""

from __future__ import annotations

import math

import pytest
import torch

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import select_parameters
from asgml.methods.inforeg import (
    InfoReg,
    add_proximal_,
    fisher_trace,
    inforeg_betas,
    inforeg_scores,
    plw_growth,
)
from asgml.train import run
from tests.helpers import fit, tiny_mlp_module, vector_loader


def test_plw_growth_hand_computed() -> None:
    assert plw_growth([0.0] * 10, epoch=0) == 1.0
    # epoch 1: tr1 = 2/10, tr2 = 0 -> k = 1
    assert plw_growth([0.0] * 10 + [2.0], epoch=1) == pytest.approx(1.0)
    # epoch 2: tr1 = (2 + 3)/10 = 0.5, tr2 = 2/10 = 0.2 -> k = 0.6
    assert plw_growth([0.0] * 10 + [2.0, 3.0], epoch=2) == pytest.approx(0.6)
    # a shrinking trace: tr1 = (2 + 3 + 1)/10 = 0.6, tr2 = 0.5 -> k = 1/6
    assert plw_growth([0.0] * 10 + [2.0, 3.0, 1.0], epoch=3) == pytest.approx(1 / 6)
    assert plw_growth([0.0] * 11, epoch=1) == 0.0  # zero trace: no window


def test_scores_and_betas_hand_computed() -> None:
    # softmax([0, ln 3]) = [0.25, 0.75]
    z = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    y = torch.tensor([1, 0])
    s = inforeg_scores({"a": z, "v": z}, y)
    assert s["a"].item() == pytest.approx(1.0)  # 0.75 + 0.25 (summed over the batch)
    assert inforeg_scores({"a": z}, y, "mean")["a"].item() == pytest.approx(0.5)

    scales = {"a": 0.95, "v": 0.1}
    b = inforeg_betas({"a": torch.tensor(3.0), "v": torch.tensor(1.0)}, scales)
    assert b["a"].item() == pytest.approx(0.95 * math.exp(math.tanh(2.0)))  # 2.4911
    assert b["v"].item() == 0.0
    b = inforeg_betas({"a": torch.tensor(1.0), "v": torch.tensor(2.5)}, scales)
    assert b["a"].item() == 0.0
    assert b["v"].item() == pytest.approx(0.1 * math.exp(math.tanh(1.5)))  # 0.2472
    b = inforeg_betas({"a": torch.tensor(2.0), "v": torch.tensor(2.0)}, scales)  # tie
    assert b["a"].item() == 0.0 and b["v"].item() == 0.0
    # N = 3: the gap is to the second-best score
    b = inforeg_betas(
        {"a": torch.tensor(1.0), "v": torch.tensor(4.0), "t": torch.tensor(3.5)},
        {"a": 0.95, "v": 0.1, "t": 0.5},
    )
    assert b["v"].item() == pytest.approx(0.1 * math.exp(math.tanh(0.5)))
    assert b["a"].item() == 0.0 and b["t"].item() == 0.0


def test_add_proximal_and_trace() -> None:
    g = [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])]
    p = [torch.tensor([3.0, 3.0]), torch.tensor([[1.0]])]
    p0 = [torch.tensor([1.0, 4.0]), torch.tensor([[0.0]])]
    add_proximal_(g, p, p0, torch.tensor(0.5))
    assert torch.allclose(g[0], torch.tensor([2.0, 1.5]))  # 1 + 0.5*2, 2 + 0.5*(-1)
    assert torch.allclose(g[1], torch.tensor([[1.0]]))
    # trace = mean([1, 4]) + mean([9]) = 2.5 + 9
    assert fisher_trace([torch.tensor([1.0, 4.0]), torch.tensor([9.0])]).item() == pytest.approx(
        11.5
    )


class _Rec(BalancingCallback):
    """Records grads, encoder params and unimodal logits at on_train_gradients."""

    def __init__(self) -> None:
        self.grads, self.params, self.uni = [], [], []

    def on_train_gradients(self, trainer, pl_module, out) -> None:
        self.grads.append(
            {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        )
        self.params.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})
        self.uni.append(
            ({m: z.detach().clone() for m, z in out.unimodal_logits.items()}, out.labels.clone())
        )


@pytest.mark.parametrize("order", [("audio", "visual"), ("visual", "audio")])
def test_gradient_gets_the_proximal_term_and_fim_is_accumulated(order) -> None:
    # the official constants follow the roles (audio 0.95, visual 0.1), whatever the order
    module = tiny_mlp_module(order, gamma=1.0)
    init = {n: p.detach().clone() for n, p in module.named_parameters()}
    before, after = _Rec(), _Rec()
    cb = InfoReg()
    fit(
        module,
        vector_loader(order, n=24, batch_size=8),
        [before, cb, after],
        max_steps=3,
        max_epochs=1,
    )
    assert len(before.grads) == 3
    assert cb.dominant == "audio" and cb.beta_scales == {"audio": 0.95, "visual": 0.1}
    for step in range(3):
        uni, y = before.uni[step]
        betas = inforeg_betas(inforeg_scores(uni, y), {"audio": 0.95, "visual": 0.1})
        assert sum(float(b > 0) for b in betas.values()) == 1
        for n, g in before.grads[step].items():
            mod = n.split(".")[1] if n.startswith("encoders.") else None
            expected = g.clone()
            if mod is not None:
                expected += betas[mod] * (before.params[step][n] - init[n])
            assert torch.allclose(after.grads[step][n], expected, atol=1e-7), (step, n)
    # one step later parameters moved, so the term is not zero
    enc_a = [n for n in before.grads[2] if n.startswith("encoders.audio")]
    assert any(
        not torch.equal(after.grads[2][n], before.grads[2][n])
        for n in enc_a + [n for n in before.grads[2] if n.startswith("encoders.visual")]
    )
    # Fisher trace of the epoch: sum over steps of grad**2 (after regulation), per weight
    names = {id(p): n for n, p in module.named_parameters()}
    for m in module.modalities:
        ws = [names[id(p)] for p in select_parameters(module.encoders[m], "weights")]
        expected = sum(sum(after.grads[s][n] ** 2 for s in range(3)).mean().item() for n in ws)
        assert cb.trace_lists[m][:10] == [0.0] * 10
        assert cb.trace_lists[m][10] == pytest.approx(expected, rel=1e-5)


def test_outside_window_leaves_gradients_alone() -> None:
    module = tiny_mlp_module(gamma=1.0)
    before, after = _Rec(), _Rec()
    cb = InfoReg(threshold=2.0)  # k <= 1 always: never in the window
    fit(module, vector_loader(n=16, batch_size=8), [before, cb, after], max_steps=2)
    for s in range(2):
        for n, g in before.grads[s].items():
            assert torch.equal(after.grads[s][n], g)


def test_state_dict_roundtrip() -> None:
    cb = InfoReg()
    cb.trace_lists = {"audio": [0.0] * 10 + [1.5], "visual": [0.0] * 11}
    cb.anchors = {"audio": [torch.ones(2)]}
    cb.fim = {"audio": [torch.zeros(2)]}
    cb._epoch = 3
    st = cb.state_dict()
    cb2 = InfoReg()
    cb2.load_state_dict(st)
    assert cb2.trace_lists == cb.trace_lists and cb2._epoch == 3
    assert torch.equal(cb2._restore.pending["anchors"]["audio"][0], torch.ones(2))


@pytest.mark.parametrize("order", [("audio", "visual"), ("visual", "audio")])
def test_roles_do_not_depend_on_the_modality_order(order) -> None:
    cb = InfoReg()
    cb.setup(None, tiny_mlp_module(order), "fit")
    assert cb.dominant == "audio"
    # audio leads by 2: beta_audio = 0.95 exp(tanh 2) = 2.4911; visual leads by 1.5:
    # beta_visual = 0.1 exp(tanh 1.5) = 0.24723 (official main.py @ 939b2ed)
    b = inforeg_betas({"audio": torch.tensor(3.0), "visual": torch.tensor(1.0)}, cb.beta_scales)
    assert b["audio"].item() == pytest.approx(2.49111, rel=1e-5) and b["visual"].item() == 0.0
    b = inforeg_betas({"audio": torch.tensor(1.0), "visual": torch.tensor(2.5)}, cb.beta_scales)
    assert b["visual"].item() == pytest.approx(0.24723, rel=1e-4) and b["audio"].item() == 0.0
    # the window follows audio's trace (official), not the first-listed modality's
    cb.growth = {"audio": 1.0, "visual": 0.0}
    assert cb.in_window("audio") and cb.in_window("visual")
    cb.growth = {"audio": 0.0, "visual": 1.0}
    assert not cb.in_window("audio") and not cb.in_window("visual")


def test_dominant_and_mapping_for_other_modalities() -> None:
    mods = ("text", "audio", "vision")
    with pytest.warns(UserWarning, match="'audio' is treated"):
        cb = InfoReg()
        cb.setup(None, tiny_mlp_module(mods), "fit")
    assert cb.beta_scales == {"text": 0.1, "audio": 0.95, "vision": 0.1}
    cb = InfoReg(dominant="text", beta_scales=[0.95, 0.1, 0.3])
    cb.setup(None, tiny_mlp_module(mods), "fit")  # others in config order: audio, vision
    assert cb.beta_scales == {"text": 0.95, "audio": 0.1, "vision": 0.3}
    cb = InfoReg(dominant="text", beta_scales={"vision": 0.2, "text": 0.9, "audio": 0.1})
    cb.setup(None, tiny_mlp_module(mods), "fit")
    assert cb.beta_scales == {"text": 0.9, "audio": 0.1, "vision": 0.2}


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="window_source"):
        InfoReg(window_source="x")
    cb = InfoReg(beta_scales=[0.9, 0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="beta_scales"):
        cb.setup(None, tiny_mlp_module(), "fit")
    with pytest.raises(ValueError, match="method.inforeg.dominant='text'"):
        InfoReg(dominant="text").setup(None, tiny_mlp_module(), "fit")
    with pytest.raises(ValueError, match="every modality"):
        InfoReg(beta_scales={"audio": 0.9}).setup(None, tiny_mlp_module(), "fit")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=inforeg", *extra]))
    assert m["metrics"]["test/acc"] >= 0
