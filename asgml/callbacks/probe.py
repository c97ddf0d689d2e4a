"""ASGML v2 decoupled probe monitor (docs/asgml_v2_design.md sections 3.1 and 7.1).

Every ``eval_freq`` training steps, on the *detached* features the module published for
the step, the monitor trains one probe per modality with its **own** optimizer for
``probe_train_steps`` steps on the first half of the batch and measures its accuracy on
the second half (``split_batch=true``; with ``split_batch=false`` it trains and measures
on the whole batch, the "v1" ablation). The accuracies are the modalities' utilization
scores, published as ``module.utilization`` (:class:`asgml.types.Utilization`) for the
boost callback. The monitor never touches the model's parameters or gradients.

Paper: ASGML v2, "Probe-guided weak-modality boosting" (this library's design document, ``docs/asgml_v2_design.md``).

Reliability:

* an evaluation is due at every step with ``step % eval_freq == 0``; if that step's features
  or gradients are non-finite (an overflowing step the GradScaler skips under ``16-mixed``,
  or a diverging step), the probes are neither trained nor scored and the evaluation runs at
  the next finite step instead (with a warning outside AMP);
* under DDP the features and labels of every rank are all-gathered (every ``eval_freq``
  steps only), so each rank trains its probes on the same global half-batches: probe
  weights, probe optimizer state and scores are identical on every rank, and a checkpoint
  (written by rank 0) holds the state of all ranks;
* probe weights, probe optimizer, scores, version and the pending evaluation are saved in
  checkpoints.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch

from asgml.callbacks.base import BalancingCallback
from asgml.callbacks.grads import all_finite, has_grad_scaler, present_grads, sum_over_ranks
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
        self.due = False  # an evaluation is due (deferred past non-finite steps)
        self.skipped_nonfinite = 0
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ setup
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = pl_module
        dims = {m: int(module.encoders[m].feature_dim) for m in module.modalities}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            bank = ProbeBank(dims, module.num_classes, self.probe_type, self.hidden_dim)
        self.bank = bank.to(module.device)
        self.optimizer = torch.optim.Adam(self.bank.parameters(), lr=self.lr, foreach=True)
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
        if out is None or out.step == self.last_eval_step:
            return
        if out.step % self.eval_freq == 0:
            self.due = True
        if not self.due:
            return
        if not self._step_is_finite(trainer, pl_module, out.features):
            self.skipped_nonfinite += 1
            if not has_grad_scaler(trainer):  # under 16-mixed, overflow steps are expected
                warnings.warn(
                    f"ProbeMonitor: non-finite features or gradients at step {out.step}; "
                    "the probe evaluation is deferred to the next finite step",
                    stacklevel=1,
                )
            return
        self.due = False
        self.last_eval_step = out.step
        self.measure(trainer, pl_module, out.features, out.labels)

    @staticmethod
    def _step_is_finite(trainer: L.Trainer, module: Any, features: dict) -> bool:
        """Features and model gradients all finite on every rank (one host sync; runs on
        evaluation steps only)."""
        ok = torch.stack(
            [torch.isfinite(f.detach()).all() for f in features.values()]
            + [all_finite(present_grads(module.parameters())).to(module.device)]
        ).all()
        bad = sum_over_ranks(trainer, (~ok).float().reshape(1))
        return not bool(bad.item())

    def measure(
        self, trainer: L.Trainer, module: Any, features: dict, labels: torch.Tensor
    ) -> None:
        """Train the probes and score them; publish and log the scores."""
        assert self.bank is not None and self.optimizer is not None
        # (ranks, batch, ...): every rank's batch under DDP, so all ranks train alike
        feats = {m: _gather(trainer, f.detach().float()) for m, f in features.items()}
        labels = _gather(trainer, labels)
        n = labels.shape[1]
        if self.split_batch:
            half = n // 2
            train_idx, eval_idx = slice(0, half), slice(half, n)
        else:
            train_idx = eval_idx = slice(0, n)

        def rows(t: torch.Tensor, idx: slice) -> torch.Tensor:
            return t[:, idx].reshape(-1, *t.shape[2:])

        device_type = labels.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            train_losses = self.bank.fit(
                {m: rows(f, train_idx) for m, f in feats.items()},
                rows(labels, train_idx),
                self.optimizer,
                self.probe_train_steps,
            )
            eval_labels = rows(labels, eval_idx)
            correct, eval_losses = self.bank.evaluate(
                {m: rows(f, eval_idx) for m, f in feats.items()}, eval_labels
            )
        mods = list(correct)
        stats = torch.stack([correct[m].float() for m in mods])
        accs = (stats / max(eval_labels.shape[0], 1)).tolist()  # one host sync per evaluation
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
            "due": self.due,
            "skipped_nonfinite": self.skipped_nonfinite,
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
        self.due = bool(state_dict.get("due", False))
        self.skipped_nonfinite = int(state_dict.get("skipped_nonfinite", 0))
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


def _gather(trainer: L.Trainer, t: torch.Tensor) -> torch.Tensor:
    """``(world_size, *t.shape)``: ``t`` from every rank (a leading 1 on one process)."""
    if getattr(trainer, "world_size", 1) > 1:
        return trainer.strategy.all_gather(t)
    return t[None]


_sum_over_ranks = sum_over_ranks  # backwards-compatible name
