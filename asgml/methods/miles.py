r"""MILES: epoch-level per-encoder learning-rate balancing from modality utilisation.

Paper: "MILES: Modality-Informed Learning Rate Scheduler for Balancing Multimodal
Learning", IJCNN 2025 (arXiv 2510.17394). No official code has been released; this is an
implementation of the paper's Algorithm 1 as summarised in a third-party
re-implementation, with every choice written down below.

Algorithm (2 modalities A, B), once per epoch after validation ($M$ the metric, $y_{AB}$ the
fused prediction, $y_A$, $y_B$ the unimodal ones, $\tau$ = ``tau``, $\mu$ = ``mu``):

$$
u_A = \frac{M(y_{AB}) - M(y_B)}{M(y_{AB})}, \qquad
u_B = \frac{M(y_{AB}) - M(y_A)}{M(y_{AB})}, \qquad
\delta = |u_A - u_B|
$$

$$
\mathrm{lr}_{\text{dominant}} =
\begin{cases}
\mu\, \mathrm{lr}_{\text{base}} & \text{if } \delta > \tau \\
\mathrm{lr}_{\text{base}} & \text{otherwise}
\end{cases}
$$

for the next epoch, the dominant encoder being the one with the larger $u$; the other
encoders keep the base lr, and if every $u < 0$ nothing changes.

Deviations from the official code: no official code has been released, so these are the
choices made where the paper is silent:

* ``M`` is validation accuracy: ``val/acc`` (fused) and ``val/acc_<m>`` (unimodal logits
  derived from the fusion layer, as the module logs them). ``y_B`` is therefore the
  unimodal prediction of B, i.e. "the fused model without A".
* N > 2: ``M(without m)`` is approximated by the mean unimodal accuracy of the other
  modalities, ``u_m = (M_f - mean_{k != m} M_k) / M_f``; ``delta = max u - min u``;
  only the single most-utilised modality is slowed. For N = 2 this is the formula above.
* ``u`` is 0 when ``M_f == 0`` (no division by zero).
* The learning rate is never raised above the base lr (only ``mu < 1`` is meaningful; the
  code accepts any ``mu > 0``).
* "Base lr" is what the optimizer/scheduler would use without MILES: the multiplier applied
  at the start of an epoch is divided out again at the start of the next one, which is
  exact for constant, StepLR, MultiStepLR and ExponentialLR schedules (multiplicative ones).
* The decision uses the validation of the epoch just finished and applies to the next
  epoch; epochs without a validation keep the base lr.
* Training loss: fused CE + unimodal CE (``model.gamma=1``), as the
  re-implementation does.

Needs the module's per-encoder optimizer groups, found through
`asgml.core.module.MultimodalModule.encoder_param_groups`.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
from typing_extensions import override

from asgml.core.base import BalancingCallback


def miles_utilisation(fused_acc: float, unimodal_acc: Mapping[str, float]) -> dict[str, float]:
    """``u_m = (M_f - M_{-m}) / M_f`` with ``M_{-m}`` the mean unimodal accuracy of the
    other modalities (for N = 2: the other modality's)."""
    mods = list(unimodal_acc)
    if len(mods) < 2:
        raise ValueError("MILES needs >= 2 modalities")
    if fused_acc == 0:
        return {m: 0.0 for m in mods}
    total = sum(unimodal_acc.values())
    return {m: (fused_acc - (total - unimodal_acc[m]) / (len(mods) - 1)) / fused_acc for m in mods}


def miles_multipliers(
    utilisation: Mapping[str, float], tau: float = 0.2, mu: float = 0.5
) -> tuple[dict[str, float], float]:
    """Per-modality lr multipliers and ``delta = max u - min u``: ``mu`` for the most
    utilised modality when ``delta > tau`` and not every ``u < 0``, else 1."""
    mods = list(utilisation)
    delta = max(utilisation.values()) - min(utilisation.values())
    mult = {m: 1.0 for m in mods}
    if delta > tau and not all(u < 0 for u in utilisation.values()):
        dom = max(mods, key=lambda m: utilisation[m])
        mult[dom] = mu
    return mult, delta


class MILES(BalancingCallback):
    """Per-encoder learning-rate scaling from validation utilisation.

    Args:
        tau: utilisation-gap threshold (0.2).
        mu: multiplier of the dominant encoder's lr (0.5).
    """

    state_attrs = ("next_mult", "applied_mult")  # checkpointed by BalancingCallback.state_dict

    def __init__(self, tau: float = 0.2, mu: float = 0.5) -> None:
        super().__init__()
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        if mu <= 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        self.tau = tau
        self.mu = mu
        self.next_mult: dict[str, float] = {}
        self.applied_mult: dict[str, float] = {}
        self.utilisation: dict[str, float] = {}
        self.delta = 0.0

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for m in pl_module.modalities:
            self.next_mult.setdefault(m, 1.0)
            self.applied_mult.setdefault(m, 1.0)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for m in pl_module.modalities:
            pl_module.encoder_param_groups(m, trainer.optimizers)  # fail early

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for m in pl_module.modalities:
            groups = pl_module.encoder_param_groups(m, trainer.optimizers)
            for g in groups:
                g["lr"] = g["lr"] / self.applied_mult[m] * self.next_mult[m]
            self.applied_mult[m] = self.next_mult[m]
            pl_module.log(f"miles/lr_mult_{m}", self.applied_mult[m], on_step=False, on_epoch=True)
            pl_module.log(f"miles/lr_{m}", float(groups[0]["lr"]), on_step=False, on_epoch=True)
        # an epoch without validation leaves the next epoch at the base lr
        self.next_mult = {m: 1.0 for m in pl_module.modalities}

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs after the module's on_validation_epoch_end has put val/acc* in callback_metrics
        if trainer.sanity_checking:
            return
        cm = trainer.callback_metrics
        mods = pl_module.modalities
        keys = ["val/acc"] + [f"val/acc_{m}" for m in mods]
        if any(k not in cm for k in keys):
            return
        self.utilisation = miles_utilisation(
            float(cm["val/acc"]), {m: float(cm[f"val/acc_{m}"]) for m in mods}
        )
        self.next_mult, self.delta = miles_multipliers(self.utilisation, self.tau, self.mu)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.utilisation:
            for m in pl_module.modalities:
                pl_module.log(f"miles/u_{m}", self.utilisation[m], on_step=False, on_epoch=True)
            pl_module.log("miles/delta", self.delta, on_step=False, on_epoch=True)
