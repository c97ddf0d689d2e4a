"""Former name of :mod:`asgml.callbacks.toolkit` (the gradient helpers moved there); kept
so existing imports keep working. New code imports :mod:`asgml.callbacks.toolkit`."""

from asgml.callbacks.toolkit import (
    PARAM_SELECTIONS,
    all_finite,
    has_grad_scaler,
    loss_scale,
    present_grads,
    scale_,
    select_parameters,
    sum_over_ranks,
)

__all__ = [
    "PARAM_SELECTIONS",
    "all_finite",
    "has_grad_scaler",
    "loss_scale",
    "present_grads",
    "scale_",
    "select_parameters",
    "sum_over_ranks",
]
