"""Greedy: conditional learning speed and re-balancing steps (Wu et al., ICML 2022).

Paper: Nan Wu, Stanisław Jastrzębski, Kyunghyun Cho, Krzysztof J. Geras, "Characterizing
and Overcoming the Greedy Nature of Learning in Multi-modal Deep Neural Networks", ICML 2022.
Official code: nyukat/greedy_multimodal_learning @ cf28c4c7bc3eeaec4baa79f47001cc5396497cef
(``src/callbacks.py``: ``Bias_Mitigation_Strong``; ``src/balanced_mmtm.py``: ``MMTM_mitigate``;
``configs/training_guided.gin``). Second reference: GeWu-Lab/BalanceBenchmark @
39ed569712e48ed97d9999a032ba6918a2d360b1 (``balancemm/trainer/Greedy_trainer.py``).

The model has a cross-modal pathway: an MMTM block (Joze et al., CVPR 2020) that squeezes
every modality's features, excites them jointly and gates each modality with a sigmoid,

$$e = \\mathrm{relu}\\big(W_s [f_1; \\dots; f_N] + b_s\\big), \\qquad
g_m = \\sigma(W_m e + b_m), \\qquad \\tilde f_m = g_m \\odot f_m ,$$

($W_s$: ``Linear(sum d_m, 2 sum d_m / ratio)``). After every backward the *conditional
learning speed* of each modality is tracked through its parameters' relative gradient
energy, accumulated over the steps in which it is measured:

$$M^{main}_m \\mathrel{+}= \\frac{\\sum_{\\theta \\in enc_m} \\|\\nabla\\theta\\|^2}
{\\sum_{\\theta \\in enc_m} \\|\\theta\\|^2}, \\qquad
M^{bypass}_m \\mathrel{+}= \\frac{\\sum_{\\theta \\in \\{W_s, b_s, W_m, b_m\\}}
\\|\\nabla\\theta\\|^2}{\\sum_{\\theta \\in \\{W_s, b_s, W_m, b_m\\}} \\|\\theta\\|^2},$$

$$\\mathrm{BDR}_m = \\log_{10}\\big(M^{bypass}_m / M^{main}_m\\big), \\qquad
d = \\mathrm{BDR}_0 - \\mathrm{BDR}_1 .$$

From epoch ``starting_epoch`` on (epochs counted from 1, as the official loop:
``src/framework.py:293`` runs ``for epoch in range(1, epochs+1)`` and
``Bias_Mitigation_Strong.on_epoch_begin`` unlocks re-balancing when ``epoch >=
starting_epoch``, ``src/callbacks.py:265-267``; the official ``starting_epoch=2`` re-balances
from the second epoch), when $|d| > \\epsilon$ the next ``window`` steps are
*re-balancing steps* for the caring modality $c$ ($c = 0$ if $d > 0$, else $1$): its gate
$g_c$ is replaced by the (detached) running average of its past batch-mean gates, so its
features enter the fusion layer without cross-modal modulation, while the other gates stay
live. $d$ is not measured during a re-balancing window (official).

**Two branches (official, ``head: branches``).** Every modality has its own classifier
$h_m$ (``src/model.py:54,56``: ``net_view_m.fc``); the loss is the sum of the branch CEs
$\\sum_m \\mathrm{CE}(h_m(\\tilde f_m), y)$ (``train.py:22-28``, ``blend_loss``) and the
prediction is the mean of the branch logits $\\frac1N \\sum_m h_m(\\tilde f_m)$
(``src/model.py:108``); the reported unimodal accuracies are those of $h_m(\\tilde f_m)$.
Here the $h_m$ are the ``Linear(d_m, C)`` heads of ``model.fusion=sum`` (the method's
default), whose summed logits have the mean's argmax. ``head: fused`` is the former reading:
one fusion head (any ``model.fusion``) on the gated features and its CE.

**Evaluation state (official, ``eval_state: training``).** The official model reads
``curation_mode`` and ``caring_modality`` at every forward, evaluation included
(``src/framework.py:146-148``), and nothing resets them between the last training step and
validation/test, so evaluation runs in the state the last training step left: inside a
re-balancing window the caring modality's gate is its running average. ``eval_state: live``
evaluates with the live gates.

Implemented with the step plan: the gates are ``fusion_scale`` (computed with gradient, so
the MMTM and, through it, every encoder train on the loss); the MMTM module is added to
the model as ``greedy_mmtm`` (trained in the ``head`` group); ``on_eval_logits`` applies
the gates at evaluation.

Deviations: the official MMTM sits inside the encoders (ResNet stages 2-4); here it is one
block on the encoders' pooled features, so ``main`` is the whole encoder of a modality and
``bypass`` the MMTM. $N > 2$: $d = \\max_m \\mathrm{BDR}_m - \\min_m \\mathrm{BDR}_m$ and
$c = \\arg\\max_m \\mathrm{BDR}_m$ (identical for $N = 2$). The running average is each
modality's own (official: modality 1's average also reads modality 0's gates, a typo; switch
``running_average=official``) and is updated on training steps only (official: every
forward, validation included); under DDP it averages the ranks' batch means. Gradients are
read unscaled under AMP. A step the optimizer skips (non-finite loss or gradients) changes
no statistic: its speeds are not accumulated, its batch's gates do not enter the running
average and a re-balancing window does not advance. DDP needs ``trainer.strategy=ddp_find_unused_parameters_true`` (a
re-balancing step leaves the caring modality's excitation layer without gradient; refused at
start-up otherwise). Logged: ``greedy/bdr_<m>``, ``greedy/d``, ``greedy/curation``,
``greedy/caring``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import (
    NonFiniteCounter,
    loss_scale,
    mean_over_ranks,
    require_unused_parameter_detection,
    step_finite,
)
from asgml.models.fusion import SumFusion

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.step_plan import StepPlan
    from asgml.core.types import StepOutput

MMTM = "greedy_mmtm"


class GreedyMMTM(nn.Module):
    """MMTM gates on pooled features: ``{m: (B, d_m)} -> {m: sigmoid gate (B, d_m)}``."""

    def __init__(self, feature_dims: Mapping[str, int], ratio: float = 4.0) -> None:
        super().__init__()
        total = sum(feature_dims.values())
        hidden = int(2 * total / ratio)
        if hidden < 1:
            raise ValueError(f"method.greedy.ratio={ratio} leaves no MMTM hidden units")
        self.modalities = list(feature_dims)
        self.squeeze = nn.Linear(total, hidden)
        self.excite = nn.ModuleDict({m: nn.Linear(hidden, d) for m, d in feature_dims.items()})

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        e = torch.relu(self.squeeze(torch.cat([features[m] for m in self.modalities], dim=1)))
        return {m: torch.sigmoid(self.excite[m](e)) for m in self.modalities}

    def bypass_parameters(self, modality: str) -> list[nn.Parameter]:
        """The shared squeeze layer and the modality's excitation layer (official split)."""
        return [*self.squeeze.parameters(), *self.excite[modality].parameters()]


