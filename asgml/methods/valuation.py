r"""Sample-level modality valuation: enhance the low-contribution modality of each sample.

Paper: Wei, Feng, Wang, Hu, "Enhancing Multimodal Cooperation via Sample-level Modality
Valuation", CVPR 2024.
Official code: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation @
01f7e5680fe47074c501164b51abe159c1496a36 (``code/sample_level.py``: ``execute_modulation``,
``main``; ``code/modality_level.py`` @ 7ed12b0; ``code/datasets/dataloader.py``:
``AV_KS_Dataset_sample_level``, ``AV_KS_Dataset_modality_level``; ``code/models/models.py``:
``exec_drop`` and the ``drop`` argument of ``forward``).
Second reference: GeWu-Lab/BalanceBenchmark ``balancemm/trainer/Sample_trainer.py``.

**Valuation.** Before every training epoch $e \ge$ ``warmup`` the model (eval mode, no
gradient, evaluation transforms) predicts every training sample with each non-empty modality
subset $S$ present; absent modalities' features are zeroed where they enter the fusion layer
(official ``exec_drop``). A subset's value is its size if its prediction is right:

$$v_i(S) = |S| \cdot \mathbb 1\big[\arg\max f(x_i^{S}) = y_i\big], \qquad v_i(\emptyset) = 0,$$

(official: 2 for the fused prediction, 1 for each unimodal one) and the contribution of
modality $m$ to sample $i$ is its exact Shapley value

$$\phi_i^m = \sum_{S \subseteq \mathcal M \setminus \{m\}}
\frac{|S|!\,(N - |S| - 1)!}{N!}\big(v_i(S \cup \{m\}) - v_i(S)\big),$$

which for two modalities is the official
$\phi_i^a = \tfrac12\big(v_i(\{a\}) + v_i(\{a, v\}) - v_i(\{v\})\big)$.

**Sample-level enhancement** (``mode: sample``). The epoch trains on every sample once with
all modalities, plus, for each sample $i$ and modality $m$, $c(\phi_i^m)$ copies in which
only $m$ is present (the others' features zeroed; official ``drop`` 1/2 zeroes audio/visual
after the encoders), so the low-contribution modality has to carry them:

$$c(\phi) = \begin{cases} 1 & 0.4 < \phi < 1 \\ 2 & -0.1 < \phi < 0.4 \\ 3 & \phi < -0.1
\\ 0 & \text{otherwise} \end{cases}$$

(strict inequalities, as the official ``dataloader.py:156-186``; an earlier commit, 077648e,
had $0.9$ for $1$, which no two-modality value tells apart; with two modalities $\phi \in \{-\tfrac12, 0,
\tfrac12, 1, \tfrac32\}$, i.e. 3, 2, 1, 0, 0 copies). The copies follow the originals, sample
by sample, modality by modality (official order); the loader shuffles.

**Modality-level enhancement** (``mode: modality``). From a random subset $Z$ of
$\lfloor$ ``part_ratio`` $\cdot n\rfloor$ training samples (drawn with replacement, as
``np.random.choice``) the mean contribution $\bar\phi^m$ gives gaps
$g_m = 1 - \bar\phi^m$; $\lfloor d\, n\rfloor$ uniformly drawn samples (with replacement) are
added with only the modality of the largest gap present, where

$$d = \alpha \cdot \tfrac23 \big(\max_m g_m - \min_m g_m\big)$$

(official ``func='linear'``: $\tfrac23 |g_a - g_v| \alpha$; a tie keeps the later modality, as
the official ``gap_a > gap_v`` test keeps visual).

Schedule: epochs ``0 .. warmup - 1`` train on the plain set; the official values after each
epoch $e \ge$ ``warmup`` $- 1$ and trains epoch $e + 1$ on the result, which is what valuing at
the start of epoch $e + 1$ computes. The data-side mechanism is `asgml.core.train_set_plan`.

Deviations: (1) the valuation pass reads evaluation transforms (the official values the
train split with its training augmentation: random crops and frames); on data without
augmentation (synthetic, MMSA) nothing differs. (2) $N > 2$: the subset value $|S|$ when
right and exact Shapley over $2^N$ subsets (identical to the official for $N = 2$); sample
level adds copies keeping only $m$; modality level takes the largest minus the smallest gap
and keeps the two-modality factor $\tfrac23$. (3) $Z$ and the modality-level draws come from
the callback's own generator (official: the global numpy RNG). (4) The official trains
without unimodal losses; with ``model.gamma > 0`` the unimodal terms see the unmasked
features of a copy. Under DDP each rank values every ``world``-th sample and the
contributions are summed over ranks, so every rank builds the same plan.

Logged once per planned epoch: ``valuation/contribution_<m>`` (mean $\phi^m$ over the train
split), ``valuation/copies_<m>`` (entries keeping only $m$), ``valuation/train_size``;
modality level also ``valuation/part_contribution_<m>`` and ``valuation/difference``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import sum_over_ranks
from asgml.core.train_set_plan import TrainSetPlan, require_reloaded_train_loader

# (lower, upper, copies): 0.4 < phi < 1 -> 1, -0.1 < phi < 0.4 -> 2, phi < -0.1 -> 3
# (code/datasets/dataloader.py:156-186 @ 01f7e56, AV_KS_Dataset_sample_level.__init__)
OFFICIAL_BANDS: tuple[tuple[float | None, float | None, int], ...] = (
    (0.4, 1.0, 1),
    (-0.1, 0.4, 2),
    (None, -0.1, 3),
)


def subset_values(correct: Tensor) -> Tensor:
    """``(B, 2**N)`` subset values $|S| \\cdot$ correct from ``(B, 2**N)`` correctness.

    Column ``s`` is the subset whose bit ``k`` is set when modality ``k`` is present; column
    0 (the empty subset) is 0 whatever ``correct`` says."""
    size = torch.tensor([bin(s).count("1") for s in range(correct.shape[1])], dtype=torch.float64)
    return correct.to(torch.float64) * size


def sample_shapley(values: Tensor, num_modalities: int) -> Tensor:
    """``(B, N)`` exact Shapley values from ``(B, 2**N)`` subset values (bit ``k`` of the
    column index: modality ``k`` present)."""
    n = num_modalities
    if values.shape[-1] != 2**n:
        raise ValueError(f"values must have 2**{n} = {2**n} columns, got {values.shape[-1]}")
    phi = values.new_zeros(values.shape[0], n)
    for k in range(n):
        bit = 1 << k
        for s in range(2**n):
            if s & bit:
                continue
            r = bin(s).count("1")
            w = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            phi[:, k] += w * (values[:, s | bit] - values[:, s])
    return phi


def band_copies(
    contributions: Tensor, bands: Sequence[Sequence[float | int | None]] = OFFICIAL_BANDS
) -> Tensor:
    """``(n, N)`` int64 copies per sample and modality: ``copies`` of the first band
    ``(lower, upper, copies)`` with ``lower < phi < upper`` (``None``: unbounded), else 0."""
    out = torch.zeros(contributions.shape, dtype=torch.long)
    free = torch.ones(contributions.shape, dtype=torch.bool)
    for lower, upper, copies in bands:
        inside = free.clone()
        if lower is not None:
            inside &= contributions > float(lower)
        if upper is not None:
            inside &= contributions < float(upper)
        out[inside] = int(copies)
        free &= ~inside
    return out


def sample_level_plan(copies: Tensor, modalities: Sequence[str]) -> TrainSetPlan:
    """Every sample once (all modalities present), then sample by sample and modality by
    modality ``copies[i, m]`` entries of sample ``i`` with only ``m`` present."""
    n, nm = copies.shape
    flat = copies.reshape(-1)  # row-major: sample i, then modality m
    owner = torch.arange(n * nm).repeat_interleave(flat)
    present = torch.zeros(owner.numel(), nm, dtype=torch.bool)
    present[torch.arange(owner.numel()), owner % nm] = True
    return TrainSetPlan.identity(n, modalities).extend(owner // nm, present)


def modality_level_plan(
    contributions: Tensor,
    modalities: Sequence[str],
    part_ratio: float,
    alpha: float,
    generator: torch.Generator,
) -> tuple[TrainSetPlan, Tensor, float]:
    """``(plan, part means (N,), d)``: the plain set plus ``floor(d n)`` random samples
    with only the largest-gap modality present (see the module docstring)."""
    n, nm = contributions.shape
    num = int(n * part_ratio)
    if num < 1:
        raise ValueError(
            f"method.valuation.part_ratio={part_ratio} selects no sample of {n} (need >= 1)"
        )
    choice = torch.randint(n, (num,), generator=generator)
    part = contributions[choice].mean(0)
    gap = 1.0 - part
    d = float(alpha * (gap.max() - gap.min()) / 3 * 2)
    weak = nm - 1 - int(torch.argmax(gap.flip(0)))  # ties -> the later modality
    extra = torch.randint(n, (int(d * n),), generator=generator)
    present = torch.zeros(extra.numel(), nm, dtype=torch.bool)
    present[:, weak] = True
    return TrainSetPlan.identity(n, modalities).extend(extra, present), part, d


@torch.no_grad()
def subset_correct(module: Any, batch: Mapping[str, Any]) -> Tensor:
    """``(B, 2**N)`` bool: whether the fused prediction with only subset ``s`` present
    (features of the others zeroed before the fusion layer) is right; column 0 False."""
    inputs, lengths, y = module.split_batch(batch)
    feats = module.encode(inputs, lengths)
    mods = module.modalities
    out = torch.zeros(y.shape[0], 2 ** len(mods), dtype=torch.bool, device=y.device)
    for s in range(1, 2 ** len(mods)):
        masked = {
            m: (f if s >> k & 1 else torch.zeros_like(f))
            for k, (m, f) in enumerate((m, feats[m]) for m in mods)
        }
        out[:, s] = module.fusion(masked).argmax(dim=1) == y
    return out


class SampleValuation(BalancingCallback):
    """Sample- or modality-level modality valuation with train-set resampling.

    Args:
        mode: ``sample`` (per-sample copies, ``code/sample_level.py``) or ``modality``
            (``code/modality_level.py``).
        warmup: epochs on the plain set before the first valuation (official ``--warmup``).
        bands: sample level: ``[lower, upper, copies]`` rows, strict inequalities, ``null``
            unbounded; the first matching row counts.
        part_ratio: modality level: the fraction of samples in $Z$ (official ``--part_ratio``).
        alpha: modality level: scale of the resampled fraction (official ``--alpha``).
        batch_size: batch size of the valuation pass; ``None``: the datamodule's.
        seed: seed of the modality-level generator.
    """

    def __init__(
        self,
        mode: str = "sample",
        warmup: int = 5,
        bands: Sequence[Sequence[float | int | None]] | None = None,
        part_ratio: float = 0.2,
        alpha: float = 1.0,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in ("sample", "modality"):
            raise ValueError(f"method.valuation.mode must be 'sample' or 'modality', got {mode!r}")
        if warmup < 0:
            raise ValueError(f"method.valuation.warmup must be >= 0, got {warmup}")
        self.bands = [tuple(b) for b in (OFFICIAL_BANDS if bands is None else bands)]
        for b in self.bands:
            if len(b) != 3 or not isinstance(b[2], int) or b[2] < 0:
                raise ValueError(
                    f"method.valuation.bands rows must be [lower, upper, copies >= 0], got {list(b)}"
                )
        if not 0.0 < part_ratio <= 1.0:
            raise ValueError(f"method.valuation.part_ratio must be in (0, 1], got {part_ratio}")
        if alpha < 0:
            raise ValueError(f"method.valuation.alpha must be >= 0, got {alpha}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"method.valuation.batch_size must be >= 1, got {batch_size}")
        self.mode, self.warmup = mode, int(warmup)
        self.part_ratio, self.alpha, self.batch_size = float(part_ratio), float(alpha), batch_size
        self.generator = torch.Generator().manual_seed(int(seed))
        self.plan: TrainSetPlan | None = None
        self.plan_epoch = -1
        self.contributions: Tensor | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "eval_view"):
            raise ValueError(
                "method.valuation resamples the train set through the datamodule: it needs a "
                "datamodule deriving asgml.data.base.SplitDataModule (got "
                f"{type(dm).__name__ if dm is not None else 'loaders passed to fit'})"
            )
        require_reloaded_train_loader(trainer, "method.valuation")

    # ------------------------------------------------------------------ valuation
    def value(self, trainer: Any, module: Any, dataset: Dataset) -> Tensor:
        """``(n, N)`` float64 contributions of every sample of ``dataset`` (rank-summed)."""
        n, nm = len(dataset), len(module.modalities)  # type: ignore[arg-type]
        rank = int(getattr(trainer, "global_rank", 0))
        world = int(getattr(trainer, "world_size", 1))
        mine = list(range(rank, n, world))
        dm = getattr(trainer, "datamodule", None)
        loader = DataLoader(
            Subset(dataset, mine),
            batch_size=self.batch_size or int(getattr(dm, "batch_size", 64)),
            shuffle=False,
            num_workers=int(getattr(dm, "num_workers", 0)),
            generator=torch.Generator(),  # the global RNG stays untouched (exact resume)
        )
        was_training = module.training
        module.eval()
        plugin = getattr(trainer, "precision_plugin", None)
        parts = []
        try:
            for batch in loader:
                batch = move_data_to_device(batch, module.device)
                with plugin.forward_context() if plugin is not None else nullcontext():
                    parts.append(subset_correct(module, batch).cpu())
        finally:
            module.train(was_training)
        local = torch.zeros(n, nm, dtype=torch.float64)
        if parts:
            local[mine] = sample_shapley(subset_values(torch.cat(parts)), nm)
        return sum_over_ranks(trainer, local.to(module.device)).cpu()

    @override
    def on_train_set_plan(
        self, trainer: L.Trainer, module: L.LightningModule, datamodule: Any
    ) -> TrainSetPlan | None:
        epoch = trainer.current_epoch
        if epoch < self.warmup:
            return None
        if self.plan is not None and self.plan_epoch == epoch:  # resumed inside this epoch
            return self.plan
        contrib = self.value(trainer, module, datamodule.eval_view("train"))
        mods = module.modalities
        logs = {
            f"valuation/contribution_{m}": float(contrib[:, k].mean()) for k, m in enumerate(mods)
        }
        if self.mode == "sample":
            plan = sample_level_plan(band_copies(contrib, self.bands), mods)
        else:
            plan, part, d = modality_level_plan(
                contrib, mods, self.part_ratio, self.alpha, self.generator
            )
            logs.update(
                {f"valuation/part_contribution_{m}": float(part[k]) for k, m in enumerate(mods)}
            )
            logs["valuation/difference"] = d
        n = len(contrib)
        extra = plan.present[n:]
        single = extra.sum(dim=1) == 1
        for k, m in enumerate(mods):
            logs[f"valuation/copies_{m}"] = float((single & extra[:, k]).sum())
        logs["valuation/train_size"] = float(len(plan))
        self.log_now(trainer, logs)
        self.plan, self.plan_epoch, self.contributions = plan, epoch, contrib
        return plan

    # ---------------------------------------------------------------- checkpoint
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "plan": None if self.plan is None else self.plan.state_dict(),
            "plan_epoch": self.plan_epoch,
            "contributions": self.contributions,
            "generator": self.generator.get_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        plan = state_dict["plan"]
        self.plan = None if plan is None else TrainSetPlan.from_state_dict(plan)
        self.plan_epoch = int(state_dict["plan_epoch"])
        self.contributions = state_dict["contributions"]
        self.generator.set_state(state_dict["generator"])
