"""ReLearning: diagnose each modality by clustering its features, softly re-initialise it.

Paper: Wei, Li, Feng, Hu, "Diagnosing and Re-learning for Balanced Multimodal Learning", ECCV 2024.
Official code: GeWu-Lab/Diagnosing_Relearning_ECCV2024 @
025085ea82ed784c6ab6e5fb1b08bfe498dd0fc7 (``code/ours.py``: ``purity_score``,
``reinit_score``, ``reinit``, ``get_feature``, ``main``).
Second reference: GeWu-Lab/BalanceBenchmark @ 4c1482fca5aaa8d4278af8e26020daa039e3ccf3
(``balancemm/trainer/ReLearning_trainer.py``).

After every ``reinit_epoch``-th epoch (epochs ``reinit_epoch, 2 reinit_epoch, ...``, at most
``reinit_num`` times), the encoders' features of the training and the validation set are
computed (eval mode, no gradient), each feature dimension is min-max scaled to $[-1, 1]$ and
clustered by k-means into $C$ clusters (``KMeans(n_clusters=C, random_state=0)``). The purity
of a clustering is the accuracy of labelling every cluster by its majority class. A modality
whose representation separates the training set much better than the validation set is
over-trained, and is pulled back towards its initial parameters:

$$w_m = \\tanh\\big(\\lambda\\, |\\mathrm{purity}^{train}_m - \\mathrm{purity}^{val}_m|\\big),
\\qquad \\theta_m \\leftarrow w_m\\, \\theta^{init}_m + (1 - w_m)\\, \\theta_m$$

for every parameter of encoder $m$ (buffers such as BatchNorm statistics and the optimizer
state are left alone, as in the official code). $\\theta^{init}$ is the encoder at the start of
training.

Implementation: the re-initialisation of the diagnosis after epoch $e$ runs at the start of
epoch $e + 1$ (the official loop does it after epoch $e$'s validation, so the weights trained
are the same); this keeps the checkpoint written at the end of epoch $e$ and the best
checkpoint equal to the weights that were validated, and a resumed run redoes it exactly.
The features come from the datamodule's ``train_dataloader()`` / ``val_dataloader()`` over the
whole sets, with the global RNG state put back afterwards (so the extra passes do not change
the next epoch's shuffle, as they do in the official loop) and a fixed seed per diagnosis for
any random augmentation; under DDP every rank computes them alike and the weights are broadcast from
rank 0. Works for any number of modalities (the rule is per modality).

k-means restarts: the official call ``KMeans(n_clusters=C, random_state=0)``
(``code/ours.py:110``) passes no ``n_init``, so it ran with the installed scikit-learn's
default: 10 restarts before scikit-learn 1.4, ``"auto"`` (one k-means++ run) from 1.4 on. The
repository pins no version; ``n_init: 10`` (the default) is the value before 1.4, which the
method's release (July 2024) and experiments most likely used; ``n_init: auto`` is the newer
default (10 times cheaper, and the clusters may differ).

Deviations: none in the formula. Logged: ``relearning/purity_train_<m>``,
``relearning/purity_val_<m>``, ``relearning/weight_<m>``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of samples whose label is the majority label of their cluster."""
    hits = 0
    for c in np.unique(clusters):
        members = labels[clusters == c]
        hits += int(np.bincount(members).max())
    return hits / len(labels)


SKLEARN_MISSING = (
    "method=relearning needs scikit-learn (k-means of the features, as the official code): "
    "pip install 'asgml[relearning]'"
)


def require_sklearn() -> None:
    """Fail with ``SKLEARN_MISSING`` when scikit-learn is not installed (an extra)."""
    try:
        import sklearn  # noqa: F401  (optional dependency)
    except ImportError as err:
        raise ImportError(SKLEARN_MISSING) from err


def cluster_purity(
    features: np.ndarray, labels: np.ndarray, num_classes: int, n_init: int | str = 10
) -> float:
    """Official diagnosis: min-max scale to [-1, 1], k-means into ``num_classes`` (``n_init``
    restarts), purity."""
    require_sklearn()
    from sklearn.cluster import KMeans  # optional dependency (extra `relearning`)
    from sklearn.preprocessing import MinMaxScaler

    x = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features)
    pred = KMeans(n_clusters=num_classes, random_state=0, n_init=n_init).fit_predict(x)
    return purity(labels, pred)


def relearn_weight(purity_train: float, purity_val: float, move_lambda: float) -> float:
    """``tanh(lambda * |purity_train - purity_val|)``."""
    return math.tanh(move_lambda * abs(purity_train - purity_val))


