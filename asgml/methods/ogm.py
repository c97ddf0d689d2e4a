r"""OGM-GE: On-the-fly Gradient Modulation with Generalization Enhancement.

Paper: Peng, Wei, Deng, Wang, Hu, "Balanced Multimodal Learning via On-the-fly Gradient
Modulation", CVPR 2022 (arXiv 2203.15332).
Official code: https://github.com/GeWu-Lab/OGM-GE_CVPR2022 (``main.py``, ``train_epoch``).

Two modes:

``official`` (exactly 2 modalities; the first in config order plays OGM-GE's *audio*, the
second its *visual*), as ``main.py`` is today, with $z_m$ the unimodal logits of modality
$m$, $\alpha$ = ``alpha`` and $k_m$ the coefficient (``coeff_m``):

$$
s_m = \sum_{i \in \text{batch}} \operatorname{softmax}(z_m)_{i,\,y_i}, \qquad
\rho_v = \frac{s_v}{s_a}, \qquad \rho_a = \frac{1}{\rho_v}
$$

$$
(k_a,\ k_v) =
\begin{cases}
\bigl(1,\ 1 - \tanh(\alpha\,\mathrm{relu}(\rho_v))\bigr) & \text{if } \rho_v > 1 \\
\bigl(1 - \tanh(\alpha\,\mathrm{relu}(\rho_a)),\ 1\bigr) & \text{otherwise}
\end{cases}
$$

Only 4-D (conv weight) gradients of each encoder are modulated (selected by module type,
not by name-splitting, which in the official code only works under DataParallel). With
``variant=pre2022`` the argument is ``ratio - 1`` (the formula before commit a974f3c,
2022-05-29, that several papers quote).

``generalized`` (any N >= 2, docs/asgml_v2_design.md section 10.1; deviation from the official code):
``ratio_m = score_m / mean_{k != m} score_k`` and ``coeff_m = 1 - tanh(alpha * relu(ratio_m - 1))``
for every modality,

$$
\rho_m = \frac{s_m}{\frac{1}{N-1}\sum_{k \ne m} s_k}, \qquad
k_m = 1 - \tanh\bigl(\alpha\,\mathrm{relu}(\rho_m - 1)\bigr)
$$

(so only modalities above the mean of the others are damped, and the
coefficient is continuous at ratio 1). For N = 2 this is the pre-2022 formula. Which
parameters: ``conv`` (4-D only), ``weights`` (every conv/linear weight: MLP encoders are
modulated; default) or ``all`` (biases and norm parameters too). ``weights`` is the default
because it keeps OGM-GE's rule of leaving normalisation and bias parameters alone while
reaching the Linear layers of MLP encoders (as BalanceBenchmark does and as the OGM-GE
maintainers advise in issue #22).

GE (``mode=OGM_GE``): after scaling, Gaussian noise ``N(0, std(g_original) + 1e-8)`` (one std
per tensor, from the un-modulated gradient) is added to every modulated tensor of *every*
modality, including those with coefficient 1: for each modulated gradient tensor $g$ of
modality $m$,

$$
g \leftarrow k_m\, g + \epsilon, \qquad
\epsilon \sim \mathcal{N}\bigl(0,\ \sigma^2\bigr), \qquad
\sigma = \operatorname{std}(g) + 10^{-8}
$$

with $\operatorname{std}(g)$ taken before the scaling. ``mode=OGM`` scales only. Modulation runs
while ``modulation_starts <= epoch <= modulation_ends`` (0-based, inclusive).
The noise is drawn per tensor in order (``noise_draw=per_tensor``, the official numbers
under the same seed) or with one ``randn`` per modality into a flat buffer
(``noise_draw=flat``: the same N(0, std) per tensor, fewer kernel launches; the numbers are
not guaranteed to be the official ones).

Mixed precision: under ``16-mixed`` the gradients seen at ``on_train_gradients`` are
multiplied by the loss scale S. Scaling commutes with it; the noise std is taken from the
same scaled tensor, so ``std(S g) = S std(g)``, and the epsilon is scaled too
(``S * 1e-8``), so after unscaling the noise is exactly ``N(0, std(g) + 1e-8)``.

Unimodal logits: the fusion head's slices (concat/sum fusion, as official). ``film`` and
``gated`` fusion cannot derive them and need separate heads (``model.unimodal_heads=true``);
those heads only train through the unimodal CE (``model.gamma > 0``), so with ``gamma = 0``
they would stay at their random initialisation and the scores would be noise: that
combination is refused at start-up. (The official ``main.py`` slices ``fc_out`` in halves
for every fusion but ``sum``, which fails with shape errors for its FiLM and gated modules,
so there is no official behaviour to follow there.)

Guards: a score of 0 is clamped to ``eps`` before dividing; if any gradient is
non-finite the step is left unmodulated (coefficients 1, no noise) and counted.

Deviations from the official code:

* parameters are selected by layer type (``params``), not by name-splitting;
* ``variant=generalized`` (N >= 2, ratio to the mean of the others) is this library's
  generalisation; ``official``/``pre2022`` follow ``main.py`` for 2 modalities;
* a zero score is clamped to ``eps``; non-finite steps are left unmodulated and counted;
* mixed precision and several processes (the official code runs fp32 with DataParallel):
  see below; the result equals the single-process fp32 one on the global batch.

DDP: the scores are sums over each rank's local batch; they are all-reduced (summed) before
the coefficients are computed, so every rank applies the same coefficients to the (already
averaged) gradients. The GE noise draws from the global torch RNG, which is seeded alike on
every rank and consumed alike, so the noise is the same on every rank too; checkpoints save
that RNG state (`asgml.core.module.MultimodalModule`) so a resumed run draws the same noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import (
    NonFiniteCounter,
    all_finite,
    loss_scale,
    ogm_scores,
    present_grads,
    scale_,
    select_parameters,
    sum_over_ranks,
)
from asgml.core.types import StepOutput

MODES = ("OGM_GE", "OGM")
VARIANTS = ("official", "pre2022", "generalized")
NOISE_DRAWS = ("per_tensor", "flat")


def official_coefficients(
    score_a: Tensor, score_v: Tensor, alpha: float, pre2022: bool = False, eps: float = 1e-8
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """OGM-GE ``main.py``: returns ``(coeff_a, coeff_v, ratio_a, ratio_v)``.

    With ``pre2022`` the argument of tanh is ``ratio - 1`` (before commit a974f3c)."""
    ratio_v = score_v / score_a.clamp_min(eps)
    ratio_a = 1.0 / ratio_v.clamp_min(eps)
    shift = 1.0 if pre2022 else 0.0
    one = torch.ones_like(ratio_v)
    damp_v = 1 - torch.tanh(alpha * torch.relu(ratio_v - shift))
    damp_a = 1 - torch.tanh(alpha * torch.relu(ratio_a - shift))
    v_dominant = ratio_v > 1
    coeff_v = torch.where(v_dominant, damp_v, one)
    coeff_a = torch.where(v_dominant, one, damp_a)
    return coeff_a, coeff_v, ratio_a, ratio_v


def generalized_coefficients(
    scores: Mapping[str, Tensor], alpha: float, eps: float = 1e-8
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """N-modality OGM: ``ratio_m = s_m / mean_{k != m} s_k``,
    ``coeff_m = 1 - tanh(alpha * relu(ratio_m - 1))``. Returns ``(coeffs, ratios)``."""
    mods = list(scores)
    if len(mods) < 2:
        raise ValueError("OGM needs >= 2 modalities")
    s = torch.stack([scores[m] for m in mods])
    others = (s.sum() - s) / (len(mods) - 1)
    ratios = s / others.clamp_min(eps)
    coeffs = 1 - torch.tanh(alpha * torch.relu(ratios - 1))
    return dict(zip(mods, coeffs.unbind())), dict(zip(mods, ratios.unbind()))


def grad_stds(grads: Sequence[Tensor]) -> Tensor:
    """Per-tensor standard deviation of ``grads`` as one ``(n,)`` float32 tensor (0 for
    one-element tensors). Non-finite for a tensor holding inf/nan."""
    return torch.stack(
        [g.float().std() if g.numel() > 1 else torch.zeros((), device=g.device) for g in grads]
    )


def modulate_(
    grads: Sequence[Tensor],
    coeff: Tensor | float,
    noise: bool,
    loss_scale: Tensor | float = 1.0,
    enabled: Tensor | bool = True,
    generator: torch.Generator | None = None,
    stds: Tensor | None = None,
    noise_draw: str = "per_tensor",
) -> None:
    """``g <- g * coeff (+ N(0, std(g) + 1e-8 * loss_scale))`` in place, fused over tensors.

    ``noise_draw``: ``per_tensor`` (the official draw sequence) or ``flat`` (one draw per
    call, see `ge_noise`).

    ``enabled`` (a 0-d bool tensor is fine: no host sync) turns the whole edit off.
    ``stds``: the un-modulated gradients' `grad_stds`, if already computed."""
    if not grads:
        return
    grads = list(grads)
    en = torch.as_tensor(enabled, device=grads[0].device)
    if noise:
        std = grad_stds(grads) if stds is None else stds
        std = std + 1e-8 * torch.as_tensor(loss_scale, device=grads[0].device)
        std = torch.where(en, std, torch.zeros_like(std))
    c = torch.where(en, torch.as_tensor(coeff, device=grads[0].device), 1.0).to(grads[0].dtype)
    scale_(grads, c)
    if noise:
        noises = ge_noise(grads, generator, flat=noise_draw == "flat")
        torch._foreach_mul_(noises, list(std.to(grads[0].dtype).unbind()))
        torch._foreach_add_(grads, noises)