def grad_energy_terms(params: Iterable[nn.Parameter]) -> Tensor:
    """``(sum ||grad||^2, sum ||theta||^2)`` over ``params`` as one ``(2,)`` float32 tensor
    (no host sync); parameters without a gradient count with a zero gradient."""
    params = list(params)
    if not params:
        return torch.zeros(2)
    wn = torch.stack([t.float() for t in torch._foreach_norm([p.detach() for p in params])])
    grads = [p.grad.detach() for p in params if p.grad is not None]
    gn = torch.stack([t.float() for t in torch._foreach_norm(grads)]) if grads else wn * 0
    return torch.stack([gn.pow(2).sum(), wn.pow(2).sum()])


def energy_ratio(g: float, w: float, grad_scale: float = 1.0) -> float:
    """``g / grad_scale^2 / w`` (0 where ``w`` is 0), on host floats."""
    return g / (grad_scale**2) / w if w > 0 else 0.0


def relative_grad_energy(params: Iterable[nn.Parameter], grad_scale: float = 1.0) -> float:
    """``sum ||grad||^2 / sum ||theta||^2`` over ``params`` (gradients divided by
    ``grad_scale``); parameters without a gradient count with a zero gradient."""
    g, w = grad_energy_terms(params).tolist()
    return energy_ratio(g, w, grad_scale)


