"""ASGML v2 decoupled probe monitor (docs/asgml_v2_design.md sections 3.1 and 7.1).

Every ``eval_freq`` training steps, on the *detached* features the module published for
the step, the monitor trains one probe per modality with its **own** optimizer for
``probe_train_steps`` steps on the first half of the batch and measures its accuracy on
the second half (``split_batch=true``; with ``split_batch=false`` it trains and measures
on the whole batch, the "v1" ablation). The accuracies are the modalities' utilization
scores, exposed as `ProbeMonitor.utilization` (`asgml.core.types.Utilization`), which
the boost callback reads. The monitor never touches the model's parameters or gradients.

Paper: ASGML v2, "Probe-guided weak-modality boosting" (this library's design document, ``docs/asgml_v2_design.md``).

Reliability:

* an evaluation is due at every step with ``step % eval_freq == 0``; if that step's features
  or gradients are non-finite (an overflowing step the GradScaler skips under ``16-mixed``,
  or a diverging step), the probes are neither trained nor scored and the evaluation runs at
  the next finite step instead (counted, and reported once per epoch outside AMP);
* under DDP the features and labels of every rank are all-gathered (every ``eval_freq``
  steps only), so each rank trains its probes on the same global half-batches: probe
  weights, probe optimizer state and scores are identical on every rank, and a checkpoint
  (written by rank 0) holds the state of all ranks;
* probe weights, probe optimizer, scores, version and the pending evaluation are saved in
  checkpoints.

Deviations from the official code: none (this library is the reference implementation).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import (
    DeferredState,
    NonFiniteCounter,
    gather_ranks,
    step_finite,
    sum_over_ranks,
)
from asgml.core.types import StepOutput, Utilization
from asgml.models.probes import PROBE_TYPES, ProbeBank


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
            raise ValueError(f"eval_freq must be >= 1, got {eval_freq}")
        if probe_train_steps < 1:
            raise ValueError(f"probe_train_steps must be >= 1, got {probe_train_steps}")
        if probe_type not in PROBE_TYPES:
            raise ValueError(f"probe_type must be one of {PROBE_TYPES}, got {probe_type!r}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
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
        self.nonfinite = NonFiniteCounter(
            "ProbeMonitor", "without its due evaluation (deferred to the next finite step)"
        )
        self._restore = DeferredState()

    @property
    def skipped_nonfinite(self) -> int:
        """Evaluations deferred because their step was non-finite."""
        return self.nonfinite.total

    @property
    def utilization(self) -> Utilization | None:
        """The latest measurement (``None`` before the first one)."""
        if not self.scores:
            return None
        return Utilization(scores=dict(self.scores), step=self.last_eval_step, version=self.version)

    # ------------------------------------------------------------------ setup
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = pl_module
        dims = {m: int(module.encoders[m].feature_dim) for m in module.modalities}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            bank = ProbeBank(dims, module.num_classes, self.probe_type, self.hidden_dim)
        self.bank = bank.to(module.device)
        self.optimizer = torch.optim.Adam(self.bank.parameters(), lr=self.lr, foreach=True)
        pending = self._restore.take(module.device)
        if pending is not None:
            self.bank.load_state_dict(pending["probes"])
            self.optimizer.load_state_dict(pending["optimizer"])

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0 and self.eval_freq > 0:
            bs = _batch_size(batch)
            need = 4 if self.split_batch else 2
            if bs is not None and bs < need:
                raise ValueError(
                    f"ProbeMonitor needs a batch size >= {need} (split_batch={self.split_batch}), "
                    f"got {bs}: raise dataset.datamodule.batch_size"
                )

    # ------------------------------------------------------------------- step
    @override
    def on_train_gradients(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: StepOutput
    ) -> None:
        if out.step == self.last_eval_step:
            return
        if out.step % self.eval_freq == 0:
            self.due = True
        if not self.due:
            return
        if not self._step_is_finite(trainer, pl_module, out):
            self.nonfinite.add(True)
            return
        self.due = False
        self.last_eval_step = out.step
        self.measure(trainer, pl_module, out.features, out.labels)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.nonfinite.end_epoch(trainer)

    @staticmethod
    def _step_is_finite(trainer: L.Trainer, module: Any, out: StepOutput) -> bool:
        """The step will be applied and its features are finite on every rank (one host
        sync; runs on evaluation steps only)."""
        feats_ok = torch.stack([torch.isfinite(f.detach()).all() for f in out.features.values()])
        ok = feats_ok.all() & step_finite(module, out).to(feats_ok.device)
        bad = sum_over_ranks(trainer, (~ok).float().reshape(1))
        return not bool(bad.item())

    def measure(
        self, trainer: L.Trainer, module: Any, features: dict, labels: torch.Tensor
    ) -> None:
        """Train the probes and score them; publish and log the scores."""
        assert self.bank is not None and self.optimizer is not None
        # (ranks, batch, ...): every rank's batch under DDP, so all ranks train alike
        feats = {m: gather_ranks(trainer, f.detach().float()) for m, f in features.items()}
        labels = gather_ranks(trainer, labels)
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
        logged = {}
        for m in mods:
            logged[f"probe/acc_{m}"] = self.scores[m]
            logged[f"probe/loss_{m}"] = float(eval_losses[m])
            logged[f"probe/train_loss_{m}"] = float(train_losses[m])
        self.log_now(trainer, logged)

    # ------------------------------------------------------------------ state
    @override
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
        elif self._restore.pending is not None:
            state.update(self._restore.pending)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scores = dict(state_dict.get("scores", {}))
        self.version = int(state_dict.get("version", 0))
        self.last_eval_step = int(state_dict.get("last_eval_step", -1))
        self.due = bool(state_dict.get("due", False))
        self.nonfinite.load(state_dict.get("skipped_nonfinite", 0))
        if "probes" in state_dict:
            self._restore.put(
                {"probes": state_dict["probes"], "optimizer": state_dict["optimizer"]}
            )


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, dict) and "label" in batch:
        return int(batch["label"].shape[0])
    return None
