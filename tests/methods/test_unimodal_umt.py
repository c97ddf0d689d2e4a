"""method=unimodal (one modality alone) and UMT (distilling unimodal teachers): the loss on
fixed tensors, which parameters they reach, teacher checkpoints end to end, bad teacher
paths, 2/3-modality runs and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asgml.core.types import StepOutput
from asgml.methods.umt import UMT, feature_distillation
from asgml.methods.unimodal import SingleModalityHead, ZeroEncoder, make_unimodal
from asgml.train import run
from tests.helpers import fake_trainer as _fake_trainer
from tests.helpers import fit, tiny_mlp_module, vector_loader
from tests.methods.resume_check import check_resume


# ----------------------------------------------------------------------------- unimodal
def test_unimodal_trains_only_its_encoder_and_head() -> None:
    module = tiny_mlp_module(("audio", "visual", "text"))
    make_unimodal(module, "visual")
    assert isinstance(module.encoders["audio"], ZeroEncoder)
    assert isinstance(module.fusion, SingleModalityHead)
    assert "test/acc_audio" not in module.test_metrics.keys()
    batch = next(iter(vector_loader(("audio", "visual", "text"), n=8, batch_size=8)))
    logits, uni, feats = module(*module.split_batch(batch)[:2])
    assert set(uni) == {"visual"} and torch.equal(logits, uni["visual"])
    exp = feats["visual"] @ module.fusion.fc.weight.t() + module.fusion.fc.bias
    assert torch.allclose(logits, exp)
    loss = F.cross_entropy(logits, batch["label"])
    names = [n for n, _ in module.named_parameters()]
    assert names and all(n.startswith(("encoders.visual", "fusion.fc")) for n in names)
    grads = torch.autograd.grad(loss, list(module.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="method.modality='speech'"):
        make_unimodal(tiny_mlp_module(), "speech")


# ----------------------------------------------------------------------------------- UMT
def test_feature_distillation_hand_computed() -> None:
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert feature_distillation(s, t).item() == pytest.approx((1 + 4 + 1 + 1) / 4)
    assert feature_distillation(s, t).item() == pytest.approx(torch.nn.MSELoss()(t, s).item())


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two unimodal teachers trained for a few steps through the CLI entry point."""
    root = tmp_path_factory.mktemp("teachers")
    from tests.conftest import compose_cfg

    out = {}
    for m in ("audio", "visual"):
        cfg = compose_cfg(["method=unimodal", f"method.modality={m}"], output_dir=root / m)
        res = run(cfg)
        assert res["best_checkpoint"]
        out[m] = root / m / res["best_checkpoint"]
    return out


@pytest.mark.slow
def test_umt_from_teacher_checkpoints_end_to_end(teachers, make_cfg) -> None:
    cfg = make_cfg(
        [
            "method=umt",
            f"method.umt.teachers.audio={teachers['audio']}",
            f"method.umt.teachers.visual={teachers['visual']}",
        ]
    )
    m = run(cfg)
    assert 0 <= m["metrics"]["test/acc"] <= 1
    # the teachers hold the unimodal runs' encoder weights
    from hydra.utils import instantiate

    module = instantiate(cfg.model)
    cb = UMT({"audio": str(teachers["audio"]), "visual": str(teachers["visual"])})
    cb.setup(None, module, "fit")
    ckpt = torch.load(teachers["audio"], weights_only=True)
    for k, v in cb.teachers["audio"].state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][f"encoders.audio.{k}"]), k
    assert not any(p.requires_grad for p in cb.teachers["audio"].parameters())


@pytest.mark.slow
def test_umt_term_reaches_only_the_distilled_encoder(teachers, make_cfg) -> None:
    from hydra.utils import instantiate

    cfg = make_cfg(["method=umt", f"method.umt.teachers.visual={teachers['visual']}"])
    module = instantiate(cfg.model)
    cb = UMT({"visual": str(teachers["visual"])}, scaling=10.0)
    cb.setup(None, module, "fit")
    dm = instantiate(cfg.dataset.datamodule)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    inputs, lengths, y = module.split_batch(batch)
    logits, uni, feats = module(inputs, lengths)
    losses = {"fused": F.cross_entropy(logits, y)}
    out = StepOutput(feats, logits, uni, y, inputs, lengths, losses)
    cb.on_train_losses(_fake_trainer(), module, out)
    with torch.no_grad():
        target = cb.teachers["visual"](inputs["visual"])
    exp = 10.0 * F.mse_loss(feats["visual"], target)
    assert losses["umt_visual"].item() == pytest.approx(exp.item(), rel=1e-6)
    grads = torch.autograd.grad(losses["umt_visual"], list(module.parameters()), allow_unused=True)
    for (name, _), g in zip(module.named_parameters(), grads, strict=True):
        if name.startswith("encoders.visual"):
            continue
        assert g is None or g.abs().sum() == 0, name
    assert any(
        g is not None and g.abs().sum() > 0
        for (n, _), g in zip(module.named_parameters(), grads, strict=True)
        if n.startswith("encoders.visual")
    )


@pytest.mark.slow
def test_umt_refuses_wrong_teachers(teachers, tmp_path: Path) -> None:
    module = tiny_mlp_module()
    with pytest.raises(FileNotFoundError, match=r"method.umt.teachers.audio=.*nope.ckpt"):
        UMT({"audio": str(tmp_path / "nope.ckpt")})
    with pytest.raises(ValueError, match="at least one teacher"):
        UMT({"audio": None})
    # the visual teacher given for audio
    with pytest.raises(ValueError, match=r"method.umt.teachers.audio=.*unimodal audio teacher"):
        UMT({"audio": str(teachers["visual"])}).setup(None, module, "fit")
    # a modality the model does not have
    with pytest.raises(ValueError, match="method.umt.teachers.text"):
        UMT({"text": str(teachers["audio"])}).setup(None, module, "fit")
    # a teacher of another task: 4 synthetic classes, 3 in the tiny model
    with pytest.raises(ValueError, match="another task:\n.*checkpoint 4, this run 3"):
        UMT({"audio": str(teachers["audio"])}).setup(None, module, "fit")
    # an architecture that does not match (the tiny MLP is not the teacher's ResNet)
    with pytest.raises(ValueError, match="does not match"):
        UMT({"audio": str(teachers["audio"])}).setup(None, tiny_mlp_module(num_classes=4), "fit")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("modality", "extra"), [("audio", []), ("text", ["dataset.num_modalities=3"])]
)
def test_unimodal_runs_end_to_end(make_cfg, modality, extra) -> None:
    m = run(make_cfg(["method=unimodal", f"method.modality={modality}", *extra]))
    assert 0 <= m["metrics"]["test/acc"] <= 1
    assert m["metrics"]["test/acc"] == m["metrics"][f"test/acc_{modality}"]
    assert not any(k.startswith("test/acc_") and k != f"test/acc_{modality}" for k in m["metrics"])


@pytest.mark.slow
def test_unimodal_resume_is_exact(tmp_path: Path) -> None:
    check_resume(tmp_path, ["method=unimodal", "method.modality=visual"], [])


@pytest.mark.slow
def test_umt_resume_is_exact(teachers, tmp_path: Path) -> None:
    check_resume(
        tmp_path, ["method=umt", f"method.umt.teachers.audio={teachers['audio']}"], ["UMT"]
    )


def test_unimodal_fit_smoke() -> None:
    from asgml.methods.unimodal import Unimodal

    module = tiny_mlp_module()
    fit(module, vector_loader(n=8, batch_size=8), [Unimodal("audio")], max_steps=1)
    assert all(p.grad is not None for p in module.parameters())
