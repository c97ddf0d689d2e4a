"""Gradient helpers shared by the gradient-modulating callbacks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

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


def loss_scale(trainer: Any) -> Tensor | float:
    """The AMP loss scale the gradients carry at ``on_after_backward`` (1.0 without an
    enabled GradScaler, e.g. under ``32-true`` or ``bf16-mixed``).

    Under ``16-mixed`` Lightning scales the loss before backward and unscales only inside
    ``optimizer.step()``, so a callback that reads gradient magnitudes (norms, stds) must
    divide by this. Returned as a device tensor when possible (no host sync)."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return 1.0
    return scaler._get_scale_async() if hasattr(scaler, "_get_scale_async") else scaler.get_scale()


def has_grad_scaler(trainer: Any) -> bool:
    """Whether an enabled GradScaler handles overflowing (inf/nan) steps itself."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return scaler is not None and scaler.is_enabled()


def sum_over_ranks(trainer: Any, t: Tensor) -> Tensor:
    """All-reduce (sum) ``t`` over the DDP ranks; identity on one process."""
    if getattr(trainer, "world_size", 1) > 1:
        return trainer.strategy.reduce(t, reduce_op="sum")
    return t