def ge_noise(
    grads: Sequence[Tensor], generator: torch.Generator | None = None, flat: bool = False
) -> list[Tensor]:
    """Standard-normal noise shaped like each of ``grads``.

    ``flat=False`` (default): one ``randn`` per tensor, in order -- the same numbers as the
    official per-tensor ``zeros_like(g).normal_(0, 1)`` under the same seed. ``flat=True``:
    one ``randn`` for all tensors into a flat buffer, returned as views (fewer kernel
    launches; the same N(0, 1) per entry, but not guaranteed to be the official numbers)."""
    if not flat:
        return [
            torch.randn(g.shape, device=g.device, dtype=g.dtype, generator=generator) for g in grads
        ]
    numels = [g.numel() for g in grads]
    g0 = grads[0]
    buf = torch.randn(sum(numels), device=g0.device, dtype=g0.dtype, generator=generator)
    return [v.view_as(g) for v, g in zip(buf.split(numels), grads)]


def check_unimodal_heads_train(pl_module: L.LightningModule, method: str) -> None:
    """Refuse separate unimodal heads that receive no gradient (``model.gamma == 0``): a
    method reading unimodal scores from them would read an untrained, random head."""
    heads = getattr(pl_module, "unimodal_heads", None)
    if heads is not None and float(getattr(pl_module, "gamma", 0.0)) == 0.0:
        fusion = dict(getattr(pl_module, "hparams", {})).get("fusion", "?")
        raise ValueError(
            f"{method} reads its unimodal scores from the separate unimodal heads "
            f"(model.unimodal_heads=true, model.fusion={fusion}), but with model.gamma=0 "
            "those heads never train, so the scores would come from random heads. Set "
            "model.gamma > 0 (or method.model_defaults.gamma: the heads then train with "
            "gamma * CE(unimodal), which also reaches the encoders), or use "
            "model.fusion=concat|sum with model.unimodal_heads=false (OGM-GE's official setup)"
        )


