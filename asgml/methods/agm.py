r"""AGM: Adaptive Gradient Modulation with Shapley-style unimodal logits.

Paper: Li et al., "Boosting Multi-modal Model Performance with Adaptive Gradient
Modulation", ICCV 2023.
Official code: https://github.com/lihong2303/AGM_ICCV2023 @ 5a65542 (issues answered at
lihongcs/AGM).

Per step (official code):

* The fused network runs on the full input ``T = f(all)`` (train mode) and on masked inputs
  (missing modalities zeroed) in **eval mode, with gradients**.
* Shapley-style unimodal logits: the Shapley value over the non-empty subsets, with
  ``f(empty)`` taken as 0 (the paper's Eq. 1 sums over ``S != empty``), so
  ``sum_m m_m == T``. 2 modalities (``model/CREMAD_net.py``): ``m_a = 1/2 (T - f(v) + f(a))``,
  ``m_v = 1/2 (T - f(a) + f(v))``. 3 modalities (``model/URFunny_net.py``, ``Modality_Audio``):
  ``m_a = (T - f(v,t) + f(a))/3 + (f(a,t) - f(t) + f(a,v) - f(v))/6``, and the same for the
  others. The official UR-Funny model also runs the all-masked pass ``f(empty)`` and returns
  ``m_m - f(empty)/3``, but ``run/URFunny_main.py`` trains and scores on ``m_m`` (without it);
  ``empty_baseline=true`` switches the ``f(empty)`` term (and its pass) on for any N.
* The loss is ``CE(sum_m m_m, y)``; each ``m_m`` passes through an identity whose backward
  multiplies the gradient by ``c_m`` (official: a full backward hook).
* ``s_m = mean_batch -log(max(softmax(m_m)[y], 1e-8))``,
  ``r_m = exp((mean_k s_k - s_m) * N / (N - 1))`` (``= exp(s_v - s_a)`` for audio when N = 2),
  ``rbar_m`` the same from ``sbar`` (cumulative mean of ``s`` over all previous iterations,
  0 before the first, so ``rbar = 1`` at step 0),
  ``c_m = exp(alpha * min(rbar_m - r_m, clip))`` with ``clip`` 10 (N = 2) or 7 (N >= 3);
  ``sbar`` is updated after the coefficients.
* After backward: if any entry of the fusion output-layer weight gradient is outside
  ``[-1, 1]``, ``clip_grad_norm_(all parameters, 1.0)``.
* Modulation only while ``modulation_starts <= epoch <= modulation_ends`` in the official
  **1-based** epochs (``for epoch in range(1, EPOCHS + 1)``): Lightning's 0-based epoch ``e``
  is modulated iff ``modulation_starts <= e + 1 <= modulation_ends``, so the default
  ``[0, 20]`` modulates the first 20 epochs, as official.

In formulas (two modalities for the Shapley logits; $T = f(\text{all})$, $f(a)$ the fused
network with only $a$ present, $\alpha$ = ``alpha``, $\kappa$ the cap 10 or 7):

$$
m_a = \tfrac{1}{2}\bigl(T - f(v) + f(a)\bigr), \qquad
m_v = \tfrac{1}{2}\bigl(T - f(a) + f(v)\bigr), \qquad
\mathcal{L} = \mathrm{CE}\Bigl(\sum_m m_m,\ y\Bigr)
$$

$$
s_m = \operatorname{mean}_{\text{batch}}
  \bigl(-\log \max(\operatorname{softmax}(m_m)_y,\ 10^{-8})\bigr), \qquad
r_m = \exp\Bigl(\frac{N}{N-1}\Bigl(\frac{1}{N}\sum_k s_k - s_m\Bigr)\Bigr)
$$

$$
c_m = \exp\bigl(\alpha \min(\bar r_m - r_m,\ \kappa)\bigr), \qquad
\frac{\partial \mathcal{L}}{\partial m_m} \leftarrow c_m \frac{\partial \mathcal{L}}{\partial m_m}
$$

with $\bar r_m$ the same as $r_m$ computed from $\bar s$ (the cumulative mean of $s$ over the
previous iterations).

Deviations from the official code:

Official bug kept behind a switch: outside the window the official hooks stay registered and
keep applying the *last* coefficients (nothing resets them to 1). Default
(``outside_window=reset``, the paper's intent): outside the window training is plain fused
CE (no extra passes, coefficients 1). ``outside_window=keep_last`` reproduces the official
behaviour.

* N >= 4 (no official code): the same Shapley value over the non-empty subsets.
* Masked inputs are zeros of the input's shape (sequence ``lengths`` are passed unchanged);
  ``sbar`` starting at 0 is unverified against the official code.
* The all-masked pass is skipped unless ``empty_baseline`` (officially computed for
  N = 3 but unused in training).
* One gradient-clip rule for every dataset: trigger and max norm 1.0 (``run/CREMAD_main.py``);
  the official UR-Funny script uses 5.0 for both, MOSEI 1.0 (with a trigger written
  ``grad_max > 1 and grad_min < 1``), AVE none. The ``rbar - r`` cap is 10 (CREMA-D) / 7
  (UR-Funny); the official AVE and MOSEI scripts have no cap.
* The clip trigger and the clip read the true (unscaled) gradients under ``16-mixed``.
* Several processes (the official code runs one): the scores ``s`` are averaged over the
  DDP ranks (the global batch's scores), so the coefficients and ``sbar`` are the same on
  every rank.

Logged: ``agm/coeff_<m>``, ``agm/score_<m>``. Cost: ``2^N - 2`` extra forward passes
(``2^N - 1`` with ``empty_baseline``) in the window, and their backward.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import (
    DeferredState,
    clip_grad_norm_,
    grad_amax,
    mean_over_ranks,
    module_parameters,
    present_grads,
)
from asgml.core.types import StepOutput

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule

OUTSIDE_WINDOW = ("reset", "keep_last")


class _GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale`` (a 0-d tensor)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype), None


def grad_scale(x: Tensor, scale: Tensor | float) -> Tensor:
    """``x`` in the forward pass, ``scale * grad`` in the backward pass."""
    return _GradScale.apply(x, torch.as_tensor(scale, device=x.device, dtype=torch.float32))


def shapley_logits(
    subset_logits: Mapping[frozenset, Tensor], modalities: Sequence[str], empty_baseline: bool
) -> dict[str, Tensor]:
    """Shapley value of every modality from ``{subset: f(subset)}`` (subset = frozenset of
    present modalities): ``phi_m = sum_{S without m} |S|!(N-|S|-1)!/N! (f(S+m) - f(S))``.
    ``f(empty)`` is taken as 0 unless ``empty_baseline``."""
    n = len(modalities)
    full = subset_logits[frozenset(modalities)]
    out = {}
    for m in modalities:
        rest = [k for k in modalities if k != m]
        phi = torch.zeros_like(full)
        for r in range(n):
            w = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for s in itertools.combinations(rest, r):
                s = frozenset(s)
                lo = subset_logits[s] if (s or empty_baseline) else torch.zeros_like(full)
                phi = phi + w * (subset_logits[s | {m}] - lo)
        out[m] = phi
    return out


def agm_scores(logits: Mapping[str, Tensor], labels: Tensor) -> Tensor:
    """``s_m = mean_i -log(max(softmax(z_m)[i, y_i], 1e-8))`` as an (N,) tensor."""
    s = []
    for z in logits.values():
        p = torch.softmax(z.detach().float(), dim=1).gather(1, labels[:, None]).squeeze(1)
        s.append(-torch.log(p.clamp_min(1e-8)).mean())
    return torch.stack(s)


def agm_ratio(scores: Tensor) -> Tensor:
    """``r_m = exp((mean_k s_k - s_m) * N / (N - 1))`` (N = 2: ``r_a = exp(s_v - s_a)``)."""
    n = scores.numel()
    return torch.exp((scores.mean() - scores) * n / (n - 1))


def agm_coefficients(scores: Tensor, mean_scores: Tensor, alpha: float, clip: float) -> Tensor:
    """``c_m = exp(alpha * min(rbar_m - r_m, clip))``."""
    return torch.exp(alpha * torch.clamp(agm_ratio(mean_scores) - agm_ratio(scores), max=clip))


def fusion_output_weight(fusion: torch.nn.Module) -> list[Tensor]:
    """The fusion output-layer weight(s) whose gradient triggers AGM's clipping."""
    if hasattr(fusion, "fc_out"):
        return [fusion.fc_out.weight]
    if hasattr(fusion, "fc"):
        return [fc.weight for fc in fusion.fc.values()]
    return [p for p in fusion.parameters() if p.dim() == 2]


