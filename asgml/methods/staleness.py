r"""ASGML v1: staleness / update-frequency scheduling (docs/asgml_v2_design.md sections 1.3 and Appendix A).

The "original ASGML" row of the paper. No official code: the design document is the only
source. A dual signal measures each modality's learning speed ($G_m$: mean encoder-gradient
L2 norm over the window; $D_m$: relative descent of the unimodal CE loss; $\beta$ = ``beta``),

$$
\text{grad\_ratio}_m = \frac{G_m}{\frac{1}{N}\sum_k G_k}, \qquad
\text{loss\_ratio}_m = \frac{D_m}{\frac{1}{N}\sum_k D_k}
$$

$$
\text{speed}_m = \beta\, \text{grad\_ratio}_m + (1 - \beta)\, \text{loss\_ratio}_m, \qquad
\tau_m = \operatorname{clamp}\bigl(\tau_{base}\, \text{speed}_m,\ 1,\ \tau_{max}\bigr)
$$

and modality m's encoder is updated only on steps where ``step % round(tau_m) == 0``; on
the other steps its gradients are zeroed (``skip=zero``, the default; SGD's
momentum and weight decay still move the weights) or removed (``skip=none``: the optimizer
leaves the encoder untouched that step).

The design document fixes the formulas above, the normalisation by the mean, the direction
("throttle dominant", Appendix A) and the behaviour this produces ("tau ~ 1-2 for all",
"binary skip rarely triggered", sections 1.3, 5.2 and Appendix A). Hence the default
``tau_base = 1``: a modality learning at the mean speed (``speed = 1``) has ``tau = 1`` and
updates every step; only a modality learning at least 1.5 times the mean
(``round(tau) >= 2``) skips, and the slower ones are clamped to ``tau = 1`` -- so with
equally strong modalities nothing is skipped, and the weak modality is never throttled.
(With ``tau_base = 2`` every modality at the mean speed would get ``tau = 2`` and *all*
encoders would skip every other step, on the same steps.)

What the design document leaves open, and what we chose (all configurable or listed here):

* the value of ``tau_base`` (its example in section 1.3, gradients 100 vs 50 giving
  "tau ~ 2" for both, fits no single value; we follow the stated behaviour, see above) and
  of ``tau_max`` (8);
* how tau becomes a schedule: ``step % round(tau_m) == 0`` (Python's ``round``: 1.5 -> 2,
  2.5 -> 2), all modalities counted from the same global step, so skips of different
  modalities coincide;
* what a skip does to the optimizer (the document only says "skip updates"; ``skip``, see
  above);
* what ``beta`` is (``0.5``: equal weight of the two signals);
* the signals are averaged over windows of ``update_freq`` steps; tau is recomputed at the
  end of each window and used during the next (all tau = 1 during the first window);
* ``D_m = max(L_prev - L_cur, 0) / L_prev`` with ``L`` the window mean of CE(unimodal_m)
  (unimodal logits as published by the module); for the first window ``D_m = 1`` (no
  history), so only the gradient signal counts there;
* ``eps`` guards zero means in the normalisation.

Reliability: gradient norms are divided by the AMP loss scale (``16-mixed``), steps whose
gradients or losses are non-finite (e.g. steps the GradScaler skips) add nothing to the
window's running sums (they are counted apart and reported at epoch end), a window with no
finite step leaves tau unchanged, and under DDP the window sums and finite-step counts are
all-reduced before the ratios are taken, so every rank computes the same tau.

Deviations from the official code: none; ASGML v1 is implemented here from the design
document, and the choices it leaves open are listed above.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import (
    DeferredState,
    NonFiniteCounter,
    grad_norm,
    present_grads,
    step_finite,
    sum_over_ranks,
)
from asgml.core.types import StepOutput


def learning_speed(
    grad_norms: Mapping[str, float],
    loss_descent: Mapping[str, float],
    beta: float = 0.5,
    eps: float = 1e-8,
) -> dict[str, float]:
    """``beta * G_m / mean(G) + (1 - beta) * D_m / mean(D)``."""
    mods = list(grad_norms)
    g_mean = sum(grad_norms.values()) / len(mods)
    d_mean = sum(loss_descent.values()) / len(mods)
    out = {}
    for m in mods:
        g = grad_norms[m] / g_mean if g_mean > eps else 1.0
        d = loss_descent[m] / d_mean if d_mean > eps else 1.0
        out[m] = beta * g + (1 - beta) * d
    return out


def staleness(
    speed: Mapping[str, float], tau_base: float = 1.0, tau_max: float = 8.0
) -> dict[str, float]:
    """``tau_m = clamp(tau_base * speed_m, 1, tau_max)``."""
    return {m: float(min(max(tau_base * s, 1.0), tau_max)) for m, s in speed.items()}


def should_update(step: int, tau: float) -> bool:
    """The encoder of a modality with staleness ``tau`` updates when ``step % round(tau) == 0``."""
    return step % max(1, round(tau)) == 0


class StalenessScheduler(BalancingCallback):
    """ASGML v1 update skipping.

    Args:
        beta: weight of the gradient signal vs the loss-descent signal.
        tau_base: staleness of a modality learning at the mean speed (default 1: it is
            never skipped; only a modality at >= 1.5x the mean speed is).
        tau_max: upper bound of tau.
        update_freq: window length (steps) over which the signals are averaged.
        skip: ``zero`` (zero the grads) or ``none`` (set them to None: no update at all).
    """

    def __init__(
        self,
        beta: float = 0.5,
        tau_base: float = 1.0,
        tau_max: float = 8.0,
        update_freq: int = 20,
        skip: str = "zero",
    ) -> None:
        super().__init__()
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if tau_base <= 0 or tau_max < 1:
            raise ValueError(f"need tau_base > 0 and tau_max >= 1, got {tau_base}, {tau_max}")
        if update_freq < 1:
            raise ValueError(f"update_freq must be >= 1, got {update_freq}")
        if skip not in ("zero", "none"):
            raise ValueError(f"skip must be 'zero' or 'none', got {skip!r}")
        self.beta, self.tau_base, self.tau_max = beta, tau_base, tau_max
        self.update_freq, self.skip = update_freq, skip
        self.tau: dict[str, float] = {}
        self.skips: dict[str, int] = {}
        self.prev_loss: dict[str, float] = {}
        self._acc: dict[str, Tensor] = {}  # running sums on device: [grad_norm, loss]
        self._finite: Tensor | None = None  # finite steps in the window (0-d, on device)
        self._count = 0  # steps in the window (finite or not)
        self.nonfinite = NonFiniteCounter("StalenessScheduler", "out of its running statistics")
        self._restore = DeferredState()

    @property
    def nonfinite_steps(self) -> int:
        """Steps left out of the running statistics (non-finite gradients or losses)."""
        return self.nonfinite.total

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for m in pl_module.modalities:
            self.tau.setdefault(m, 1.0)
            self.skips.setdefault(m, 0)
        state = self._restore.take(pl_module.device)
        if state is not None:
            self._acc = dict(state["acc"])
            self._finite = state["finite"]

    @override
    def on_train_gradients(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: StepOutput
    ) -> None:
        step = out.step
        stats = {}
        for m in pl_module.modalities:
            gnorm = grad_norm(trainer, present_grads(pl_module.encoder_parameters(m)))
            loss = F.cross_entropy(out.unimodal_logits[m].detach().float(), out.labels)
            stats[m] = torch.stack([gnorm.to(loss), loss])
        # a step that will not be applied (non-finite, scaler overflow) adds nothing
        finite = (
            step_finite(pl_module, out) & torch.isfinite(torch.stack(list(stats.values()))).all()
        )
        for m, stat in stats.items():
            stat = torch.where(finite, stat, torch.zeros_like(stat))
            self._acc[m] = stat if m not in self._acc else self._acc[m] + stat
        n = finite.float()
        self._finite = n if self._finite is None else self._finite + n
        self.nonfinite.add(~finite)
        self._count += 1
        for m in pl_module.modalities:
            if not should_update(step, self.tau[m]):
                self.skips[m] += 1
                for p in pl_module.encoder_parameters(m):
                    if p.grad is not None:
                        if self.skip == "zero":
                            p.grad.zero_()
                        else:
                            p.grad = None
        if self._count >= self.update_freq:
            self._recompute(trainer, pl_module)

    def _recompute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        mods = list(self._acc)
        sums = torch.stack([self._acc[m] for m in mods])  # (M, 2)
        n = self._finite if self._finite is not None else torch.tensor(float(self._count))
        packed = torch.cat([sums.flatten(), n.reshape(1).to(sums)])
        packed = sum_over_ranks(trainer, packed).tolist()  # one host sync per window
        total = packed[-1]
        self._acc, self._finite, self._count = {}, None, 0
        if total <= 0:  # every step of the window was non-finite: keep tau
            return
        values = [(packed[2 * i] / total, packed[2 * i + 1] / total) for i in range(len(mods))]
        grad_norms = {m: v[0] for m, v in zip(mods, values)}
        losses = {m: v[1] for m, v in zip(mods, values)}
        descent = {
            m: (max(self.prev_loss[m] - losses[m], 0.0) / self.prev_loss[m])
            if self.prev_loss.get(m, 0.0) > 0
            else 1.0
            for m in mods
        }
        self.tau = staleness(
            learning_speed(grad_norms, descent, self.beta), self.tau_base, self.tau_max
        )
        self.prev_loss = losses
        logged = {f"staleness/tau_{m}": self.tau[m] for m in mods}
        logged.update({f"staleness/skips_{m}": float(self.skips[m]) for m in mods})
        self.log_now(trainer, logged)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.nonfinite.end_epoch(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "tau": dict(self.tau),
            "skips": dict(self.skips),
            "prev_loss": dict(self.prev_loss),
            "acc": {m: t.detach().cpu() for m, t in self._acc.items()},
            "finite": None if self._finite is None else self._finite.detach().cpu(),
            "count": self._count,
            "nonfinite_steps": self.nonfinite.total,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tau = dict(state_dict.get("tau", {}))
        self.skips = dict(state_dict.get("skips", {}))
        self.prev_loss = dict(state_dict.get("prev_loss", {}))
        acc = dict(state_dict.get("acc", {}))
        self._count = int(state_dict.get("count", 0))
        finite = state_dict.get("finite")
        if finite is None and acc:  # older checkpoints: every step counted
            finite = torch.tensor(float(self._count))
        self._acc, self._finite = acc, finite  # usable at once; moved to the device at fit start
        self._restore.put({"acc": acc, "finite": finite})
        self.nonfinite.load(state_dict.get("nonfinite_steps", 0))
