"""Per-step cost of the imbalance diagnostics (``diagnostics=probes|full``) on any method.

Each (variant, repetition) trains a fresh run of ``method`` on the synthetic task (the
configs of ``conf/``, composed as ``python -m asgml.train`` would) for ``warmup + steps``
steps; the last ``steps`` are timed from batch in hand to optimizer step done. Variants:
``none`` (no diagnostics), ``probes`` (``diagnostics=probes``) and ``full``
(``diagnostics=full`` without the end-of-fit t-SNE). They are interleaved in a rotating order
across repetitions so load drift hits all alike. Printed: the median step time of each
variant and the median over repetitions of the per-repetition ratio to ``none``. The
probes cost one probe fit every ``eval_freq`` steps (default 20), so the ratio depends on
``--eval-freq`` and on how large the model's step is next to ``probe_train_steps`` small
linear fits.

    python benchmarks/diagnostics_overhead.py                       # CPU-sized defaults
    python benchmarks/diagnostics_overhead.py --method ogm --steps 100 --accelerator gpu
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

import lightning as L
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from typing_extensions import override

import asgml  # noqa: F401  (registers resolvers)
from asgml.run.build import build

VARIANTS = {
    "none": [],
    "probes": ["diagnostics=probes"],
    "full": ["diagnostics=full", "diagnostics.callback.tsne=false"],
}


class StepTimer(L.Callback):
    """Wall time of every training step after ``warmup`` (batch in hand to step done)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self._t0 = warmup, [], 0.0

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._t0)


def time_variant(args: argparse.Namespace, extra: list[str]) -> float:
    overrides = [
        f"method={args.method}",
        f"dataset.datamodule.batch_size={args.batch}",
        f"dataset.datamodule.num_train={args.batch * (args.warmup + args.steps)}",
        f"trainer.accelerator={args.accelerator}",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "+trainer.enable_checkpointing=false",
        f"paths.output_dir={tempfile.mkdtemp(prefix='diag_overhead_')}",
        *extra,
    ]
    if extra:
        overrides.append(f"diagnostics.callback.eval_freq={args.eval_freq}")
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    L.seed_everything(0, workers=True)
    datamodule, model, callbacks = build(cfg)
    timer = StepTimer(args.warmup)
    cbs = [c for c in callbacks if not isinstance(c, ModelCheckpoint | LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=[*cbs, timer], logger=False)
    trainer.fit(model, datamodule=datamodule)
    return statistics.median(timer.times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="baseline")
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eval-freq", type=int, default=20)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--accelerator", default="cpu")
    args = p.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    names = list(VARIANTS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for n in order:
            times[n].append(time_variant(args, VARIANTS[n]))
    print(f"method={args.method} batch={args.batch} eval_freq={args.eval_freq} reps={args.reps}")
    for n in names:
        ratios = [t / b for t, b in zip(times[n], times["none"])]
        print(
            f"{n:>7}: median step {1e3 * statistics.median(times[n]):8.2f} ms   "
            f"ratio to none {statistics.median(ratios):.3f}"
        )


if __name__ == "__main__":
    main()
