"""Fusion layers and unimodal heads start as OGM-GE's ``utils.weight_init``
(GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d utils/utils.py:15-18): Xavier-normal weights, zero bias."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from asgml.core.module import MultimodalModule
from asgml.models.encoders import MLPEncoder
from asgml.models.fusion import build_fusion


def _check_xavier_normal(layer: nn.Linear) -> None:
    w = layer.weight.detach().flatten().double()
    fan_out, fan_in = layer.weight.shape
    want = math.sqrt(2.0 / (fan_in + fan_out))
    assert w.mean().abs() < 4 * want / math.sqrt(w.numel())
    assert w.std().item() == pytest.approx(want, rel=0.05)
    # a normal has kurtosis 3; PyTorch's default (uniform) init has 1.8
    z = (w - w.mean()) / w.std()
    assert (z**4).mean().item() == pytest.approx(3.0, abs=0.35)
    assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated", "concat_mlp"])
def test_fusion_layers_are_xavier_normal_with_zero_bias(fusion: str) -> None:
    torch.manual_seed(0)
    head = build_fusion(fusion, {"audio": 512, "visual": 512}, num_classes=6)
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert layers
    for layer in layers:
        _check_xavier_normal(layer)


def test_design_document_head_shapes() -> None:
    """docs/asgml_v2_design.md 7.2: (B, 1024) -> 512 -> C; (B, 1536) -> 512 -> C."""
    head = build_fusion("concat_mlp", {"a": 512, "v": 512}, num_classes=6)
    assert (head.fc_hidden.in_features, head.fc_hidden.out_features) == (1024, 512)
    assert (head.fc_out.in_features, head.fc_out.out_features) == (512, 6)
    head3 = build_fusion("concat_mlp", {"t": 512, "a": 512, "v": 512}, num_classes=3)
    assert head3.fc_hidden.in_features == 1536
    feats = {m: torch.randn(4, 512) for m in ("t", "a", "v")}
    assert head3(feats).shape == (4, 3)
    # unimodal logits: the head with every other modality zeroed
    uni = head3.unimodal_logits(feats)
    only_a = {m: (f if m == "a" else torch.zeros_like(f)) for m, f in feats.items()}
    torch.testing.assert_close(uni["a"], head3(only_a))


def test_unimodal_heads_are_xavier_normal_with_zero_bias() -> None:
    torch.manual_seed(0)
    encoders = {m: MLPEncoder(input_dim=8, hidden_dim=16, feature_dim=512) for m in ("a", "v")}
    module = MultimodalModule(encoders, num_classes=31, unimodal_heads=True)
    assert module.unimodal_heads is not None
    for head in module.unimodal_heads.values():
        _check_xavier_normal(head)