def greedy_bdr(m_bypass: Sequence[float], m_main: Sequence[float]) -> list[float]:
    """``BDR_m = log10(M_bypass_m / M_main_m)`` (``nan`` where undefined)."""
    out = []
    for b, m in zip(m_bypass, m_main, strict=True):
        out.append(math.log10(b / m) if b > 0 and m > 0 else math.nan)
    return out


def greedy_decision(bdr: Sequence[float], epsilon: float) -> tuple[float, int | None]:
    """``(d, caring)``: ``d = BDR_0 - BDR_1`` for two modalities, ``max - min`` for more;
    ``caring`` the index of the largest BDR when ``|d| > epsilon`` (else ``None``)."""
    if any(math.isnan(b) for b in bdr):
        return math.nan, None
    if len(bdr) == 2:
        d = bdr[0] - bdr[1]
        return d, (None if abs(d) <= epsilon else (0 if d > 0 else 1))
    hi = max(range(len(bdr)), key=lambda i: bdr[i])
    d = bdr[hi] - min(bdr)
    return d, (hi if abs(d) > epsilon else None)


class Greedy(BalancingCallback):
    """Greedy re-balancing steps driven by the conditional learning speed.

    Args:
        epsilon: threshold on $|d|$ that starts a re-balancing window (official ``epsilon``).
        window: re-balancing steps per window (official ``curation_windowsize``).
        starting_epoch: first epoch with re-balancing, counted from 1 as the official loop
            (official ``starting_epoch``: 2, the second epoch; 0 or 1: from the first epoch;
            $d$ is measured from the first step).
        ratio: MMTM reduction ratio (hidden units ``2 sum d_m / ratio``).
        running_average: ``own`` (each modality's own gates) or ``official`` (every
            modality after the first reads the first modality's gates, as the official code).
        head: ``branches`` (official: a classifier per modality, loss the sum of their CEs,
            prediction the mean of their logits; needs ``model.fusion=sum``) or ``fused``
            (one fusion head, its CE).
        eval_state: ``training`` (official: evaluation keeps the re-balancing state of the
            last training step) or ``live`` (live gates at evaluation).
    """

    changes_model = True  # asgml.eval re-applies setup() before loading weights

    def __init__(
        self,
        epsilon: float = 0.01,
        window: int = 5,
        starting_epoch: int = 2,
        ratio: float = 4.0,
        running_average: str = "own",
        head: str = "branches",
        eval_state: str = "training",
    ) -> None:
        super().__init__()
        if epsilon < 0:
            raise ValueError(f"method.greedy.epsilon must be >= 0, got {epsilon}")
        if window < 1:
            raise ValueError(f"method.greedy.window must be >= 1, got {window}")
        if ratio <= 0:
            raise ValueError(f"method.greedy.ratio must be > 0, got {ratio}")
        if running_average not in ("own", "official"):
            raise ValueError(
                f"method.greedy.running_average must be 'own' or 'official', got "
                f"{running_average!r}"
            )
        if head not in ("branches", "fused"):
            raise ValueError(f"method.greedy.head must be 'branches' or 'fused', got {head!r}")
        if eval_state not in ("training", "live"):
            raise ValueError(
                f"method.greedy.eval_state must be 'training' or 'live', got {eval_state!r}"
            )
        self.head, self.eval_state = head, eval_state
        self.epsilon, self.window, self.starting_epoch = float(epsilon), window, starting_epoch
        self.ratio, self.running_average = float(ratio), running_average
        self.m_bypass: list[float] = []
        self.m_main: list[float] = []
        self.avg_gates: dict[str, Tensor] = {}
        self.avg_count = 0
        self.curation = False
        self.curation_step = 0
        self.caring: int | None = None
        self.d = math.nan
        self.bdr: list[float] = []
        self._pending_avg: tuple[dict[str, Tensor], int] | None = None
        self.nonfinite = NonFiniteCounter("Greedy", "out of its speeds and running gates")

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        module: Any = pl_module
        require_unused_parameter_detection(
            trainer,
            "Greedy",
            "a re-balancing step replaces the caring modality's gate, so its MMTM excitation "
            "layer has no gradient",
        )
        if self.head == "branches":
            if not isinstance(module.fusion, SumFusion) or module.unimodal_heads is not None:
                raise ValueError(
                    "method.greedy.head=branches trains one classifier per modality: it needs "
                    "model.fusion=sum (the method's default) and model.unimodal_heads=false, got "
                    f"model.fusion={type(module.fusion).__name__}; or set "
                    "method.greedy.head=fused"
                )
            if getattr(module, "gamma", 0.0) > 0:
                raise ValueError(
                    "method.greedy.head=branches: the loss is the sum of the branch CEs; set "
                    f"model.gamma=0 (got {module.gamma})"
                )
        if not hasattr(module, MMTM):  # before configure_optimizers: trained
            module.add_module(MMTM, GreedyMMTM(module.feature_dims, self.ratio))
        dims = {module.feature_dims[m] for m in module.modalities}
        if self.running_average == "official" and len(dims) > 1:
            raise ValueError(
                "method.greedy.running_average=official reads the first modality's gates for "
                f"every modality and needs equal feature dims, got {module.feature_dims}"
            )
        n = len(module.modalities)
        if len(self.m_main) != n:
            self.m_bypass, self.m_main = [0.0] * n, [0.0] * n

    # ---------------------------------------------------------------- training
    @staticmethod
    def branch_logits(module: MultimodalModule, gated: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{m: h_m(g_m * f_m)}``: each branch's classifier on its gated features."""
        fusion: Any = module.fusion
        return {m: fusion.fc[m](gated[m]) for m in module.modalities}

    @override
    def on_train_losses(
        self, trainer: L.Trainer, module: MultimodalModule, out: StepOutput
    ) -> None:
        if self.head != "branches":
            return
        scale = module.step_plan.fusion_scale
        gated = {m: f * scale[m].to(f.dtype) for m, f in out.features.items()}
        logits = self.branch_logits(module, gated)
        out.losses.clear()  # train.py:22-28: the sum of the branch CEs
        for m in module.modalities:
            out.losses[f"greedy_{m}"] = F.cross_entropy(logits[m], out.labels)

    @override
    def on_step_features(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        plan: StepPlan,
        features: dict[str, Tensor],
        batch: Any,
    ) -> None:
        mods = module.modalities
        gates = getattr(module, MMTM)(features)
        self._update_average(trainer, mods, gates)
        caring = mods[self.caring] if self.curation and self.caring is not None else None
        assert self._pending_avg is not None
        for m in mods:
            g = gates[m]
            if m == caring:
                g = self._pending_avg[0][m].to(g).expand_as(g)
            plan.fusion_scale[m] = g

    def _update_average(
        self, trainer: L.Trainer, mods: Sequence[str], gates: Mapping[str, Tensor]
    ) -> None:
        src = list(mods) if self.running_average == "own" else [mods[0]] * len(mods)
        parts = [gates[m].detach().float().mean(0) for m in src]  # dims may differ
        flat = mean_over_ranks(trainer, torch.cat(parts))
        k = self.avg_count
        avg = {}
        # kept on the device (no copy to the host per step; the checkpoint holds CPU copies)
        for m, new in zip(mods, flat.split([p.numel() for p in parts]), strict=True):
            old = self.avg_gates.get(m)
            old = torch.zeros_like(new) if old is None else old.to(new.device)
            avg[m] = (new + old * k) / (k + 1)
        # this step uses the new average; it is kept once the step is known to be applied
        self._pending_avg = (avg, k + 1)

    @override
    def on_train_gradients(
        self, trainer: L.Trainer, module: MultimodalModule, out: StepOutput
    ) -> None:
        # a step the optimizer skips (non-finite loss or gradients) leaves every statistic
        # (speeds, running gates, the re-balancing window) as it was
        pending, self._pending_avg = self._pending_avg, None
        ok = step_finite(module, out)
        self.nonfinite.add(~ok)
        if self.curation:
            # one host read per re-balancing step: was it applied?
            if not bool(ok):
                return
            if pending is not None:
                self.avg_gates, self.avg_count = pending
            self.curation_step += 1
            if self.curation_step >= self.window:
                self.curation = False
            return
        mmtm: GreedyMMTM = getattr(module, MMTM)
        mods = module.modalities
        terms = [grad_energy_terms(mmtm.bypass_parameters(m)) for m in mods]
        terms += [grad_energy_terms(module.encoders[m].parameters()) for m in mods]
        dev = terms[-1].device
        scale = torch.as_tensor(loss_scale(trainer), device=dev).float().reshape(1)
        # the decision below branches on these values: one host read per decision step,
        # together with whether the step was applied
        finite = ok.to(dev).float().reshape(1)
        *values, scale, applied = torch.cat([t.to(dev) for t in terms] + [scale, finite]).tolist()
        if not applied:
            return
        if pending is not None:
            self.avg_gates, self.avg_count = pending
        n = len(mods)
        for i in range(n):
            g, w = values[2 * i : 2 * i + 2]
            self.m_bypass[i] += energy_ratio(g, w, scale)
            g, w = values[2 * (n + i) : 2 * (n + i) + 2]
            self.m_main[i] += energy_ratio(g, w, scale)
        self.bdr = greedy_bdr(self.m_bypass, self.m_main)
        self.d, caring = greedy_decision(self.bdr, self.epsilon)
        # the official loop counts epochs from 1 (src/framework.py:293)
        if trainer.current_epoch + 1 >= self.starting_epoch and caring is not None:
            self.curation, self.curation_step, self.caring = True, 0, caring
        else:
            self.curation, self.caring = False, None

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if self.bdr and self.logging_step(trainer):
            mods = pl_module.modalities
            out = {f"greedy/bdr_{m}": self.bdr[j] for j, m in enumerate(mods)}
            out.update(
                {
                    "greedy/d": self.d,
                    "greedy/curation": float(self.curation),
                    "greedy/caring": -1.0 if self.caring is None else float(self.caring),
                }
            )
            self.log_now(trainer, out)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.nonfinite.end_epoch(trainer)

    # -------------------------------------------------------------- evaluation
    @override
    def on_eval_logits(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        logits: Tensor,
        unimodal_logits: dict[str, Tensor],
        features: dict[str, Tensor],
    ) -> Tensor:
        gates = getattr(module, MMTM)(features)
        mods = module.modalities
        if self.eval_state == "training" and self.curation and self.caring is not None:
            m = mods[self.caring]  # the re-balancing state the last training step left
            gates[m] = self.avg_gates[m].to(gates[m]).expand_as(gates[m])
        gated = {m: features[m] * gates[m] for m in mods}
        if self.head == "fused":
            return module.fusion(gated)
        branches = self.branch_logits(module, gated)
        unimodal_logits.update(branches)  # official per-branch accuracies: the gated branches
        return torch.stack([branches[m] for m in mods]).mean(0)  # src/model.py:108

    # ------------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "m_bypass": list(self.m_bypass),
            "m_main": list(self.m_main),
            "avg_gates": {m: g.detach().cpu().clone() for m, g in self.avg_gates.items()},
            "avg_count": self.avg_count,
            "curation": self.curation,
            "curation_step": self.curation_step,
            "caring": self.caring,
            "nonfinite_steps": self.nonfinite.total,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.m_bypass = list(state_dict["m_bypass"])
        self.m_main = list(state_dict["m_main"])
        self.avg_gates = {m: g.clone() for m, g in state_dict["avg_gates"].items()}
        self.avg_count = int(state_dict["avg_count"])
        self.curation = bool(state_dict["curation"])
        self.curation_step = int(state_dict["curation_step"])
        self.caring = state_dict["caring"]
        self.nonfinite.load(state_dict.get("nonfinite_steps", 0))
