r"""ASGML v2 continuous boost of weak modalities (docs/asgml_v2_design.md sections 3.2 and 7.1).

From the utilization scores $s_m$ measured by `asgml.methods.probe.ProbeMonitor` (the
boost finds the monitor among the trainer's callbacks at ``on_fit_start`` and reads its
`utilization`),

$$
w_m = 1 - \frac{s_m - \min_k s_k}{\max_k s_k - \min_k s_k}, \qquad
c_m = \min\left(1 + \alpha\, w_m,\ c_{\max}\right)
$$

(the relative weakness $w_m$ and the computed scale $c_m$, with $\alpha$ = ``alpha`` and
$c_{\max}$ = ``scale_max``; every scale is 1 when the gap is ~0), smoothed with
``ema=true`` as $\text{scale}_m \leftarrow \beta\, c_m + (1 - \beta)\, \text{scale}_m$
($\beta$ = ``ema_alpha``, scales start at 1). Every step multiplies each gradient of modality
m's encoder by its current scale (cached between probe evaluations) with one fused
``torch._foreach_mul_`` per modality. Hooked at ``on_train_gradients``, after any
throttling callback (OGM-GE) and after the probe monitor, so scales computed at step t
apply at step t. Any N >= 2 modalities.

Reliability: the scales are plain floats computed from scores that are identical on every
DDP rank (the probe monitor all-gathers), so every rank applies the same scales. A
measurement with a non-finite score is ignored with a warning (the EMA keeps its last
finite value), and a scale is never applied to a step whose gradients are non-finite
(multiplying keeps inf/nan as they are; the module or the GradScaler skips such a step).
Scales and the last consumed measurement version are saved in checkpoints.

Switches for the design document's open questions (section 10, items 3 and 4):

* ``signal``: the utilization score $s_m$ the weakness is computed from. ``probe``
  (default, the design document's): the probe monitor's accuracy. ``ogm_score``: OGM-GE's
  discrepancy score (Peng et al., CVPR 2022; GeWu-Lab/OGM-GE_CVPR2022 ``main.py:105-106`` at
  ``343dc1d``) as a batch mean, $s_m = \frac1B\sum_i \mathrm{softmax}(z_m)_{i,y_i}$
  (summed over DDP ranks). ``grad_norm``: the RMS of modality m's encoder gradient as the
  method left it, $s_m = \lVert g_m \rVert_2 / \sqrt{n_m}$ ($n_m$ = its parameter count; the
  RMS, not the norm, so encoders of different sizes compare); the modality with the smallest
  gradient is the weakest. Both are measured every ``signal_every`` steps on the step's own
  outputs and need no probe monitor (``method.probe=null`` drops it); a non-finite step is not
  measured.
* ``adaptive``: this library's proposal (no paper prescribes it), a multiplicative controller
  on the trend of the utilization gap $G = \max_k s_k - \min_k s_k$: at every new measurement
  $\bar G_t = \rho\, G_t + (1 - \rho)\, \bar G_{t-1}$ ($\bar G_0 = G_0$) and
  $\alpha_t = \mathrm{clip}(\alpha_{t-1} \exp(\eta\,(\bar G_t - \bar G_{t-1})),
  \alpha_{\min}, \alpha_{\max})$ with $\alpha_0$ = ``alpha``, $\eta$ = ``adapt_rate``,
  $\rho$ = ``adapt_smoothing``: a widening gap strengthens the boost, a closing gap relaxes
  it (so a gap that is closed is not overshot). The scales of that measurement use
  $\alpha_t$. Logged as ``boost/alpha``.

Deviations from the official code: none; this library's boost is the reference
implementation of the design document (``docs/asgml_v2_design.md``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import (
    grad_norm,
    ogm_scores,
    present_grads,
    scale_,
    step_finite,
    sum_over_ranks,
)
from asgml.core.types import StepOutput, UtilizationSource


def continuous_scales(
    scores: Mapping[str, float], alpha: float = 0.5, scale_max: float = 2.0, eps: float = 1e-8
) -> dict[str, float]:
    """docs/asgml_v2_design.md 3.2: ``1 + alpha * relative weakness``, capped at ``scale_max``."""
    s_max, s_min = max(scores.values()), min(scores.values())
    gap = s_max - s_min
    if gap <= eps:
        return {m: 1.0 for m in scores}
    return {m: min(1.0 + alpha * (1.0 - (s - s_min) / gap), scale_max) for m, s in scores.items()}


SIGNALS = ("probe", "ogm_score", "grad_norm")


def adapt_alpha(
    alpha: float,
    gap_smooth: float | None,
    gap: float,
    rate: float,
    smoothing: float,
    alpha_min: float,
    alpha_max: float,
) -> tuple[float, float]:
    """One step of the adaptive alpha: ``(alpha_t, smoothed gap_t)`` from the previous
    alpha, the previous smoothed gap (``None`` at the first measurement: alpha is kept) and
    the new gap ``max s - min s``."""
    if gap_smooth is None:
        return alpha, gap
    new = smoothing * gap + (1.0 - smoothing) * gap_smooth
    return min(max(alpha * math.exp(rate * (new - gap_smooth)), alpha_min), alpha_max), new


def ogm_signal(unimodal_logits: Mapping[str, torch.Tensor], labels: torch.Tensor) -> dict:
    """``{m: sum_i softmax(z_m)[i, y_i]}`` and the sample count (0-d tensors) to reduce."""
    sums = ogm_scores({m: z.detach() for m, z in unimodal_logits.items()}, labels)
    return {**sums, "": sums[next(iter(sums))].new_tensor(float(labels.shape[0]))}


def grad_rms(trainer: L.Trainer, params: tuple) -> torch.Tensor:
    """``||g|| / sqrt(n)`` of the present gradients of ``params`` (true, unscaled)."""
    n = sum(p.numel() for p in params if p.grad is not None)
    return grad_norm(trainer, present_grads(params)).float() / math.sqrt(max(n, 1))


def ema_update(
    old: Mapping[str, float], new: Mapping[str, float], ema_alpha: float
) -> dict[str, float]:
    """``ema_alpha * new + (1 - ema_alpha) * old`` per modality (old defaults to 1.0)."""
    return {m: ema_alpha * v + (1.0 - ema_alpha) * old.get(m, 1.0) for m, v in new.items()}


class ASGMLBoost(BalancingCallback):
    """Scale up the weak modalities' encoder gradients by probe-derived scales.

    Args:
        alpha: boost strength (>= 0).
        scale_max: upper bound of a scale (>= 1).
        ema: smooth scales with an EMA (``false`` for the ablation: use computed scales).
        ema_alpha: EMA weight of the newly computed scale, in (0, 1].
        signal: ``probe`` | ``ogm_score`` | ``grad_norm`` (see the module docstring).
        signal_every: ``ogm_score`` / ``grad_norm``: measure every ``signal_every`` steps.
        adaptive: adapt alpha to the trend of the utilization gap.
        adapt_rate: the controller's rate ``eta`` (>= 0).
        adapt_smoothing: weight ``rho`` of the new gap in the smoothed gap, in (0, 1].
        alpha_min: lower bound of the adapted alpha.
        alpha_max: upper bound of the adapted alpha.
    """

    # checkpointed by BalancingCallback.state_dict
    state_attrs = ("scales", "seen_version", "alpha_now", "gap_smooth")

    def __init__(
        self,
        alpha: float = 0.5,
        scale_max: float = 2.0,
        ema: bool = True,
        ema_alpha: float = 0.3,
        signal: str = "probe",
        signal_every: int = 20,
        adaptive: bool = False,
        adapt_rate: float = 5.0,
        adapt_smoothing: float = 0.3,
        alpha_min: float = 0.05,
        alpha_max: float = 2.0,
    ) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if scale_max < 1:
            raise ValueError(f"scale_max must be >= 1, got {scale_max}")
        if not 0 < ema_alpha <= 1:
            raise ValueError(f"ema_alpha must be in (0, 1], got {ema_alpha}")
        self.check_option("signal", signal, signal in SIGNALS, f"one of {SIGNALS}")
        self.check_option("signal_every", signal_every, signal_every >= 1, "an integer >= 1")
        self.check_option("adapt_rate", adapt_rate, adapt_rate >= 0, ">= 0")
        self.check_option("adapt_smoothing", adapt_smoothing, 0 < adapt_smoothing <= 1, "in (0, 1]")
        if adaptive and not 0 <= alpha_min <= alpha <= alpha_max:
            raise ValueError(
                f"alpha_min <= alpha <= alpha_max must hold with adaptive=true, got "
                f"{alpha_min} <= {alpha} <= {alpha_max}"
            )
        self.alpha = alpha
        self.signal = signal
        self.signal_every = int(signal_every)
        self.adaptive = adaptive
        self.adapt_rate = adapt_rate
        self.adapt_smoothing = adapt_smoothing
        self.alpha_min = alpha_min
        self.alpha_max = alpha_max
        self.alpha_now = float(alpha)  # the alpha in use (moves only with adaptive=true)
        self.gap_smooth: float | None = None
        self.scale_max = scale_max
        self.ema = ema
        self.ema_alpha = ema_alpha
        self.scales: dict[str, float] = {}
        self.seen_version = 0
        self.monitor: UtilizationSource | None = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for m in pl_module.modalities:
            self.scales.setdefault(m, 1.0)
        if self.signal != "probe":  # measured from the step itself: no monitor needed
            return
        cbs = list(trainer.callbacks)
        probes = [i for i, c in enumerate(cbs) if isinstance(c, UtilizationSource)]
        if not probes:
            raise ValueError(
                "ASGMLBoost needs a ProbeMonitor callback (method.probe) to publish utilization scores"
            )
        if probes[0] > cbs.index(self):
            raise ValueError(
                "method.probe must come before method.boost so scales apply at the same step"
            )
        self.monitor = cbs[probes[0]]

    def update(self, scores: Mapping[str, float]) -> dict[str, float]:
        """Fold a new measurement into the scales; a non-finite score leaves them as they are."""
        if not all(math.isfinite(float(v)) for v in scores.values()):
            warnings.warn(
                f"ASGMLBoost: non-finite utilization scores {dict(scores)}; scales kept",
                stacklevel=2,
            )
            return self.scales
        if self.adaptive:
            gap = max(scores.values()) - min(scores.values())
            self.alpha_now, self.gap_smooth = adapt_alpha(
                self.alpha_now,
                self.gap_smooth,
                float(gap),
                self.adapt_rate,
                self.adapt_smoothing,
                self.alpha_min,
                self.alpha_max,
            )
            alpha = self.alpha_now
        else:
            alpha = self.alpha
        computed = continuous_scales(scores, alpha, self.scale_max)
        self.scales = ema_update(self.scales, computed, self.ema_alpha) if self.ema else computed
        return self.scales

    def _show_scales(self, pl_module: L.LightningModule, on_step: bool) -> None:
        """The scales on the progress bar and in ``trainer.callback_metrics`` (the per-epoch
        line reads them there); the loggers get them from `log_now`."""
        for m, s in self.scales.items():
            pl_module.log(
                f"boost/scale_{m}", s, prog_bar=True, logger=False, on_step=on_step,
                on_epoch=not on_step,
            )  # fmt: skip

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.scales and not trainer.sanity_checking:  # before the epoch's summary line
            self._show_scales(pl_module, on_step=False)

    @override
    def on_train_gradients(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: StepOutput
    ) -> None:
        scores = self.measure(trainer, pl_module, out)
        if scores is not None:
            self.update(scores)
            logged = {f"boost/scale_{m}": s for m, s in self.scales.items()}
            if self.adaptive:
                logged["boost/alpha"] = self.alpha_now
            self.log_now(trainer, logged)
        if self.logging_step(trainer):  # the progress bar; no `log` call on other steps
            self._show_scales(pl_module, on_step=True)
        for m, s in self.scales.items():
            if s != 1.0:
                scale_(present_grads(pl_module.encoder_parameters(m)), s)

    def measure(
        self, trainer: L.Trainer, module: L.LightningModule, out: StepOutput
    ) -> dict[str, float] | None:
        """A new utilization measurement for this step, or ``None`` (none is due)."""
        if self.signal == "probe":
            util = self.monitor.utilization if self.monitor is not None else None
            if util is not None and util.version != self.seen_version and util.scores:
                self.seen_version = util.version
                return dict(util.scores)
            return None
        if out.step % self.signal_every != 0:
            return None
        mod: Any = module
        if self.signal == "ogm_score":
            parts = ogm_signal(out.unimodal_logits, out.labels)
            names = list(parts)
            packed = torch.stack([parts[k].float() for k in names])
        else:
            names = list(mod.modalities)
            packed = torch.stack([grad_rms(trainer, mod.encoder_parameters(m)) for m in names])
        ok = step_finite(mod, out).to(packed.device)
        packed = sum_over_ranks(trainer, torch.cat([packed, (~ok).float().reshape(1)]))
        values = packed.tolist()  # one host sync per measurement
        if values[-1] > 0:  # a non-finite step (on some rank) is not measured
            return None
        got = dict(zip(names, values[:-1]))
        if self.signal == "ogm_score":
            count = got.pop("")
            return {m: v / count for m, v in got.items()}
        world = int(getattr(trainer, "world_size", 1))  # identical (DDP-averaged) on every rank
        return {m: v / world for m, v in got.items()}
