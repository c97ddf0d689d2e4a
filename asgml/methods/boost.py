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

Deviations from the official code: none; this library's boost is the reference
implementation of the design document (``docs/asgml_v2_design.md``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import lightning as L
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import present_grads, scale_
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
    """

    state_attrs = ("scales", "seen_version")  # checkpointed by BalancingCallback.state_dict

    def __init__(
        self, alpha: float = 0.5, scale_max: float = 2.0, ema: bool = True, ema_alpha: float = 0.3
    ) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if scale_max < 1:
            raise ValueError(f"scale_max must be >= 1, got {scale_max}")
        if not 0 < ema_alpha <= 1:
            raise ValueError(f"ema_alpha must be in (0, 1], got {ema_alpha}")
        self.alpha = alpha
        self.scale_max = scale_max
        self.ema = ema
        self.ema_alpha = ema_alpha
        self.scales: dict[str, float] = {}
        self.seen_version = 0
        self.monitor: UtilizationSource | None = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
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
        for m in pl_module.modalities:
            self.scales.setdefault(m, 1.0)

    def update(self, scores: Mapping[str, float]) -> dict[str, float]:
        """Fold a new measurement into the scales; a non-finite score leaves them as they are."""
        if not all(math.isfinite(float(v)) for v in scores.values()):
            warnings.warn(
                f"ASGMLBoost: non-finite utilization scores {dict(scores)}; scales kept",
                stacklevel=2,
            )
            return self.scales
        computed = continuous_scales(scores, self.alpha, self.scale_max)
        self.scales = ema_update(self.scales, computed, self.ema_alpha) if self.ema else computed
        return self.scales

    @override
    def on_train_gradients(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: StepOutput
    ) -> None:
        util = self.monitor.utilization if self.monitor is not None else None
        if util is not None and util.version != self.seen_version and util.scores:
            self.seen_version = util.version
            self.update(util.scores)
            self.log_now(trainer, {f"boost/scale_{m}": s for m, s in self.scales.items()})
            for m, s in self.scales.items():  # on the progress bar (loggers have them above)
                pl_module.log(f"boost/scale_{m}", s, prog_bar=True, logger=False, on_step=True)
        for m, s in self.scales.items():
            if s != 1.0:
                scale_(present_grads(pl_module.encoder_parameters(m)), s)
