r"""CGGM: Classifier-Guided Gradient Modulation.

Paper: Guo et al., "Classifier-guided Gradient Modulation for
Enhanced Multimodal Learning", NeurIPS 2024.
Official code: https://github.com/zrguo/CGGM @ 21e428c (``src/msatrain.py``,
``models/msamodel.py``, ``run/mosi_run.py``).

One training step, as the official code does it:

1. ``loss = task_loss + lamda * L_gm`` with ``L_gm`` from the *previous* step; backward.
2. One classifier per modality, fed the *detached* encoder features and trained by its own
   optimizer (here: a `ProbeBank` of linear probes, Adam,
   ``cls_lr``), is run on the batch; its summed CE is backpropagated into the classifiers.
3. ``acc_i`` = classifier i's batch accuracy (before its update); ``d_i = acc_i(t) - acc_i(t-1)``
   (``acc_i(-1) = 0``).
4. ``coeff_i = (sum_j d_j - d_i) / (sum_j d_j + 1e-8)`` -- unbounded, as in the official code
   (but see ``zero_sum`` below).
5. ``L_gm = (sum_i |coeff_i| - sum_i coeff_i * cos(W_i, W_fus)) / M``, kept for the next step.
   As in the code, ``W_i`` / ``W_fus`` are the output-layer *weights* of classifier i and of the
   fusion head (the variables are called ``*_grad`` but hold parameters); the term is
   differentiable in ``W_fus`` only (the classifier's share is zeroed before its own step).
6. Every gradient of encoder i is multiplied by ``rou * coeff_i``.
7. The classifier optimizer steps; ``clip_grad_norm_(model, clip)``; the model optimizer steps.

In formulas ($M$ modalities, $\lambda$ = ``lamda``, $\rho$ = ``rou``, $\theta_i$ the parameters
of encoder $i$):

$$
d_i = \mathrm{acc}_i(t) - \mathrm{acc}_i(t-1), \qquad
\mathrm{coeff}_i = \frac{\sum_j d_j - d_i}{\sum_j d_j + 10^{-8}}
$$

$$
\mathcal{L}_{gm} = \frac{1}{M}\Bigl(\sum_i |\mathrm{coeff}_i|
  - \sum_i \mathrm{coeff}_i \cos(W_i, W_{fus})\Bigr), \qquad
\mathcal{L} = \mathcal{L}_{task} + \lambda\, \mathcal{L}_{gm}^{(t-1)}, \qquad
\nabla_{\theta_i} \leftarrow \rho\, \mathrm{coeff}_i\, \nabla_{\theta_i}
$$

Official settings (``run/*_run.py``): MOSI/IEMOCAP ``rou`` 1.3, ``lamda`` 0.2, ``cls_lr``
5e-4, ``clip`` 0.8, model and classifiers trained with Adam (lr 1e-3 / 5e-4), 30 epochs;
Food-101 ``lamda`` 0.05 with AdamW (weight decay 6e-3 / 3e-3), 60 epochs. The official
``clip_grad_norm_(model, 0.8)`` runs on every step of every run, baseline included: it is
part of the official training recipe, under Adam, which largely cancels a uniform rescaling
of the gradient. Here the clip can only belong to the method, and under an SGD recipe it
becomes a learning-rate cut for CGGM alone (the default synthetic task's ResNet-18 gradients
have a norm of about 9, so a clip at 0.8 divides CGGM's steps by about 11). So the default
is ``clip=null``; ``clip=0.8`` reproduces the official value (use it with an Adam recipe).

Undefined coefficients (``zero_sum``). Batch accuracies are multiples of ``1/B``, so on
many steps ``sum_j d_j`` is exactly 0: every accuracy unchanged, or one modality's gain
cancelling another's loss. The official ``+ 1e-8`` then gives ``coeff_i = -d_i * 1e8``:
either 0 for every modality (the encoders get no gradient that step) or values of order
``1e6`` of both signs, which reverse one encoder's gradient, blow ``L_gm`` up to ``~1e6``
for the next step, and leave the update to the clip (without the clip such runs diverge).
Default ``zero_sum=skip``: such a step is left unmodulated (encoder gradients unscaled, no
``L_gm`` from it); ``zero_sum=official`` keeps the official values. With batches of 64
and three modalities a few percent of the steps are affected.

Deviations from the official code:

* ``zero_sum=skip`` (above; ``official`` switch).
* No clip by default (above); ``clip=0.8`` is the official value, which officially every
  run, baseline included, applies.
* Every parameter of encoder i is scaled; the official code scales the transformer
  encoders ``encoders.{i}`` but not the input projections ``proj.{i}`` in front of them.
* Classifiers: linear probes on the pooled features (``probe_type=mlp_1layer`` is refused:
  ``W_i`` must have the shape of the fusion weight block) instead of the official 2-layer
  transformer classifiers over token sequences.
* ``W_fus`` for modality i is the fusion layer's weight block that reads modality i
  (``ConcatFusion``: ``fc_out.weight[:, block_i]``; ``SumFusion``: ``fc[i].weight``). The
  official MSA model has one fused ``out_layer`` of the same shape as every classifier's.
  FiLM/gated fusion are refused at start-up.
* ``L_gm`` of step t is re-built at step t+1 from values saved at step t (so its value and
  its gradient are those of step t, exactly as the official code's retained graph gives),
  with the gradient routed into the current ``W_fus`` parameter.
* With N modalities the sum runs over all of them (the official scripts hard-code the index
  terms per dataset: 2, 3 or 4 modalities). Works for N >= 2.
* The clip acts on the true (unscaled) gradient norm under ``16-mixed`` too.
* Several processes (the official code runs one): the classifiers start from rank 0's
  weights, their gradients are averaged over the ranks before their step and the
  accuracies are those of the global batch, so classifiers, coefficients and ``L_gm`` are
  the same on every rank.

Logged: ``cggm/coeff_<m>``, ``cggm/acc_<m>``, ``cggm/l_gm``, ``cggm/active`` (0 on steps
left unmodulated by ``zero_sum=skip``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import (
    DeferredState,
    broadcast_module_,
    clip_grad_norm_,
    mean_over_ranks_,
    module_parameters,
    present_grads,
    scale_,
    sum_over_ranks,
)
from asgml.core.types import StepOutput
from asgml.models.fusion import ConcatFusion, SumFusion
from asgml.models.probes import ProbeBank

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule

ZERO_SUM = ("skip", "official")


def cggm_coefficients(acc_now: Tensor, acc_prev: Tensor, eps: float = 1e-8) -> Tensor:
    """``coeff_i = (sum_j d_j - d_i) / (sum_j d_j + eps)``, ``d = acc_now - acc_prev`` ((M,) tensors)."""
    d = acc_now - acc_prev
    total = d.sum()
    return (total - d) / (total + eps)


def cggm_defined(acc_now: Tensor, acc_prev: Tensor, tol: float = 1e-6) -> Tensor:
    """0-d bool: ``|sum_j d_j| >= tol``, i.e. the coefficients are defined. Batch
    accuracies are multiples of ``1/B``, so ``sum_j d_j`` is exactly 0 on many steps (all
    accuracies unchanged, or one modality's gain cancelling another's loss); there the
    official ``1e-8`` guard gives ``coeff_i = -d_i * 1e8``: 0 for every modality, or values
    of order ``1e6`` of either sign."""
    return (acc_now - acc_prev).sum().abs() >= tol


def cggm_direction_loss(coeffs: Tensor, cosines: Tensor) -> Tensor:
    """``L_gm = (sum_i |coeff_i| - sum_i coeff_i * cos_i) / M``."""
    return (coeffs.abs().sum() - (coeffs * cosines).sum()) / coeffs.numel()


def flat_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of two tensors flattened (as ``cal_cos`` in the official code)."""
    return F.cosine_similarity(a.reshape(-1), b.reshape(-1), dim=0)


