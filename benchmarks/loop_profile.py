"""Where asgml's per-step time goes against a plain loop, on a tiny model (one process).

A tiny two-modality MLP (batch 8, 400 steps) makes the per-step Python cost visible: the
plain loop (zero_grad, forward, CE, backward, SGD step, ``loss.item()``) against asgml's
``Trainer`` with ``method=baseline`` (CSV logger, ``log_every_n_steps=50``, no progress bar),
interleaved over repetitions; then one cProfile'd asgml epoch, split into Lightning's and
asgml's parts (per step, profiler overhead included, so read the split, not the sum).

    python benchmarks/loop_profile.py --reps 3
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import statistics
import tempfile
import time
import warnings
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from asgml.core.module import MultimodalModule
from asgml.data.synthetic import DictTensorDataset
from asgml.models.encoders import MLPEncoder

MODS = ("audio", "visual")


def build() -> MultimodalModule:
    torch.manual_seed(0)
    encs = {m: MLPEncoder(input_dim=16, hidden_dim=32, feature_dim=32, dropout=0.0) for m in MODS}
    sgd = partial(torch.optim.SGD, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    return MultimodalModule(encs, 6, optimizer=sgd)


def plain(loader: DataLoader) -> float:
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    t0 = time.perf_counter()
    for batch in loader:
        opt.zero_grad()
        logits, _, _ = model({m: batch[m] for m in MODS})
        loss = F.cross_entropy(logits, batch["label"])
        loss.backward()
        opt.step()
        loss.item()
    return time.perf_counter() - t0


class EpochTimer(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.t0


def asgml(loader: DataLoader) -> float:
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tempfile.mkdtemp()),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=50,
        callbacks=[timer],
    )
    trainer.fit(build(), train_dataloaders=loader)
    return timer.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    n, b = args.steps, 8
    g = torch.Generator().manual_seed(0)
    data = {m: torch.randn(n * b, 16, generator=g) for m in MODS}
    y = torch.randint(0, 6, (n * b,), generator=g)
    loader = DataLoader(DictTensorDataset(data, y), batch_size=b)
    res: dict[str, list[float]] = {"plain": [], "asgml": []}
    for _ in range(args.reps):
        res["plain"].append(plain(loader))
        res["asgml"].append(asgml(loader))
    for k, v in res.items():
        per = " ".join(f"{1000 * x / n:.2f}" for x in v)
        print(f"{k}: ms/step {per} (median {1000 * statistics.median(v) / n:.2f})")
    gap = statistics.median(a - b for a, b in zip(res["asgml"], res["plain"]))
    print(f"gap: {1000 * gap / n:.2f} ms/step (median of the per-repetition differences)")

    prof = cProfile.Profile()
    prof.enable()
    asgml(loader)
    prof.disable()
    st = pstats.Stats(prof).stats  # type: ignore[attr-defined]

    def cum(file: str, fn: str) -> float:
        return 1000 * sum(v[3] for k, v in st.items() if k[0].endswith(file) and k[2] == fn) / n

    rows = [
        ("whole step (epoch loop advance)", cum("training_epoch_loop.py", "advance")),
        ("  fetch the batch (Lightning fetcher + DataLoader)", cum("fetchers.py", "__next__")),
        ("  asgml training_step", cum("asgml/core/module.py", "training_step")),
        ("    forward (planned_forward)", cum("asgml/core/module.py", "planned_forward")),
        ("    step plan", cum("asgml/core/module.py", "_begin_step_plan")),
        ("    manual_backward (Lightning + autograd)", cum("core/module.py", "manual_backward")),
        ("    optimizer step (Lightning + SGD)", cum("core/optimizer.py", "step")),
        ("    non-finite guard", cum("asgml/core/toolkit.py", "loss_and_grads_finite")),
        ("    epoch sums", cum("asgml/core/module.py", "_accumulate_term")),
        ("    LightningModule.log", cum("core/module.py", "log")),
    ]
    print("| part | ms / step (profiled) |\n|---|---:|")
    for name, v in rows:
        print(f"| {name} | {v:.3f} |")


if __name__ == "__main__":
    main()
