"""Per-step cost of each balancing method relative to the baseline, in one process.

Two cases:

* ``resnet``: CREMA-D-shaped inputs -- audio ``(B, 1, 257, 188)`` spectrograms and visual
  ``(B, 3, T, H, W)`` frames -- through two ResNet-18 encoders (batch, H x W and T
  configurable so it runs on a CPU);
* ``mlp``: a MOSEI-like 3-modality case (text 50 x 768, audio 500 x 74, vision 500 x 35)
  with MLP encoders, where per-step Python overhead matters most.

Every method is the one users run: its callbacks are built from ``conf/method/<name>.yaml``.
Each (method, repetition) trains a fresh model for ``warmup + steps`` steps through a real
Lightning ``Trainer``; the time from ``on_train_batch_start`` to ``on_train_batch_end`` of
the last ``steps`` steps is recorded. Methods are interleaved (in a rotating order) across
repetitions so drift in machine load hits all of them alike. Printed per method: the median
step time; ``x baseline``, the median over repetitions of (method median / baseline median
of the same repetition); and the time spent inside the method's callback hooks per step
(mean), which isolates the method's own work from machine noise (extra forward/backward
passes a method triggers through the loss are in the step time, not in the hook time).

    python benchmarks/step_overhead.py                       # CPU-sized defaults
    python benchmarks/step_overhead.py --case resnet --batch 64 --size 224 --frames 3 \
        --precision bf16-mixed --accelerator gpu             # the full-size GPU run
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from asgml.core.module import MultimodalModule
from asgml.core.train_set_plan import PlannedDataset, TrainSetPlan
from asgml.data.synthetic import DictTensorDataset
from asgml.methods.gblending import GBlending
from asgml.methods.unimodal import make_unimodal
from asgml.methods.valuation import SampleValuation
from asgml.models.encoders import MLPEncoder, ResNet18Encoder
from asgml.run.config import method_callback_configs

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
DEFAULT_METHODS = [
    "baseline",
    "ogm",
    "boost",
    "boost_ogm",
    "ogm:method.ogm.mode=OGM",
    "boost_ogm:method.ogm.mode=OGM",
    "staleness",
    "inforeg",
    "miles",
    "cggm",
    "boost_cggm",
    "agm",
    "mmpareto",
    "arl",
    "opm:method.opm.modulation_starts=0",
    "amco",
    "mla",
    # the timed steps are stage 0's boosting steps (one encoder updated, the others no_grad)
    "reconboost",
    "relearning",
    "greedy:method.greedy.starting_epoch=0",
    "mmcosine",
    "pmr",
    "mbsd",
    "cml",
    "lfm",
    "gblending",
    "unimodal",
    "umt",
    "linear_probe",
    "sample_valuation",
]


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self.hook_times: list[float] = []
        self.hook_time = 0.0
        self._t0 = 0.0

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self.hook_time = 0.0
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._t0)
            self.hook_times.append(self.hook_time)


HOOKS = ("on_train_losses", "on_train_gradients", "on_train_batch_start", "on_train_batch_end")


def time_hooks(cb: L.Callback, timer: StepTimer) -> None:
    """Wrap ``cb``'s per-step hooks so the time spent in them is added to ``timer``."""
    for name in HOOKS:
        if getattr(type(cb), name) is getattr(L.Callback, name, None):
            continue  # not overridden: Lightning's no-op
        fn = getattr(cb, name)

        def wrapped(*a, _fn=fn, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                timer.hook_time += time.perf_counter() - t0

        setattr(cb, name, wrapped)


def method_callbacks(spec: str, case: str) -> list[L.Callback]:
    """``spec`` is a method name, optionally with overrides: ``boost_ogm:method.ogm.mode=OGM``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    name, _, extra = spec.partition(":")
    overrides = [f"method={name}", *filter(None, extra.split(","))]
    if case == "mlp" and "ogm" in name:
        overrides.append("method.ogm.variant=generalized")
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return [instantiate(c) for _, c in method_callback_configs(cfg.method)], (
        cfg.method.get("model_defaults") or {}
    )


def make_case(args: argparse.Namespace) -> tuple[callable, DataLoader]:
    n = args.batch * (args.warmup + args.steps)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 6, (n,), generator=g)
    if args.case == "resnet":
        data = {
            "audio": torch.randn(n, 1, 257, 188, generator=g),
            "visual": torch.randn(n, 3, args.frames, args.size, args.size, generator=g),
        }

        def build(**opts) -> MultimodalModule:
            torch.manual_seed(0)
            encs = {
                "audio": ResNet18Encoder(in_channels=1),
                "visual": ResNet18Encoder(in_channels=3, temporal=True),
            }
            return MultimodalModule(encs, num_classes=6, **opts)

    else:
        dims = {"text": (50, 768), "audio": (500, 74), "vision": (500, 35)}
        data = {m: torch.randn(n, *d, generator=g) for m, d in dims.items()}

        def build(**opts) -> MultimodalModule:
            torch.manual_seed(0)
            encs = {m: MLPEncoder(input_dim=d[1]) for m, d in dims.items()}
            return MultimodalModule(encs, num_classes=6, **opts)

    loader = DataLoader(DictTensorDataset(data, y), batch_size=args.batch, shuffle=False)
    return build, loader


def checkpoint_specs(build, root: Path) -> dict[str, str]:
    """Method specs that need checkpoints (UMT's teachers, the linear probe's model), with
    checkpoints of freshly built models written under ``root``."""
    model = build()
    probe = root / "model.ckpt"
    torch.save({"state_dict": model.state_dict()}, probe)
    teachers = []
    for m in model.modalities:
        uni = copy.deepcopy(model)
        make_unimodal(uni, m)
        path = root / f"teacher_{m}.ckpt"
        config = {"method": {"name": "unimodal", "modality": m}}
        torch.save({"state_dict": uni.state_dict(), "asgml_config": config}, path)
        teachers.append(f"method.umt.teachers.{m}={path}")
    return {
        "umt": "umt:" + ",".join(teachers),
        "linear_probe": f"linear_probe:method.linear_probe.checkpoint={probe}",
    }


def planned_loader(loader: DataLoader) -> DataLoader:
    """``loader``'s data as a train-set plan in which every other entry keeps one modality
    (in turn): the steps sample-level valuation trains on after its warm-up."""
    base = loader.dataset
    mods = list(base.tensors)
    present = torch.ones(len(base), len(mods), dtype=torch.bool)
    for j in range(1, len(base), 2):
        present[j] = False
        present[j, (j // 2) % len(mods)] = True
    plan = TrainSetPlan(torch.arange(len(base)), present, tuple(mods))
    return DataLoader(PlannedDataset(base, plan), batch_size=loader.batch_size, shuffle=False)


def run_once(name: str, build, loader, args) -> tuple[list[float], list[float]]:
    cbs, module_opts = method_callbacks(args.specs.get(name, name), args.case)
    if any(isinstance(cb, SampleValuation) for cb in cbs):
        # per-step cost: steps on a planned train set; the callback itself acts once per
        # epoch (the valuation pass, reported below) and needs a datamodule
        cbs = [cb for cb in cbs if not isinstance(cb, SampleValuation)]
        loader = planned_loader(loader)
    timer = StepTimer(args.warmup)
    for cb in cbs:
        if isinstance(cb, GBlending):
            # per-step cost only: the weight re-estimation (N + 1 model copies trained for
            # super_epoch epochs, every super_epoch epochs) runs at epoch start
            cb.weights = {m: 1.0 for m in [*build().modalities, "fused"]}
            cb.on_train_epoch_start = lambda *a, **k: None
        time_hooks(cb, timer)
    trainer = L.Trainer(
        max_steps=args.warmup + args.steps,
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[*cbs, timer],
    )
    trainer.fit(build(**dict(module_opts)), train_dataloaders=loader)
    return timer.times, timer.hook_times


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--case", choices=["resnet", "mlp", "both"], default="both")
    p.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="method names, optionally with overrides: boost_ogm:method.ogm.mode=OGM",
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="visual H = W")
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="timed steps per repetition")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    methods = args.methods or [
        m for m in DEFAULT_METHODS if (CONF / f"{m.partition(':')[0]}.yaml").exists()
    ]
    cases = ["resnet", "mlp"] if args.case == "both" else [args.case]
    tmp = tempfile.TemporaryDirectory()
    for case in cases:
        args.case = case
        build, loader = make_case(args)
        (Path(tmp.name) / case).mkdir()
        args.specs = checkpoint_specs(build, Path(tmp.name) / case)
        medians: dict[str, list[float]] = {m: [] for m in methods}  # per repetition
        hooks: dict[str, list[float]] = {m: [] for m in methods}
        failed: dict[str, str] = {}
        for rep in range(args.reps):
            order = methods[rep % len(methods) :] + methods[: rep % len(methods)]  # rotate
            for m in order:
                if m in failed:
                    continue
                try:
                    t, h = run_once(m, build, loader, args)
                except Exception as e:  # a method that does not support this case
                    failed[m] = f"{type(e).__name__}: {str(e).splitlines()[0][:70]}"
                    continue
                medians[m].append(statistics.median(t))
                hooks[m].extend(h)
        shape = (
            f"audio 1x257x188, visual 3x{args.frames}x{args.size}x{args.size}"
            if case == "resnet"
            else "text 50x768, audio 500x74, vision 500x35"
        )
        print(
            f"\n## {case}: {shape}, batch {args.batch}, {args.precision} on {args.accelerator}, "
            f"{torch.get_num_threads()} threads; {args.reps} repetitions x {args.steps} steps"
        )
        print(
            "| method | median step (ms) | x baseline | callback time / step (ms) "
            "| callbacks / baseline step |"
        )
        print("|---|---:|---:|---:|---:|")
        base = medians["baseline"]
        base_step = statistics.median(base)
        for m in methods:
            if m in failed:
                print(f"| {m} | n/a | {failed[m]} | | |")
                continue
            # ratio per repetition (same machine state), then the median over repetitions
            ratio = statistics.median(a / b for a, b in zip(medians[m], base))
            hook = statistics.mean(hooks[m]) if hooks[m] else 0.0
            print(
                f"| {m} | {1000 * statistics.median(medians[m]):.2f} | {ratio:.3f} "
                f"| {1000 * hook:.3f} | {100 * hook / base_step:.2f} % |"
            )
        if "gblending" in methods:
            print(
                "\ngblending: per-step cost only; every `super_epoch` epochs it also trains "
                "N + 1 model copies for `super_epoch` epochs, (N + 1) x the training compute."
            )
        if "pmr" in methods:
            print(
                "pmr: plus, every epoch, a forward pass (no backward) over a tenth of the training "
                "set for the prototypes."
            )
        if "sample_valuation" in methods:
            print(
                "sample_valuation: steps on a planned set (half the entries keep one modality); "
                "plus, every epoch after the warm-up, a no-grad pass over the training set (the "
                "encoders once, the fusion layer for each of the 2^N - 1 modality subsets), and "
                "the epoch grows by the added copies."
            )
    tmp.cleanup()


if __name__ == "__main__":
    main()
