r"""MMPareto: Pareto-integrated multimodal and unimodal gradients.

Paper: Wei, Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance",
ICML 2024.
Official code: https://github.com/GeWu-Lab/MMPareto_ICML2024 (``code/MMPareto.py``).

Per step, for every encoder m (official: audio and visual):

1. ``g_mm`` = gradient of the fused loss, ``g_uni`` = gradient of m's unimodal loss, over
   m's encoder parameters.
2. ``cos`` between the flattened ``g_mm`` and ``g_uni``.
3. ``cos > 0``: ``k = (0.5, 0.5)``; otherwise ``k`` = the 2-task min-norm (MGDA) weights of
   ``MinNormSolver.find_min_norm_element`` (``gamma = (v22 - v12) / (v11 + v22 - 2 v12)``,
   0.999 if ``v12 >= v11``, 0.001 if ``v12 >= v22``; ``k = (gamma, 1 - gamma)``).
4. Per parameter *tensor*: ``g_new = 2 (k0 g_mm + k1 g_uni)``,
   ``d = ||g_sum|| / ||g_new||`` and ``g = gamma * max(d, 1) * g_new`` (``gamma`` 1.5), where
   ``g_sum`` is the gradient of the summed loss.
5. Heads keep the plain summed gradient.

In formulas ($g_{mm}$, $g_{uni}$ over encoder $m$'s parameters,
$v_{11} = \langle g_{mm}, g_{mm} \rangle$, $v_{12} = \langle g_{mm}, g_{uni} \rangle$,
$v_{22} = \langle g_{uni}, g_{uni} \rangle$, $\gamma$ = ``gamma`` = 1.5):

$$
k = \begin{cases}
(0.5,\ 0.5) & \text{if } \cos(g_{mm}, g_{uni}) > 0 \\
(\gamma^*,\ 1 - \gamma^*) & \text{otherwise}
\end{cases}, \qquad
\gamma^* = \begin{cases}
0.999 & \text{if } v_{12} \ge v_{11} \\
0.001 & \text{if } v_{12} \ge v_{22} \\
\dfrac{v_{22} - v_{12}}{v_{11} + v_{22} - 2 v_{12}} & \text{otherwise}
\end{cases}
$$

$$
g_{new} = 2\,(k_0\, g_{mm} + k_1\, g_{uni}), \qquad
d = \frac{\lVert g_{sum} \rVert}{\lVert g_{new} \rVert}, \qquad
g = \gamma \max(d, 1)\, g_{new} \quad \text{(per parameter tensor)}
$$

Implementation: the summed loss is backpropagated once by the module (``g_sum``); ``g_mm``
comes from one extra ``autograd.grad`` of the fused loss (retaining the graph);
``g_uni = g_sum - g_mm``. Official: three separate backward passes plus the summed one.
Every loss term other than the fused one that reaches encoder m (normally only m's unimodal
CE) is therefore counted on the unimodal side.

Deviations from the official code:

* any N >= 2: the 2-task solve is per encoder, between the fused loss and that encoder's own
  unimodal loss (the official code hard-codes audio/visual);
* needs unimodal losses (``model.gamma > 0``); the official model has separate
  unimodal heads (``unimodal_heads: true`` here);
* ``||g_new|| = 0`` gives ``d = 1`` (the official code divides by zero);
* ``g_mm`` from one ``autograd.grad`` instead of a separate backward (same values, see
  above); under ``16-mixed`` it is taken of the loss-scaled fused loss, like ``g_sum``;
* several processes (the official code runs one): ``g_mm`` is averaged over the DDP ranks
  like ``g_sum``, so ``g_uni``, the Pareto weights and the edit are the same on every rank.

Logged: ``mmpareto/cos_<m>``, ``mmpareto/k_mm_<m>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import loss_scale, mean_over_ranks_
from asgml.core.types import StepOutput

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule


def tensor_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """``sum_t <a_t, b_t>`` over a list of tensors (0-d, float32)."""
    return torch.stack([(x.float() * y.float()).sum() for x, y in zip(a, b, strict=True)]).sum()


def min_norm_2(v11: Tensor, v12: Tensor, v22: Tensor) -> Tensor:
    """MinNormSolver's 2-vector solution: the weight of the first vector."""
    denom = (v11 + v22 - 2 * v12).clamp_min(1e-12)
    g = -1.0 * ((v12 - v22) / denom)
    g = torch.where(v12 >= v22, torch.full_like(g, 0.001), g)
    return torch.where(v12 >= v11, torch.full_like(g, 0.999), g)


