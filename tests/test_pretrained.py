"""Pre-trained ResNet-18 encoders: local weights, TSN conv1 adaptation, the missing-file error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asgml.models.encoders import ResNet18Encoder, _narrow_resnet18, imagenet_weights_file

W = 8  # narrow ResNet-18: a tiny state dict


def write_weights(path: Path, seed: int = 0, extra: dict | None = None) -> dict:
    """A narrow torchvision-style ResNet-18 state dict (with its fc) saved to ``path``."""
    torch.manual_seed(seed)
    net = _narrow_resnet18(W)
    for p in net.parameters():
        torch.nn.init.normal_(p)
    for name, b in net.named_buffers():
        if "running" in name:
            b.uniform_(0.5, 1.5)
    state = {**net.state_dict(), **(extra or {})}
    torch.save(state, path)
    return state


def test_local_file_loads_every_trunk_tensor(tmp_path: Path) -> None:
    state = write_weights(tmp_path / "r18.pth")
    enc = ResNet18Encoder(3, width=W, pretrained=str(tmp_path / "r18.pth"))
    own = enc.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}
    for k, v in own.items():
        assert torch.equal(v, state[k]), k
    assert enc.pretrained == str(tmp_path / "r18.pth")
    # and it differs from the scratch init
    assert not torch.equal(ResNet18Encoder(3, width=W).conv1.weight, state["conv1.weight"])


@pytest.mark.parametrize("channels", [2, 10, 1])
def test_flow_conv1_is_tsn_average_replicated(tmp_path: Path, channels: int) -> None:
    state = write_weights(tmp_path / "r18.pth", seed=1)
    enc = ResNet18Encoder(channels, temporal=True, width=W, pretrained=str(tmp_path / "r18.pth"))
    rgb = state["conv1.weight"]
    want = rgb.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1)
    assert enc.conv1.weight.shape == (W, channels, 7, 7)
    torch.testing.assert_close(enc.conv1.weight, want, rtol=0, atol=0)
    assert torch.equal(enc.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    # a constant 2L-channel input sees the RGB filters' mean response
    x = torch.randn(2, channels, 3, 32, 32)
    assert enc(x).shape == (2, 8 * W)


def test_conv1_random_keeps_fresh_conv1_and_loads_the_rest(tmp_path: Path) -> None:
    state = write_weights(tmp_path / "r18.pth", seed=2)
    torch.manual_seed(5)
    enc = ResNet18Encoder(2, width=W, pretrained=str(tmp_path / "r18.pth"), conv1_init="random")
    torch.manual_seed(5)
    fresh = ResNet18Encoder(2, width=W)
    assert torch.equal(enc.conv1.weight, fresh.conv1.weight)
    assert torch.equal(enc.bn1.weight, state["bn1.weight"])
    with pytest.raises(ValueError, match="conv1_init must be one of"):
        ResNet18Encoder(2, width=W, conv1_init="zeros")


def test_imagenet_name_reads_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    where = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weights_file() == where
    with pytest.raises(FileNotFoundError) as err:
        ResNet18Encoder(3, width=W, pretrained="imagenet")
    msg = str(err.value)
    assert str(where) in msg and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    where.parent.mkdir(parents=True)
    state = write_weights(where, seed=3)
    enc = ResNet18Encoder(3, width=W, pretrained="IMAGENET1K_V1")
    assert torch.equal(enc.conv1.weight, state["conv1.weight"])


def test_missing_or_unfit_weights_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no weights file at .*nope\.pth"):
        ResNet18Encoder(3, width=W, pretrained=str(tmp_path / "nope.pth"))
    write_weights(tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="other shapes"):
        ResNet18Encoder(3, width=16, pretrained=str(tmp_path / "r18.pth"))
    write_weights(tmp_path / "odd.pth", extra={"head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \['head.weight'\]"):
        ResNet18Encoder(3, width=W, pretrained=str(tmp_path / "odd.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(OSError, match="cannot read pretrained weights"):
        ResNet18Encoder(3, width=W, pretrained=str(tmp_path / "junk.pth"))


def test_missing_weights_fail_at_startup(tmp_path: Path, make_cfg) -> None:
    """The CLI path: ``model.encoders.<m>.pretrained`` with a missing file stops the run at
    start-up with the path it looked for."""
    from asgml.train import run

    cfg = make_cfg([f"+dataset.encoder_choices.visual.pretrained={tmp_path}/missing.pth"])
    with pytest.raises(Exception, match=r"no weights file at .*missing\.pth"):  # via Hydra
        run(cfg)


@pytest.mark.slow
def test_checkpoint_of_a_pretrained_run_evaluates_without_the_weights_file(
    tmp_path: Path, make_cfg
) -> None:
    """The checkpoint holds the trained weights: ``asgml.eval`` must not need the file."""
    from asgml.run.evaluate import evaluate_checkpoint
    from asgml.train import run

    weights = tmp_path.parent / f"{tmp_path.name}-r18.pth"  # outside the run directory
    write_weights(weights)
    cfg = make_cfg([f"+dataset.encoder_choices.visual.pretrained={weights}"])
    run(cfg)
    weights.unlink()
    ckpt = next(tmp_path.rglob("*.ckpt"))
    result = evaluate_checkpoint(ckpt, device="cpu")
    assert "acc" in str(result)
