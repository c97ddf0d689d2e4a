"""Gradient helpers shared by the gradient-modulating callbacks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

PARAM_SELECTIONS = ("conv", "weights", "all")


def select_parameters(encoder: nn.Module, which: str) -> list[nn.Parameter]:
    """Parameters of ``encoder`` chosen by module type, never by name-splitting.

    * ``conv``: weights of convolution layers (the 4-D tensors OGM-GE modulates);
    * ``weights``: weights of every conv and linear layer (no biases, no norm layers),
      so MLP encoders are covered too;
    * ``all``: every trainable parameter.
    """
    if which not in PARAM_SELECTIONS:
        raise ValueError(f"parameter selection must be one of {PARAM_SELECTIONS}, got {which!r}")
    if which == "all":
        return [p for p in encoder.parameters() if p.requires_grad]
    kinds: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    if which == "weights":
        kinds = (*kinds, nn.Linear, nn.Bilinear)
    out = []
    for mod in encoder.modules():
        if isinstance(mod, kinds) and mod.weight is not None and mod.weight.requires_grad:
            out.append(mod.weight)
    return out


def present_grads(params: Iterable[nn.Parameter]) -> list[Tensor]:
    """The ``.grad`` tensors that exist (parameters unused in this step have none)."""
    return [p.grad for p in params if p.grad is not None]


def scale_(grads: Sequence[Tensor], scale: float | Tensor) -> None:
    """In-place ``g *= scale`` for all ``grads`` with one fused foreach kernel."""
    if grads:
        torch._foreach_mul_(list(grads), scale)


def all_finite(grads: Sequence[Tensor]) -> Tensor:
    """A 0-d bool tensor: every gradient finite (no host sync)."""
    if not grads:
        return torch.tensor(True)
    norms = torch._foreach_norm(list(grads))
    return torch.isfinite(torch.stack(norms).sum())