def pareto_weights(
    g_mm: Sequence[Tensor], g_uni: Sequence[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """``(k_mm, k_uni, cos)``: 0.5/0.5 if the gradients agree (cos > 0), else min-norm."""
    v11, v12, v22 = tensor_dot(g_mm, g_mm), tensor_dot(g_mm, g_uni), tensor_dot(g_uni, g_uni)
    cos = v12 / (v11.sqrt() * v22.sqrt()).clamp_min(1e-12)
    gamma = min_norm_2(v11, v12, v22)
    k0 = torch.where(cos > 0, torch.full_like(gamma, 0.5), gamma)
    return k0, 1 - k0, cos


def pareto_combine(
    g_mm: Sequence[Tensor],
    g_uni: Sequence[Tensor],
    g_sum: Sequence[Tensor],
    k0: Tensor,
    k1: Tensor,
    gamma: float = 1.5,
) -> list[Tensor]:
    """Per tensor: ``g_new = 2 (k0 g_mm + k1 g_uni)``, ``g = gamma max(||g_sum||/||g_new||, 1) g_new``."""
    g_new = torch._foreach_mul(list(g_mm), 2 * k0)
    torch._foreach_add_(g_new, torch._foreach_mul(list(g_uni), 2 * k1))
    n_sum = torch.stack(torch._foreach_norm(list(g_sum)))
    n_new = torch.stack(torch._foreach_norm(g_new))
    d = torch.where(n_new > 0, n_sum / n_new.clamp_min(1e-30), torch.ones_like(n_new))
    factor = gamma * d.clamp_min(1.0)
    torch._foreach_mul_(g_new, list(factor.unbind()))
    return g_new


class MMPareto(BalancingCallback):
    """MMPareto gradient integration at ``on_train_gradients``.

    Args:
        gamma: the final rescaling factor (official 1.5).
    """

    def __init__(self, gamma: float = 1.5) -> None:
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.gamma = gamma
        self._g_mm: dict[str, list[Tensor]] | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "gamma", 0) <= 0:
            raise ValueError(
                "MMPareto needs the unimodal losses: set model.gamma > 0 (official 1.0)"
            )

    @override
    def on_train_losses(
        self, trainer: L.Trainer, pl_module: MultimodalModule, out: StepOutput
    ) -> None:
        mods = pl_module.modalities
        params = [p for m in mods for p in pl_module.encoder_parameters(m)]
        # the fused loss carries the loss scale, as the summed loss does in backward
        fused = out.losses["fused"] * loss_scale(trainer)
        grads = torch.autograd.grad(fused, params, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        # averaged over ranks as DDP averages the summed gradient: g_uni = g_sum - g_mm and
        # the Pareto weights are then the same on every rank
        mean_over_ranks_(trainer, grads)
        self._g_mm, i = {}, 0
        for m in mods:
            n = len(pl_module.encoder_parameters(m))
            self._g_mm[m] = grads[i : i + n]
            i += n

    @override
    def on_train_gradients(
        self, trainer: L.Trainer, pl_module: MultimodalModule, out: StepOutput
    ) -> None:
        if self._g_mm is None:
            return
        log = self.logging_step(trainer)  # per-step values: only on the steps Lightning writes
        for m in pl_module.modalities:
            ps = [p for p in pl_module.encoder_parameters(m) if p.grad is not None]
            if not ps:
                continue
            g_sum = [p.grad for p in ps]
            lookup = dict(zip(map(id, pl_module.encoder_parameters(m)), self._g_mm[m], strict=True))
            g_mm = [lookup[id(p)] for p in ps]
            g_uni = torch._foreach_sub(g_sum, g_mm)
            k0, k1, cos = pareto_weights(g_mm, g_uni)
            new = pareto_combine(g_mm, g_uni, g_sum, k0, k1, self.gamma)
            torch._foreach_copy_(g_sum, new)
            if log:
                pl_module.log(f"mmpareto/cos_{m}", cos, on_step=True, on_epoch=False)
                pl_module.log(f"mmpareto/k_mm_{m}", k0, on_step=True, on_epoch=False)
        self._g_mm = None
