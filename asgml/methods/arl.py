r"""ARL: asymmetric representation learning ("Improving Multimodal Learning via Imbalanced
Learning").

Paper: Wei et al., "Improving Multimodal Learning via Imbalanced Learning", ICCV 2025.
Official code: https://github.com/shicaiwei123/ICCV2025-ARL @ 358af4f
(``main_arl_variance.py``, ``models/basic_model.py``, ``models/backbone.py``).

Per step (official code):

* Unimodal logits from the shared concat head with the other modalities zero-padded
  (``ConcatFusion_AUXI``): ``z_m = f_m W[:, block_m]^T + b`` (full bias).
* Loss ``CE(fused) + g * sum_m CE(z_m)`` with ``g = gamma`` after warm-up
  (``epoch > start``) and ``g = 1`` before (official default ``gamma`` 1.0, 4.0 in the CREMA-D
  script; ``start`` 5).
* After warm-up only (``epoch > start``; ``models/backbone.py:325,345``), a ``GradScale`` op
  on every encoder output multiplies the gradient flowing back into the encoder by
  ``(1 + w_m)``. During warm-up (``epoch <= start``, 0-based epochs as in the official
  ``range(args.epochs)``) encoder gradients are not scaled.
* Weights (the README's "weight for ARL"), from the batch's unimodal logits (detached):
  ``c_m = sum_classes mean_batch |z_m|`` normalised to sum 1; ``H_m`` = batch-mean entropy
  of ``softmax(z_m)`` (``+1e-16`` in the log), normalised to sum 1 and clamped at >= 0.3;
  ``a_m = (1/H_m) / sum_k (1/H_k)``; ``w = softmax(T * [c_v a_a, c_a a_v])`` (``T`` 8).
* ``clip_grad_norm_(all, 40)`` after backward.

In formulas ($e$ the 0-based epoch, $p_m = \operatorname{softmax}(z_m)$, $T$ = 8, two
modalities $a$, $v$):

$$
\mathcal{L} = \mathrm{CE}(z, y) + g \sum_m \mathrm{CE}(z_m, y), \qquad
g = \begin{cases} \gamma & e > \text{start} \\ 1 & \text{otherwise} \end{cases}
$$

$$
c_m = \frac{\sum_{\text{classes}} \operatorname{mean}_{\text{batch}} |z_m|}
           {\sum_k \sum_{\text{classes}} \operatorname{mean}_{\text{batch}} |z_k|}, \qquad
\tilde H_m = \operatorname{mean}_{\text{batch}}
  \Bigl(-\sum_{\text{classes}} p_m \log(p_m + 10^{-16})\Bigr)
$$

$$
H_m = \max\Bigl(\frac{\tilde H_m}{\sum_k \tilde H_k},\ 0.3\Bigr), \qquad
a_m = \frac{1 / H_m}{\sum_k 1 / H_k}, \qquad
w = \operatorname{softmax}\bigl(T\,[\,c_v a_a,\ c_a a_v\,]\bigr)
$$

and, for $e > \text{start}$, the gradient into encoder $m$'s output is multiplied by
$1 + w_m$.

Official bug kept behind a switch: in the released ``main_arl_variance.py`` (commit 358af4f)
the computed ``weight`` is only printed; ``audio_weight``/``visual_weight`` stay 0.5, so both
encoders get a symmetric x1.5. Default ``weights=entropy`` applies the weights as the paper
and README describe; ``weights=official`` reproduces the constant 0.5.

Deviations from the official code:

* N >= 2: the crossed term ``c_v a_a`` generalises to ``(1 - c_m) a_m`` (for N = 2,
  ``1 - c_a = c_v``) and the constant weight of ``weights=official`` to ``1/N``.
* The official gate ``acc_a + acc_v != 0`` (a validation has run) is reduced to
  ``epoch > start``.
* With a non-concat fusion the module's unimodal logits are used.
* The clip acts on the true (unscaled) gradient norm under ``16-mixed`` too.
* Several processes: the weights come from each rank's batch; they scale the gradient
  before DDP averages it, so the replicas stay identical (the weights are those of the
  rank's batch, not of the global batch).

Logged (after warm-up): ``arl/weight_<m>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import clip_grad_norm_, module_parameters, present_grads
from asgml.core.types import StepOutput
from asgml.models.fusion import ConcatFusion

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule

WEIGHTS = ("entropy", "official")


def arl_weights(unimodal_logits: Mapping[str, Tensor], temperature: float = 8.0) -> Tensor:
    """The entropy/magnitude weights ``softmax(T * (1 - c_m) * a_m)`` as an (N,) tensor."""
    mods = list(unimodal_logits)
    z = [unimodal_logits[m].detach().float() for m in mods]
    mag = torch.stack([x.abs().mean(0).sum() for x in z])
    c = mag / mag.sum()
    ent = []
    for x in z:
        p = torch.softmax(x, dim=1)
        ent.append((-p * torch.log(p + 1e-16)).sum(1).mean())
    h = torch.stack(ent)
    h = (h / h.sum()).clamp_min(0.3)
    a = 1.0 / h
    a = a / a.sum()
    return torch.softmax(temperature * (1 - c) * a, dim=0)


def zero_padded_logits(
    fusion: torch.nn.Module, features: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """``fc_out(concat with the other modalities zeroed)``: ``f_m W_m^T + b``."""
    w, b = fusion.fc_out.weight, fusion.fc_out.bias
    out = {}
    for m, (lo, hi) in fusion.blocks.items():
        z = features[m] @ w[:, lo:hi].t()
        out[m] = z + b if b is not None else z
    return out


class ARL(BalancingCallback):
    """ARL: weighted unimodal losses after warm-up and encoder-output gradient scaling.

    Args:
        gamma: unimodal-loss weight after warm-up (official default 1.0; 4.0 for CREMA-D).
        start: warm-up epochs (modulation for ``epoch > start``; official 5).
        temperature: ``T`` of the weight softmax (official 8.0).
        weights: ``entropy`` (paper/README, default) or ``official`` (constant 0.5 as released).
        clip: ``clip_grad_norm_`` max norm (official 40); ``null`` disables it.
    """

    def __init__(
        self,
        gamma: float = 1.0,
        start: int = 5,
        temperature: float = 8.0,
        weights: str = "entropy",
        clip: float | None = 40.0,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be > 0 or null, got {clip}")
        self.gamma = gamma
        self.start = start
        self.temperature = temperature
        self.weights = weights
        self.clip = clip

    def step_weights(self, epoch: int, unimodal_logits: Mapping[str, Tensor]) -> Tensor:
        """``w`` for this step: ``1/N`` before warm-up or with ``weights=official`` (0.5 for N = 2).

        The gradient scaling only reads it after warm-up (it is off while ``epoch <= start``)."""
        n = len(unimodal_logits)
        if epoch > self.start and self.weights == "entropy":
            return arl_weights(unimodal_logits, self.temperature)
        ref = next(iter(unimodal_logits.values()))
        return torch.full((n,), 1.0 / n, device=ref.device)

    @override
    def on_train_losses(
        self, trainer: L.Trainer, pl_module: MultimodalModule, out: StepOutput
    ) -> None:
        epoch = trainer.current_epoch
        if isinstance(pl_module.fusion, ConcatFusion) and pl_module.unimodal_heads is None:
            uni = zero_padded_logits(pl_module.fusion, out.features)
        else:
            uni = out.unimodal_logits
        g = self.gamma if epoch > self.start else 1.0
        for m in pl_module.modalities:
            out.losses[f"unimodal_{m}"] = g * F.cross_entropy(uni[m], out.labels)
        if epoch <= self.start:
            return  # official: the GradScale op is applied only when epoch > start
        w = self.step_weights(epoch, uni)
        log = self.logging_step(trainer)  # per-step values: only on the steps Lightning writes
        for i, m in enumerate(pl_module.modalities):
            factor = 1.0 + w[i]
            out.features[m].register_hook(lambda grad, f=factor: grad * f.to(grad.dtype))
            if log:
                pl_module.log(f"arl/weight_{m}", w[i], on_step=True, on_epoch=False)

    @override
    def on_train_gradients(
        self, trainer: L.Trainer, pl_module: MultimodalModule, out: StepOutput
    ) -> None:
        if self.clip is not None:  # on the true (unscaled) norm, under any precision
            clip_grad_norm_(trainer, present_grads(module_parameters(pl_module)), self.clip)
