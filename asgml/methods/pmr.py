r"""PMR: prototypical modal rebalance.

Paper: Fan, Xu, Wang, Zhang & Hu, "PMR: Prototypical Modal Rebalance for Multimodal
Learning", CVPR 2023.
Official code: https://github.com/fanyunfeng-bit/Modal-Imbalance-PMR @ 3615e48
(``main_Prototype_grad.py``: ``train_epoch`` lines 152-178, ``calculate_prototype`` lines
383-441, the calls in ``main`` lines 534-557); second reference: GeWu-Lab/BalanceBenchmark
@ 4c1482f ``balancemm/trainer/PMR_trainer.py``.

**Prototypes.** Before epoch 0 and after every epoch, each class's prototype
$c_m^k$ is the mean encoder feature of modality $m$ over the class's samples in the first
tenth of a shuffled pass over the training set (model in eval mode, no gradient); from the
third epoch on it is mixed with the previous one, $c \leftarrow (1-\mu) c_\text{new} + \mu c$
(``momentum_coef``).

**Prototypical cross-entropy.** With $\mathrm{sim}_m = -\lVert f_m - c_m^k \rVert_2$
($B \times C$), the *prototype score* of modality $m$ on the batch is
$s_m = \sum_i \mathrm{softmax}(\mathrm{sim}_m)_{i, y_i}$ and

$$
\mathcal{L} = \mathrm{CE}(z, y) + \sum_m \beta_m \, \mathrm{CE}(\mathrm{sim}_m, y),
\qquad \beta_m = \begin{cases}\alpha & s_m < \max_j s_j \\ 0 & \text{otherwise,}\end{cases}
$$

inside the epoch window ``modulation_starts <= epoch <= modulation_ends``. With two modalities
this is the official rule (``ratio = s_a / s_v``: ``> 1`` gives the visual term ``alpha``,
``< 1`` the audio term, ``= 1`` none). The prototype CE pulls the *slow* modality's features
towards its class prototypes, which speeds up its encoder without touching the fusion head.

**N modalities** (a generalisation): every modality whose score is below the best one gets
the term. BalanceBenchmark's 3-modality branch instead scales encoder gradients by
$1 - \tanh(\eta\,\mathrm{ratio})$ with OGM-style noise, which is a different method; it is not
reproduced.

**DDP.** The prototype pass draws the same sample subset on every rank (a generator seeded by
``seed`` and the epoch), each rank encodes its share, and the per-class sums and counts are
all-reduced, so every rank holds the same prototypes. The scores are per-rank batch values,
as the loss is.

Logged: ``pmr/score_<m>`` (the batch mean of the target-class prototype probability),
``pmr/coef_<m>`` ($\beta_m$).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import plain_train_loader, sum_over_ranks

if TYPE_CHECKING:
    from asgml.core.module import MultimodalModule
    from asgml.core.types import StepOutput


def prototype_similarity(features: Tensor, prototypes: Tensor) -> Tensor:
    """``-||f_i - c_k||_2``: ``(B, d)`` features, ``(C, d)`` prototypes -> ``(B, C)``."""
    return -torch.cdist(features, prototypes.to(features.dtype), p=2)


def prototype_score(sim: Tensor, labels: Tensor) -> Tensor:
    """``sum_i softmax(sim)[i, y_i]`` (the official ``score_*_p``)."""
    return sim.softmax(dim=1).gather(1, labels[:, None]).sum()


def pmr_coefficients(scores: Tensor, alpha: float) -> Tensor:
    """``beta_m = alpha`` for every modality scoring below the best one, else 0."""
    return torch.where(scores < scores.max(), torch.full_like(scores, alpha), 0.0)


def class_means(sums: Tensor, counts: Tensor) -> Tensor:
    """Per-class means; a class without samples keeps a zero prototype."""
    return sums / counts.clamp_min(1)[:, None]


class PMR(BalancingCallback):
    """Prototypical modal rebalance.

    Args:
        alpha: weight of the slow modality's prototypical CE (official CREMA-D 2.0).
        momentum_coef: prototype momentum ``mu`` (official CREMA-D 0.0).
        modulation_starts: first epoch of the extra term's window (inclusive).
        modulation_ends: last epoch of the extra term's window (inclusive).
        proto_fraction: share of the training batches the prototype pass reads (official
            ``all_num // 10``: 0.1; at least one batch).
        seed: seeds the prototype pass's sample draw (with the epoch).
    """

    def __init__(
        self,
        alpha: float = 2.0,
        momentum_coef: float = 0.0,
        modulation_starts: int = 0,
        modulation_ends: int = 70,
        proto_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"method.pmr.alpha must be >= 0, got {alpha}")
        if not 0 <= momentum_coef <= 1:
            raise ValueError(f"method.pmr.momentum_coef must be in [0, 1], got {momentum_coef}")
        if not 0 < proto_fraction <= 1:
            raise ValueError(f"method.pmr.proto_fraction must be in (0, 1], got {proto_fraction}")
        self.alpha = float(alpha)
        self.momentum_coef = float(momentum_coef)
        self.modulation_starts = int(modulation_starts)
        self.modulation_ends = int(modulation_ends)
        self.window = self.epoch_window(self.modulation_starts, self.modulation_ends)
        self.proto_fraction = float(proto_fraction)
        self.seed = int(seed)
        self.prototypes: dict[str, Tensor] = {}

    # ----------------------------------------------------------------- prototypes
    def _subset_indices(self, n: int, batch_size: int, num_batches: int, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        take = max(1, int(num_batches * self.proto_fraction)) * batch_size
        return torch.randperm(n, generator=g)[: min(n, take)]

    @torch.no_grad()
    def compute_prototypes(self, trainer: L.Trainer, module: MultimodalModule) -> dict[str, Tensor]:
        loader = plain_train_loader(trainer)
        dataset = loader.dataset
        bs = loader.batch_size or 1
        idx = self._subset_indices(len(dataset), bs, len(loader), trainer.current_epoch)
        idx = idx[trainer.global_rank :: max(1, trainer.world_size)]
        sub = DataLoader(
            Subset(dataset, idx.tolist()),
            batch_size=bs,
            shuffle=False,
            collate_fn=loader.collate_fn,
        )
        dev = module.device
        dims = {m: int(module.encoders[m].feature_dim) for m in module.modalities}
        sums = {m: torch.zeros(module.num_classes, d, device=dev) for m, d in dims.items()}
        counts = torch.zeros(module.num_classes, device=dev)
        was_training = module.training
        module.eval()
        try:
            for batch in sub:
                batch = move_data_to_device(batch, dev)
                inputs, lengths, y = module.split_batch(batch)
                feats = module.encode(inputs, lengths)
                onehot = F.one_hot(y.long(), module.num_classes).to(counts.dtype)
                counts += onehot.sum(0)
                for m in module.modalities:
                    sums[m] += onehot.t() @ feats[m].float()
        finally:
            module.train(was_training)
        counts = sum_over_ranks(trainer, counts)
        return {m: class_means(sum_over_ranks(trainer, s), counts) for m, s in sums.items()}

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        new = self.compute_prototypes(trainer, pl_module)
        # the official script mixes in the old prototypes for those computed after epoch >= 1
        if trainer.current_epoch >= 2 and self.prototypes and self.momentum_coef > 0:
            mu = self.momentum_coef
            new = {m: (1 - mu) * p + mu * self.prototypes[m].to(p.device) for m, p in new.items()}
        self.prototypes = new

    # ---------------------------------------------------------------------- loss
    @override
    def on_train_losses(
        self,
        trainer: L.Trainer,
        module: MultimodalModule,
        out: StepOutput,
    ) -> None:
        losses = out.losses
        if not self.prototypes:
            return
        epoch = trainer.current_epoch
        y = out.labels
        sims = {
            m: prototype_similarity(out.features[m], self.prototypes[m]) for m in module.modalities
        }
        with torch.no_grad():
            scores = torch.stack([prototype_score(sims[m].float(), y) for m in module.modalities])
            coefs = pmr_coefficients(scores, self.alpha)
        if epoch in self.window:
            for i, m in enumerate(module.modalities):
                # a zero coefficient adds nothing (as beta * loss in the official code)
                losses[f"pmr_proto_{m}"] = coefs[i] * F.cross_entropy(sims[m], y)
        else:
            coefs = torch.zeros_like(coefs)
        if self.logging_step(trainer):
            for i, m in enumerate(module.modalities):
                module.log(f"pmr/score_{m}", scores[i] / y.shape[0], on_step=True, on_epoch=False)
                module.log(f"pmr/coef_{m}", coefs[i], on_step=True, on_epoch=False)

    # ---------------------------------------------------------------- checkpoint
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": {m: p.cpu() for m, p in self.prototypes.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.prototypes = dict(state_dict.get("prototypes", {}))