def fusion_weight_block(fusion: torch.nn.Module, modality: str) -> Tensor:
    """The fusion-layer weight that reads ``modality``: ``(C, d_m)``."""
    if isinstance(fusion, ConcatFusion):
        lo, hi = fusion.blocks[modality]
        return fusion.fc_out.weight[:, lo:hi]
    if isinstance(fusion, SumFusion):
        return fusion.fc[modality].weight
    raise ValueError(
        f"CGGM needs concat or sum fusion (a per-modality fusion weight block), got "
        f"{type(fusion).__name__}"
    )


class CGGM(BalancingCallback):
    """Classifier-guided gradient modulation.

    Args:
        rou: gradient scale factor ``rho`` (official 1.3).
        lamda: weight of ``L_gm`` (official 0.2 for MOSI/IEMOCAP).
        cls_lr: learning rate of the classifiers' Adam (official 5e-4).
        clip: ``clip_grad_norm_`` max norm on the whole model after modulation (official
            0.8, part of the official Adam recipe); ``None`` (default) disables it.
        eps: the official ``1e-8`` in the coefficient denominator.
        zero_sum: a step whose accuracy changes sum to 0 (coefficients undefined):
            ``skip`` (default) leaves it unmodulated (encoder gradients unscaled, no
            ``L_gm`` from it); ``official`` applies the official ``1e-8``-guarded values.
    """

    def __init__(
        self,
        rou: float = 1.3,
        lamda: float = 0.2,
        cls_lr: float = 5e-4,
        clip: float | None = None,
        eps: float = 1e-8,
        zero_sum: str = "skip",
    ) -> None:
        super().__init__()
        if rou < 0 or lamda < 0 or cls_lr <= 0:
            raise ValueError(
                f"rou and lamda must be >= 0 and cls_lr > 0, got {rou}, {lamda}, {cls_lr}"
            )
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be > 0 or null, got {clip}")
        if zero_sum not in ZERO_SUM:
            raise ValueError(f"zero_sum must be one of {ZERO_SUM}, got {zero_sum!r}")
        self.rou = rou
        self.lamda = lamda
        self.cls_lr = cls_lr
        self.clip = clip
        self.eps = eps
        self.zero_sum = zero_sum
        self.active: Tensor | None = None  # the coefficients are applied (0-d bool)
        self.bank: ProbeBank | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.acc_prev: Tensor | None = None
        self.coeffs: Tensor | None = None
        self.saved: dict[str, Tensor] | None = None  # step-t values for L_gm at t+1
        self._restore = DeferredState()

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for m in pl_module.modalities:
            fusion_weight_block(pl_module.fusion, m)  # fails early for film/gated
        if self.bank is None:
            dims = {m: int(pl_module.encoders[m].feature_dim) for m in pl_module.modalities}
            self.bank = ProbeBank(dims, pl_module.num_classes, "linear")
            self.optimizer = torch.optim.Adam(self.bank.parameters(), lr=self.cls_lr)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bank.to(pl_module.device)
        st = self._restore.take(pl_module.device)
        if st is not None:
            self.bank.load_state_dict(st["bank"])
            self.optimizer.load_state_dict(st["optimizer"])
            self.acc_prev, self.coeffs = st["acc_prev"], st["coeffs"]
            self.active = st.get("active")
            self.saved = st["saved"] or None
        else:  # a fresh bank: the same initial classifiers on every rank
            broadcast_module_(trainer, self.bank)

    # ------------------------------------------------------------------ steps
    def direction_loss(self, pl_module: L.LightningModule) -> Tensor | None:
        """``L_gm`` of the previous step, differentiable w.r.t. the fusion weights."""
        if self.saved is None or self.coeffs is None:
            return None
        cosines = []
        for m in pl_module.modalities:
            w_now = fusion_weight_block(pl_module.fusion, m)
            # value of step t, gradient into the current parameter
            w_fus = self.saved[f"fus_{m}"] + (w_now - w_now.detach())
            cosines.append(flat_cosine(self.saved[f"cls_{m}"], w_fus))
        l_gm = cggm_direction_loss(self.coeffs, torch.stack(cosines))
        if self.active is not None:  # no L_gm from an unmodulated step
            l_gm = torch.where(self.active, l_gm, torch.zeros_like(l_gm))
        return l_gm

    @override
    def on_train_losses(
        self, trainer: L.Trainer, pl_module: MultimodalModule, out: StepOutput
    ) -> None:
        mods = pl_module.modalities
        l_gm = self.direction_loss(pl_module)
        if l_gm is not None and self.lamda > 0:
            out.losses["cggm_gm"] = self.lamda * l_gm
        # classifiers on detached features: accuracy before their update, then one step
        logits = self.bank.logits(out.features)
        correct = torch.stack([(logits[m].argmax(1) == out.labels).float().sum() for m in mods])
        # under DDP: the global batch's accuracy, and the classifiers' gradients averaged
        # over ranks (as DDP does for the model), so every rank has the same classifiers
        # and coefficients
        counts = sum_over_ranks(
            trainer, torch.cat([correct, correct.new_tensor([len(out.labels)])])
        )
        acc = counts[:-1] / counts[-1]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            torch.stack([F.cross_entropy(logits[m], out.labels) for m in mods]).sum().backward()
        mean_over_ranks_(trainer, present_grads(self.bank.parameters()))
        prev = self.acc_prev if self.acc_prev is not None else torch.zeros_like(acc)
        self.coeffs = cggm_coefficients(acc, prev, self.eps)
        self.active = (
            cggm_defined(acc, prev) if self.zero_sum == "skip" else torch.ones_like(acc[0]).bool()
        )
        self.acc_prev = acc
        # step-t weights for L_gm (taken before the classifier step, as the official code)
        self.saved = {}
        for m in mods:
            self.saved[f"cls_{m}"] = self.bank.probes[m].weight.detach().clone()
            self.saved[f"fus_{m}"] = fusion_weight_block(pl_module.fusion, m).detach().clone()
        self.optimizer.step()
        if not self.logging_step(trainer):  # per-step values: only on the steps Lightning writes
            return
        for i, m in enumerate(mods):
            pl_module.log(f"cggm/coeff_{m}", self.coeffs[i], on_step=True, on_epoch=False)
            pl_module.log(f"cggm/acc_{m}", acc[i], on_step=True, on_epoch=False)
        pl_module.log("cggm/active", self.active.float(), on_step=True, on_epoch=False)
        if l_gm is not None:
            pl_module.log("cggm/l_gm", l_gm.detach(), on_step=True, on_epoch=False)

    @override
    def on_train_gradients(
        self, trainer: L.Trainer, pl_module: MultimodalModule, out: StepOutput
    ) -> None:
        if self.coeffs is None:
            return
        active = self.active if self.active is not None else torch.tensor(True)
        for i, m in enumerate(pl_module.modalities):
            factor = torch.where(active, self.coeffs[i] * self.rou, torch.ones_like(self.coeffs[i]))
            scale_(present_grads(pl_module.encoder_parameters(m)), factor)
        if self.clip is not None:  # on the true (unscaled) norm, under any precision
            clip_grad_norm_(trainer, present_grads(module_parameters(pl_module)), self.clip)

    # ------------------------------------------------------------ checkpoint
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "bank": self.bank.state_dict() if self.bank is not None else {},
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "acc_prev": None if self.acc_prev is None else self.acc_prev.cpu(),
            "coeffs": None if self.coeffs is None else self.coeffs.cpu(),
            "active": None if self.active is None else self.active.cpu(),
            "saved": {k: v.cpu() for k, v in (self.saved or {}).items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore.put(state_dict)
