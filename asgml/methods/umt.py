r"""UMT: uni-modal teachers.

Paper: Du, Teng, Wang, Wu, Xu, Jiang, Zhao & Liu, "On Uni-Modal Feature Learning in
Supervised Multi-Modal Learning", ICML 2023 (Uni-Modal Teacher). The authors' repository was
not found in the public index; reference implementation: GeWu-Lab/BalanceBenchmark @ 4c1482f
``balancemm/trainer/UMT_trainer.py`` (teachers loaded in ``__init__`` lines 23-43, the loss in
``training_step``) with ``configs/trainer_config.yaml:62-66``.

Separately trained unimodal models (``method=unimodal method.modality=<m>``) are frozen
teachers; their encoder features are distilled into the multimodal model's encoders:

$$
\mathcal{L} = \mathrm{CE}(z, y) + s \sum_{m \in \mathcal{T}} \mathrm{MSE}\big(f_m, f^{T}_m\big)
$$

over the modalities with a teacher, inside the epoch window. The distillation keeps every
encoder learning the features it would learn alone, which joint training under-trains for
the weak modality.

Teachers come by path, ``method.umt.teachers.<m>=<checkpoint>``; a missing file, a
checkpoint not written by ``method=unimodal``, or one trained on another modality, dataset,
class count or modality set is refused at start-up with the key and both values named
(`asgml.core.pretrained`). Teacher weights are the checkpoint's ``encoders.<m>`` entries,
loaded into a copy of the student's encoder (same architecture required); teachers are not
saved in the student's checkpoints (they are re-read from their paths on resume).

N modalities: any subset of the modalities may have a teacher. Logged: ``umt/mse_<m>``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.pretrained import load_unimodal_encoder_state

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.types import StepOutput


def load_teacher(
    path: str | Path, modality: str, template: nn.Module, student: Any = None
) -> nn.Module:
    """A frozen copy of ``template`` with the ``encoders.<modality>`` weights of a
    ``method=unimodal`` checkpoint; clear errors for a wrong path, modality or architecture
    and, given the ``student`` module, for a teacher of another dataset, class count or
    modality set (`asgml.core.pretrained.load_unimodal_encoder_state`)."""
    key = f"method.umt.teachers.{modality}"
    state = load_unimodal_encoder_state(
        path, modality, template, key, role="teacher", module=student
    )
    teacher = copy.deepcopy(template)
    teacher.load_state_dict(state, strict=True)
    teacher.requires_grad_(False)
    return teacher.eval()


def feature_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """``MSE(f_m, f_m^T)`` (mean over batch and feature dimensions, ``nn.MSELoss``)."""
    return F.mse_loss(student, teacher.to(student.dtype))


class UMT(BalancingCallback):
    """Distil frozen unimodal teachers' features into the multimodal encoders.

    Args:
        teachers: ``{modality: checkpoint path}``; ``null`` entries are ignored.
        scaling: weight ``s`` of the distillation terms (BalanceBenchmark: 10).
        modulation_starts: first epoch of the window (inclusive).
        modulation_ends: last epoch of the window (inclusive).
        teacher_mode: ``eval`` (frozen BatchNorm statistics) or ``train`` (BalanceBenchmark
            leaves its teachers in train mode).
    """

    def __init__(
        self,
        teachers: Mapping[str, str | None],
        scaling: float = 10.0,
        modulation_starts: int = 0,
        modulation_ends: int = 80,
        teacher_mode: str = "eval",
    ) -> None:
        super().__init__()
        self.paths = {m: str(p) for m, p in dict(teachers or {}).items() if p is not None}
        if not self.paths:
            raise ValueError(
                "method=umt needs at least one teacher: method.umt.teachers.<modality>=<ckpt> "
                "(a checkpoint of method=unimodal method.modality=<modality>)"
            )
        for m, p in self.paths.items():
            if not Path(p).is_file():
                raise FileNotFoundError(f"method.umt.teachers.{m}={p}: no such checkpoint file")
        if scaling < 0:
            raise ValueError(f"method.umt.scaling must be >= 0, got {scaling}")
        if teacher_mode not in ("eval", "train"):
            raise ValueError(f"method.umt.teacher_mode must be eval|train, got {teacher_mode!r}")
        self.scaling = float(scaling)
        self.modulation_starts = int(modulation_starts)
        self.modulation_ends = int(modulation_ends)
        self.window = self.epoch_window(self.modulation_starts, self.modulation_ends)
        self.teacher_mode = teacher_mode
        self.teachers: dict[str, nn.Module] = {}

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.teachers:
            return
        for m, p in self.paths.items():
            if m not in pl_module.modalities:
                raise ValueError(
                    f"method.umt.teachers.{m}: {m!r} is not a modality of this model "
                    f"({pl_module.modalities})"
                )
            self.teachers[m] = load_teacher(p, m, pl_module.encoders[m], pl_module)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for t in self.teachers.values():
            t.to(pl_module.device)
            t.train(self.teacher_mode == "train")

    @override
    def on_train_losses(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        out: StepOutput,
    ) -> None:
        losses = out.losses
        if trainer.current_epoch not in self.window:
            return
        log = self.logging_step(trainer)
        for m, teacher in self.teachers.items():
            with torch.no_grad():
                if m in out.lengths:
                    target = teacher(out.inputs[m], lengths=out.lengths[m])
                else:
                    target = teacher(out.inputs[m])
            mse = feature_distillation(out.features[m], target)
            losses[f"umt_{m}"] = self.scaling * mse
            if log:
                module.log(f"umt/mse_{m}", mse.detach(), on_step=True, on_epoch=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"paths": dict(self.paths)}