@torch.no_grad()
def soft_reinit_(params: Mapping[str, Tensor], init: Mapping[str, Tensor], weight: float) -> None:
    """In place ``theta <- w theta_init + (1 - w) theta``."""
    for name, p in params.items():
        p.mul_(1 - weight).add_(init[name].to(p.device, p.dtype), alpha=weight)


class ReLearning(BalancingCallback):
    """Diagnosing & re-learning (soft re-initialisation from feature-cluster purity).

    Args:
        move_lambda: $\\lambda$ (official ``--move_lambda``).
        reinit_epoch: diagnose after every this many epochs (official ``--reinit_epoch``).
        reinit_num: at most this many re-initialisations (official ``--reinit_num``).
        n_init: k-means restarts (official: scikit-learn's default, 10 before 1.4) or
            ``"auto"``.
    """

    state_attrs = ("init", "done", "history")  # checkpointed by BalancingCallback.state_dict

    def __init__(
        self,
        move_lambda: float = 3.0,
        reinit_epoch: int = 20,
        reinit_num: int = 3,
        n_init: int | str = 10,
    ):
        super().__init__()
        if n_init != "auto" and not (isinstance(n_init, int) and n_init >= 1):
            raise ValueError(f"method.relearning.n_init must be >= 1 or 'auto', got {n_init!r}")
        self.n_init = n_init
        require_sklearn()  # at build time, not after the first reinit_epoch epochs
        if move_lambda < 0:
            raise ValueError(f"method.relearning.move_lambda must be >= 0, got {move_lambda}")
        if reinit_epoch < 1 or reinit_num < 0:
            raise ValueError(
                "method.relearning.reinit_epoch must be >= 1 and reinit_num >= 0, got "
                f"{reinit_epoch}, {reinit_num}"
            )
        self.move_lambda, self.reinit_epoch, self.reinit_num = move_lambda, reinit_epoch, reinit_num
        self.init: dict[str, dict[str, Tensor]] = {}
        self.done = 0
        self.history: list[dict[str, float]] = []

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.init:  # a resumed run has them from the checkpoint
            self.init = {
                m: {
                    n: p.detach().cpu().clone() for n, p in pl_module.encoders[m].named_parameters()
                }
                for m in pl_module.modalities  # type: ignore[union-attr]
            }

    def due(self, finished_epoch: int) -> bool:
        """Whether the diagnosis after ``finished_epoch`` (0-based) re-initialises."""
        return (
            finished_epoch > 0
            and finished_epoch % self.reinit_epoch == 0
            and self.done < self.reinit_num
        )

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        finished = trainer.current_epoch - 1
        if not self.due(finished):
            return
        dm = trainer.datamodule
        if dm is None:
            raise ValueError("ReLearning needs a datamodule (its train and val sets)")
        module: Any = pl_module
        # the extra passes neither move the global RNG (the epoch's shuffle order) nor depend
        # on it (random augmentation): a fixed seed per diagnosis
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(finished)
            train = collect_features(module, dm.train_dataloader())
            val = collect_features(module, dm.val_dataloader())
        record: dict[str, float] = {}
        for m in module.modalities:
            pt = cluster_purity(train[m], train["label"], module.num_classes, self.n_init)
            pv = cluster_purity(val[m], val["label"], module.num_classes, self.n_init)
            record.update({f"purity_train_{m}": pt, f"purity_val_{m}": pv})
            record[f"weight_{m}"] = relearn_weight(pt, pv, self.move_lambda)
        record = trainer.strategy.broadcast(record, src=0)
        for m in module.modalities:
            params = dict(module.encoders[m].named_parameters())
            soft_reinit_(params, self.init[m], record[f"weight_{m}"])
        self.done += 1
        self.history.append({"epoch": float(finished), **record})
        self.log_now(trainer, {f"relearning/{k}": v for k, v in record.items()})


@torch.no_grad()
def collect_features(module: MultimodalModule, loader: Any) -> dict[str, np.ndarray]:
    """Encoder features of every sample (eval mode) and the labels, as numpy arrays."""
    was_training = module.training
    module.eval()
    feats: dict[str, list[Tensor]] = {m: [] for m in module.modalities}
    labels = []
    try:
        for batch in loader:
            batch = module.transfer_batch_to_device(batch, module.device, 0)
            inputs, lengths, y = module.split_batch(batch)
            f = module.encode(inputs, lengths)
            for m in module.modalities:
                feats[m].append(f[m].float().cpu())
            labels.append(y.cpu())
    finally:
        module.train(was_training)
    out = {m: torch.cat(v).numpy() for m, v in feats.items()}
    out["label"] = torch.cat(labels).numpy()
    return out
