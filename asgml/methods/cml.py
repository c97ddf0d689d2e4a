r"""CML: calibrating multimodal learning.

Paper: Ma, Zhang, Zhang, Hu, Wu, Zhang & Zhang, "Calibrating Multimodal Learning", ICML 2023.
Official code: https://github.com/QingyangZhang/CML @ 9d2496e (``cpm/CPM_Nets.py``,
``rank_loss`` lines 98-124); second reference for the audio-visual setting:
GeWu-Lab/BalanceBenchmark @ 4c1482f ``balancemm/trainer/CML_trainer.py`` (lines 19-21,
107-216).

The principle: the confidence of a prediction must not grow when a modality is *removed*.
Each epoch a random order of the modalities is drawn; modalities are removed one by one from
its end, giving logits $z^{(0)} = z$ (all modalities), $z^{(1)}, \dots, z^{(N-1)}$, where
removing modality $r$ subtracts its share of the fusion head:
$z^{(k+1)} = z^{(k)} - z_r + b/N$ (concat fusion; $z_r = W_r f_r + b/N$, so the bias is kept).
With $\mathrm{conf}^{(k)} = \max_c \mathrm{softmax}(z^{(k)})_c$ and predictions
$\hat y^{(k)}$,

$$
\mathcal{L}_c = \sum_{k=0}^{N-2} \sum_i \mathrm{ReLU}\big(
(\mathrm{conf}^{(k+1)}_i - \mathrm{conf}^{(k)}_i)\, s_i \big),\qquad
s_i = \neg\big(\hat y^{(k+1)}_i = y_i \wedge \hat y^{(k)}_i \neq y_i\big),
$$

(the official ``rank_loss``: a sample where the reduced set is right and the larger set wrong
is exempt), and

$$
\mathcal{L} = \frac1N \sum_{k=0}^{N-1} \mathrm{CE}(z^{(k)}, y) + \lambda\, \mathcal{L}_c
$$

inside the epoch window (outside it the plain fused CE), as BalanceBenchmark composes it.
``variant=balancebenchmark`` uses BalanceBenchmark's ``conf_loss`` instead:
$\max(0, \sum_i \mathrm{conf}^{(k+1)}_i - \mathrm{conf}^{(k)}_i)$ (clipped after the batch
sum, no exemption).

N modalities: the chain of removals above is BalanceBenchmark's (2 and 3 modalities); the
order is drawn from a generator seeded by ``seed`` and the epoch (same on every rank, exact on
resume) instead of ``random.shuffle``. Works with ``concat``, ``sum`` and ``mmcosine`` fusion
(whose fused logits are the sum of the unimodal ones); ``film``/``gated`` and separate
unimodal heads are refused.

Logged: ``cml/conf_loss``, ``cml/conf_<k>`` (mean confidence with ``k`` modalities removed).
"""

from __future__ import annotations

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


def confidence_penalty(
    logits_more: Tensor, logits_fewer: Tensor, labels: Tensor, variant: str = "official"
) -> Tensor:
    """``sum_i ReLU((conf_fewer - conf_more) * s_i)`` (official) or
    ``max(0, sum_i conf_fewer - conf_more)`` (``balancebenchmark``)."""
    conf_m, pred_m = logits_more.softmax(dim=1).max(dim=1)
    conf_f, pred_f = logits_fewer.softmax(dim=1).max(dim=1)
    diff = conf_f - conf_m
    if variant == "balancebenchmark":
        return diff.sum().clamp_min(0)
    exempt = (pred_f == labels) & (pred_m != labels)
    return F.relu(diff * (~exempt).to(diff.dtype)).sum()


def bias_share(fusion: torch.nn.Module, n: int) -> Tensor | float:
    """What a removed modality's unimodal logits took of the fused bias (added back)."""
    if isinstance(fusion, ConcatFusion):
        return fusion.fc_out.bias / n
    if isinstance(fusion, SumFusion | MMCosineFusion):
        return 0.0
    raise ValueError(
        "method=cml needs concat, sum or mmcosine fusion (fused logits = sum of the unimodal "
        f"ones), got {type(fusion).__name__}"
    )


class CML(BalancingCallback):
    """Calibrating multimodal learning.

    Args:
        lam: weight of the confidence penalty (BalanceBenchmark CREMA-D: 0.1).
        modulation_starts: first epoch of the window (inclusive).
        modulation_ends: last epoch of the window (inclusive).
        variant: ``official`` (per-sample ReLU with the exemption) or ``balancebenchmark``.
        seed: seeds the per-epoch removal order.
    """

    state_attrs = ("removal_order",)  # checkpointed by BalancingCallback.state_dict

    def __init__(
        self,
        lam: float = 0.1,
        modulation_starts: int = 0,
        modulation_ends: int = 80,
        variant: str = "official",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if lam < 0:
            raise ValueError(f"method.cml.lam must be >= 0, got {lam}")
        if variant not in ("official", "balancebenchmark"):
            raise ValueError(
                f"method.cml.variant must be official|balancebenchmark, got {variant!r}"
            )
        self.lam = float(lam)
        self.modulation_starts = int(modulation_starts)
        self.modulation_ends = int(modulation_ends)
        self.window = self.epoch_window(self.modulation_starts, self.modulation_ends)
        self.variant = variant
        self.seed = int(seed)
        self.removal_order: list[str] = []

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        bias_share(pl_module.fusion, len(pl_module.modalities))  # refuses film / gated
        if getattr(pl_module, "unimodal_heads", None) is not None:
            raise ValueError(
                "method=cml: model.unimodal_heads must be false (modalities are removed from "
                "the fused logits through their unimodal shares)"
            )

    def draw_order(self, modalities: list[str], epoch: int) -> list[str]:
        """The modalities in the order they are removed this epoch."""
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = torch.randperm(len(modalities), generator=g).tolist()
        shuffled = [modalities[i] for i in perm]
        return shuffled[::-1][: len(modalities) - 1]  # popped from the end

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.removal_order = self.draw_order(list(pl_module.modalities), trainer.current_epoch)

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
        order = self.removal_order or self.draw_order(
            list(module.modalities), trainer.current_epoch
        )
        n = len(module.modalities)
        share = bias_share(module.fusion, n)
        y = out.labels
        z = out.logits
        losses["fused"] = losses["fused"] / n
        conf_terms, confs = [], [z.detach().softmax(1).max(1).values.mean()]
        for k, removed in enumerate(order):
            z_p = z - out.unimodal_logits[removed] + share
            losses[f"cml_partial_{k + 1}"] = F.cross_entropy(z_p, y) / n
            conf_terms.append(confidence_penalty(z, z_p, y, self.variant))
            confs.append(z_p.detach().softmax(1).max(1).values.mean())
            z = z_p
        conf_loss = torch.stack(conf_terms).sum()
        losses["cml_conf"] = self.lam * conf_loss
        if self.logging_step(trainer):
            module.log("cml/conf_loss", conf_loss.detach(), on_step=True, on_epoch=False)
            for k, c in enumerate(confs):
                module.log(f"cml/conf_{k}", c, on_step=True, on_epoch=False)