class AGM(BalancingCallback):
    """Adaptive gradient modulation.

    Args:
        alpha: modulation strength (official default 1.0; the author's CREMA-D setting 1.5).
        modulation_starts: first epoch of the inclusive window, in official 1-based epochs
            (official 0).
        modulation_ends: last epoch of the window, 1-based (official 20: the first 20 epochs).
        clip: cap of ``rbar - r``; ``null``: 10 for N = 2, 7 for N >= 3 (official).
        empty_baseline: include ``f(empty)`` in the Shapley values (default off, as the
            official training for N = 2 and 3).
        grad_clip: the official conditional ``clip_grad_norm_(all, 1.0)``.
        outside_window: ``reset`` (coefficients 1, default) or ``keep_last`` (official).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        modulation_starts: int = 0,
        modulation_ends: int = 20,
        clip: float | None = None,
        empty_baseline: bool = False,
        grad_clip: bool = True,
        outside_window: str = "reset",
    ) -> None:
        super().__init__()
        self.window = self.epoch_window(modulation_starts, modulation_ends)
        if outside_window not in OUTSIDE_WINDOW:
            raise ValueError(f"outside_window must be one of {OUTSIDE_WINDOW}")
        self.alpha = alpha
        self.clip_arg = clip
        self.empty_baseline = bool(empty_baseline)
        self.grad_clip = grad_clip
        self.outside_window = outside_window
        self.sbar: Tensor | None = None
        self.count = 0
        self.coeffs: Tensor | None = None
        self._restore = DeferredState()

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        n = len(pl_module.modalities)
        self.clip = self.clip_arg if self.clip_arg is not None else (10.0 if n == 2 else 7.0)

    def in_window(self, epoch: int) -> bool:
        """Whether the 0-based (Lightning) ``epoch`` is modulated: the window is in the
        official 1-based epochs."""
        return epoch + 1 in self.window

    def subset_logits(self, pl_module: L.LightningModule, out: Any) -> dict[frozenset, Tensor]:
        """``f(S)`` for every subset S (the full set from the step's forward pass)."""
        mods = pl_module.modalities
        res = {frozenset(mods): out.logits}
        was_training = pl_module.training
        pl_module.eval()
        try:
            for r in range(len(mods) - 1, -1, -1):
                if r == 0 and not self.empty_baseline:
                    continue
                for s in itertools.combinations(mods, r):
                    inputs = {
                        m: (x if m in s else torch.zeros_like(x)) for m, x in out.inputs.items()
                    }
                    res[frozenset(s)] = pl_module(inputs, out.lengths)[0]
        finally:
            pl_module.train(was_training)
        return res

    @override
    def on_train_losses(
        self, trainer: L.Trainer, pl_module: MultimodalModule, out: StepOutput
    ) -> None:
        mods = pl_module.modalities
        active = self.in_window(trainer.current_epoch)
        if not active and (self.outside_window == "reset" or self.coeffs is None):
            return  # plain fused CE (coefficients 1)
        phi = shapley_logits(self.subset_logits(pl_module, out), mods, self.empty_baseline)
        if active:
            # the global batch's scores (mean of the rank means): the same on every rank
            s = mean_over_ranks(trainer, agm_scores(phi, out.labels))
            sbar = self.sbar if self.sbar is not None else torch.zeros_like(s)
            self.coeffs = agm_coefficients(s, sbar, self.alpha, self.clip)
            self.sbar = (sbar * self.count + s) / (self.count + 1)
            self.count += 1
        z = sum(grad_scale(phi[m], self.coeffs[i]) for i, m in enumerate(mods))
        out.losses["fused"] = F.cross_entropy(z, out.labels)
        if self.logging_step(trainer):  # per-step values: only on the steps Lightning writes
            for i, m in enumerate(mods):
                if active:
                    pl_module.log(f"agm/score_{m}", s[i], on_step=True, on_epoch=False)
                pl_module.log(f"agm/coeff_{m}", self.coeffs[i], on_step=True, on_epoch=False)

    @override
    def on_train_gradients(
        self, trainer: L.Trainer, pl_module: MultimodalModule, out: StepOutput
    ) -> None:
        if not self.grad_clip:
            return
        w = present_grads(fusion_output_weight(pl_module.fusion))
        if not w:
            return
        # trigger and clip on the true (unscaled) gradients, under any precision
        trigger = grad_amax(trainer, w) > 1
        clip_grad_norm_(trainer, present_grads(module_parameters(pl_module)), 1.0, where=trigger)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "sbar": None if self.sbar is None else self.sbar.cpu(),
            "count": self.count,
            "coeffs": None if self.coeffs is None else self.coeffs.cpu(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.count = int(state_dict.get("count", 0))
        self._restore.put(state_dict)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        st = self._restore.take(pl_module.device)
        if st is not None:
            self.sbar, self.coeffs = st.get("sbar"), st.get("coeffs")
