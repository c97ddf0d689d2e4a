"""AMCo: adaptive mask co-optimization of the dominant ("dependent") modality.

Paper: Zhou et al., "Adaptive Mask Co-Optimization for Modal Dependence in Multimodal
Learning", ICASSP 2023 (as GeWu-Lab/BalanceBenchmark cites it). No official repository of
the authors is public; the reference is GeWu-Lab/BalanceBenchmark @
4c1482fca5aaa8d4278af8e26020daa039e3ccf3 (``balancemm/trainer/AMCo_trainer.py``,
``balancemm/models/avclassify_model.py``: ``BaseClassifierAMCoModel``).

The fused logits are re-built from the unimodal logits $z_m$ (the concat fusion layer's block
of $m$ plus $b/N$ of its bias, so $\\sum_m z_m$ is the plain fused logit), with a class mask on
every dependent modality and a learned ``Linear(C, C)`` on top (BalanceBenchmark's
``linear_star``):

$$\\hat y = W_\\star \\sum_m (\\mu_m \\odot z_m) + b_\\star, \\qquad
\\mu_m = \\begin{cases} \\mu & m \\text{ dependent} \\\\ \\mathbf 1 & \\text{otherwise}\\end{cases}$$

where the class mask $\\mu \\in \\{0,1\\}^C$ zeroes $\\lfloor p_t C \\rfloor$ random classes, redrawn
every step, with $p_t = \\sin\\big(\\tfrac{\\pi}{2} \\min(\\epsilon, l_t)/\\epsilon\\big)$ and
$l_t$ starting at 0 each epoch and growing by ``epoch / 10`` after every batch. Inside the
modulation window the loss is $\\mathrm{CE}(\\hat y) + \\sum_m \\mathrm{CE}(\\mu_m \\odot z_m)$ (one
backward of the sum; BalanceBenchmark backpropagates the terms one after another, which
accumulates the same gradient). After the step, modality $m$ is *dependent* for the next step
when its share of the softmax over the concatenated masked unimodal logits,
$\\frac1B \\sum_i \\sum_{c} \\mathrm{softmax}([\\mu_1 z_1, \\dots, \\mu_N z_N])_{i, (m, c)}$, exceeds
$\\sigma$. Outside the window: $\\mathrm{CE}(\\hat y)$ without masks. Validation and test score
$W_\\star \\sum_m z_m + b_\\star$ (no masks).

**The schedule saturates at once.** $l_t$ is 0 during the whole first epoch (epoch 0 adds
$0/10$), so nothing is masked there; in epoch 1 it reaches $\\epsilon = 0.3$ at the 4th batch,
where $p_t = 1$ and *every* class of a dependent modality is masked: its logits are all zero,
its unimodal CE is the constant $\\log C$ and it adds nothing to $\\hat y$. In epoch $e$ this
happens from batch $\\lceil 3/e \\rceil + 1$ on, i.e. for almost the whole epoch
(BalanceBenchmark ``AMCo_trainer.py:64-83``, reproduced as written). The paper's own masking
(per its abstract, a mask that makes the dependent modality harder to learn) could not be
recovered: its full text and the authors' code are not public, so no switch for a different
(e.g. feature-unit) mask is offered.

A step the optimizer skips (non-finite loss or gradients) leaves the dependent flags as they
were ($l_t$ still advances: it counts batches). DDP: the shares are averaged over the global batch (all-reduce) before the dependent flags
change; the class mask comes from the callback's generator, equal on every rank.

Deviations: BalanceBenchmark multiplies the ``(B, C)`` logits with a ``(2, C)`` mask (an error
unless ``B = 2``); here one ``(C,)`` mask is broadcast over the batch, the evident intent. Its
``alpha`` and ``U`` settings are unused there and absent here. Works for any $N \\ge 2$ (the
share rule is defined for any $N$). Requires fusion-derived unimodal logits
(``fusion: concat``, ``unimodal_heads: false``). Validation, test and ``asgml.eval`` use
$W_\\star$. Logged: ``amco/share_<m>``, ``amco/dependent_<m>``, ``amco/pt``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import NonFiniteCounter, step_finite, sum_over_ranks

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.types import StepOutput

STAR = "amco_star"


def amco_pt(l_t: float, eps: float) -> float:
    """The masked fraction ``sin(pi/2 * min(eps, l_t) / eps)``."""
    return math.sin(math.pi / 2 * (min(eps, l_t) / eps))


def amco_class_mask(num_classes: int, pt: float, generator: torch.Generator) -> Tensor:
    """``(C,)`` float mask with ``int(pt * C)`` zeros at random classes."""
    n_zero = int(pt * num_classes)
    mask = torch.ones(num_classes)
    mask[torch.randperm(num_classes, generator=generator)[:n_zero]] = 0.0
    return mask


def amco_shares(masked_logits: Sequence[Tensor]) -> Tensor:
    """``(N,)``: each modality's summed softmax mass over the concatenated logits, per sample
    summed over the batch (divide by ``B`` for the mean share)."""
    p = torch.softmax(torch.cat([z.float() for z in masked_logits], dim=1), dim=1)
    blocks = p.split([z.shape[1] for z in masked_logits], dim=1)
    return torch.stack([b.sum() for b in blocks])


class AMCo(BalancingCallback):
    """Adaptive mask co-optimization (BalanceBenchmark's AMCo).

    Args:
        sigma: share above which a modality is dependent (masked on the next step).
        eps: $\\epsilon$ of the mask schedule.
        star: the learned ``Linear(C, C)`` on the summed logits (BalanceBenchmark: always).
        modulation_starts: first epoch of the inclusive 0-based modulation window.
        modulation_ends: last epoch of the window.
        seed: seed of the class-mask generator.
    """

    changes_model = True  # asgml.eval re-applies setup() before loading weights

    def __init__(
        self,
        sigma: float = 0.5,
        eps: float = 0.3,
        star: bool = True,
        modulation_starts: int = 0,
        modulation_ends: int = 80,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < sigma < 1.0:
            raise ValueError(f"method.amco.sigma must be in (0, 1), got {sigma}")
        if eps <= 0:
            raise ValueError(f"method.amco.eps must be > 0, got {eps}")
        self.sigma, self.eps, self.star = float(sigma), float(eps), bool(star)
        self.modulation_starts, self.modulation_ends = modulation_starts, modulation_ends
        self.window = self.epoch_window(modulation_starts, modulation_ends)
        self.generator = torch.Generator().manual_seed(int(seed))
        # per modality: a bool, or a 0-d bool tensor on the device (set after every step
        # without a host sync; read as bool in state_dict and logging)
        self.dependent: dict[str, bool | Tensor] = {}
        self.l_t = 0.0
        self.last: dict[str, Any] = {}
        self._pending: Tensor | None = None
        self.nonfinite = NonFiniteCounter("AMCo", "out of its dependence flags")

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        module: Any = pl_module
        if module.unimodal_heads is not None or not module.fusion.supports_unimodal:
            raise ValueError(
                "AMCo re-builds the fused logits from fusion-derived unimodal logits: use "
                "model.fusion=concat with model.unimodal_heads=false"
            )
        for m in module.modalities:
            self.dependent.setdefault(m, False)
        if self.star and not hasattr(module, STAR):  # before configure_optimizers: trained
            module.add_module(STAR, nn.Linear(module.num_classes, module.num_classes))

    def in_window(self, epoch: int) -> bool:
        return epoch in self.window

    def mask_if_dependent(self, modality: str, logits: Tensor, mask: Tensor) -> Tensor:
        """``logits * mask`` if ``modality`` is dependent, else ``logits``. A device flag
        selects with ``torch.where`` (the same values and gradients as the branch, no host
        sync); a Python flag branches."""
        dep = self.dependent[modality]
        if isinstance(dep, Tensor):
            return torch.where(dep.to(logits.device), logits * mask, logits)
        return logits * mask if dep else logits

    def fused(self, module: MultimodalModule, uni: Mapping[str, Tensor]) -> Tensor:
        total = torch.stack([uni[m] for m in module.modalities]).sum(0)
        return getattr(module, STAR)(total) if self.star else total

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.l_t = 0.0  # BalanceBenchmark: l_t = 0 at the start of every train loop

    @override
    def on_train_losses(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        out: StepOutput,
    ) -> None:
        losses = out.losses
        y = out.labels
        if not self.in_window(trainer.current_epoch):
            losses["fused"] = F.cross_entropy(self.fused(module, out.unimodal_logits), y)
            return
        pt = amco_pt(self.l_t, self.eps)
        mask = amco_class_mask(module.num_classes, pt, self.generator)
        mask = mask.to(out.logits.device, out.logits.dtype)
        masked = {
            m: self.mask_if_dependent(m, out.unimodal_logits[m], mask) for m in module.modalities
        }
        losses["fused"] = F.cross_entropy(self.fused(module, masked), y)
        for m in module.modalities:
            losses[f"amco_unimodal_{m}"] = F.cross_entropy(masked[m], y)
        with torch.no_grad():
            shares = amco_shares([masked[m].detach() for m in module.modalities])
            count = torch.tensor(float(y.shape[0]), device=shares.device)
            stats = sum_over_ranks(trainer, torch.cat([shares, count[None]]))
            share = stats[:-1] / stats[-1]
        self._pending = share
        self.last = {"share": share, "pt": pt, "dependent": dict(self.dependent)}

    @override
    def on_train_gradients(
        self, trainer: L.Trainer, module: MultimodalModule, out: StepOutput
    ) -> None:
        share, self._pending = self._pending, None
        if share is None:
            return
        # the flags of the next step (BalanceBenchmark: after backward); a step the optimizer
        # skips (non-finite loss or gradients) leaves them as they were
        # device tensors throughout: no host sync per step
        ok = step_finite(module, out).to(share.device)
        self.nonfinite.add(~ok)
        new = (share > self.sigma).unbind()
        self.dependent = {
            m: torch.where(ok, flag, torch.as_tensor(self.dependent[m], device=share.device))
            for m, flag in zip(module.modalities, new, strict=True)
        }

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.nonfinite.end_epoch(trainer)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.l_t += trainer.current_epoch / 10  # a schedule over batches, skipped ones too
        if self.last and self.logging_step(trainer):
            mods = pl_module.modalities
            log = {"amco/pt": float(self.last["pt"])}
            log.update(
                {f"amco/share_{m}": float(self.last["share"][j]) for j, m in enumerate(mods)}
            )
            log.update({f"amco/dependent_{m}": float(self.last["dependent"][m]) for m in mods})
            self.log_now(trainer, log)
        self.last = {}

    @override
    def on_eval_logits(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        logits: Tensor,
        unimodal_logits: dict[str, Tensor],
        features: dict[str, Tensor],
    ) -> Tensor:
        return self.fused(module, unimodal_logits) if self.star else logits

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "dependent": {m: bool(d) for m, d in self.dependent.items()},
            "l_t": self.l_t,
            "nonfinite_steps": self.nonfinite.total,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
        self.dependent = dict(state_dict["dependent"])
        self.l_t = float(state_dict["l_t"])
        self.nonfinite.load(state_dict.get("nonfinite_steps", 0))
