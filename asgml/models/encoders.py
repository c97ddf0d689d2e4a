"""Modality encoders.

All encoders map one modality's batch to a ``(B, feature_dim)`` feature tensor.

* `ResNet18Encoder` -- torchvision's ResNet-18 trained from scratch, as in
  OGM-GE (Peng et al., CVPR 2022, https://github.com/GeWu-Lab/OGM-GE_CVPR2022,
  ``models/backbone.py``): 1 input channel for spectrograms, 3 for frames. With
  ``temporal=True`` the input ``(B, C, T, H, W)`` has its T frames folded into the
  batch, runs through the 2-D network and is mean-pooled over time and space
  (OGM-GE's ``adaptive_avg_pool3d``).
  ``pretrained``: ImageNet weights from a local file or torchvision's cache (see
  `resolve_pretrained`; nothing is downloaded); a first conv of another channel count
  (flow: ``2L`` stacked u/v frames, spectrograms: 1) gets the RGB filters averaged over
  their input channels and replicated, TSN's cross-modality initialisation (Wang et al.,
  ECCV 2016; https://github.com/yjxiong/tsn-pytorch @ 2f0468e ``models.py:227-252``,
  the mean at line 240), or (``conv1_init: random``) a fresh conv1 as BalanceBenchmark
  executes for flow (https://github.com/GeWu-Lab/BalanceBenchmark @ 4c1482f
  ``balancemm/encoders/__init__.py:50-54`` deletes ``conv1.weight`` before loading).
* `MLPEncoder` -- pre-extracted sequence features ``(B, L, D)`` (MMSA
  pickles): masked mean-pool over time, then Linear-ReLU-Dropout-Linear-ReLU
  (docs/asgml_v2_design.md section 7.2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, resnet18

#: names accepted by ``pretrained`` for torchvision's ImageNet ResNet-18 weights
IMAGENET_NAMES = ("imagenet", "IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1")
CONV1_INITS = ("average", "random")


def init_weights_ogm(module: nn.Module) -> None:
    """OGM-GE ``utils.weight_init``: kaiming-normal conv (fan_out, relu), xavier-normal
    linear with zero bias, BatchNorm weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d | nn.GroupNorm | nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResNet18Encoder(nn.Module):
    """ResNet-18 trunk (no classifier) from torchvision, trained from scratch.

    Args:
        in_channels: 1 for a spectrogram ``(B, 1, F, T)``, 3 for RGB frames, ``2L`` for
            ``L`` stacked optical-flow (u, v) pairs.
        temporal: input is ``(B, C, T, H, W)``; frames are folded into the batch and
            the output is mean-pooled over time and space.
        width: channel width of the first stage (64 is the real ResNet-18; tests
            may shrink it).
        pretrained: ``null`` (train from scratch, OGM-GE), a state-dict file, or
            ``imagenet`` / ``IMAGENET1K_V1`` for torchvision's ImageNet weights read from
            ``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth``
            (`resolve_pretrained`). A missing file is an error naming the path.
        conv1_init: how a pretrained conv1 is adapted to ``in_channels != 3``: ``average``
            (TSN: RGB filters averaged over channels, replicated) or ``random`` (a fresh
            conv1, as BalanceBenchmark for flow).
    """

    def __init__(
        self,
        in_channels: int = 3,
        temporal: bool = False,
        width: int = 64,
        pretrained: str | os.PathLike | None = None,
        conv1_init: str = "average",
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"ResNet18Encoder.in_channels must be >= 1, got {in_channels}")
        if conv1_init not in CONV1_INITS:
            raise ValueError(
                f"ResNet18Encoder.conv1_init must be one of {CONV1_INITS}, got {conv1_init!r}"
            )
        weights_file = resolve_pretrained(pretrained) if pretrained else None
        net = resnet18(weights=None)
        if width != 64:
            net = _narrow_resnet18(width)
        net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, 7, 2, 3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.in_channels = in_channels
        self.temporal = temporal
        self.feature_dim = net.fc.in_features
        init_weights_ogm(self)
        self.pretrained = str(weights_file) if weights_file else None
        if weights_file is not None:
            load_resnet18_trunk(self, weights_file, conv1_init)

    def forward(self, x: Tensor) -> Tensor:
        if self.temporal:
            if x.dim() != 5:
                raise ValueError(
                    f"temporal ResNet18Encoder expects (B, C, T, H, W), got shape {tuple(x.shape)}"
                )
            b, c, t, h, w = x.shape
            x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        elif x.dim() != 4:
            raise ValueError(f"ResNet18Encoder expects (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet18Encoder built for {self.in_channels} channels got {x.shape[1]}"
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.temporal:
            # (B*T, C', h, w) -> mean over T and space, as adaptive_avg_pool3d(1) in OGM-GE.
            x = x.reshape(b, t, *x.shape[1:]).mean(dim=(1, 3, 4))
        else:
            x = x.mean(dim=(2, 3))
        return x


def imagenet_weights_file() -> Path:
    """Where torchvision keeps the ImageNet ResNet-18 weights it downloads:
    ``<torch.hub.get_dir()>/checkpoints/resnet18-f37072fd.pth`` (``$TORCH_HOME/hub/...``,
    default ``~/.cache/torch/hub/...``)."""
    name = os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def resolve_pretrained(pretrained: str | os.PathLike) -> Path:
    """The weights file that ``pretrained`` names (an ImageNet name from
    `IMAGENET_NAMES` or a path); a missing file is a ``FileNotFoundError`` naming the
    path looked at and how to obtain it. Nothing is downloaded."""
    url = ResNet18_Weights.IMAGENET1K_V1.url
    if str(pretrained) in IMAGENET_NAMES:
        path = imagenet_weights_file()
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained={pretrained!s}: torchvision's ImageNet ResNet-18 weights are not at "
                f"{path} (torch.hub.get_dir() from $TORCH_HOME; nothing is downloaded). Obtain "
                f'them from {url} and put the file there (e.g. run `python -c "import '
                f"torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')\"` on a "
                f"machine with internet and copy $TORCH_HOME/hub/checkpoints/), or pass "
                f"pretrained=/path/to/resnet18.pth"
            )
        return path
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained={pretrained!s}: no weights file at {path.resolve()}. Pass a ResNet-18 "
            f"state dict (e.g. torchvision's ImageNet weights, {url}), or pretrained=imagenet "
            f"to read them from {imagenet_weights_file()}"
        )
    return path


