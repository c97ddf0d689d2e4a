r"""Linear probe: how much each modality's encoder of a trained model knows.

The imbalance diagnostic BalanceBenchmark reports (GeWu-Lab/BalanceBenchmark @ 4c1482f
``balancemm/trainer/LinearProbe_trainer.py``): the encoders of a trained checkpoint
(``method.linear_probe.checkpoint``) are loaded and frozen (eval mode: BatchNorm statistics
fixed, no gradients), and fresh linear classifiers are fitted on the training split:

$$
\mathcal{L} = \mathrm{CE}\big(W [f_1; \dots; f_N] + b,\ y\big) + \sum_m \mathrm{CE}(W_m f_m + b_m,\ y),
$$

one ``Linear(d_m, C)`` per modality (``model.unimodal_heads=true``) plus the fusion head on the
concatenated frozen features. With the encoders frozen the heads do not interact, so this is
the same as fitting each probe alone. The best epoch is selected on the validation split and
``test/acc_<m>`` is modality ``m``'s linear-probe accuracy; ``test/acc`` is the probe on all
features (BalanceBenchmark's ``NewLinearHead``, whose unimodal numbers are instead read from the
blocks of that one head).

The checkpoint must hold an encoder for every modality of the model (``encoders.<m>.*``, any
``method=`` except ``unimodal``); a missing file or modality is refused with the key named,
and so is a checkpoint of another dataset, class count or modality set (both values named).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.source_ckpt import check_source_task

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.types import StepOutput


def load_encoders(module: MultimodalModule, path: str | Path) -> None:
    """Load every ``encoders.<m>`` of a checkpoint into ``module`` (strict per modality), after
    `asgml.core.source_ckpt.check_source_task` (same dataset, classes, modalities)."""
    key = "method.linear_probe.checkpoint"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint file")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    check_source_task(key, path, ckpt.get("asgml_config"), module)
    state = ckpt["state_dict"]
    for m in module.modalities:
        prefix = f"encoders.{m}."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub and any(True for _ in module.encoders[m].parameters()):
            raise ValueError(
                f"{key}={path}: the checkpoint has no encoder for modality {m!r} (a method=unimodal "
                "checkpoint holds one modality only)"
            )
        try:
            module.encoders[m].load_state_dict(sub, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{key}={path}: encoder {m!r} does not match this model: {e}") from e


class LinearProbe(BalancingCallback):
    """Freeze a checkpoint's encoders and fit linear probes.

    Args:
        checkpoint: path of a trained model's checkpoint.
    """

    def __init__(self, checkpoint: str | None) -> None:
        super().__init__()
        if not checkpoint:
            raise ValueError(
                "method=linear_probe needs method.linear_probe.checkpoint=<path to a .ckpt>"
            )
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"method.linear_probe.checkpoint={checkpoint}: no such checkpoint file"
            )
        self.checkpoint = str(checkpoint)
        self._loaded = False

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._loaded:
            return
        if pl_module.unimodal_heads is None or pl_module.gamma > 0:
            raise ValueError(
                "method=linear_probe needs model.unimodal_heads=true (one probe per modality) and "
                "model.gamma=0"
            )
        load_encoders(pl_module, self.checkpoint)
        pl_module.encoders.requires_grad_(False)
        pl_module._encoder_params.clear()
        self._loaded = True

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        pl_module.encoders.eval()  # frozen BatchNorm statistics

    @override
    def on_train_losses(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        out: StepOutput,
    ) -> None:
        losses = out.losses
        for m in module.modalities:
            losses[f"probe_{m}"] = F.cross_entropy(out.unimodal_logits[m], out.labels)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint}
