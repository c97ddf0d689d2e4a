"""Tiny models, data and recorders for gradient-level tests."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from types import SimpleNamespace

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.module import MultimodalModule
from asgml.core.types import StepOutput
from asgml.data.synthetic import DictTensorDataset
from asgml.models.encoders import MLPEncoder, ResNet18Encoder


def tiny_mlp_module(
    modalities: Sequence[str] = ("audio", "visual"), num_classes: int = 3, **kw
) -> MultimodalModule:
    torch.manual_seed(0)
    encs = {
        m: MLPEncoder(input_dim=4, hidden_dim=8, feature_dim=8, dropout=0.0) for m in modalities
    }
    return MultimodalModule(encs, num_classes=num_classes, **kw)


def tiny_resnet_module(num_classes: int = 3, **kw) -> MultimodalModule:
    torch.manual_seed(0)
    encs = {
        "audio": ResNet18Encoder(in_channels=1, width=4),
        "visual": ResNet18Encoder(in_channels=3, temporal=True, width=4),
    }
    return MultimodalModule(encs, num_classes=num_classes, **kw)


def vector_loader(
    modalities: Sequence[str] = ("audio", "visual"),
    n: int = 32,
    num_classes: int = 3,
    batch_size: int = 8,
    strengths: Sequence[float] | None = None,
) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, num_classes, (n,), generator=g)
    strengths = strengths or [2.0 / (i + 1) for i in range(len(modalities))]
    protos = {m: torch.randn(num_classes, 4, generator=g) for m in modalities}
    data = {
        m: s * protos[m][y] + torch.randn(n, 4, generator=g) for m, s in zip(modalities, strengths)
    }
    return DataLoader(DictTensorDataset(data, y), batch_size=batch_size, shuffle=False)


def image_loader(n: int = 8, num_classes: int = 3, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, num_classes, (n,), generator=g)
    data = {
        "audio": torch.randn(n, 1, 16, 16, generator=g),
        "visual": torch.randn(n, 3, 2, 16, 16, generator=g),
    }
    return DataLoader(DictTensorDataset(data, y), batch_size=batch_size, shuffle=False)


class GradRecorder(BalancingCallback):
    """Copies every parameter's gradient at ``on_train_gradients`` (place it before/after
    the callbacks under test)."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    @override
    def on_train_gradients(self, trainer, pl_module, out: StepOutput) -> None:
        self.grads.append(
            {
                n: p.grad.detach().clone()
                for n, p in pl_module.named_parameters()
                if p.grad is not None
            }
        )


def fit(module, loader, callbacks, max_steps: int = 2, **trainer_kw) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
        **trainer_kw,
    )
    trainer.fit(module, train_dataloaders=loader)
    return trainer


def fake_trainer(epoch: int = 0) -> SimpleNamespace:
    """The two trainer attributes a callback's ``on_train_losses`` reads, outside a fit."""
    return SimpleNamespace(
        current_epoch=epoch, _logger_connector=SimpleNamespace(should_update_logs=False)
    )


def plain_step(module: MultimodalModule, batch) -> tuple[StepOutput, dict]:
    """A forward pass with the fused CE only: ``(StepOutput, its losses dict)``."""
    inputs, lengths, y = module.split_batch(batch)
    logits, uni, feats = module(inputs, lengths)
    losses = {"fused": F.cross_entropy(logits, y)}
    return StepOutput(feats, logits, uni, y, inputs, lengths, losses), losses


class NaNLossAt(BalancingCallback):
    """Adds a non-finite loss term at the given training batches (0-based, counted over the
    fit; a skipped step does not advance ``global_step``): the module skips those steps
    (``model.nonfinite=skip``) and a method must leave its statistics alone there."""

    def __init__(self, batches: set[int]) -> None:
        self.batches = batches
        self.seen = 0

    @override
    def on_train_losses(self, trainer, pl_module, out: StepOutput) -> None:
        if self.seen in self.batches:
            out.losses["nan"] = torch.tensor(float("nan"))
        self.seen += 1


class StateAfterStep(L.Callback):
    """A deep copy of ``cb.state_dict()`` after every training batch."""

    def __init__(self, cb: L.Callback) -> None:
        self.cb = cb
        self.states: list[dict] = []

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.states.append(copy.deepcopy(self.cb.state_dict()))
