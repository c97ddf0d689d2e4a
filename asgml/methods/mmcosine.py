r"""MMCosine: multi-modal cosine loss.

Paper: Xu, Feng, Zhang & Hu, "MMCosine: Multi-Modal Cosine Loss Towards Balanced
Audio-Visual Fine-Grained Learning", ICASSP 2023.
Official code: https://github.com/GeWu-Lab/MMCosine_ICASSP23 @ 00ba0a9 (``main_CD.py``
lines 112-118 training, 185-189 evaluation).

The fusion layer's weight ``W`` (``C x sum_m d_m``, no bias) is split into the column block
``W_m`` that reads modality ``m``. Features and class rows are L2-normalised *per modality*
and the fused logits are the sum of the scaled cosines:

$$
z_m = s \, \frac{f_m}{\lVert f_m \rVert} \Big(\frac{W_{m,c}}{\lVert W_{m,c} \rVert}\Big)_{c}^{\top},
\qquad z = \sum_m z_m ,\qquad \mathcal{L} = \mathrm{CE}(z, y).
$$

Normalising removes the norm advantage the dominant modality's features and weights build
up, so each modality's logit is bounded by ``s`` and the weak modality keeps a share of the
fused prediction. The unimodal logits used for evaluation are the ``z_m`` (as the official
``valid``).

The math lives in `asgml.models.fusion.MMCosineFusion` (``model.fusion=mmcosine``,
set by ``method.model_defaults.fusion``); this callback sets ``s``, refuses models whose unimodal
logits would not be the cosine terms, and logs the mean target-class logit of every
modality, ``mmcosine/logit_<m>`` (the official ``data/logit_a`` / ``data/logit_v``).

N modalities: the sum runs over every modality (BalanceBenchmark's ``MMCosine_trainer.py``
does the same for 3). The official NCE term (``--lam``, default 0) is not implemented.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning as L
import torch
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.models.fusion import MMCosineFusion

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.types import StepOutput


def target_logit(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over the batch of the logit of the true class (``fy`` in the official code)."""
    return logits.gather(1, labels[:, None]).mean()


class MMCosine(BalancingCallback):
    """Sets the cosine scale ``s`` of an `MMCosineFusion` head.

    Args:
        scaling: ``s`` (official ``--scaling``, default 10).
    """

    state_attrs = ("scaling",)  # checkpointed by BalancingCallback.state_dict

    def __init__(self, scaling: float = 10.0) -> None:
        super().__init__()
        if scaling <= 0:
            raise ValueError(f"method.mmcosine.scaling must be > 0, got {scaling}")
        self.scaling = float(scaling)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        fusion = getattr(pl_module, "fusion", None)
        if not isinstance(fusion, MMCosineFusion):
            raise ValueError(
                "method=mmcosine needs model.fusion=mmcosine (method.model_defaults.fusion), got "
                f"{type(fusion).__name__}"
            )
        if getattr(pl_module, "unimodal_heads", None) is not None:
            raise ValueError(
                "method=mmcosine: model.unimodal_heads must be false (the unimodal logits are "
                "the cosine terms of the fusion head)"
            )
        fusion.scaling = self.scaling

    @override
    def on_train_losses(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        out: StepOutput,
    ) -> None:
        if not self.logging_step(trainer):
            return
        with torch.no_grad():
            for m in module.modalities:
                module.log(
                    f"mmcosine/logit_{m}",
                    target_logit(out.unimodal_logits[m], out.labels),
                    on_step=True,
                    on_epoch=False,
                )
