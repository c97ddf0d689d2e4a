"""The whole training loop: asgml's ``Trainer`` against a plain PyTorch loop, in one process.

The question a researcher asks before leaving the official OGM-GE ``main.py`` (a plain
PyTorch loop; GeWu-Lab/OGM-GE_CVPR2022 @ 9b5ebd2, ``train_epoch``): is an epoch slower here?
Variants, all with the same model (two ResNet-18 encoders + concat fusion, built by
:class:`asgml.core.module.MultimodalModule`), the same in-memory CREMA-D-shaped data, batch,
SGD(lr 1e-3, momentum 0.9, weight decay 1e-4) and seed:

* ``plain``: ``zero_grad``, forward, CE loss, ``backward``, ``step``, ``loss.item()`` -- the
  official loop without modulation;
* ``plain_ogm_ge``: the official OGM-GE step, written here after ``main.py``'s structure:
  scores from the fusion slices, ``ratio_v = score_v / score_a``, ``coeff = 1 - tanh(alpha *
  relu(ratio))`` for the dominant side, then a Python loop over ``named_parameters`` that for
  every 4-D encoder gradient does ``g * coeff + zeros_like(g).normal_(0, g.std().item() + 1e-8)``
  (the official noise: one ``normal_`` and one host sync per tensor);
* ``baseline``, ``ogm``, ``boost_ogm``: asgml's ``L.Trainer`` with the callbacks of
  ``conf/method/<name>.yaml`` (``ogm`` is OGM-GE with the official formula and noise);
  a variant may carry overrides: ``ogm:method.ogm.noise_draw=flat``.

Each (variant, repetition) trains a fresh model for one epoch of ``warmup + steps`` batches;
the last ``steps`` are timed. Variants are interleaved in a rotating order across
repetitions, so load drift hits all alike. Printed: median epoch time (the timed batches,
data included), median step time (batch in hand to optimizer step done), the share of the
epoch spent between steps (waiting for the next batch, plus loop bookkeeping), and the
ratios ``baseline / plain`` and ``ogm / plain_ogm_ge``, ``boost_ogm / plain_ogm_ge`` (median
over repetitions of the per-repetition ratio).

    python benchmarks/loop_overhead.py                          # CPU-sized defaults
    python benchmarks/loop_overhead.py --batch 64 --size 224 --frames 3 --workers 8 \\
        --precision bf16-mixed --accelerator gpu --steps 50     # the full-size GPU run

The score in ``plain_ogm_ge`` is vectorised (``gather``) instead of the official Python
loop over the batch, which makes the plain reference a little faster than the official one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import subprocess
import time
import warnings
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from asgml.core.module import MultimodalModule
from asgml.data.synthetic import DictTensorDataset
from asgml.models.encoders import ResNet18Encoder
from asgml.run.config import method_callback_configs

PLAIN = ("plain", "plain_ogm_ge")
ASGML = ("baseline", "ogm", "boost_ogm")
RATIOS = (
    ("baseline", "plain"),
    ("ogm", "plain_ogm_ge"),
    ("boost_ogm", "plain_ogm_ge"),
    ("ogm:method.ogm.noise_draw=flat", "plain_ogm_ge"),
    ("boost_ogm:method.ogm.noise_draw=flat", "plain_ogm_ge"),
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(args: argparse.Namespace) -> DataLoader:
    n = args.batch * (args.warmup + args.steps)
    g = torch.Generator().manual_seed(0)
    data = {
        "audio": torch.randn(n, 1, 257, 188, generator=g),
        "visual": torch.randn(n, 3, args.frames, args.size, args.size, generator=g),
    }
    y = torch.randint(0, 6, (n,), generator=g)
    return DataLoader(
        DictTensorDataset(data, y),
        batch_size=args.batch,
        shuffle=False,
        num_workers=args.workers,
        pin_memory=args.accelerator == "gpu",
        persistent_workers=False,
    )


def build(**opts) -> MultimodalModule:
    torch.manual_seed(0)
    encs = {
        "audio": ResNet18Encoder(in_channels=1),
        "visual": ResNet18Encoder(in_channels=3, temporal=True),
    }
    sgd = partial(torch.optim.SGD, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    return MultimodalModule(encs, num_classes=6, optimizer=sgd, **opts)


class Timer:
    """Per-step compute time and the epoch time of the timed batches."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.steps: list[float] = []
        self.t_first = 0.0
        self.t_last = 0.0
        self._t0 = 0.0

    def start(self, i: int) -> None:
        self._t0 = time.perf_counter()
        if i == self.warmup:
            self.t_first = self._t0

    def end(self, i: int) -> None:
        t = time.perf_counter()
        if i >= self.warmup:
            self.steps.append(t - self._t0)
            self.t_last = t

    def result(self) -> tuple[float, float, float]:
        # the epoch starts when the first timed batch is requested: add the first gap
        # estimate by the median gap between timed steps
        compute = sum(self.steps)
        span = self.t_last - self.t_first
        gaps = span - compute
        n = len(self.steps)
        epoch = span + gaps / max(n - 1, 1)
        return epoch, statistics.median(self.steps), (epoch - compute) / epoch


