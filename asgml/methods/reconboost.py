"""ReconBoost: alternating per-modality boosting with a reconcilement regulariser.

Paper: Cong Hua, Qianqian Xu, Shilong Bao, Zhiyong Yang, Qingming Huang, "ReconBoost:
Boosting Can Achieve Modality Reconcilement", ICML 2024.
Official code: huacong/ReconBoost @ 14ab57ac26e0ad7badb29c4e08ec4ca9d4bb0932 (``train.py``:
the stage loop, lines 259-451; ``models/dynamic_net.py``: ``DynamicNet``, ``Head``;
``schedule.py``: ``schedule_model``). Second reference: GeWu-Lab/BalanceBenchmark @
0fe2ff3de937b0557b0ae97a22deaa184d9625d5 (``balancemm/trainer/ReconBoost_trainer.py``).

Every modality $m$ has a learner $g_m(x) = h(\\phi_m(x_m))$: its encoder $\\phi_m$ and a
classification head $h$ shared by all learners (official ``common_space``: ``Head`` =
``Linear(d, 256) -> ReLU -> Linear(256, C)``). The ensemble is
$F(x) = \\beta \\sum_m g_m(x)$ with a learned boost rate $\\beta$ (initial ``boost_rate``).
Training runs in *stages*; stage $s$ picks modality $m = s \\bmod N$ (official fixed
schedule: audio, visual, audio, ...) and has two phases:

1. **Boosting** (``epochs_per_stage`` epochs): only $\\phi_m$ and $h$ update, on the
   reconcilement loss against the ensemble of the *other* learners
   $F_{-m} = \\beta \\sum_{k \\ne m} g_k$ (computed without gradient). With one-hot targets
   $y$, $p_m = \\mathrm{softmax}(g_m)$ and $C$ classes (``.mean(-1)`` over classes, then the
   batch mean, as ``train.py:339-340``):

   $$\\mathcal L_{boost} = \\frac{1}{BC} \\sum_{i} \\Big( -w_1 \\log p_{m}(x_i)_{y_i}
   + w_2\\, \\mathrm{softmax}\\big(F_{-m}(x_i)\\big)_{y_i} \\log p_{m}(x_i)_{y_i} \\Big).$$

   The second term is the KL-based reconcilement regulariser of the paper: it discounts the
   samples the other modalities already classify well, so $m$ learns what they miss. From
   stage 1 on the official loss adds the "GA" term
   $\\alpha\\, \\mathrm{MSE}\\big(\\mathrm{softmax}(g_m), \\mathrm{softmax}(g_{prev})\\big)$ of the
   previous stage's learner with *both inputs detached* (``train.py:349``): it changes the
   reported loss but has no gradient. It is kept as the constant term ``reconboost_ga``.
2. **Global rectification** ("memory consolidation", ``correct_epoch`` epochs): every
   encoder, $h$ and $\\beta$ update on $\\mathcal L_{rect} = \\mathrm{CE}(F(x), y)$
   (``train.py:397-398``).

The official code builds a new SGD optimizer at the start of every phase (``train.py:296,
371``), so momentum starts from zero in each phase; ``reset_optimizer: true`` clears the
optimizer state at every phase change to match. At test time the prediction is the
ensemble $F(x)$ (``DynamicNet.forward``, ``train.py:131``; ``test_fusion: ensemble``) and
the reported unimodal accuracies are those of the learners $g_m$.

Implemented with the step plan: a boosting step forwards the other learners' encoders under
``no_grad`` and updates only $\\phi_m$ and the head group (``plan.step = {m}``); a
rectification step is a plain joint step. The head $h$ and $\\beta$ are the module
``reconboost`` (trained in the ``head`` group). The stage and phase follow from the epoch
alone, so every rank agrees and a resumed run continues the schedule; the phase of the last
step is in ``state_dict`` (so a resumed run resets the optimizer exactly when the
uninterrupted one would).

$N \\ge 2$: stage $s$ trains modality $s \\bmod N$ in ``model.encoders`` order against the
ensemble of all the others; the GA term uses the learner of the previous stage,
$(s - 1) \\bmod N$ (BalanceBenchmark's choice; the official code is two-modality, where this
is "the other one").

**Pre-trained start.** The official CREMA-D command (``README.md:47-66``) starts from
pre-trained unimodal encoders (``--use_pretrain --m1ckpt --m2ckpt``, loaded by
``init_pretrain``, ``train.py:103-106,180-182``), which also puts every learner in the
ensemble from stage 0 (``warm_start: true``). ``init_from.<m>`` is that: the
``encoders.<m>`` weights of a ``method=unimodal method.modality=<m>`` checkpoint are loaded
before training; a missing file, another method, modality or dataset, or other encoder shapes
are refused with the key and both values named (`asgml.core.pretrained`, shared with UMT's
teachers). A resumed run takes its weights from its own checkpoint (the files are checked
again). The preset ``experiment=cremad_reconboost_pretrained`` with its multirun chains the
unimodal runs and this one (``docs/methods/reconboost.md``).

Deviations: without ``init_from`` the encoders start as the model builds them (official
pre-trained). Without pre-training the official ensemble holds
only the learners already trained (``warm_start: false``; an empty ensemble gives
$\\mathrm{softmax}$ of one column, i.e. 1). The module's concat fusion layer is built but
unused, so ``train/acc`` scores that untrained layer; validation and test report $F$. One
LR for both phases (official ``m_lr`` = ``e_lr`` = 0.01 on CREMA-D); the official decay x0.1
every 30 stages is the module's ``StepLR`` with ``step_size = 30 (E_b + E_c)`` epochs. The
other learners' encoders run once per boosting step (official: twice with the GA term,
which updates their BatchNorm statistics twice). Logged: ``reconboost/stage``,
``reconboost/modality`` (index), ``reconboost/phase`` (0 boosting, 1 rectification),
``reconboost/boost_rate`` and the per-term losses ``reconboost/loss_boost``,
``reconboost/loss_ga``, ``reconboost/loss_rectify``. DDP needs
``trainer.strategy=ddp_find_unused_parameters_true`` (refused at start-up otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.pretrained import load_unimodal_encoder_state, run_dataset
from asgml.core.toolkit import require_unused_parameter_detection

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.step_plan import StepPlan
    from asgml.core.types import StepOutput

log = logging.getLogger(__name__)

HEAD = "reconboost"
BOOST, RECTIFY = "boost", "rectify"
TEST_FUSIONS = ("ensemble", "model")


# ------------------------------------------------------------------------------- math
def reconboost_loss(
    logits: Tensor, ensemble: Tensor | None, labels: Tensor, w1: float, w2: float
) -> Tensor:
    """The boosting-phase loss of the learner with ``logits`` ``(B, C)`` against the
    (detached) ensemble of the other learners ``(B, C)``; ``None``: no other learner yet
    (the official constant ``c0``: a softmax over one column, i.e. weight 1)."""
    logp = logits.float().log_softmax(1).gather(1, labels[:, None]).squeeze(1)
    if ensemble is None:
        weight = torch.ones_like(logp)
    else:
        weight = ensemble.detach().float().softmax(1).gather(1, labels[:, None]).squeeze(1)
    per = (-w1 * logp + w2 * weight * logp) / logits.shape[1]  # .mean(-1) over the classes
    return per.mean()


def ga_loss(logits: Tensor, previous: Tensor) -> Tensor:
    """``MSE(softmax(logits), softmax(previous))`` with both inputs detached (no gradient)."""
    return F.mse_loss(logits.detach().float().softmax(1), previous.detach().float().softmax(1))


def stage_of(epoch: int, epochs_per_stage: int, correct_epoch: int) -> tuple[int, str]:
    """``(stage, phase)`` of a 0-based epoch: ``epochs_per_stage`` boosting epochs, then
    ``correct_epoch`` rectification epochs, per stage."""
    per = epochs_per_stage + correct_epoch
    stage, within = divmod(epoch, per)
    return stage, (BOOST if within < epochs_per_stage else RECTIFY)


def joined(modalities: Sequence[str], stage: int, phase: str, warm_start: bool) -> list[str]:
    """The learners in the ensemble: all (``warm_start``), else those whose first boosting
    phase has ended (stage ``i`` trains modality ``i`` first)."""
    if warm_start:
        return list(modalities)
    return [m for i, m in enumerate(modalities) if stage > i or (stage == i and phase == RECTIFY)]


class ReconBoostHead(nn.Module):
    """The learners' head (shared ``Linear(d, hidden) -> ReLU -> Linear(hidden, C)``, or a
    ``Linear(d_m, C)`` per modality) and the boost rate $\\beta$."""

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        num_classes: int,
        common_space: bool = True,
        hidden: int = 256,
        boost_rate: float = 1.0,
    ) -> None:
        super().__init__()
        self.common_space = common_space
        if common_space:
            dims = set(feature_dims.values())
            if len(dims) != 1:
                raise ValueError(
                    "method.reconboost.common_space=true shares one head across modalities: "
                    f"the encoders' feature dims must be equal, got {dict(feature_dims)} "
                    "(or set method.reconboost.common_space=false)"
                )
            d = dims.pop()
            self.shared = nn.Sequential(
                nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
            )
        else:
            self.per_modality = nn.ModuleDict(
                {m: nn.Linear(d, num_classes) for m, d in feature_dims.items()}
            )
        self.boost_rate = nn.Parameter(torch.tensor(float(boost_rate)))

    def forward(self, modality: str, features: Tensor) -> Tensor:
        """The learner $g_m$'s logits from its features."""
        return self.shared(features) if self.common_space else self.per_modality[modality](features)

    def ensemble(self, outputs: Sequence[Tensor]) -> Tensor:
        """$\\beta \\sum$ of learner outputs."""
        return self.boost_rate * torch.stack(list(outputs)).sum(0)


