"""Modality encoders.

All encoders map one modality's batch to a ``(B, feature_dim)`` feature tensor.

* `ResNet18Encoder` -- torchvision's ResNet-18 trained from scratch, as in
  OGM-GE (Peng et al., CVPR 2022, https://github.com/GeWu-Lab/OGM-GE_CVPR2022,
  ``models/backbone.py``): 1 input channel for spectrograms, 3 for frames. With
  ``temporal=True`` the input ``(B, C, T, H, W)`` has its T frames folded into the
  batch, runs through the 2-D network and is mean-pooled over time and space
  (OGM-GE's ``adaptive_avg_pool3d``).
* `MLPEncoder` -- pre-extracted sequence features ``(B, L, D)`` (MMSA
  pickles): masked mean-pool over time, then Linear-ReLU-Dropout-Linear-ReLU
  (docs/asgml_v2_design.md section 7.2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import resnet18


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
        in_channels: 1 for a spectrogram ``(B, 1, F, T)``, 3 for RGB frames.
        temporal: input is ``(B, C, T, H, W)``; frames are folded into the batch and
            the output is mean-pooled over time and space.
        width: channel width of the first stage (64 is the real ResNet-18; tests
            may shrink it).
    """

    def __init__(self, in_channels: int = 3, temporal: bool = False, width: int = 64) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"ResNet18Encoder.in_channels must be >= 1, got {in_channels}")
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