class LightningTimer(L.Callback):
    def __init__(self, timer: Timer, device: torch.device) -> None:
        self.timer = timer
        self.device = device

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(self.device)
        self.timer.start(batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        self.timer.end(batch_idx)


def method_setup(spec: str) -> tuple[list[L.Callback], dict]:
    """``spec``: a method name, optionally with overrides (``ogm:method.ogm.noise_draw=flat``)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    name, _, extra = spec.partition(":")
    overrides = [f"method={name}", *filter(None, extra.split(","))]
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    cbs = [instantiate(c) for _, c in method_callback_configs(cfg.method)]
    # the model options the method needs (conf/method/*.yaml `model_defaults`)
    return cbs, dict(cfg.method.get("model_defaults") or {})


def run_asgml(name: str, loader: DataLoader, args: argparse.Namespace) -> Timer:
    cbs, module_opts = method_setup(name)
    timer = Timer(args.warmup)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    trainer = L.Trainer(
        max_epochs=1,
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[*cbs, LightningTimer(timer, device)],
    )
    trainer.fit(build(**module_opts), train_dataloaders=loader)
    return timer


def ogm_ge_official_(model: MultimodalModule, uni: dict, y: torch.Tensor, alpha: float) -> None:
    """The official OGM-GE modulation (``main.py``, ``train_epoch``), written after its
    structure: a Python loop over ``named_parameters`` with per-tensor noise."""
    a, v = model.modalities
    score_a = torch.softmax(uni[a].float(), 1).gather(1, y[:, None]).sum()
    score_v = torch.softmax(uni[v].float(), 1).gather(1, y[:, None]).sum()
    ratio_v = score_v / score_a
    ratio_a = 1 / ratio_v
    if ratio_v > 1:  # host sync, as in the official code
        coeff_v, coeff_a = 1 - torch.tanh(alpha * torch.relu(ratio_v)), 1.0
    else:
        coeff_a, coeff_v = 1 - torch.tanh(alpha * torch.relu(ratio_a)), 1.0
    for name, p in model.named_parameters():
        if p.grad is None or p.grad.dim() != 4:
            continue
        if name.startswith(f"encoders.{a}."):
            coeff = coeff_a
        elif name.startswith(f"encoders.{v}."):
            coeff = coeff_v
        else:
            continue
        p.grad = p.grad * coeff + torch.zeros_like(p.grad).normal_(0, p.grad.std().item() + 1e-8)


def run_plain(name: str, loader: DataLoader, args: argparse.Namespace) -> Timer:
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    model = build().to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    timer = Timer(args.warmup)
    for i, batch in enumerate(loader):
        sync(device)
        timer.start(i)
        x = {m: batch[m].to(device, non_blocking=True) for m in model.modalities}
        y = batch["label"].to(device, non_blocking=True)
        opt.zero_grad()
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            logits, uni, _ = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        if name == "plain_ogm_ge":
            ogm_ge_official_(model, uni, y, args.alpha)
        opt.step()
        loss.item()  # the official loop accumulates `loss.item()` every step
        sync(device)
        timer.end(i)
    return timer


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="visual H = W")
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed batches per repetition")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--alpha", type=float, default=0.8, help="OGM-GE alpha (CREMA-D)")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's)")
    p.add_argument("--variants", nargs="*", default=[*PLAIN, *ASGML])
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    loader = make_data(args)
    res: dict[str, list[tuple[float, float, float]]] = {v: [] for v in args.variants}
    loads = []
    for rep in range(args.reps):
        k = rep % len(args.variants)
        for v in args.variants[k:] + args.variants[:k]:
            t = (run_plain if v in PLAIN else run_asgml)(v, loader, args)
            res[v].append(t.result())
        loads.append(os.getloadavg()[0])
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(
        f"\n## visual 3x{args.frames}x{args.size}x{args.size}, audio 1x257x188, batch "
        f"{args.batch}, {args.precision} on {args.accelerator}, {torch.get_num_threads()} "
        f"threads, {args.workers} workers; {args.reps} repetitions x {args.steps} steps"
    )
    print(f"load average (1 min) after each repetition: {', '.join(f'{x:.1f}' for x in loads)}")
    print(f"uptime: {uptime}")
    print("| variant | median epoch (s) | median step (ms) | between steps (% of epoch) |")
    print("|---|---:|---:|---:|")
    for v in args.variants:
        e, s, w = (statistics.median(r[i] for r in res[v]) for i in range(3))
        print(f"| {v} | {e:.2f} | {1000 * s:.1f} | {100 * w:.1f} % |")
    print("| ratio | epoch | step |")
    print("|---|---:|---:|")
    for num, den in RATIOS:
        if num in res and den in res:
            pairs = list(zip(res[num], res[den]))
            re = statistics.median(a[0] / b[0] for a, b in pairs)
            rs = statistics.median(a[1] / b[1] for a, b in pairs)
            print(f"| {num} / {den} | {re:.3f} | {rs:.3f} |")


if __name__ == "__main__":
    main()
