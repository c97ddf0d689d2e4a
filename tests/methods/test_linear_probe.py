"""Linear probe: the loss on a fixed batch, frozen encoders (weights and BatchNorm
statistics), bad checkpoints, 2/3-modality runs from trained checkpoints and resume."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from asgml.core.types import StepOutput
from asgml.methods.linear_probe import LinearProbe
from asgml.train import run
from tests.conftest import compose_cfg
from tests.helpers import fit, tiny_mlp_module, vector_loader
from tests.methods.resume_check import check_resume


def _save_tiny_ckpt(tmp_path: Path, **kw) -> tuple[Path, dict[str, torch.Tensor]]:
    src = tiny_mlp_module(**kw)
    with torch.no_grad():
        for p in src.encoders.parameters():
            p.add_(1.0)  # differ from a fresh module's weights
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": src.state_dict()}, path)
    return path, {k: v.clone() for k, v in src.encoders.state_dict().items()}


def test_loss_and_frozen_encoders(tmp_path: Path) -> None:
    path, enc_state = _save_tiny_ckpt(tmp_path)
    module = tiny_mlp_module(unimodal_heads=True)
    cb = LinearProbe(str(path))
    cb.setup(None, module, "fit")
    for k, v in module.encoders.state_dict().items():
        assert torch.equal(v, enc_state[k]), k
    batch = next(iter(vector_loader(n=16, batch_size=16)))
    inputs, lengths, y = module.split_batch(batch)
    logits, uni, feats = module(inputs, lengths)
    losses = {"fused": F.cross_entropy(logits, y)}
    out = StepOutput(feats, logits, uni, y, inputs, lengths, losses)
    cb.on_train_losses(SimpleNamespace(), module, out)
    exp = F.cross_entropy(logits, y) + sum(F.cross_entropy(uni[m], y) for m in uni)
    assert sum(losses.values()).item() == pytest.approx(exp.item(), rel=1e-6)
    total = sum(losses.values())
    params = [p for p in module.parameters() if p.requires_grad]
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    assert names and not any(n.startswith("encoders.") for n in names)
    grads = torch.autograd.grad(total, params)
    assert all(g.abs().sum() > 0 for g in grads)


def test_training_changes_only_the_heads(tmp_path: Path) -> None:
    path, enc_state = _save_tiny_ckpt(tmp_path)
    module = tiny_mlp_module(unimodal_heads=True)
    heads_before = {k: v.clone() for k, v in module.unimodal_heads.state_dict().items()}
    fit(module, vector_loader(n=16, batch_size=8), [LinearProbe(str(path))], max_steps=2)
    for k, v in module.encoders.state_dict().items():
        assert torch.equal(v, enc_state[k]), k
    assert any(
        not torch.equal(v, module.unimodal_heads.state_dict()[k]) for k, v in heads_before.items()
    )


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="method.linear_probe.checkpoint="):
        LinearProbe(str(tmp_path / "nope.ckpt"))
    with pytest.raises(ValueError, match="checkpoint=<path"):
        LinearProbe(None)
    path, _ = _save_tiny_ckpt(tmp_path)
    with pytest.raises(ValueError, match="unimodal_heads=true"):
        LinearProbe(str(path)).setup(None, tiny_mlp_module(), "fit")
    # a 2-modality checkpoint for a 3-modality model
    with pytest.raises(ValueError, match="no encoder for modality 'text'"):
        LinearProbe(str(path)).setup(
            None, tiny_mlp_module(("audio", "visual", "text"), unimodal_heads=True), "fit"
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("probed")
    out = {}
    for n in (2, 3):
        res = run(compose_cfg([f"dataset.num_modalities={n}"], output_dir=root / str(n)))
        out[n] = root / str(n) / res["best_checkpoint"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
def test_runs_end_to_end(trained, make_cfg, n) -> None:
    cfg = make_cfg(
        [
            "method=linear_probe",
            f"method.linear_probe.checkpoint={trained[n]}",
            f"dataset.num_modalities={n}",
        ]
    )
    m = run(cfg)
    assert 0 <= m["metrics"]["test/acc"] <= 1
    # the probed model's encoders are the checkpoint's
    best = torch.load(Path(cfg.paths.output_dir) / m["best_checkpoint"], weights_only=True)
    src = torch.load(trained[n], weights_only=True)
    for k, v in src["state_dict"].items():
        if k.startswith("encoders."):
            assert torch.equal(v, best["state_dict"][k]), k


@pytest.mark.slow
def test_resume_is_exact(trained, tmp_path: Path) -> None:
    check_resume(
        tmp_path, ["method=linear_probe", f"method.linear_probe.checkpoint={trained[2]}"], []
    )
