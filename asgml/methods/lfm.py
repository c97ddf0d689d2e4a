r"""LFM: dynamically learning the modality gap.

Paper: Yang, Wan, Jiang & Xu, "Facilitating Multimodal Classification via Dynamically
Learning Modality Gap", NeurIPS 2024.
Official code: https://github.com/njustkmg/NeurIPS24-LFM @ ad44fa0 (``Crema_epoch.py``:
``Alignment`` lines 38-45, ``getAlpha_Learnable_Fitted`` lines 47-53, ``train_audio_video``
lines 56-75, the epoch loop lines 192-197; the README runs ``Crema_epoch.py``); second
reference: GeWu-Lab/BalanceBenchmark @ 4c1482f ``balancemm/trainer/LFM_trainer.py``.

The model is a sum-fusion classifier (one linear head per modality, fused logits
$z = \sum_m z_m$). The loss mixes the supervised CE of the averaged logits with an
unsupervised alignment term, the Jensen-Shannon divergence between the unimodal predictions:

$$
\mathcal{L} = 2\Big(k_1(e)\,\mathrm{CE}\big(\tfrac1N \textstyle\sum_m z_m, y\big)
 + k_2(e)\,\frac1P \sum_{(a, b)} \mathrm{JS}\big(\mathrm{softmax}(z_a), \mathrm{softmax}(z_b)\big)\Big),
$$

$\mathrm{JS}(p, q) = \tfrac12 \mathrm{KL}(m \Vert p) + \tfrac12 \mathrm{KL}(m \Vert q)$ with
$m = (p + q)/2$ as the official ``Alignment`` computes it (``F.kl_div(p.log(), m,
'batchmean')``: $\sum m \log(m / p)$ averaged over the batch), over the $P$ modality pairs.
The weights follow the official fitted schedule (``schedule: fitted``), degree-5 polynomials
in the epoch $e$ fitted by the authors to their learned weights:
$k_1(e) = \sum_i a_i e^i$, $k_2(e) = \sum_i b_i e^i$ (coefficients below), which moves the
weight from alignment (early, $k_2(0) \approx 0.80$) to classification (later). Aligning the
unimodal predictions first lets the weak modality fit the labels at the pace of the strong
one. ``schedule: constant`` uses fixed ``ce_weight`` / ``align_weight``.

N modalities: the JS term is averaged over all pairs, as BalanceBenchmark does.

Logged: ``lfm/ce_weight``, ``lfm/align_weight``, ``lfm/align`` (the JS term).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import TYPE_CHECKING

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.models.fusion import ConcatFusion, MMCosineFusion, SumFusion

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.types import StepOutput

# Crema_epoch.py:49-50 (coef_alpha1: CE weight, coef_alpha2: alignment weight)
FITTED_CE = (
    2.04623704e-01,
    3.35472727e-03,
    1.22989557e-04,
    -2.92947416e-06,
    2.23835486e-08,
    -5.39717505e-11,
)
FITTED_ALIGN = (7.95376296e-01, -3.35472727e-03, -1.22989557e-04, 2.92947416e-06, -2.23835486e-08, 5.39717505e-11)  # fmt: skip


def polynomial(coefs: Sequence[float], x: float) -> float:
    """``sum_i coefs[i] * x**i``."""
    return float(sum(c * x**i for i, c in enumerate(coefs)))


def js_alignment(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """The official ``Alignment``: ``0.5 KL(m || p) + 0.5 KL(m || q)``, batch-mean.

    ``log p`` is taken with ``log_softmax`` (the official ``softmax(.).log()`` gives ``-inf``
    once a probability underflows; the value is otherwise the same)."""
    log_p, log_q = logits_p.log_softmax(dim=-1), logits_q.log_softmax(dim=-1)
    m = 0.5 * log_p.exp() + 0.5 * log_q.exp()
    return 0.5 * (
        F.kl_div(log_p, m, reduction="batchmean") + F.kl_div(log_q, m, reduction="batchmean")
    )


class LFM(BalancingCallback):
    """CE + dynamically weighted cross-modal JS alignment.

    Args:
        schedule: ``fitted`` (the official polynomial weights per epoch) or ``constant``.
        ce_weight: the CE weight for ``schedule: constant``.
        align_weight: the alignment weight for ``schedule: constant``.
    """

    def __init__(
        self, schedule: str = "fitted", ce_weight: float = 0.5, align_weight: float = 0.5
    ) -> None:
        super().__init__()
        if schedule not in ("fitted", "constant"):
            raise ValueError(f"method.lfm.schedule must be fitted|constant, got {schedule!r}")
        if ce_weight < 0 or align_weight < 0:
            raise ValueError("method.lfm.ce_weight and align_weight must be >= 0")
        self.schedule = schedule
        self.ce_weight = float(ce_weight)
        self.align_weight = float(align_weight)

    def weights(self, epoch: int) -> tuple[float, float]:
        """``(k_1, k_2)`` of an epoch."""
        if self.schedule == "fitted":
            return polynomial(FITTED_CE, epoch), polynomial(FITTED_ALIGN, epoch)
        return self.ce_weight, self.align_weight

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module.fusion, SumFusion | ConcatFusion | MMCosineFusion) or (
            getattr(pl_module, "unimodal_heads", None) is not None
        ):
            raise ValueError(
                "method=lfm needs fused logits that are the sum of the unimodal ones: "
                "model.fusion sum (official), concat or mmcosine, and model.unimodal_heads=false"
            )
        if getattr(pl_module, "gamma", 0.0) > 0:
            raise ValueError("method=lfm replaces the loss: set model.gamma=0")

    @override
    def on_train_losses(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        out: StepOutput,
    ) -> None:
        losses = out.losses
        k_ce, k_align = self.weights(trainer.current_epoch)
        mods = module.modalities
        ce = F.cross_entropy(out.logits / len(mods), out.labels)
        align = torch.stack(
            [
                js_alignment(out.unimodal_logits[a], out.unimodal_logits[b])
                for a, b in combinations(mods, 2)
            ]
        ).mean()
        losses["fused"] = 2 * k_ce * ce
        losses["lfm_align"] = 2 * k_align * align
        if self.logging_step(trainer):
            module.log("lfm/ce_weight", k_ce, on_step=True, on_epoch=False)
            module.log("lfm/align_weight", k_align, on_step=True, on_epoch=False)
            module.log("lfm/align", align.detach(), on_step=True, on_epoch=False)