class OGMGE(BalancingCallback):
    """OGM / OGM-GE gradient modulation at ``on_train_gradients``.

    Args:
        alpha: modulation strength (official README: 0.8 for CREMA-D, 0.1 for VGGSound).
        mode: ``OGM_GE`` (scaling + noise) or ``OGM`` (scaling only).
        variant: ``official`` (2 modalities, ``ratio``), ``pre2022`` (2 modalities,
            ``ratio - 1``) or ``generalized`` (N >= 2, ratio to the mean of the others).
        params: parameter selection: ``conv``, ``weights`` or ``all`` for ``generalized``
            (default ``weights``); ``official``/``pre2022`` modulate ``conv`` as the official
            code, and any other value with them is an error.
        modulation_starts: first epoch of the inclusive 0-based modulation window.
        modulation_ends: last epoch of the window.
        eps: guard for a zero score.
        noise_draw: how the GE noise is drawn: ``per_tensor`` (one ``randn`` per gradient
            tensor: the same numbers as the official code under the same seed) or ``flat``
            (one ``randn`` per modality into a flat buffer: the same N(0, std) per tensor,
            fewer kernel launches, not guaranteed to be the official numbers).
    """

    def __init__(
        self,
        alpha: float = 0.8,
        mode: str = "OGM_GE",
        variant: str = "official",
        params: str | None = None,
        modulation_starts: int = 0,
        modulation_ends: int = 50,
        eps: float = 1e-8,
        noise_draw: str = "per_tensor",
    ) -> None:
        super().__init__()
        if noise_draw not in NOISE_DRAWS:
            raise ValueError(
                f"method.ogm.noise_draw must be one of {NOISE_DRAWS}, got {noise_draw!r}"
            )
        self.noise_draw = noise_draw
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.window = self.epoch_window(modulation_starts, modulation_ends)
        self.alpha = alpha
        self.mode = mode
        self.variant = variant
        if variant != "generalized" and params not in (None, "conv"):
            raise ValueError(
                f"params={params!r} needs variant=generalized: variant={variant!r} modulates the "
                "conv weights as the official code (leave params unset)"
            )
        self.params = params or ("weights" if variant == "generalized" else "conv")
        select_parameters(torch.nn.Identity(), self.params)  # validates the name
        self.eps = eps
        self._params: dict[str, list] = {}
        self.nonfinite = NonFiniteCounter("OGM-GE", "unmodulated")

    @property
    def nonfinite_steps(self) -> int:
        """Steps left unmodulated because their gradients were non-finite."""
        return self.nonfinite.total

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        mods = pl_module.modalities
        if self.variant != "generalized" and len(mods) != 2:
            raise ValueError(
                f"OGM-GE variant={self.variant!r} supports exactly 2 modalities, got {mods}; "
                "use method.ogm.variant=generalized for N > 2"
            )
        check_unimodal_heads_train(pl_module, "OGM-GE")
        self._params = {m: select_parameters(pl_module.encoders[m], self.params) for m in mods}
        empty = [m for m, ps in self._params.items() if not ps]
        if empty:
            raise ValueError(
                f"OGM-GE params={self.params!r} selects no parameter of encoder(s) {empty}; "
                "use method.ogm.params=weights (or all) with MLP encoders"
            )

    def in_window(self, epoch: int) -> bool:
        return epoch in self.window

    def coefficients(
        self, unimodal_logits: Mapping[str, Tensor], labels: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(coeffs, ratios)`` from one (local) batch's unimodal logits."""
        return self.coefficients_from_scores(ogm_scores(unimodal_logits, labels))

    def coefficients_from_scores(
        self, scores: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(coeffs, ratios)`` from per-modality scores (summed over the global batch)."""
        if self.variant == "generalized":
            return generalized_coefficients(scores, self.alpha, self.eps)
        a, v = list(scores)
        ca, cv, ra, rv = official_coefficients(
            scores[a], scores[v], self.alpha, pre2022=self.variant == "pre2022", eps=self.eps
        )
        return {a: ca, v: cv}, {a: ra, v: rv}

    @override
    def on_train_gradients(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: StepOutput
    ) -> None:
        if not self.in_window(trainer.current_epoch):
            return
        scores = ogm_scores({m: z.detach() for m, z in out.unimodal_logits.items()}, out.labels)
        mods = list(scores)
        # one small all-reduce per step under DDP: every rank gets the same coefficients
        summed = sum_over_ranks(trainer, torch.stack([scores[m] for m in mods]))
        coeffs, ratios = self.coefficients_from_scores(dict(zip(mods, summed.unbind())))
        grads = {m: present_grads(ps) for m, ps in self._params.items()}
        noise = self.mode == "OGM_GE"
        if noise:  # the noise needs the per-tensor stds anyway: they reveal inf/nan for free
            stds = {m: grad_stds(gs) for m, gs in grads.items() if gs}
            finite = (
                torch.isfinite(torch.stack([s.sum() for s in stds.values()]).sum())
                if stds
                else torch.tensor(True)
            )
        else:
            stds = {}
            finite = all_finite([g for gs in grads.values() for g in gs])
        self.nonfinite.add(~finite)
        scale = loss_scale(trainer)
        for m, gs in grads.items():
            modulate_(
                gs,
                coeffs[m],
                noise,
                loss_scale=scale,
                enabled=finite,
                stds=stds.get(m),
                noise_draw=self.noise_draw,
            )
        if self.logging_step(trainer):
            for m in coeffs:
                pl_module.log(f"ogm/coeff_{m}", coeffs[m], on_step=True, on_epoch=False)
                pl_module.log(f"ogm/ratio_{m}", ratios[m], on_step=True, on_epoch=False)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.nonfinite.end_epoch(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        # the counter folds its pending (device) count in: a checkpoint may be mid-epoch
        return {"nonfinite_steps": self.nonfinite.total}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.nonfinite.load(state_dict.get("nonfinite_steps", 0))
