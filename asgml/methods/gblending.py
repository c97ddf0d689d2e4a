r"""G-Blending: gradient blending by the overfitting-to-generalisation ratio.

Paper: Wang, Tran & Feiszli, "What Makes Training Multi-Modal Classification Networks
Hard?", CVPR 2020 (Section 3.3, Algorithm 1, online G-Blend).
Official code (the training loss; the weight estimation is not released):
facebookresearch/VMZ @ 4cc542d58c1c560571e1e962426e858e00de28d2, Caffe2 branch ``c2/``:
``lib/models/audio_visual_model.py:483-498`` (``g_blend``: a separate audio classifier
``a_last_out`` and visual classifier ``v_last_out`` next to the audio-visual head),
``lib/models/loss/loss_creator.py:119-200`` (``add_weighted_loss``: the weighted sum of the
audio, visual and audio-visual softmax losses), ``lib/models/model_builder.py:173-185``,
``tools/train_net.py:578-585`` (``--audio_weight --visual_weight --av_weight``: the weights
are given, computed offline) and ``tutorials/gradient_blending.md`` (example weights).
Reference implementation of the online estimation: GeWu-Lab/BalanceBenchmark @ 4c1482f
``balancemm/trainer/GBlending_trainer.py`` (``fit`` lines 70-95, ``training_step`` lines
292-304, ``super_epoch_origin`` lines 306-370) with ``configs/trainer_config.yaml:34-39``.

Every ``super_epoch`` epochs (online G-Blend) the weights are re-estimated: for every modality
$m$ and for the full model ("fused"), a copy of the current model with a fresh optimizer is
trained for ``super_epoch`` epochs on that input alone (the other modalities' features set to
zero, logits from the fusion head). With $L^T$ the mean training loss of an inner epoch and
$L^V$ the mean loss on the held-out split after it, measured after the first ($n$) and the last
($n + N$) inner epoch:

$$
G = L^V_{n+N} - L^V_n, \qquad
O = \big(L^V_{n+N} - L^T_{n+N}\big) - \big(L^V_n - L^T_n\big), \qquad
w_k = \frac{|G_k / O_k^2|}{\sum_j |G_j / O_j^2|}.
$$

A branch that generalises (validation loss falls) without overfitting (the train/val gap does
not widen) gets a large weight. Training then minimises

$$
\mathcal{L} = w_\text{fused}\, \mathrm{CE}(z, y) + \sum_m w_m\, \mathrm{CE}(z_m, y)
$$

with the unimodal logits $z_m$: by default those of the fusion head (BalanceBenchmark); with
``model.unimodal_heads=true`` separate ``Linear(d_m, C)`` classifiers, as the official VMZ
model (``a_last_out``, ``v_last_out``), which also serve as the unimodal branches of the
weight estimation. ``fixed_weights`` gives the weights instead of estimating them, as VMZ's
``--audio_weight --visual_weight --av_weight`` (e.g. its tutorial's offline G-Blend weights).

**Held-out split.** The paper holds out part of the training set. Here the datamodule's
validation split is used (the seeded split every dataset config defines, drawn from the
training data where the dataset has no official validation set), as BalanceBenchmark uses its
validation loader; with ``select_on=test`` that loader is the test split, so keep
``select_on=val`` for G-Blending.

**Cost.** Each re-estimation trains $N + 1$ model copies for ``super_epoch`` epochs:
$(N + 1)\times$ the joint training's compute on top (the official CREMA-D setting re-estimates
every 10 epochs).

**Determinism and DDP.** The inner training runs with the global RNG forked (the outer run's
random stream is untouched) and its loader shuffled by a generator seeded from ``seed`` and the
epoch; rank 0's weights are broadcast so every rank uses the same ones.

``loss_reduction: sum`` reproduces BalanceBenchmark's use of loss *sums* over batches (which
mixes split sizes into $O$); the default is the paper's mean losses.

Logged: ``gblending/weight_<m>`` and ``gblending/weight_fused`` at every re-estimation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import plain_train_loader

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.types import StepOutput

FUSED = "fused"


def blending_weights(
    losses: Mapping[str, tuple[float, float, float, float]], eps: float = 1e-12
) -> dict[str, float]:
    """``w_k ∝ |G_k / O_k^2|`` from ``{k: (L^T_n, L^V_n, L^T_{n+N}, L^V_{n+N})}``, normalised."""
    raw = {}
    for k, (t_pre, v_pre, t_now, v_now) in losses.items():
        g = v_now - v_pre
        o = (v_now - t_now) - (v_pre - t_pre)
        raw[k] = abs(g / max(o * o, eps))
    total = sum(raw.values())
    if total <= 0:
        return {k: 1.0 / len(raw) for k in raw}
    return {k: v / total for k, v in raw.items()}


def branch_logits(module: MultimodalModule, batch: Mapping[str, Any], branch: str) -> Tensor:
    """Fusion-head logits with only ``branch``'s features (``fused``: all of them); a
    modality's own classifier when the model has separate unimodal heads."""
    inputs, lengths, _ = module.split_batch(batch)
    feats = module.encode(inputs, lengths)
    if branch != FUSED and module.unimodal_heads is not None:
        return module.unimodal_heads[branch](feats[branch])
    if branch != FUSED:
        feats = {m: f if m == branch else torch.zeros_like(f) for m, f in feats.items()}
    return module.fusion(feats)


