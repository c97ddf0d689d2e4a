"""G-Blending: the weight formula on fixed numbers, the weighted loss and its gradients,
the estimation on a real model, end-to-end runs and resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from asgml.core.types import StepOutput
from asgml.methods.gblending import GBlending, blending_weights, branch_logits
from asgml.train import run
from tests.helpers import fake_trainer as _fake_trainer
from tests.helpers import fit, tiny_mlp_module, vector_loader
from tests.methods.resume_check import check_resume


def test_weights_hand_computed() -> None:
    # GBlending_trainer.py: g = v_now - v_pre; o = (v_now - t_now) - (v_pre - t_pre); |g / o^2|
    measured = {
        "audio": (1.0, 1.2, 0.5, 1.0),  # g = -0.2, o = 0.5 - 0.2 = 0.3 -> 2.2222
        "visual": (1.0, 1.1, 0.9, 1.05),  # g = -0.05, o = 0.15 - 0.1 = 0.05 -> 20
        "fused": (1.0, 1.3, 0.4, 0.9),  # g = -0.4, o = 0.5 - 0.3 = 0.2 -> 10
    }
    w = blending_weights(measured)
    raw = {"audio": 0.2 / 0.09, "visual": 0.05 / 0.0025, "fused": 0.4 / 0.04}
    total = sum(raw.values())
    for k in raw:
        assert w[k] == pytest.approx(raw[k] / total)
    assert sum(w.values()) == pytest.approx(1.0)


def test_weighted_loss_and_its_gradients() -> None:
    module = tiny_mlp_module()
    batch = next(iter(vector_loader(n=16, batch_size=16)))
    inputs, lengths, y = module.split_batch(batch)
    logits, uni, feats = module(inputs, lengths)
    losses = {"fused": F.cross_entropy(logits, y)}
    out = StepOutput(feats, logits, uni, y, inputs, lengths, losses)
    cb = GBlending()
    cb.weights = {"audio": 0.2, "visual": 0.7, "fused": 0.1}
    cb.on_train_losses(_fake_trainer(), module, out)
    exp = 0.1 * F.cross_entropy(logits, y) + 0.2 * F.cross_entropy(uni["audio"], y)
    exp = exp + 0.7 * F.cross_entropy(uni["visual"], y)
    assert sum(losses.values()).item() == pytest.approx(exp.item(), rel=1e-6)
    # the visual term reaches the visual encoder and the fusion head, not the audio encoder
    grads = torch.autograd.grad(
        losses["gblending_visual"], list(module.parameters()), allow_unused=True
    )
    for (name, _), g in zip(module.named_parameters(), grads, strict=True):
        if name.startswith("encoders.audio"):
            assert g is None or g.abs().sum() == 0, name
        elif name.startswith(("encoders.visual", "fusion.fc_out.weight")):
            assert g is not None and g.abs().sum() > 0, name


def test_branch_logits_zero_the_other_modalities() -> None:
    module = tiny_mlp_module()
    batch = next(iter(vector_loader(n=8, batch_size=8)))
    z = branch_logits(module, batch, "audio")
    f = module.encode(module.split_batch(batch)[0])["audio"]
    lo, hi = module.fusion.blocks["audio"]
    w, b = module.fusion.fc_out.weight, module.fusion.fc_out.bias
    assert torch.allclose(z, f @ w[:, lo:hi].t() + b, atol=1e-6)


def test_separate_classifiers_as_the_official_vmz_loss() -> None:
    # VMZ c2 audio_visual_model.py:483-498 (a_last_out, v_last_out next to the AV head) and
    # loss_creator.py:194-200: audio_weight * CE(a) + visual_weight * CE(v) + av_weight * CE(av)
    module = tiny_mlp_module(unimodal_heads=True)
    cb = GBlending(fixed_weights={"audio": 0.2, "visual": 0.5, "fused": 0.3})
    cb.setup(None, module, "fit")  # separate heads are accepted
    batch = next(iter(vector_loader(n=16, batch_size=16)))
    inputs, lengths, y = module.split_batch(batch)
    logits, uni, feats = module(inputs, lengths)
    losses = {"fused": F.cross_entropy(logits, y)}
    out = StepOutput(feats, logits, uni, y, inputs, lengths, losses)
    cb.weights = dict(cb.fixed_weights)
    cb.on_train_losses(_fake_trainer(), module, out)
    heads = module.unimodal_heads
    exp = 0.3 * F.cross_entropy(module.fusion(feats), y)
    exp = exp + 0.2 * F.cross_entropy(heads["audio"](feats["audio"]), y)
    exp = exp + 0.5 * F.cross_entropy(heads["visual"](feats["visual"]), y)
    assert sum(losses.values()).item() == pytest.approx(exp.item(), rel=1e-6)
    # the audio term trains the audio classifier, not the fusion head
    grads = torch.autograd.grad(
        losses["gblending_audio"], list(module.parameters()), allow_unused=True
    )
    named = dict(zip([n for n, _ in module.named_parameters()], grads, strict=True))
    assert named["unimodal_heads.audio.weight"].abs().sum() > 0
    assert named["fusion.fc_out.weight"] is None or named["fusion.fc_out.weight"].abs().sum() == 0
    # the estimation's unimodal branch is the modality's own classifier
    z = branch_logits(module, batch, "visual")
    assert torch.allclose(z, heads["visual"](feats["visual"]), atol=1e-6)


def test_fixed_weights_skip_the_estimation() -> None:
    module = tiny_mlp_module()
    cb = GBlending(super_epoch=2, fixed_weights={"audio": 0.1, "visual": 0.6, "fused": 0.3})
    fit(module, vector_loader(n=16, batch_size=8), [cb], max_steps=2)  # no val loader needed
    assert cb.weights == {"audio": 0.1, "visual": 0.6, "fused": 0.3}
    with pytest.raises(
        ValueError, match=r"fixed_weights needs one weight per key \['audio', 'fused', 'visual'\]"
    ):
        GBlending(fixed_weights={"audio": 1.0}).setup(None, tiny_mlp_module(), "fit")


class _Capture(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.params = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.rng = torch.get_rng_state()


def test_estimation_leaves_the_model_and_rng_alone() -> None:
    module = tiny_mlp_module(modalities=("audio", "visual", "text"))
    mods = ("audio", "visual", "text")
    loader = vector_loader(mods, n=32, batch_size=8)
    before, cb, after = _Capture(), GBlending(super_epoch=2), _Capture()
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[before, cb, after],
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=vector_loader(mods, n=16))
    assert set(cb.weights) == {"audio", "visual", "text", "fused"}
    assert sum(cb.weights.values()) == pytest.approx(1.0)
    assert all(w >= 0 for w in cb.weights.values())
    for k, v in before.params.items():
        assert torch.equal(v, after.params[k]), k
    assert torch.equal(before.rng, after.rng)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="super_epoch"):
        GBlending(super_epoch=1)
    with pytest.raises(ValueError, match="gamma"):
        GBlending().setup(None, tiny_mlp_module(gamma=1.0), "fit")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dataset.num_modalities=3"]])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=gblending", "method.gblending.super_epoch=2", *extra]))
    assert 0 <= m["metrics"]["test/acc"] <= 1


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    check_resume(tmp_path, ["method=gblending", "method.gblending.super_epoch=2"], ["GBlending"])