# --------------------------------------------------------------------------- callback
class ReconBoost(BalancingCallback):
    """Alternating per-modality boosting with reconcilement and global rectification.

    Args:
        epochs_per_stage: boosting epochs per stage (official ``--epochs_per_stage``).
        correct_epoch: global-rectification epochs per stage (official ``--correct_epoch``).
        weight1: $w_1$, weight of the learner's CE term (official ``--weight1``).
        weight2: $w_2$, weight of the reconcilement term (official ``--weight2``).
        alpha: weight of the gradient-free GA term (official ``--alpha``).
        boost_rate: initial $\\beta$ (official ``--boost_rate``).
        common_space: one head shared by all learners (official default) or one
            ``Linear(d_m, C)`` per modality.
        head_hidden: hidden width of the shared head (official ``Head``: 256).
        warm_start: every learner is in the ensemble from stage 0 (official with
            ``--use_pretrain``); ``false``: a learner joins after its first boosting phase.
        reset_optimizer: clear the optimizer state (momentum) at every phase change (official:
            a new SGD per phase).
        test_fusion: ``ensemble`` ($F$, official) or ``model`` (the module's fused logits).
        init_from: ``{modality: checkpoint of method=unimodal method.modality=<m>}``: encoders
            loaded before training (official ``--use_pretrain --m1ckpt --m2ckpt``); ``null``
            entries keep the built encoder.
    """

    changes_model = True  # asgml.eval re-applies setup() before loading weights

    def __init__(
        self,
        epochs_per_stage: int = 4,
        correct_epoch: int = 4,
        weight1: float = 5.0,
        weight2: float = 1.0,
        alpha: float = 0.5,
        boost_rate: float = 1.0,
        common_space: bool = True,
        head_hidden: int = 256,
        warm_start: bool = True,
        reset_optimizer: bool = True,
        test_fusion: str = "ensemble",
        init_from: Mapping[str, str | None] | None = None,
    ) -> None:
        super().__init__()
        self.init_from = {m: str(p) for m, p in dict(init_from or {}).items() if p is not None}
        for m, p in self.init_from.items():
            if not Path(p).is_file():
                raise FileNotFoundError(
                    f"method.reconboost.init_from.{m}={p}: no such checkpoint file (a checkpoint "
                    f"of method=unimodal method.modality={m})"
                )
        if epochs_per_stage < 1:
            raise ValueError(
                f"method.reconboost.epochs_per_stage must be >= 1, got {epochs_per_stage}"
            )
        if correct_epoch < 0:
            raise ValueError(f"method.reconboost.correct_epoch must be >= 0, got {correct_epoch}")
        if head_hidden < 1:
            raise ValueError(f"method.reconboost.head_hidden must be >= 1, got {head_hidden}")
        if test_fusion not in TEST_FUSIONS:
            raise ValueError(
                f"method.reconboost.test_fusion must be one of {TEST_FUSIONS}, got {test_fusion!r}"
            )
        self.epochs_per_stage, self.correct_epoch = int(epochs_per_stage), int(correct_epoch)
        self.weight1, self.weight2, self.alpha = float(weight1), float(weight2), float(alpha)
        self.boost_rate, self.common_space = float(boost_rate), bool(common_space)
        self.head_hidden = int(head_hidden)
        self.warm_start, self.reset_optimizer = bool(warm_start), bool(reset_optimizer)
        self.test_fusion = test_fusion
        self.stage = 0
        self.phase = BOOST
        self.phase_key: tuple[int, str] | None = None  # the phase of the last training step
        self._current: str | None = None
        self.last: dict[str, Tensor] = {}

    def head(self, module: L.LightningModule) -> ReconBoostHead:
        return getattr(module, HEAD)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        module: Any = pl_module
        require_unused_parameter_detection(
            trainer,
            "ReconBoost",
            "a boosting step updates one encoder and the module's fusion layer is never used",
        )
        if trainer is not None and stage == "fit":
            # before the fit restores a checkpoint: a resumed run's weights replace these
            self.load_init(module)
        if not hasattr(module, HEAD):  # before configure_optimizers: in the head group
            module.add_module(
                HEAD,
                ReconBoostHead(
                    module.feature_dims,
                    module.num_classes,
                    self.common_space,
                    self.head_hidden,
                    self.boost_rate,
                ),
            )

    def load_init(self, module: Any) -> None:
        """Load ``init_from``'s unimodal encoders into ``module`` (checked by
        `asgml.core.pretrained.load_unimodal_encoder_state`)."""
        for m, path in self.init_from.items():
            key = f"method.reconboost.init_from.{m}"
            if m not in module.modalities:
                raise ValueError(
                    f"{key}: {m!r} is not a modality of this model ({list(module.modalities)})"
                )
            state = load_unimodal_encoder_state(
                path, m, module.encoders[m], key, run_dataset(module), module=module
            )
            module.encoders[m].load_state_dict(state, strict=True)
            log.info("ReconBoost: %s encoder loaded from %s", m, path)

    def schedule(self, epoch: int, modalities: Sequence[str]) -> tuple[int, str, str]:
        """``(stage, phase, modality)`` of a 0-based epoch."""
        stage, phase = stage_of(epoch, self.epochs_per_stage, self.correct_epoch)
        return stage, phase, modalities[stage % len(modalities)]

    # ---------------------------------------------------------------- training
    @override
    def on_step_plan(
        self, trainer: L.Trainer, module: MultimodalModule, plan: StepPlan, batch: Any
    ) -> None:
        mods = module.modalities
        self.stage, self.phase, m = self.schedule(trainer.current_epoch, mods)
        key = (self.stage, self.phase)
        if self.reset_optimizer and key != self.phase_key:
            for opt in trainer.optimizers:  # a fresh optimizer per phase (train.py:296,371)
                opt.state.clear()
        self.phase_key = key
        self._current = m
        members = joined(mods, self.stage, self.phase, self.warm_start)
        if self.phase == BOOST:
            others = [k for k in members if k != m]
            plan.forward = {m, *others}
            plan.no_grad = set(others)
            plan.step = {m}
        else:
            plan.forward = set(members)
            plan.step = set(members)

    @override
    def on_train_losses(
        self, trainer: L.Trainer, module: MultimodalModule, out: StepOutput
    ) -> None:
        head = self.head(module)
        m = self._current
        assert m is not None
        y = out.labels
        losses = out.losses
        losses.clear()
        if self.phase == RECTIFY:
            outs = [head(k, out.features[k]) for k in module.modalities if k in out.features]
            losses["reconboost_rectify"] = F.cross_entropy(head.ensemble(outs), y)
            self.last = {"rectify": losses["reconboost_rectify"].detach()}
            return
        z = head(m, out.features[m])
        others = [k for k in module.modalities if k in out.features and k != m]
        ens = None
        if others:
            with torch.no_grad():
                ens = head.ensemble([head(k, out.features[k]) for k in others])
        losses["reconboost_boost"] = reconboost_loss(z, ens, y, self.weight1, self.weight2)
        self.last = {"boost": losses["reconboost_boost"].detach()}
        prev = module.modalities[(self.stage - 1) % len(module.modalities)]
        if self.stage > 0 and self.alpha > 0 and prev != m and prev in out.features:
            with torch.no_grad():
                g_prev = head(prev, out.features[prev])
            losses["reconboost_ga"] = self.alpha * ga_loss(z, g_prev)
            self.last["ga"] = losses["reconboost_ga"]

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if self._current is None or not self.logging_step(trainer):
            self._current, self.last = None, {}
            return
        mods = list(pl_module.modalities)  # type: ignore[attr-defined]
        head = self.head(pl_module)
        log = {
            "reconboost/stage": float(self.stage),
            "reconboost/modality": float(mods.index(self._current)),
            "reconboost/phase": float(self.phase == RECTIFY),
            "reconboost/boost_rate": float(head.boost_rate.detach()),
        }
        log.update({f"reconboost/loss_{k}": float(v) for k, v in self.last.items()})
        self.log_now(trainer, log)
        self._current, self.last = None, {}

    # -------------------------------------------------------------- evaluation
    def members(self, modalities: Sequence[str]) -> list[str]:
        """The learners of the ensemble at the current stage and phase."""
        return joined(modalities, self.stage, self.phase, self.warm_start)

    @override
    def on_eval_logits(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        logits: Tensor,
        unimodal_logits: dict[str, Tensor],
        features: dict[str, Tensor],
    ) -> Tensor:
        head = self.head(module)
        outs = {m: head(m, features[m]) for m in module.modalities}
        unimodal_logits.update(outs)  # the reported unimodal accuracies are the learners'
        if self.test_fusion == "model":
            return logits
        members = self.members(module.modalities) or list(module.modalities)
        return head.ensemble([outs[m] for m in members])

    # ------------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "phase": self.phase,
            "phase_key": None if self.phase_key is None else list(self.phase_key),
        }

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.stage = int(state_dict["stage"])
        self.phase = str(state_dict["phase"])
        key = state_dict.get("phase_key")
        self.phase_key = None if key is None else (int(key[0]), str(key[1]))
