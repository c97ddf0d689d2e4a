r"""MBSD: correctness-weighted self-distillation between unimodal predictions.

Reference implementation: GeWu-Lab/BalanceBenchmark @ 4c1482f,
``balancemm/trainer/MBSD_trainer.py`` (``training_step``, lines 95-231; its README lists
the method without a paper reference, and no separate official repository is known), with
CREMA-D settings from ``configs/trainer_config.yaml:47-50``.

For every pair of modalities $(a, b)$, with unimodal logits $z_a, z_b$ (derived from the
fusion head), probabilities $p_a = \mathrm{softmax}(z_a)$ and the true-class probabilities
$q_a = p_{a, y}$, $q_b = p_{b, y}$, per sample $i$:

$$
w_i = \begin{cases} |q_{a,i} - q_{b,i}| & \hat y_{a,i} = y_i \text{ or } \hat y_{b,i} = y_i\\
0 & \text{otherwise}\end{cases}
\qquad
q^s_i = \max(q_{a,i}, q_{b,i}),\; q^w_i = \min(q_{a,i}, q_{b,i}),
$$

$$
\mathrm{RS}_i = \tfrac1C \lVert r_{a,i} - r_{b,i} \rVert_2^2, \qquad
\mathrm{KL}_i = q^w_i\,(\log q^w_i - q^s_i)\ \ (\texttt{F.kl\_div}(q^s, q^w)),
$$

$$
\mathcal{L} = \mathrm{CE}(z, y) + \sum_m \mathrm{CE}(z_m, y)
 + \frac{1}{P}\sum_{(a,b)} \frac1B \sum_i w_i\,(\mathrm{RS}_i + \mathrm{KL}_i)
$$

over the $P$ pairs, inside the epoch window (outside it only $\mathrm{CE}(z, y)$). $r$ is
the logits for two modalities and the probabilities for three (as the reference code does;
``rs_input`` overrides). When the modalities agree closely or both are wrong nothing is
distilled; the more confident correct modality pulls the other's prediction towards its
own, which lifts the weak modality.

As in the reference code the weights $w$ and the targets $q^s$ carry gradients
(``detach_weights=true`` stops them). The ``F.kl_div`` call receives probabilities where
it expects log-probabilities; this is kept as the reference computes it.

N modalities: every pair is used, averaged over pairs (the reference hard-codes the three
pairs of three modalities the same way). Logged: ``mbsd/weight`` (mean $w$ over pairs),
``mbsd/rs``, ``mbsd/kl``.
"""

from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.types import StepOutput


def mbsd_pair_terms(
    logits_a: Tensor,
    logits_b: Tensor,
    labels: Tensor,
    rs_input: str = "logits",
    detach_weights: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(w . RS / B, w . KL / B, mean w)`` of one modality pair (see the module docstring)."""
    pa, pb = logits_a.softmax(dim=1), logits_b.softmax(dim=1)
    qa = pa.gather(1, labels[:, None]).squeeze(1)
    qb = pb.gather(1, labels[:, None]).squeeze(1)
    q_strong, q_weak = torch.maximum(qa, qb), torch.minimum(qa, qb)
    correct = (pa.argmax(1) == labels) | (pb.argmax(1) == labels)
    w = torch.where(correct, q_strong - q_weak, torch.zeros_like(qa))
    if detach_weights:
        w = w.detach()
    ra, rb = (logits_a, logits_b) if rs_input == "logits" else (pa, pb)
    rs = (ra - rb).pow(2).sum(dim=1) / logits_a.shape[1]
    kl = F.kl_div(q_strong, q_weak, reduction="none")
    n = labels.shape[0]
    return (w * rs).sum() / n, (w * kl).sum() / n, w.mean()


class MBSD(BalancingCallback):
    """Correctness-weighted self-distillation between unimodal predictions.

    Args:
        modulation_starts: first epoch (inclusive) of the unimodal and distillation terms
            (reference: 0).
        modulation_ends: last epoch (inclusive) of those terms (reference: 80).
        rs_input: ``auto`` (logits for 2 modalities, probabilities for more, as the
            reference), ``logits`` or ``probs``.
        detach_weights: stop gradients through ``w`` and ``q^s`` (reference: false).
    """

    def __init__(
        self,
        modulation_starts: int = 0,
        modulation_ends: int = 80,
        rs_input: str = "auto",
        detach_weights: bool = False,
    ) -> None:
        super().__init__()
        if rs_input not in ("auto", "logits", "probs"):
            raise ValueError(f"method.mbsd.rs_input must be auto|logits|probs, got {rs_input!r}")
        self.modulation_starts = int(modulation_starts)
        self.modulation_ends = int(modulation_ends)
        self.window = self.epoch_window(self.modulation_starts, self.modulation_ends)
        self.rs_input = rs_input
        self.detach_weights = bool(detach_weights)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "gamma", 0.0) > 0:
            raise ValueError(
                "method=mbsd adds the unimodal CE terms itself (inside its epoch window): "
                "set model.gamma=0"
            )

    @override
    def on_train_losses(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        out: StepOutput,
    ) -> None:
        losses = out.losses
        if trainer.current_epoch not in self.window:
            return
        y, uni = out.labels, out.unimodal_logits
        mods = module.modalities
        rs_input = self.rs_input
        if rs_input == "auto":
            rs_input = "logits" if len(mods) == 2 else "probs"
        for m in mods:
            losses[f"mbsd_unimodal_{m}"] = F.cross_entropy(uni[m], y)
        pairs = list(combinations(mods, 2))
        terms = [
            mbsd_pair_terms(uni[a], uni[b], y, rs_input, self.detach_weights) for a, b in pairs
        ]
        rs = torch.stack([t[0] for t in terms]).mean()
        kl = torch.stack([t[1] for t in terms]).mean()
        losses["mbsd_rs"] = rs
        losses["mbsd_kl"] = kl
        if self.logging_step(trainer):
            w = torch.stack([t[2] for t in terms]).mean()
            module.log("mbsd/weight", w.detach(), on_step=True, on_epoch=False)
            module.log("mbsd/rs", rs.detach(), on_step=True, on_epoch=False)
            module.log("mbsd/kl", kl.detach(), on_step=True, on_epoch=False)
