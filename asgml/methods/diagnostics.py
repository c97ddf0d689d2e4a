"""Imbalance diagnostics: a pure observer of any method (``diagnostics=probes|full``).

Not a balancing method: `ImbalanceDiagnostics` measures how much each modality is
used while any ``method=`` trains, and never changes the training. It is appended after the
method's callbacks (``asgml.run.build``), so it sees the gradients the optimizer applies
(after every method edit). What it measures, every ``eval_freq`` optimizer steps (step 0
included), from the step's *detached* `StepOutput`:

* ``probes``: one probe per modality (`asgml.models.probes.ProbeBank`, the ASGML
  monitor's probes, docs/asgml_v2_design.md 3.1) trained with its **own** Adam optimizer on
  the first half of the step's detached features and scored on the second half:
  ``diag/probe_acc_<m>``, ``diag/probe_loss_<m>`` and the utilization gap
  ``diag/probe_gap`` (max - min probe accuracy). Same seed and settings as
  ``method.probe`` give the same numbers as the boost's monitor;
* ``grad_norm``: the true (unscaled) L2 norm of each encoder's gradient
  ``diag/grad_norm_<m>`` and its ratio to the mean over modalities ``diag/grad_ratio_<m>``;
* ``ogm_score``: OGM-GE's discrepancy score (Peng et al., CVPR 2022; official
  GeWu-Lab/OGM-GE_CVPR2022 ``main.py:105-109`` at ``343dc1d``): the batch mean of each unimodal
  softmax's true-class probability ``diag/ogm_score_<m>`` and its ratio to the mean of the
  other modalities ``diag/ogm_ratio_<m>`` (for two modalities: the official ratio);
* ``shapley``: at every validation epoch the fused accuracy of every modality subset ``S``
  (absent modalities' features zeroed, as ``asgml.eval``'s ``mask=feature``; the empty set
  included), logged as ``diag/subset_acc_<a+b>`` (``diag/subset_acc_none``); ``python -m asgml.report`` turns them into per-epoch Shapley
  values with ``asgml/report/shapley.py`` (the fusion head's logits: a method's own
  test-time fusion is not applied to the subsets);
* ``cost``: FLOPs of one training step (forward + backward + the method's extra passes,
  counted by `torch.utils.flop_counter.FlopCounterMode` on the first training step,
  up to this callback's own work) and the parameter counts, logged
  (``diag/flops_per_step``, ``diag/params``) and written to ``<run>/diagnostics/cost.json``;
* ``tsne``: at the end of the fit, a 2-D t-SNE (scikit-learn, optional) of each modality's
  validation features of the last validation epoch (up to ``tsne_points`` samples of rank 0),
  written to ``<run>/diagnostics/tsne.csv`` for the report.

Why training is unchanged (bitwise; tested for several methods with dropout, shuffling and
noise on): the probes are built under `torch.random.fork_rng` from their own seed
(the global RNG state is saved and restored, so nothing is drawn from it), are trained on
detached features with their own optimizer (nothing is added to the model's optimizer, no
gradient reaches the model), no forward pass of the model is added at training time (the
validation subsets reuse the validation step's features through ``on_eval_logits`` and
return its logits unchanged), and FLOP counting is a dispatch mode that observes the ops.

DDP: the probes all-gather every rank's features (every rank trains identical probes,
as the boost's monitor); gradient norms are read from the DDP-averaged gradients; OGM
scores and subset accuracies are summed over ranks before they are logged. Logged with
`log_now` to every logger. Any N >= 2 modalities.
Probe weights, probe optimizer, the evaluation schedule and the cost flag are checkpointed.

Deviations from the official code: none (an instrument of this library, not a method).
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import (
    DeferredState,
    gather_ranks,
    grad_norm,
    ogm_scores,
    present_grads,
    step_finite,
    sum_over_ranks,
)
from asgml.core.types import StepOutput
from asgml.models.probes import PROBE_TYPES, ProbeBank

PREFIX = "diag"


def subsets(modalities: list[str]) -> list[tuple[str, ...]]:
    """Every subset of ``modalities`` (in their order), the empty one included, smallest
    first: the coalitions of an exact Shapley value."""
    n = len(modalities)
    out = [tuple(m for i, m in enumerate(modalities) if mask >> i & 1) for mask in range(2**n)]
    return sorted(out, key=len)


def subset_name(subset: tuple[str, ...]) -> str:
    """``audio+visual``; ``none`` when empty (``asgml.report.shapley.coalition_name``)."""
    return "+".join(subset) if subset else "none"


def ratio_to_others(values: dict[str, float]) -> dict[str, float]:
    """``v_m / mean_{k != m} v_k`` per modality (OGM-GE's ratio for two modalities)."""
    out = {}
    for m, v in values.items():
        others = [u for k, u in values.items() if k != m]
        ref = sum(others) / len(others)
        out[m] = v / ref if ref > 0 else math.inf
    return out


def ratio_to_mean(values: dict[str, float]) -> dict[str, float]:
    """``v_m / mean_k v_k`` per modality (1 everywhere when balanced)."""
    mean = sum(values.values()) / len(values)
    return {m: (v / mean if mean > 0 else math.nan) for m, v in values.items()}


class ImbalanceDiagnostics(BalancingCallback):
    """Measure modality utilization while any method trains, without changing it.

    Args:
        probes: train and score the per-modality probes.
        grad_norm: log the encoders' gradient norms and their ratio.
        ogm_score: log OGM-GE's discrepancy score and ratio.
        shapley: log the fused validation accuracy of every modality subset per epoch.
        cost: count the FLOPs of one training step and the parameters.
        tsne: write a t-SNE of each modality's validation features at the end (needs
            scikit-learn: ``pip install asgml[diagnostics]``); ``auto``: when installed.
        eval_freq: measure every ``eval_freq`` optimizer steps (step 0 included).
        probe_train_steps: probe optimizer steps per measurement (as ``method.probe``).
        probe_type: ``linear`` or ``mlp_1layer``.
        split_batch: train on the first half, score on the second.
        lr: probe learning rate (Adam).
        hidden_dim: width of the ``mlp_1layer`` probe.
        seed: seed of the probes' initialisation (the global RNG is left untouched).
        tsne_points: validation samples kept for the t-SNE.
    """

    def __init__(
        self,
        probes: bool = True,
        grad_norm: bool = False,
        ogm_score: bool = False,
        shapley: bool = False,
        cost: bool = False,
        tsne: bool | str = False,
        eval_freq: int = 20,
        probe_train_steps: int = 10,
        probe_type: str = "linear",
        split_batch: bool = True,
        lr: float = 1e-2,
        hidden_dim: int = 256,
        seed: int = 0,
        tsne_points: int = 512,
    ) -> None:
        super().__init__()
        self.check_option("eval_freq", eval_freq, eval_freq >= 1, "an integer >= 1")
        self.check_option(
            "probe_train_steps", probe_train_steps, probe_train_steps >= 1, "an integer >= 1"
        )
        self.check_option("probe_type", probe_type, probe_type in PROBE_TYPES, str(PROBE_TYPES))
        self.check_option("lr", lr, lr > 0, "> 0")
        self.check_option("tsne_points", tsne_points, tsne_points >= 2, "an integer >= 2")
        self.check_option("tsne", tsne, tsne in (True, False, "auto"), "true, false or auto")
        if tsne == "auto":
            tsne = _has_sklearn()
            if not tsne:
                warnings.warn(
                    "diagnostics: scikit-learn is not installed, no t-SNE is written "
                    "(pip install 'asgml[diagnostics]')",
                    stacklevel=2,
                )
        elif tsne and not _has_sklearn():
            raise ImportError(
                "diagnostics.callback.tsne=true needs scikit-learn: pip install "
                "'asgml[diagnostics]' (or tsne=auto to skip it when missing)"
            )
        self.probes, self.grad_norm, self.ogm_score = probes, grad_norm, ogm_score
        self.shapley, self.cost, self.tsne = shapley, cost, tsne
        self.eval_freq = int(eval_freq)
        self.probe_train_steps = int(probe_train_steps)
        self.probe_type, self.split_batch = probe_type, split_batch
        self.lr, self.hidden_dim, self.seed = lr, hidden_dim, seed
        self.tsne_points = int(tsne_points)
        self.bank: ProbeBank | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scores: dict[str, float] = {}
        self.last_eval_step = -1
        self.due = False
        self.cost_done = False
        self.cost_result: dict[str, Any] = {}
        self._counter: FlopCounterMode | None = None
        self._restore = DeferredState()
        self._subset_preds: list[dict[tuple[str, ...], Tensor]] = []
        self._subset_correct: dict[tuple[str, ...], Tensor] = {}
        self._subset_seen = 0
        self._tsne_feats: dict[str, list[Tensor]] = {}
        self._tsne_labels: list[Tensor] = []
        self._tsne_pending: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ setup
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module: Any = pl_module
        if self.probes:
            dims = {m: int(module.encoders[m].feature_dim) for m in module.modalities}
            # the global RNG state is saved and restored around the probes' initialisation
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
        if self.probes and isinstance(batch, dict) and "label" in batch:
            need = 4 if self.split_batch else 2
            if int(batch["label"].shape[0]) < need:
                raise ValueError(
                    f"diagnostics.probes needs a batch size >= {need} (split_batch="
                    f"{self.split_batch}), got {int(batch['label'].shape[0])}: raise "
                    "dataset.datamodule.batch_size or set diagnostics.callback.probes=false"
                )
        if self.cost and not self.cost_done and self._counter is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._stop_counting(trainer, pl_module)  # a step whose backward never ran

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._counter = None

    def _stop_counting(self, trainer: L.Trainer, module: Any) -> None:
        if self._counter is None:
            return
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)
        self.cost_done = True
        params = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        self.cost_result = {
            "flops_per_step": int(counter.get_total_flops()),
            "params": int(params),
            "trainable_params": int(trainable),
            "batch_size": int(module.step_output.labels.shape[0])
            if getattr(module, "step_output", None) is not None
            else None,
        }
        self.log_now(
            trainer,
            {
                f"{PREFIX}/flops_per_step": float(self.cost_result["flops_per_step"]),
                f"{PREFIX}/params": float(params),
            },
        )
        self._write(trainer, "cost.json", json.dumps(self.cost_result, indent=2))

    # ------------------------------------------------------------------- step
    @override
    def on_train_gradients(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: StepOutput
    ) -> None:
        self._stop_counting(trainer, pl_module)  # count the step up to here, not our own work
        if out.step == self.last_eval_step:
            return
        if out.step % self.eval_freq == 0:
            self.due = True
        if not self.due:
            return
        if not self._step_is_finite(trainer, pl_module, out):
            return  # deferred to the next finite step, as the boost's monitor
        self.due = False
        self.last_eval_step = out.step
        logged: dict[str, float] = {}
        if self.probes:
            logged.update(self.measure_probes(trainer, out.features, out.labels))
        if self.grad_norm:
            logged.update(self.measure_grad_norms(trainer, pl_module))
        if self.ogm_score:
            logged.update(self.measure_ogm(trainer, out))
        if logged:
            self.log_now(trainer, logged)

    @staticmethod
    def _step_is_finite(trainer: L.Trainer, module: Any, out: StepOutput) -> bool:
        ok = torch.stack([torch.isfinite(f.detach()).all() for f in out.features.values()]).all()
        ok = ok & step_finite(module, out).to(ok.device)
        return not bool(sum_over_ranks(trainer, (~ok).float().reshape(1)).item())

    def measure_probes(
        self, trainer: L.Trainer, features: dict[str, Tensor], labels: Tensor
    ) -> dict[str, float]:
        """Train the probes on half the (all-gathered) batch, score them on the other half."""
        assert self.bank is not None and self.optimizer is not None
        feats = {m: gather_ranks(trainer, f.detach().float()) for m, f in features.items()}
        labels = gather_ranks(trainer, labels)
        n = labels.shape[1]
        half = n // 2 if self.split_batch else n
        train_idx = slice(0, half)
        eval_idx = slice(half, n) if self.split_batch else slice(0, n)

        def rows(t: Tensor, idx: slice) -> Tensor:
            return t[:, idx].reshape(-1, *t.shape[2:])

        with torch.autocast(device_type=labels.device.type, enabled=False):
            fit_probes(
                self.bank,
                {m: rows(f, train_idx) for m, f in feats.items()},
                rows(labels, train_idx),
                self.optimizer,
                self.probe_train_steps,
            )
            eval_labels = rows(labels, eval_idx)
            correct, losses = {}, {}
            with torch.no_grad():
                for m, f in feats.items():
                    z = self.bank.probes[m](rows(f, eval_idx))
                    correct[m] = (z.argmax(dim=1) == eval_labels).sum()
                    losses[m] = F.cross_entropy(z, eval_labels)
        mods = list(correct)
        stats = torch.stack(
            [
                *(correct[m].float() / max(eval_labels.shape[0], 1) for m in mods),
                *(losses[m].float() for m in mods),
            ]
        ).tolist()  # one host sync
        self.scores = dict(zip(mods, stats[: len(mods)]))
        out = {f"{PREFIX}/probe_acc_{m}": a for m, a in self.scores.items()}
        out.update({f"{PREFIX}/probe_loss_{m}": v for m, v in zip(mods, stats[len(mods) :])})
        # the gap over the modalities measured at this step
        out[f"{PREFIX}/probe_gap"] = max(self.scores.values()) - min(self.scores.values())
        return out

    @staticmethod
    def measure_grad_norms(trainer: L.Trainer, module: Any) -> dict[str, float]:
        """True L2 norm of each encoder's gradient (DDP-averaged, after the method's edits)."""
        norms = torch.stack(
            [
                grad_norm(trainer, present_grads(module.encoder_parameters(m))).float().cpu()
                for m in module.modalities
            ]
        ).tolist()
        values = dict(zip(module.modalities, norms))
        out = {f"{PREFIX}/grad_norm_{m}": v for m, v in values.items()}
        out.update({f"{PREFIX}/grad_ratio_{m}": v for m, v in ratio_to_mean(values).items()})
        return out

    @staticmethod
    def measure_ogm(trainer: L.Trainer, out: StepOutput) -> dict[str, float]:
        """OGM-GE's score: mean true-class softmax probability of each unimodal head."""
        uni = {m: z.detach() for m, z in out.unimodal_logits.items()}
        sums = ogm_scores(uni, out.labels)
        mods = list(sums)
        packed = torch.stack(
            [*(sums[m] for m in mods), sums[mods[0]].new_tensor(float(out.labels.shape[0]))]
        )
        packed = sum_over_ranks(trainer, packed).tolist()
        values = {m: s / packed[-1] for m, s in zip(mods, packed[:-1])}
        res = {f"{PREFIX}/ogm_score_{m}": v for m, v in values.items()}
        if len(values) >= 2:
            res.update({f"{PREFIX}/ogm_ratio_{m}": v for m, v in ratio_to_others(values).items()})
        return res

    # ------------------------------------------------------------- validation
    @override
    def on_eval_logits(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        logits: Tensor,
        unimodal_logits: dict[str, Tensor],
        features: dict[str, Tensor],
    ) -> Tensor:
        if trainer is None or not trainer.validating or trainer.sanity_checking:
            return logits
        mod: Any = module
        if self.shapley and set(features) == set(mod.modalities):
            preds = {}
            with torch.no_grad():
                for s in subsets(list(mod.modalities)):
                    masked = {
                        m: (f if m in s else torch.zeros_like(f)) for m, f in features.items()
                    }
                    preds[s] = mod.heads(masked)[0].argmax(dim=1)
            self._subset_preds.append(preds)
        if self.tsne and trainer.is_global_zero:
            self._tsne_pending = {m: f.detach() for m, f in features.items()}
        return logits

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._subset_preds, self._subset_correct, self._subset_seen = [], {}, 0
        if not trainer.sanity_checking:
            self._tsne_feats, self._tsne_labels = {}, []

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            return
        labels = batch["label"]
        if self._subset_preds:
            preds = self._subset_preds.pop()
            for s, p in preds.items():
                c = (p == labels).sum()
                self._subset_correct[s] = self._subset_correct.get(s, 0) + c
            self._subset_seen += int(labels.shape[0])
        if self._tsne_pending is not None:
            have = sum(int(t.shape[0]) for t in self._tsne_labels)
            take = max(0, self.tsne_points - have)
            if take:
                for m, f in self._tsne_pending.items():
                    self._tsne_feats.setdefault(m, []).append(f[:take].float().cpu())
                self._tsne_labels.append(labels[:take].cpu())
            self._tsne_pending = None

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._subset_correct:
            return
        names = list(self._subset_correct)
        device = pl_module.device
        counts = torch.stack(
            [torch.as_tensor(self._subset_correct[s], device=device).float() for s in names]
            + [torch.tensor(float(self._subset_seen), device=device)]
        )
        counts = sum_over_ranks(trainer, counts).tolist()
        seen = max(counts[-1], 1.0)
        logged = {f"{PREFIX}/subset_acc_{subset_name(s)}": c / seen for s, c in zip(names, counts)}
        logged["epoch"] = float(trainer.current_epoch)
        self.log_now(trainer, logged)
        self._subset_correct, self._subset_seen = {}, 0

    # -------------------------------------------------------------------- end
    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.tsne and trainer.is_global_zero and self._tsne_labels:
            labels = torch.cat(self._tsne_labels).tolist()
            lines = ["modality,x,y,label"]
            for m, parts in self._tsne_feats.items():
                xy = tsne_2d(torch.cat(parts), seed=self.seed)
                lines += [f"{m},{x:.6g},{y:.6g},{lab}" for (x, y), lab in zip(xy, labels)]
            self._write(trainer, "tsne.csv", "\n".join(lines) + "\n")

    @staticmethod
    def _write(trainer: L.Trainer, name: str, text: str) -> None:
        if not trainer.is_global_zero:
            return
        out = Path(trainer.default_root_dir) / "diagnostics"
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "scores": dict(self.scores),
            "last_eval_step": self.last_eval_step,
            "due": self.due,
            "cost_done": self.cost_done,
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
        self.last_eval_step = int(state_dict.get("last_eval_step", -1))
        self.due = bool(state_dict.get("due", False))
        self.cost_done = bool(state_dict.get("cost_done", False))
        if "probes" in state_dict:
            self._restore.put(
                {"probes": state_dict["probes"], "optimizer": state_dict["optimizer"]}
            )


def fit_probes(
    bank: ProbeBank,
    features: dict[str, Tensor],
    labels: Tensor,
    optimizer: torch.optim.Optimizer,
    steps: int,
) -> None:
    """`ProbeBank.fit` on the modalities the step forwarded (a method may forward a
    subset: ReconBoost's stages, MLA's turns); the other probes keep their weights (Adam
    skips parameters without a gradient)."""
    feats = {m: f.detach().float() for m, f in features.items()}
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.stack(
                [F.cross_entropy(bank.probes[m](z), labels) for m, z in feats.items()]
            ).sum()
            loss.backward()
            optimizer.step()


def _has_sklearn() -> bool:
    return importlib.util.find_spec("sklearn") is not None


def tsne_2d(features: Tensor, seed: int = 0) -> list[tuple[float, float]]:
    """A 2-D t-SNE embedding (scikit-learn, fixed ``random_state``) of ``(n, d)`` features."""
    from sklearn.manifold import TSNE

    x = features.double().numpy()
    perplexity = float(min(30.0, max(1.0, (x.shape[0] - 1) / 3)))
    emb = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(
        x
    )
    return [(float(a), float(b)) for a, b in emb]
