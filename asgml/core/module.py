"""The multimodal LightningModule (manual optimization) every method trains."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.guard import NonFiniteGuard
from asgml.core.rng import rng_state, set_rng_state
from asgml.core.step_plan import StepPlan
from asgml.core.toolkit import (
    should_log,
    sum_over_ranks,
)
from asgml.core.train_set_plan import apply_present_mask
from asgml.core.types import StepOutput
from asgml.models.fusion import build_fusion, init_linear_ogm

OptimizerFactory = Callable[..., torch.optim.Optimizer]


SchedulerFactory = Callable[..., Any]


class MultimodalModule(NonFiniteGuard, L.LightningModule):
    """A late-fusion classifier over N >= 2 modalities.

    ``encoders[m](x_m) -> features[m]``; ``fusion(features) -> logits``; unimodal logits per
    modality are derived from the fusion layer (OGM-GE) or come from separate heads.
    The training loss is ``CE(fused) + gamma * sum_m CE(unimodal_m)`` plus whatever the
    method callbacks add in ``on_train_losses``.

    Optimization is manual (``automatic_optimization = False``): every step calls, in
    callback order, each `BalancingCallback`'s
    ``on_train_losses`` (before backward) and ``on_train_gradients`` (between
    ``manual_backward`` and ``optimizer.step()``), passing the step's
    `StepOutput`.
    The optimizer has one parameter group per encoder (``name = "encoder.<m>"``) and one
    for the rest (``"head"``); `encoder_param_groups` finds a modality's groups, so
    epoch-level methods can set per-modality learning rates.

    Args:
        encoders: ``{modality: nn.Module}`` in a fixed order; each exposes ``feature_dim``.
        num_classes: number of classes.
        fusion: ``concat`` (default), ``sum``, ``film``, ``gated`` or ``concat_mlp`` (the
            design document's ``Linear -> ReLU -> Linear`` head).
        fusion_hidden: hidden width of ``concat_mlp`` and ``gated`` (512).
        gamma: weight of the unimodal CE terms.
        unimodal_heads: separate ``Linear(d_m, C)`` unimodal heads instead of slices of the
            fusion layer (needed for film/gated). Fusion and unimodal heads start as OGM-GE's
            ``weight_init``: Xavier-normal weights, zero bias.
        optimizer: partial optimizer, called with the parameter groups.
        scheduler: partial LR scheduler, stepped once per epoch; ``None`` for none.
        nonfinite: what a non-finite training loss or gradient does: ``skip`` the step
            (no optimizer update) with a warning, or ``raise`` ``FloatingPointError``. Under
            ``16-mixed`` the GradScaler handles non-finite gradients (it skips the step and
            lowers the scale), so only the loss is checked there: with ``skip`` it is counted
            on the device without a host sync and warned about at the epoch end.
        nonfinite_check_every: without a GradScaler, check every ``k``-th step (one host
            sync per ``k`` steps instead of per step). The ``k - 1`` steps in between are
            applied as computed; at the checked step a non-finite value in the window is
            reported (``raise``: ``FloatingPointError``; ``skip``: a warning), and only the
            checked step itself is skipped. ``1`` (default) checks and skips every step.
        max_consecutive_nonfinite: stop training with `NonFiniteTrainingError` after
            this many consecutive skipped (non-finite) steps; ``None`` never stops. Counted
            at the checked steps (without a GradScaler). Independently, the weights are
            checked at every epoch end (one host sync) and a non-finite weight stops the run.

    Reliability: checkpoints carry, besides weights, optimizer and scheduler, the run
    config (plain containers), the non-finite step counter, the best validation accuracy
    and the global RNG states (torch, CUDA, numpy, python). The RNG states are restored when
    the checkpoint is loaded, so the train loader's shuffle (its seed is drawn from the
    global RNG at each epoch start) and OGM-GE's noise continue as in an uninterrupted run.
    The non-finite check runs after backward on the loss and the (DDP-averaged) gradients,
    so every rank skips the same steps.
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        num_classes: int,
        fusion: str = "concat",
        gamma: float = 0.0,
        unimodal_heads: bool = False,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        nonfinite: str = "skip",
        fusion_hidden: int = 512,
        nonfinite_check_every: int = 1,
        max_consecutive_nonfinite: int | None = 25,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        if not isinstance(encoders, Mapping) or len(encoders) < 2:
            raise ValueError(
                f"model.encoders must map >= 2 modality names to encoders, got "
                f"{list(encoders) if isinstance(encoders, Mapping) else type(encoders).__name__}"
            )
        if num_classes < 2:
            raise ValueError(f"model.num_classes must be >= 2, got {num_classes}")
        if gamma < 0:
            raise ValueError(f"model.gamma must be >= 0, got {gamma}")
        if nonfinite not in ("skip", "raise"):
            raise ValueError(f"model.nonfinite must be 'skip' or 'raise', got {nonfinite!r}")
        self.modalities: list[str] = list(encoders)
        self.encoders = nn.ModuleDict(dict(encoders))
        dims = {}
        for m, enc in encoders.items():
            if not hasattr(enc, "feature_dim"):
                raise ValueError(f"model.encoders.{m} ({type(enc).__name__}) has no feature_dim")
            dims[m] = int(enc.feature_dim)
        self.num_classes = num_classes
        self.feature_dims = dims
        self.fusion = build_fusion(fusion, dims, num_classes, hidden_dim=int(fusion_hidden))
        if not unimodal_heads and not self.fusion.supports_unimodal:
            raise ValueError(
                f"model.fusion={fusion} cannot derive unimodal logits: set model.unimodal_heads=true"
            )
        self.unimodal_heads = (
            nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})
            if unimodal_heads
            else None
        )
        if self.unimodal_heads is not None:
            init_linear_ogm(self.unimodal_heads)
        self.gamma = float(gamma)
        self.nonfinite = nonfinite
        if int(nonfinite_check_every) < 1:
            raise ValueError(
                f"model.nonfinite_check_every must be >= 1, got {nonfinite_check_every}"
            )
        self.nonfinite_check_every = int(nonfinite_check_every)
        if max_consecutive_nonfinite is not None and int(max_consecutive_nonfinite) < 1:
            raise ValueError(
                "model.max_consecutive_nonfinite must be >= 1 or null (never stop), got "
                f"{max_consecutive_nonfinite}"
            )
        self.max_consecutive_nonfinite = (
            None if max_consecutive_nonfinite is None else int(max_consecutive_nonfinite)
        )
        self._consecutive_nonfinite = 0
        self._pending_nonfinite: Tensor | int = 0  # device counter (GradScaler + skip)
        self._pending_window = torch.zeros((), dtype=torch.bool)  # unchecked steps' flag
        self._optimizer_factory = optimizer
        self._scheduler_factory = scheduler
        self.save_hyperparameters(
            {
                "modalities": self.modalities,
                "num_classes": num_classes,
                "fusion": fusion,
                "gamma": float(gamma),
                "unimodal_heads": bool(unimodal_heads),
            }
        )
        self.step_plan: StepPlan | None = None  # the last training step's plan (step_plan.py)
        # the running step's output, set for the duration of its backward pass only
        self.step_output: StepOutput | None = None
        self.run_config: dict[str, Any] | None = None  # set by asgml.train, saved in ckpts
        self._encoder_params: dict[str, tuple[nn.Parameter, ...]] = {}
        self._all_params: tuple[nn.Parameter, ...] | None = None  # parameter_list() cache
        # epoch sums of the loss terms, logged at the epoch end (no `log` call per step)
        self._epoch_terms: dict[str, list] = {}
        self.skipped_nonfinite_steps = 0
        self._rng_to_restore: dict[str, Any] | None = None

        def _metrics() -> MetricCollection:
            ms: dict[str, Any] = {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
            for m in self.modalities:
                ms[f"acc_{m}"] = MulticlassAccuracy(num_classes, average="micro")
                ms[f"f1_{m}"] = MulticlassF1Score(num_classes, average="macro")
            return MetricCollection(ms)

        # training accuracy: correct predictions and samples counted on the device every
        # step, summed over ranks and logged at the epoch end (MulticlassAccuracy's micro
        # accuracy, without a torchmetrics update per step)
        self._train_correct: Tensor | None = None
        self._train_seen = 0
        self.val_metrics = _metrics().clone(prefix="val/")
        self.test_metrics = _metrics().clone(prefix="test/")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints: resume keeps the best

    # ------------------------------------------------------------------ access
    def encoder_parameters(self, modality: str) -> tuple[nn.Parameter, ...]:
        """The trainable parameters of one modality's encoder (cached)."""
        if modality not in self._encoder_params:
            if modality not in self.encoders:
                raise KeyError(f"unknown modality {modality!r}; have {self.modalities}")
            self._encoder_params[modality] = tuple(
                p for p in self.encoders[modality].parameters() if p.requires_grad
            )
        return self._encoder_params[modality]

    def parameter_list(self) -> tuple[nn.Parameter, ...]:
        """All parameters (``self.parameters()``), cached: the per-step paths (non-finite
        guard, gradient clipping) do not walk the module tree every step. Refreshed at every
        fit and epoch start (a method that adds modules does so in ``setup``)."""
        if self._all_params is None:
            self._all_params = tuple(self.parameters())
        return self._all_params

    def encoder_named_parameters(self, modality: str) -> Iterable[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.encoders[modality].named_parameters() if p.requires_grad)

    def encoder_param_groups(
        self, modality: str, optimizers: Iterable[torch.optim.Optimizer] | None = None
    ) -> list[dict[str, Any]]:
        """The optimizer parameter groups that hold ``modality``'s encoder parameters (and
        nothing else), found by parameter identity in ``optimizers`` (default: the
        trainer's)."""
        ids = {id(p) for p in self.encoder_parameters(modality)}
        optimizers = self.trainer.optimizers if optimizers is None else optimizers
        groups = [
            g
            for opt in optimizers
            for g in opt.param_groups
            if g["params"] and all(id(p) in ids for p in g["params"])
        ]
        if not groups:
            raise ValueError(
                f"no optimizer parameter group holds only the {modality!r} encoder's parameters; "
                "a custom configure_optimizers must keep one group per encoder (param_groups())"
            )
        return groups

    # ----------------------------------------------------------------- forward
    def split_batch(self, batch: Mapping[str, Any]) -> tuple[dict, dict, Tensor]:
        missing = [m for m in self.modalities if m not in batch]
        if missing or "label" not in batch:
            raise KeyError(
                f"batch lacks {missing + ([] if 'label' in batch else ['label'])}; "
                f"expected keys {self.modalities + ['label']}, got {sorted(batch)}"
            )
        inputs = {m: batch[m] for m in self.modalities}
        lengths = dict(batch.get("lengths", {}) or {})
        return inputs, lengths, batch["label"]

    def encode(
        self,
        inputs: Mapping[str, Tensor],
        lengths: Mapping[str, Tensor] | None = None,
        modalities: Iterable[str] | None = None,
        no_grad: Iterable[str] = (),
    ) -> dict[str, Tensor]:
        """Features of ``modalities`` (default: all); those in ``no_grad`` without graph."""
        lengths = lengths or {}
        wanted = set(self.modalities if modalities is None else modalities)
        frozen = set(no_grad)
        feats = {}
        for m in self.modalities:
            if m not in wanted:
                continue
            with torch.no_grad() if m in frozen else contextlib.nullcontext():
                if m in lengths:
                    feats[m] = self.encoders[m](inputs[m], lengths=lengths[m])
                else:
                    feats[m] = self.encoders[m](inputs[m])
        return feats

    def heads(self, features: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Fused and unimodal logits from features."""
        logits = self.fusion(features)
        if self.unimodal_heads is not None:
            uni = {m: self.unimodal_heads[m](features[m]) for m in self.modalities}
        else:
            uni = self.fusion.unimodal_logits(features)
        return logits, uni

    @override
    def forward(
        self, inputs: Mapping[str, Tensor], lengths: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """``inputs -> (fused logits, unimodal logits, features)``."""
        feats = self.encode(inputs, lengths)
        logits, uni = self.heads(feats)
        return logits, uni, feats

    # ------------------------------------------------------------ step plans
    def planned_forward(
        self,
        inputs: Mapping[str, Tensor],
        lengths: Mapping[str, Tensor],
        plan: StepPlan,
        batch: Mapping[str, Any] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """`forward` as ``plan`` says; identical to it for a default plan.

        Calls every callback's ``on_step_features`` between the encoders and the fusion
        layer, then zeroes the modalities a train-set plan marks absent in ``batch``
        (`apply_present_mask`). Unimodal logits come from the
        unscaled features of forwarded modalities."""
        feats = self.encode(inputs, lengths, plan.forward, plan.no_grad)
        for cb in self._balancing_callbacks():
            cb.on_step_features(self.trainer, self, plan, feats, batch)
        apply_present_mask(plan, batch)  # a train-set plan's absent modalities (train_set_plan.py)
        plan.validate()
        if plan.forward == set(self.modalities) and not plan.fusion_scale:
            logits, uni = self.heads(feats)
            return logits, uni, feats
        ref = next(iter(feats.values()))
        fused_in = {}
        for m in self.modalities:
            f = feats.get(m)
            if f is None:
                f = ref.new_zeros(ref.shape[0], self.feature_dims[m])
            elif m in plan.fusion_scale:
                f = f * plan.fusion_scale[m].to(f.dtype)
            fused_in[m] = f
        logits = self.fusion(fused_in)
        if self.unimodal_heads is not None:
            uni = {m: self.unimodal_heads[m](feats[m]) for m in feats}
        else:  # fusion-derived, from the unscaled features of the forwarded modalities
            derived = self.fusion.unimodal_logits({**fused_in, **feats})
            uni = {m: derived[m] for m in feats}
        return logits, uni, feats

    def _begin_step_plan(self, batch: Mapping[str, Any]) -> StepPlan:
        plan = StepPlan.default(self.modalities)
        for cb in self._balancing_callbacks():
            cb.on_step_plan(self.trainer, self, plan, batch)
        plan.validate()
        self.step_plan = plan
        return plan

    def _drop_unplanned_grads(self, plan: StepPlan) -> None:
        """Gradients of the encoders (and head) the plan does not update -> ``None``
        (found by parameter identity, not by group name)."""
        if plan.step is None and plan.step_head:
            return
        encoder_ids: set[int] = set()
        for m in self.modalities:
            ps = list(self.encoder_parameters(m))
            encoder_ids.update(id(p) for p in ps)
            if plan.step is not None and m not in plan.step:
                for p in ps:
                    p.grad = None
        if not plan.step_head:
            for p in self.parameter_list():
                if id(p) not in encoder_ids:
                    p.grad = None

    @staticmethod
    def _masked_ce(logits: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return F.cross_entropy(logits, y)
        per = F.cross_entropy(logits, y, reduction="none")
        m = mask.to(per.dtype)
        return (per * m).sum() / m.sum().clamp_min(1.0)

    # ---------------------------------------------------------------- training
    def _balancing_callbacks(self) -> list[BalancingCallback]:
        return [c for c in self.trainer.callbacks if isinstance(c, BalancingCallback)]

    @override
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """One step (see docs/architecture.md, "One training step"): plan, forward, the
        methods' loss hooks, backward (Lightning's ``on_after_backward`` -> the methods'
        gradient hooks), the non-finite guard, the planned update, the epoch statistics."""
        opt = self.optimizers()
        inputs, lengths, y = self.split_batch(batch)
        plan = self._begin_step_plan(batch)
        logits, uni, feats = self.planned_forward(inputs, lengths, plan, batch)
        out = StepOutput(
            features=feats,
            logits=logits,
            unimodal_logits=uni,
            labels=y,
            inputs=inputs,
            lengths=lengths,
            losses=self._base_losses(logits, uni, y, plan),
            step=self.trainer.global_step,
        )
        for cb in self._balancing_callbacks():
            cb.on_train_losses(self.trainer, self, out)
        loss = torch.stack([v.float() for v in out.losses.values()]).sum()
        out.loss = loss.detach()
        opt.zero_grad(set_to_none=True)
        self.step_output = out  # read by BalancingCallback.on_after_backward (base.py)
        try:  # Lightning fires on_after_backward -> each method's on_train_gradients
            self.manual_backward(loss)
        finally:
            self.step_output = None
        if self._skip_nonfinite_step(loss, opt):  # guard.py
            return loss.detach()
        self._drop_unplanned_grads(plan)
        opt.step()
        self._record_step(out, loss.detach())
        return loss.detach()

    def _base_losses(
        self, logits: Tensor, uni: Mapping[str, Tensor], y: Tensor, plan: StepPlan
    ) -> dict[str, Tensor]:
        """The fused CE and, with ``gamma > 0``, the weighted unimodal CEs."""
        losses: dict[str, Tensor] = {"fused": self._masked_ce(logits, y, plan.sample_mask)}
        if self.gamma > 0:
            for m in uni:
                losses[f"unimodal_{m}"] = self.gamma * self._masked_ce(uni[m], y, plan.sample_mask)
        return losses

    def _record_step(self, out: StepOutput, loss: Tensor) -> None:
        """Accumulate the step's loss, loss terms and accuracy for the epoch end.

        No ``log`` call on steps Lightning does not write (each costs ~0.3-1 ms of Python):
        the loss, its terms and the accuracy are accumulated on the device and logged at the
        epoch end; the step loss only on logging steps. The keys are those of
        ``log("train/loss", on_step=True, on_epoch=True)``: train/loss_step, train/loss_epoch.
        """
        y = out.labels
        bs = y.shape[0]
        self._accumulate_term("train/loss", loss, bs)
        if should_log(self.trainer):
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=bs)
        for k, v in out.losses.items():
            if k != "fused" or len(out.losses) > 1:
                self._accumulate_term(f"train/loss_{k}", v.detach(), bs)
        correct = (out.logits.detach().argmax(dim=1) == y).sum()
        self._train_correct = (
            correct if self._train_correct is None else self._train_correct + correct
        )
        self._train_seen += bs

    def _accumulate_term(self, name: str, value: Tensor, batch_size: int) -> None:
        """Lightning's epoch mean (``on_epoch=True``, ``reduce_fx=mean``) of ``value``,
        accumulated with its arithmetic: ``sum(value * batch_size) / sum(batch_size)``."""
        if value.dtype not in (torch.float32, torch.float64):
            value = value.to(torch.get_default_dtype())
        acc = self._epoch_terms.get(name)
        if acc is None:
            zero = torch.tensor(0.0, dtype=torch.get_default_dtype(), device=value.device)
            acc = self._epoch_terms[name] = [zero, torch.tensor(0, device=value.device)]
        acc[0] = acc[0] + value * batch_size
        acc[1] = acc[1] + batch_size

    def _log_epoch_terms(self) -> None:
        """Log the epoch means of the loss terms and the training accuracy (what
        ``log(..., on_epoch=True)`` in every step would have written) and reset them."""
        for name, (total, count) in self._epoch_terms.items():
            if name == "train/loss":  # the keys of an on_step + on_epoch log of train/loss
                self.log("train/loss_epoch", total / count, on_step=False, on_epoch=True)
                self.log(name, total / count, on_step=False, on_epoch=True, logger=False)
            else:
                self.log(name, total / count, on_step=False, on_epoch=True)
        self._epoch_terms = {}
        if self._train_correct is not None:  # every rank took the same number of steps
            counts = torch.stack(
                [self._train_correct, self._train_correct.new_tensor(self._train_seen)]
            )
            correct, seen = sum_over_ranks(self.trainer, counts).float().unbind()
            self.log("train/acc", correct / seen, on_step=False, on_epoch=True)
        self._train_correct, self._train_seen = None, 0

    @override
    def on_train_epoch_start(self) -> None:
        self._all_params = None
        self._epoch_terms = {}
        self._train_correct, self._train_seen = None, 0

    @override
    def on_train_epoch_end(self) -> None:
        self._log_epoch_terms()
        n = self._flush_nonfinite()
        if n:
            warnings.warn(
                f"non-finite training loss at {n} step(s) of epoch {self.current_epoch}: "
                "the GradScaler skipped those updates",
                stacklevel=1,
            )
        self.check_weights_finite()
        sch = self.lr_schedulers()
        if sch is not None:
            sch.step()

    # -------------------------------------------------------------- evaluation
    def _eval_step(self, batch: Mapping[str, Any], metrics: MetricCollection, stage: str) -> None:
        inputs, lengths, y = self.split_batch(batch)
        logits, uni, feats = self(inputs, lengths)
        if self._trainer is not None:  # test-time fusion of a method (e.g. MLA's)
            for cb in self._balancing_callbacks():
                logits = cb.on_eval_logits(self.trainer, self, logits, uni, feats)
        loss = F.cross_entropy(logits, y)
        metrics["acc"].update(logits, y)
        metrics["f1"].update(logits, y)
        for m in self.modalities:
            if m not in uni:  # a method that trains fewer modalities (method=unimodal)
                continue
            metrics[f"acc_{m}"].update(uni[m], y)
            metrics[f"f1_{m}"].update(uni[m], y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=y.shape[0])

    @override
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    @override
    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        # fused and per-modality accuracy on the progress bar; F1 to the loggers only
        bar = {k: v for k, v in values.items() if k.startswith("val/acc")}
        self.log_dict(bar, prog_bar=True)
        self.log_dict({k: v for k, v in values.items() if k not in bar})
        self.val_metrics.reset()
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(values["val/acc"])
        self.log(
            "val/acc_best", self.val_acc_best.compute() if self.val_acc_best.update_called else 0.0
        )

    @override
    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    @override
    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    # -------------------------------------------------------------- optimizers
    def param_groups(self) -> list[dict[str, Any]]:
        """One group per encoder (``encoder.<m>``) and one ``head`` group for the rest."""
        groups, seen = [], set()
        for m in self.modalities:
            ps = list(self.encoder_parameters(m))
            seen.update(id(p) for p in ps)
            groups.append({"params": ps, "name": f"encoder.{m}"})
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in seen]
        groups.append({"params": rest, "name": "head"})
        return groups

    @override
    def configure_optimizers(self) -> Any:
        factory = self._optimizer_factory or (
            lambda params: torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)
        )
        opt = factory(self.param_groups())
        if self._scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self._scheduler_factory(opt)}}

    # ------------------------------------------------------------- checkpoint
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["asgml_config"] = self.run_config
        self._flush_nonfinite()
        checkpoint["asgml_skipped_nonfinite_steps"] = self.skipped_nonfinite_steps
        # read by asgml.run.checkpointing.AtomicCheckpointIO: a non-finite state is never written
        checkpoint["asgml_weights_finite"] = bool(self.weights_finite())
        checkpoint["asgml_rng"] = rng_state()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_nonfinite_steps = int(checkpoint.get("asgml_skipped_nonfinite_steps", 0))
        state = checkpoint.get("state_dict")
        if state is not None:  # checkpoints written before val_acc_best was persistent
            for k, v in self.val_acc_best.state_dict(prefix="val_acc_best.").items():
                state.setdefault(k, v)
        # only when resuming a fit (not for evaluation or `load_from_checkpoint`)
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        self._rng_to_restore = checkpoint.get("asgml_rng") if fitting else None
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)

    @override
    def on_sanity_check_end(self) -> None:
        # a sanity check after a restore draws from the global RNG (val loader iterator):
        # put the restored state back so training continues exactly
        if getattr(self, "_rng_to_restore", None) is not None:
            set_rng_state(self._rng_to_restore)

    @override
    def on_train_start(self) -> None:
        self._rng_to_restore = None
        self._all_params = None
