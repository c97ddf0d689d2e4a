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
fused prediction (the training loss).

**Evaluation (official: the linear head).** The official ``valid()`` (``main_CD.py:155-217``)
takes the fused prediction ``out`` from the model's fusion module, i.e. the *plain linear head*
$W [f_1; \dots; f_N] + b$ on the unnormalised features, and only the unimodal predictions
from the cosine terms $z_m$ (lines 181, 185-189, 196). ``eval_fusion: linear`` (the default)
scores that; ``eval_fusion: cosine`` scores the training logits $\sum_m z_m$ (the paper's
reading and this library's former behaviour). The official bias of ``fc_out`` never receives a
gradient (the loss uses only the weight) and keeps its initial value; here the head is
bias-free, which equals a zero initial bias (this library's initialisation,
``init_linear_ogm``; the official code keeps PyTorch's default ``U(-1/sqrt(D), 1/sqrt(D))``).

**Gated fusion.** The README's CREMA-D command runs ``--fusion_method gated --mmcosine True``:
``model.fusion=mmcosine_gated`` (`MMCosineGatedFusion`) is that
head, the official symmetric gate $x' = \sigma(\mathrm{fc}_y(y)) \odot \mathrm{fc}_x(x)$,
$y' = \sigma(\mathrm{fc}_x(x)) \odot \mathrm{fc}_y(y)$ with the cosine terms on $x', y'$ and
the linear evaluation $\mathrm{fc}_{out}([x'; y'])$ (two modalities). The argparse default
(``--fusion_method concat``) is the method's default ``model.fusion=mmcosine``.

The math lives in `asgml.models.fusion.MMCosineFusion` (``model.fusion=mmcosine``,
set by ``method.model_defaults.fusion``); this callback sets ``s``, applies the evaluation
head, refuses models whose unimodal
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
from asgml.models.fusion import MMCosineFusion, MMCosineGatedFusion

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
        eval_fusion: fused prediction at validation and test: ``linear`` (official
            ``valid()``: the plain linear head ``W [f_1; ...; f_N]``) or ``cosine`` (the
            training logits ``sum_m z_m``).
    """

    state_attrs = ("scaling",)  # checkpointed by BalancingCallback.state_dict

    def __init__(self, scaling: float = 10.0, eval_fusion: str = "linear") -> None:
        super().__init__()
        if scaling <= 0:
            raise ValueError(f"method.mmcosine.scaling must be > 0, got {scaling}")
        if eval_fusion not in ("linear", "cosine"):
            raise ValueError(
                f"method.mmcosine.eval_fusion must be linear or cosine, got {eval_fusion!r}"
            )
        self.scaling = float(scaling)
        self.eval_fusion = eval_fusion

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        fusion = getattr(pl_module, "fusion", None)
        if not isinstance(fusion, MMCosineFusion | MMCosineGatedFusion):
            raise ValueError(
                "method=mmcosine needs model.fusion=mmcosine (method.model_defaults.fusion) or "
                f"mmcosine_gated, got {type(fusion).__name__}"
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

    @override
    def on_eval_logits(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        logits: Tensor,
        unimodal_logits: dict[str, Tensor],
        features: dict[str, Tensor],
    ) -> Tensor:
        if self.eval_fusion == "cosine":
            return logits
        fusion: MMCosineFusion | MMCosineGatedFusion = module.fusion  # type: ignore[assignment]
        return fusion.linear_logits(features)
