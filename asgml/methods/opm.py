"""OPM: on-the-fly prediction modulation (drop the dominant modality's features).

Paper: Wei, Hu, Du, Wen, "On-the-fly Modulation for Balanced Multimodal Learning",
TPAMI 2024.
Official code: GeWu-Lab/BML_TPAMI2024 @ 4b3aa4fd841856c4acbebf48549e6c59fbf7635e
(``code/models/Classifier.py``: ``calcu_q``, ``Modality_drop``; ``code/main.py``: ``train``).
Second reference: GeWu-Lab/BalanceBenchmark @ 4c1482fca5aaa8d4278af8e26020daa039e3ccf3
(``balancemm/trainer/OPM_trainer.py``).

Per step, from the batch's unimodal logits $z_m$ (the fusion layer's block of modality $m$
with $b/N$ of its bias, computed without gradient):

$$s_m = \\sum_i \\mathrm{softmax}(z_m)_{i, y_i}, \\qquad
r_m = \\tanh\\big(\\mathrm{relu}(s_m / s_{\\bar m} - 1)\\big),$$

$$q_m = \\mathrm{clip}\\big(q_{base}(1 + \\lambda r_m)\\,[r_m > 0],\\ 0,\\ 1\\big),$$

so only a modality that is ahead ($s_m > s_{\\bar m}$) gets a drop probability. With
probability $p_{exe}$ the step drops: every sample keeps modality $m$ with probability
$1 - q_m$ (independent Bernoulli draws), kept features are scaled by $1/(1-\\theta)$ with
$\\theta = \\sum_m d_m q_m / \\sum_m d_m$ ($d_m$ the feature dimensions), and samples that lost
every modality leave the loss (the fused CE averages over the others). Only the fused loss
trains (official: ``loss.backward()`` on the fused CE only). Implemented with the step plan:
``fusion_scale[m]`` = keep mask / $(1-\\theta)$, ``sample_mask`` = any modality kept.

Scores are summed over the global batch (all-reduced under DDP) before $q$ is computed; the
execution coin and the masks come from the callback's own generator (in ``state_dict``). OPM
keeps no statistic across steps ($q$ comes from the step's own batch), so a step the
optimizer skips (non-finite loss or gradients) leaves nothing behind but the generator draws
it made, as a step of the official loop would.

Deviations: $N > 2$ uses $s_{\\bar m} = \\sum_{k \\ne m} s_k$ (BalanceBenchmark's
generalisation; identical for $N = 2$). $1 - \\theta$ is clamped at ``1e-5`` (official: no
guard; with the official values $\\theta < 1$ always). A step whose whole batch lost every
modality trains on nothing but still calls ``optimizer.step()`` (official: skips it; with
$B \\ge 16$ practically never). Logged: ``opm/q_<m>``, ``opm/score_<m>``, ``opm/kept_<m>``
(fraction of samples keeping $m$), ``opm/executed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import ogm_scores, sum_over_ranks

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.step_plan import StepPlan


def opm_drop_probs(scores: Tensor, q_base: float, lam: float) -> tuple[Tensor, Tensor]:
    """``(q, r)`` from per-modality scores ``(N,)``: the drop probability and the gap term."""
    s = scores.float()
    others = s.sum() - s
    r = torch.tanh(torch.relu(s / others - 1))
    q = torch.where(r > 0, q_base * (1 + lam * r), torch.zeros_like(r))
    return q.clamp(0.0, 1.0), r


def opm_theta(q: Tensor, dims: Sequence[int]) -> Tensor:
    """``theta = sum_m d_m q_m / sum_m d_m`` (0-d)."""
    d = torch.tensor([float(x) for x in dims], dtype=q.dtype, device=q.device)
    return (d * q).sum() / d.sum()


def opm_keep_masks(q: Tensor, batch_size: int, generator: torch.Generator) -> Tensor:
    """``(B, N)`` float keep masks on ``q``'s device: sample ``i`` keeps modality ``m`` w.p.
    ``1 - q_m``. The uniforms come from the (CPU) ``generator`` and are compared on ``q``'s
    device (the same comparison of the same float32 values; no device-to-host copy of ``q``)."""
    u = torch.rand(batch_size, q.numel(), generator=generator)
    return (u.to(q.device) < (1 - q.detach())).float()


class OPM(BalancingCallback):
    """On-the-fly prediction modulation (feature drop of the dominant modality).

    Args:
        q_base: base drop probability (official ``--q_base``).
        lam: gap sensitivity $\\lambda$ (official ``--lam``).
        p_exe: probability that a step drops at all (official ``--p_exe``).
        modulation_starts: first 0-based epoch that drops (official: after 6 warm-up epochs).
        modulation_ends: last epoch that drops (inclusive); ``None``: to the end.
        seed: seed of the callback's generator (execution coin and masks).
    """

    def __init__(
        self,
        q_base: float = 0.5,
        lam: float = 0.5,
        p_exe: float = 0.7,
        modulation_starts: int = 6,
        modulation_ends: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for key, v in (("q_base", q_base), ("p_exe", p_exe)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"method.opm.{key} must be in [0, 1], got {v}")
        if lam < 0:
            raise ValueError(f"method.opm.lam must be >= 0, got {lam}")
        if modulation_ends is not None and modulation_ends < modulation_starts:
            raise ValueError(
                f"method.opm.modulation_ends ({modulation_ends}) < modulation_starts "
                f"({modulation_starts})"
            )
        self.q_base, self.lam, self.p_exe = float(q_base), float(lam), float(p_exe)
        self.modulation_starts, self.modulation_ends = modulation_starts, modulation_ends
        self.generator = torch.Generator().manual_seed(int(seed))
        self.last: dict[str, Any] = {}

    def in_window(self, epoch: int) -> bool:
        return epoch >= self.modulation_starts and (
            self.modulation_ends is None or epoch <= self.modulation_ends
        )

    def plan_drop(
        self,
        module: MultimodalModule,
        features: Mapping[str, Tensor],
        labels: Tensor,
        trainer: Any = None,
    ) -> tuple[Tensor, Tensor, Tensor, bool]:
        """``(q, scores, keep (B, N), executed)`` for this batch."""
        mods = module.modalities
        with torch.no_grad():
            uni = module.fusion.unimodal_logits({m: features[m].detach() for m in mods})
            sc = ogm_scores(uni, labels)
            scores = torch.stack([sc[m] for m in mods])
        if trainer is not None:
            scores = sum_over_ranks(trainer, scores)
        q, _ = opm_drop_probs(scores, self.q_base, self.lam)
        # a host-side coin from the CPU generator (no device sync)
        executed = bool(torch.rand(1, generator=self.generator).item() >= 1 - self.p_exe)
        b = labels.shape[0]
        keep = (
            opm_keep_masks(q, b, self.generator)
            if executed
            else torch.ones(b, len(mods), device=q.device)
        )
        return q, scores, keep, executed

    @override
    def on_step_features(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        plan: StepPlan,
        features: dict[str, Tensor],
        batch: Any,
    ) -> None:
        if not self.in_window(trainer.current_epoch):
            return
        mods = module.modalities
        q, scores, keep, executed = self.plan_drop(module, features, batch["label"], trainer)
        self.last = {"q": q, "scores": scores, "keep": keep.mean(0), "executed": executed}
        if not executed:
            return
        theta = opm_theta(q, [module.feature_dims[m] for m in mods])
        inv = 1.0 / (1.0 - theta).clamp_min(1e-5)
        ref = features[mods[0]]
        keep = keep.to(ref.device)
        for i, m in enumerate(mods):
            plan.fusion_scale[m] = keep[:, i : i + 1] * inv.to(ref.device)
        plan.sample_mask = keep.sum(dim=1) > 0

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if self.last and self.logging_step(trainer):
            mods = pl_module.modalities
            out = {"opm/executed": float(self.last["executed"])}
            for k in ("q", "scores", "keep"):
                name = {"scores": "score", "keep": "kept"}.get(k, k)
                out.update({f"opm/{name}_{m}": float(self.last[k][j]) for j, m in enumerate(mods)})
            self.log_now(trainer, out)
        self.last = {}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
