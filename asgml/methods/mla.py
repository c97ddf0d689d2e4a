"""MLA: multimodal learning with alternating unimodal adaptation.

Paper: Zhang, Yoon, Bansal, Yao, "Multimodal Representation Learning by Alternating Unimodal
Adaptation", CVPR 2024.
Official code: Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation @
ab6c184579f9ff390e9c9b8216c9900c2a43545b (``main.py``: ``train_epoch`` with ``gs_flag``,
``valid``, ``calculate_gating_weights``; ``utils/utils.py``: ``GSPlugin``).
Second reference: GeWu-Lab/BalanceBenchmark @ 4c1482fca5aaa8d4278af8e26020daa039e3ccf3
(``balancemm/trainer/MLA_trainer.py``).

Training alternates the modalities: a step forwards and updates one modality $m$ only
(``StepPlan.only(m)``), through a head $h$ shared by all modalities (``Linear(d, C)``, so the
encoders' feature dimensions must be equal); its loss is $\\mathrm{CE}(h(f_m), y)$.

**Gradient projection (default off, as officially executed).** The paper projects the shared
head's weight gradient away from the directions the previous modalities used (an OWM-style
projector $P$ kept across the run). The official code never applies it: ``main.py:437,449``
pass the bare ``nn.Linear`` ``fusion_module.fc_out`` to ``GSPlugin.before_update``, which
projects only a parameter named ``module.weight`` (``utils/utils.py:30-32``); an
``nn.Linear``'s parameters are ``weight`` and ``bias``, so the branch is never entered and
the published numbers come from alternating training without projection. ``projection:
none`` (the default) is that. ``projection: replace`` is the paper's reading: with
$r = \\bar f_m$ (the batch mean of the features) and
$\\alpha = 0.1^{\\,b / n_b + 1}$ ($b$ the batch index in the epoch, $n_b$ the batches per epoch),

$$k = P r^\\top, \\quad P \\leftarrow \\frac{P - k k^\\top / (\\alpha + r k)}
{\\lVert P - k k^\\top / (\\alpha + r k) \\rVert_F}, \\quad
\\nabla_W \\leftarrow \\nabla_W P^\\top,$$

skipped on the very first step (official ``exp_count != 0``). At validation and test the
prediction fuses the unimodal outputs $o_m = h(f_m)$ with uncertainty weights
(``test_fusion: dynamic``): $H_m$ is the entropy of ``softmax`` taken over the batch
dimension of $o_m$ (as the official ``calculate_entropy``; one weight per batch), and
$w_m = e^{\\max_k H_k - H_m} / \\sum_j e^{\\max_k H_k - H_j}$; ``fixed`` uses the weights
given (official: 0.5 / 0.5, or 0.35 / 0.25 / 0.4 for three modalities). The reported
unimodal accuracies are those of $h(f_m)$.

DDP: $r$ is averaged over the global batch (all-reduce) before $P$ changes, so $P$ stays
equal on every rank; gradients are the DDP-averaged ones.

Deviations: the official loop makes one optimizer step *per modality per batch* (every batch
trains each modality in turn); here each optimizer step trains one modality and the next
step (the next batch) the next one, so an epoch makes as many optimizer steps as the
baseline and each modality sees every $N$-th batch (train $N\\times$ the epochs for the
official number of updates per modality). With ``projection: replace`` the denominator is the
OWM scalar $\\alpha + r k$; the never-executed official line writes ``torch.mm(k, r)``, a
$d \\times d$ outer product divided elementwise (``utils/utils.py:36``), which is not the
textbook update and is not reproduced. ``BalanceBenchmark`` adds $\\nabla_W P^\\top$ to the
gradient instead of replacing it (``projection: add``); the Frobenius normalisation shrinks
the projected gradient to about $1/\\sqrt{d}$ of the raw one. The module's concat fusion
layer is not trained (MLA has none); ``train/acc`` therefore scores that untrained layer. Logged: ``mla/modality`` (index of the
modality trained this step), ``mla/loss_<m>``, ``mla/weight_<m>`` (test-time weights, last
batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import step_finite, sum_over_ranks

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.step_plan import StepPlan
    from asgml.core.types import StepOutput

HEAD = "mla_head"


def gs_alpha(batch_idx: int, num_batches: int) -> float:
    """``0.1 ** (batch_idx / num_batches + 1)``."""
    return 0.1 ** (batch_idx / num_batches + 1)


def gs_update(p: Tensor, r: Tensor, alpha: float) -> Tensor:
    """One projector update from the mean feature ``r`` ``(1, d)``; Frobenius-normalised."""
    k = p @ r.t()
    new = p - (k @ k.t()) / (alpha + r @ k)
    return new / torch.linalg.matrix_norm(new, ord="fro")


def entropy_weights(outputs: Sequence[Tensor]) -> Tensor:
    """``(N,)`` official test-time weights from per-modality ``(B, C)`` outputs
    (entropy of the softmax over the batch dimension, as ``calculate_entropy``)."""
    h = []
    for o in outputs:
        p = torch.softmax(o.float(), dim=0)
        h.append(-(p * torch.log(p)).sum())
    ent = torch.stack(h)
    w = torch.exp(ent.max() - ent)
    return w / w.sum()


class MLA(BalancingCallback):
    """Alternating unimodal adaptation with a shared head and gradient projection.

    Args:
        test_fusion: ``dynamic`` (entropy weights, the paper) or ``fixed``.
        fixed_weights: per-modality weights for ``fixed`` (``None``: official 0.5 / 0.5 for
            two modalities, 0.35 / 0.25 / 0.4 for three, uniform otherwise).
        projection: ``none`` (what the official code executes: its projection branch is
            never entered), ``replace`` (the paper: $\\nabla_W P^\\top$) or ``add``
            (BalanceBenchmark: $\\nabla_W + \\nabla_W P^\\top$).
    """

    changes_model = True  # asgml.eval re-applies setup() before loading weights

    state_attrs = ("projector", "exp_count")  # checkpointed by BalancingCallback.state_dict

    def __init__(
        self,
        test_fusion: str = "dynamic",
        fixed_weights: Sequence[float] | None = None,
        projection: str = "none",
    ) -> None:
        super().__init__()
        if test_fusion not in ("dynamic", "fixed"):
            raise ValueError(
                f"method.mla.test_fusion must be dynamic or fixed, got {test_fusion!r}"
            )
        if projection not in ("replace", "add", "none"):
            raise ValueError(
                f"method.mla.projection must be replace, add or none, got {projection!r}"
            )
        self.test_fusion = test_fusion
        self.fixed_weights = list(fixed_weights) if fixed_weights is not None else None
        self.projection = projection
        self.projector: Tensor | None = None
        self.exp_count = 0
        self._current: str | None = None
        self._r: Tensor | None = None
        self.last: dict[str, Any] = {}

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        module: Any = pl_module
        dims = set(module.feature_dims.values())
        if len(dims) != 1:
            raise ValueError(
                f"MLA shares one head across modalities: the encoders' feature dims must be "
                f"equal, got {module.feature_dims}"
            )
        n = len(module.modalities)
        if self.fixed_weights is not None and len(self.fixed_weights) != n:
            raise ValueError(
                f"method.mla.fixed_weights needs {n} values (one per modality), "
                f"got {self.fixed_weights}"
            )
        d = dims.pop()
        if not hasattr(module, HEAD):  # before configure_optimizers: in the head group
            module.add_module(HEAD, nn.Linear(d, module.num_classes))
        if self.projector is None:
            self.projector = torch.eye(d)

    def weights(self, n: int) -> Tensor:
        if self.fixed_weights is not None:
            return torch.tensor(self.fixed_weights, dtype=torch.float32)
        official = {2: [0.5, 0.5], 3: [0.35, 0.25, 0.4]}
        return torch.tensor(official.get(n, [1.0 / n] * n), dtype=torch.float32)

    @override
    def on_step_plan(
        self, trainer: L.Trainer, module: MultimodalModule, plan: StepPlan, batch: Any
    ) -> None:
        self._current = module.modalities[self.exp_count % len(module.modalities)]
        plan.only(self._current)

    @override
    def on_train_losses(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        out: StepOutput,
    ) -> None:
        losses = out.losses
        m = self._current
        assert m is not None
        f = out.features[m]
        losses.clear()
        losses[f"mla_{m}"] = F.cross_entropy(getattr(module, HEAD)(f), out.labels)
        with torch.no_grad():
            total = torch.cat([f.detach().float().sum(0), f.new_tensor([f.shape[0]]).float()])
            total = sum_over_ranks(trainer, total)
            self._r = (total[:-1] / total[-1]).unsqueeze(0)

    @override
    def on_train_gradients(
        self, trainer: L.Trainer, module: MultimodalModule, out: StepOutput
    ) -> None:
        # the projection is linear in the gradient, so the loss scale a 16-mixed gradient
        # carries passes through unchanged
        if self._r is None or self.projection == "none":
            return
        w = getattr(module, HEAD).weight
        if self.exp_count != 0 and w.grad is not None:
            batch_idx = trainer.fit_loop.epoch_loop.batch_idx
            alpha = gs_alpha(batch_idx, max(1, int(trainer.num_training_batches)))
            assert self.projector is not None
            old = self.projector.to(w.device)
            p = gs_update(old, self._r.to(w.device), alpha)
            # a step the optimizer skips (non-finite loss or gradients) leaves the projector
            p = torch.where(step_finite(module, out).to(w.device), p, old)
            self.projector = p
            proj = w.grad @ p.t().to(w.grad.dtype)
            if self.projection == "replace":
                w.grad.copy_(proj)
            else:
                w.grad.add_(proj)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if self._current is None:
            return
        mods = list(pl_module.modalities)  # type: ignore[attr-defined]
        if self.logging_step(trainer):
            self.log_now(trainer, {"mla/modality": float(mods.index(self._current))})
        self.exp_count += 1
        self._current, self._r = None, None

    @override
    def on_eval_logits(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        logits: Tensor,
        unimodal_logits: dict[str, Tensor],
        features: dict[str, Tensor],
    ) -> Tensor:
        head = getattr(module, HEAD)
        outs = [head(features[m]) for m in module.modalities]
        for m, o in zip(module.modalities, outs, strict=True):
            unimodal_logits[m] = o  # the reported unimodal accuracies are the shared head's
        if self.test_fusion == "dynamic":
            w = entropy_weights(outs)
        else:
            w = self.weights(len(outs))
        w = w.to(outs[0].device, outs[0].dtype)
        return torch.stack(outs).mul(w[:, None, None]).sum(0)