class GBlending(BalancingCallback):
    """Online gradient blending.

    Args:
        super_epoch: epochs between re-estimations and inner training epochs per branch
            (BalanceBenchmark CREMA-D: 10; at least 2).
        loss_reduction: ``mean`` (paper) or ``sum`` (BalanceBenchmark) of the batch losses.
        seed: seeds the inner training loader's shuffle.
        fixed_weights: ``{<modality>: w, ..., fused: w}`` used throughout instead of the
            online estimation (official VMZ ``--audio_weight --visual_weight --av_weight``).
    """

    state_attrs = ("weights",)  # checkpointed by BalancingCallback.state_dict

    def __init__(
        self,
        super_epoch: int = 10,
        loss_reduction: str = "mean",
        seed: int = 0,
        fixed_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if super_epoch < 2:
            raise ValueError(
                f"method.gblending.super_epoch must be >= 2 (the loss change between the first "
                f"and last inner epoch is the signal), got {super_epoch}"
            )
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(
                f"method.gblending.loss_reduction must be mean|sum, got {loss_reduction!r}"
            )
        self.super_epoch = int(super_epoch)
        self.loss_reduction = loss_reduction
        self.seed = int(seed)
        self.weights: dict[str, float] = {}
        self.fixed_weights = (
            {str(k): float(v) for k, v in dict(fixed_weights).items()}
            if fixed_weights is not None
            else None
        )

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "gamma", 0.0) > 0:
            raise ValueError(
                "method=gblending weights the unimodal CE terms itself: set model.gamma=0"
            )
        separate = getattr(pl_module, "unimodal_heads", None) is not None  # VMZ's classifiers
        if not separate and not getattr(pl_module.fusion, "supports_unimodal", False):
            raise ValueError(
                "method=gblending needs unimodal logits: a fusion head that derives them or "
                "model.unimodal_heads=true (separate classifiers, as the official VMZ model)"
            )
        if self.fixed_weights is not None:
            want = {*pl_module.modalities, FUSED}
            if set(self.fixed_weights) != want:
                raise ValueError(
                    f"method.gblending.fixed_weights needs one weight per key {sorted(want)}, "
                    f"got {sorted(self.fixed_weights)}"
                )

    # ------------------------------------------------------------- estimation
    def _val_loader(self, trainer: L.Trainer) -> DataLoader:
        loaders = trainer.val_dataloaders
        if loaders is None and trainer.datamodule is not None:
            loaders = trainer.datamodule.val_dataloader()
        if isinstance(loaders, list | tuple):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            raise ValueError("method=gblending needs a validation split (the held-out data)")
        return loaders

    def _reduce(self, values: list[float]) -> float:
        return (
            float(sum(values)) if self.loss_reduction == "sum" else float(sum(values) / len(values))
        )

    def estimate(self, trainer: L.Trainer, module: MultimodalModule) -> dict[str, float]:
        train = plain_train_loader(trainer)
        val = self._val_loader(trainer)
        n_train = trainer.num_training_batches
        n_train = len(train) if not isinstance(n_train, int) else min(n_train, len(train))
        n_val = trainer.num_val_batches[0] if trainer.num_val_batches else len(val)
        n_val = min(int(n_val), len(val)) if isinstance(n_val, int | float) else len(val)
        g = torch.Generator().manual_seed(self.seed * 100003 + trainer.current_epoch)
        shuffled = DataLoader(
            train.dataset,
            batch_size=train.batch_size,
            shuffle=True,
            generator=g,
            collate_fn=train.collate_fn,
            drop_last=train.drop_last,
        )
        branches = [*module.modalities, FUSED]
        measured: dict[str, tuple[float, float, float, float]] = {}
        trainer_ref, module._trainer = module._trainer, None
        try:
            template = copy.deepcopy(module)
        finally:
            module._trainer = trainer_ref
        dev = module.device
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            for branch in branches:
                temp = copy.deepcopy(template)
                opt = temp.configure_optimizers()
                opt = opt["optimizer"] if isinstance(opt, dict) else opt
                record = []
                for epoch in range(self.super_epoch):
                    temp.train()
                    train_losses = []
                    for i, batch in enumerate(shuffled):
                        if i >= n_train:
                            break
                        batch = move_data_to_device(batch, dev)
                        opt.zero_grad(set_to_none=True)
                        loss = F.cross_entropy(branch_logits(temp, batch, branch), batch["label"])
                        loss.backward()
                        opt.step()
                        train_losses.append(loss.item())
                    if epoch in (0, self.super_epoch - 1):
                        temp.eval()
                        with torch.no_grad():
                            val_losses = [
                                F.cross_entropy(
                                    branch_logits(temp, move_data_to_device(b, dev), branch),
                                    move_data_to_device(b["label"], dev),
                                ).item()
                                for i, b in enumerate(val)
                                if i < n_val
                            ]
                        record += [self._reduce(train_losses), self._reduce(val_losses)]
                measured[branch] = tuple(record)  # type: ignore[assignment]
        return blending_weights(measured)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.fixed_weights is not None:
            if not self.weights:
                self.weights = dict(self.fixed_weights)
                self.log_now(trainer, {f"gblending/weight_{k}": v for k, v in self.weights.items()})
            return
        if trainer.current_epoch % self.super_epoch != 0 and self.weights:
            return
        weights = self.estimate(trainer, pl_module) if trainer.is_global_zero else {}
        self.weights = dict(trainer.strategy.broadcast(weights, src=0))
        self.log_now(trainer, {f"gblending/weight_{k}": v for k, v in self.weights.items()})

    # ------------------------------------------------------------------- loss
    @override
    def on_train_losses(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        out: StepOutput,
    ) -> None:
        losses = out.losses
        if not self.weights:
            return
        losses["fused"] = self.weights[FUSED] * losses["fused"]
        for m in module.modalities:
            losses[f"gblending_{m}"] = self.weights[m] * F.cross_entropy(
                out.unimodal_logits[m], out.labels
            )
