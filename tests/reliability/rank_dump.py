"""A callback that records, on every DDP rank, what must agree across ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from asgml.methods.boost import ASGMLBoost
from asgml.methods.cggm import CGGM
from asgml.methods.probe import ProbeMonitor
from asgml.methods.valuation import SampleValuation

TRACKED = ("ogm/", "boost/", "probe/acc_")
# methods whose callback state (statistics, schedule) must agree across ranks
COMPARED_STATES = ("Greedy", "ReLearning", "ReconBoost")


class RankDump(L.Callback):
    """Records the method's per-step values and, at the end of training, the parameters,
    boost scales and the state of a method's own networks (probes, CGGM classifiers) of
    this rank in ``<out_dir>/<tag>rank<r>.pt``."""

    def __init__(self, out_dir: str, tag: str = "") -> None:
        self.out_dir = out_dir
        self.tag = tag
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(TRACKED)}
        for cb in trainer.callbacks:
            if isinstance(cb, ASGMLBoost):
                values.update({f"scale_{m}": s for m, s in cb.scales.items()})
            if isinstance(cb, ProbeMonitor):
                values.update({f"score_{m}": s for m, s in cb.scores.items()})
        self.steps.append(values)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        banks = {}
        for cb in trainer.callbacks:
            if isinstance(cb, ProbeMonitor | CGGM) and cb.bank is not None:
                banks[type(cb).__name__] = {
                    k: v.detach().cpu() for k, v in cb.bank.state_dict().items()
                }
            if isinstance(cb, SampleValuation) and cb.plan is not None:  # the train-set plan
                banks["SampleValuation"] = {
                    "indices": cb.plan.indices,
                    "present": cb.plan.present,
                    "contributions": cb.contributions,
                }
        torch.save(
            {
                "world_size": trainer.world_size,
                "global_step": trainer.global_step,
                # trainable parameters; BatchNorm running statistics are per rank between
                # forwards (DDP broadcasts rank 0's at the start of each forward)
                "params": {k: v.detach().cpu() for k, v in pl_module.named_parameters()},
                "probes": banks.get("ProbeMonitor", {}),
                "banks": banks,
                "steps": self.steps,
                "states": {
                    type(cb).__name__: cb.state_dict()
                    for cb in trainer.callbacks
                    if type(cb).__name__ in COMPARED_STATES
                },
            },
            Path(self.out_dir) / f"{self.tag}rank{trainer.global_rank}.pt",
        )