def load_resnet18_trunk(encoder: ResNet18Encoder, path: Path, conv1_init: str = "average") -> None:
    """Load a ResNet-18 state dict (torchvision key names; ``fc.*`` ignored) into
    ``encoder``'s trunk. Every trunk key must be present with the encoder's shape, except
    conv1's input channels, adapted by ``conv1_init`` (see `ResNet18Encoder`)."""
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise OSError(f"cannot read pretrained weights {path}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(
            f"pretrained weights {path} hold a {type(state).__name__}, not a state dict"
        )
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"pretrained weights {path} do not fit ResNet18Encoder: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]} (expected torchvision resnet18 key names)"
        )
    conv1 = state["conv1.weight"]
    want = own["conv1.weight"].shape
    if conv1.shape[1] != want[1] and conv1.shape[0] == want[0]:
        if conv1_init == "random":
            state["conv1.weight"] = own["conv1.weight"]
        else:  # TSN cross-modality init: mean over the RGB filters, replicated
            state["conv1.weight"] = conv1.mean(dim=1, keepdim=True).expand(want).contiguous()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if tuple(v.shape) != tuple(own[k].shape)]  # fmt: skip
    if bad:
        raise ValueError(
            f"pretrained weights {path} have other shapes than this ResNet18Encoder "
            f"(width={encoder.feature_dim // 8}): {bad[:3]}"
        )
    encoder.load_state_dict(state)


def _narrow_resnet18(width: int) -> nn.Module:
    """A ResNet-18 with every stage's width scaled by ``width / 64`` (for tiny tests)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    class _Narrow(ResNet):
        def __init__(self) -> None:
            super().__init__(BasicBlock, [2, 2, 2, 2])
            self.inplanes = width
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.layer1 = self._make_layer(BasicBlock, width, 2)
            self.layer2 = self._make_layer(BasicBlock, width * 2, 2, stride=2)
            self.layer3 = self._make_layer(BasicBlock, width * 4, 2, stride=2)
            self.layer4 = self._make_layer(BasicBlock, width * 8, 2, stride=2)
            self.fc = nn.Linear(width * 8, 1)

    return _Narrow()


class MLPEncoder(nn.Module):
    """Encoder for pre-extracted features (docs/asgml_v2_design.md 7.2).

    Input ``(B, L, D)`` sequences (optionally with ``lengths``) or ``(B, D)`` vectors.
    Sequences are mean-pooled over their valid time steps, then passed through
    ``Linear(D, hidden) - ReLU - Dropout - Linear(hidden, out) - ReLU``.
    """

    def __init__(
        self, input_dim: int, hidden_dim: int = 512, feature_dim: int = 512, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"MLPEncoder.input_dim must be >= 1, got {input_dim}")
        self.input_dim = input_dim
        self.feature_dim = feature_dim
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, feature_dim),
            nn.ReLU(inplace=True),
        )
        init_weights_ogm(self)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"MLPEncoder built for input_dim={self.input_dim} got features of shape {tuple(x.shape)}"
            )
        if x.dim() == 3:
            x = masked_mean(x, lengths)
        elif x.dim() != 2:
            raise ValueError(f"MLPEncoder expects (B, L, D) or (B, D), got {tuple(x.shape)}")
        return self.net(x)


def masked_mean(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Mean of ``x`` ``(B, L, D)`` over its first ``lengths[b]`` time steps (all if None)."""
    if lengths is None:
        return x.mean(dim=1)
    steps = torch.arange(x.shape[1], device=x.device)
    mask = (steps[None, :] < lengths.to(x.device)[:, None]).to(x.dtype)
    denom = mask.sum(dim=1, keepdim=True).clamp_min(1.0)
    return (x * mask[..., None]).sum(dim=1) / denom
