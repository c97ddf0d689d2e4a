"""ASGML v2 decoupled probe monitor (SEED.md sections 3.1 and 7.1).

Every ``eval_freq`` training steps, on the *detached* features the module published for
the step, the monitor trains one probe per modality with its **own** optimizer for
``probe_train_steps`` steps on the first half of the batch and measures its accuracy on
the second half (``split_batch=true``; with ``split_batch=false`` it trains and measures
on the whole batch, the "v1" ablation). The accuracies are the modalities' utilization
scores, published as ``module.utilization`` (:class:`asgml.types.Utilization`) for the
boost callback. The monitor never touches the model's parameters or gradients.

Paper: ASGML v2, "Probe-guided weak-modality boosting" (this library's seed document).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from asgml.callbacks.base import BalancingCallback
from asgml.models.probes import PROBE_TYPES, ProbeBank
from asgml.types import Utilization


class ProbeMonitor(BalancingCallback):
    """Linear (or 1-hidden-layer MLP) probes on detached features.

    Args:
        eval_freq: evaluate every ``eval_freq`` optimizer steps (step 0 included).
        probe_train_steps: probe optimizer steps per evaluation.
        probe_type: ``linear`` or ``mlp_1layer``.
        split_batch: train on the first half, score on the second (honest signal).
        lr: probe learning rate (Adam).
        hidden_dim: width of the ``mlp_1layer`` probe.
        seed: seed of the probes' initialisation (drawn from a private generator so the
            monitor leaves the global RNG, and hence the model's training, untouched).
    """

    def __init__(
        self,
        eval_freq: int = 20,
        probe_train_steps: int = 10,
        probe_type: str = "linear",
        split_batch: bool = True,
        lr: float = 1e-2,
        hidden_dim: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if eval_freq < 1:
            raise ValueError(f"method.probe.eval_freq must be >= 1, got {eval_freq}")
        if probe_train_steps < 1:
            raise ValueError(
                f"method.probe.probe_train_steps must be >= 1, got {probe_train_steps}"
            )
        if probe_type not in PROBE_TYPES:
            raise ValueError(
                f"method.probe.probe_type must be one of {PROBE_TYPES}, got {probe_type!r}"
            )
        if lr <= 0:
            raise ValueError(f"method.probe.lr must be > 0, got {lr}")
        self.eval_freq = eval_freq
        self.probe_train_steps = probe_train_steps
        self.probe_type = probe_type
        self.split_batch = split_batch
        self.lr = lr
        self.hidden_dim = hidden_dim
        self.seed = seed
        self.bank: ProbeBank | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scores: dict[str, float] = {}
        self.version = 0
        self.last_eval_step = -1
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ setup
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = pl_module
        dims = {m: int(module.encoders[m].feature_dim) for m in module.modalities}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            bank = ProbeBank(dims, module.num_classes, self.probe_type, self.hidden_dim)
        self.bank = bank.to(module.device)
        self.optimizer = torch.optim.Adam(self.bank.parameters(), lr=self.lr)
        if self._pending_state is not None:
            self.bank.load_state_dict(self._pending_state["probes"])
            self.optimizer.load_state_dict(self._pending_state["optimizer"])
            self._pending_state = None
        if self.scores:
            self._publish(module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0 and self.eval_freq > 0:
            bs = _batch_size(batch)
            need = 4 if self.split_batch else 2
            if bs is not None and bs < need:
                raise ValueError(
                    f"ProbeMonitor needs a batch size >= {need} (split_batch={self.split_batch}), "
                    f"got {bs}: raise dataset.datamodule.batch_size"
                )

    # ------------------------------------------------------------------- step
    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = getattr(pl_module, "step_output", None)
        if out is None or out.step == self.last_eval_step or out.step % self.eval_freq != 0:
            return
        self.last_eval_step = out.step
        self.measure(trainer, pl_module, out.features, out.labels)

    def measure(
        self, trainer: L.Trainer, module: Any, features: dict, labels: torch.Tensor
    ) -> None:
        """Train the probes and score them; publish and log the scores."""
        assert self.bank is not None and self.optimizer is not None
        feats = {m: f.detach() for m, f in features.items()}
        n = labels.shape[0]
        if self.split_batch:
            half = n // 2
            train_idx, eval_idx = slice(0, half), slice(half, n)
        else:
            train_idx = eval_idx = slice(0, n)
        device_type = labels.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            train_losses = self.bank.fit(
                {m: f[train_idx] for m, f in feats.items()},
                labels[train_idx],
                self.optimizer,
                self.probe_train_steps,
            )
            correct, eval_losses = self.bank.evaluate(
                {m: f[eval_idx] for m, f in feats.items()}, labels[eval_idx]
            )
        # One reduction over ranks (DDP): identical scores everywhere.
        mods = list(correct)
        stats = torch.stack(
            [correct[m].float() for m in mods]
            + [torch.tensor(float(labels[eval_idx].shape[0]), device=labels.device)]
        )
        stats = _sum_over_ranks(trainer, stats)
        accs = (stats[:-1] / stats[-1].clamp_min(1.0)).tolist()  # one host sync per evaluation
        self.scores = dict(zip(mods, accs))
        self.version += 1
        self._publish(module)
        logged = {}
        for m in mods:
            logged[f"probe/acc_{m}"] = self.scores[m]
            logged[f"probe/loss_{m}"] = float(eval_losses[m])
            logged[f"probe/train_loss_{m}"] = float(train_losses[m])
        self.log_now(trainer, logged)

    def _publish(self, module: Any) -> None:
        module.utilization = Utilization(
            scores=dict(self.scores), step=self.last_eval_step, version=self.version
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "scores": dict(self.scores),
            "version": self.version,
            "last_eval_step": self.last_eval_step,
        }
        if self.bank is not None and self.optimizer is not None:
            state["probes"] = self.bank.state_dict()
            state["optimizer"] = self.optimizer.state_dict()
        elif self._pending_state is not None:
            state.update(self._pending_state)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scores = dict(state_dict.get("scores", {}))
        self.version = int(state_dict.get("version", 0))
        self.last_eval_step = int(state_dict.get("last_eval_step", -1))
        if "probes" in state_dict:
            pending = {"probes": state_dict["probes"], "optimizer": state_dict["optimizer"]}
            if self.bank is not None and self.optimizer is not None:
                self.bank.load_state_dict(pending["probes"])
                self.optimizer.load_state_dict(pending["optimizer"])
            else:
                self._pending_state = pending


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, dict) and "label" in batch:
        return int(batch["label"].shape[0])
    return None


def _sum_over_ranks(trainer: L.Trainer, t: torch.Tensor) -> torch.Tensor:
    if trainer.world_size > 1:
        return trainer.strategy.reduce(t, reduce_op="sum")
    return t
