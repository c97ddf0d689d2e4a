"""Host syncs on the per-step path of every method (``docs/performance.md``).

A CPU has no sync detector (``torch.cuda.set_sync_debug_mode`` needs a GPU), so
:class:`SyncCounter` counts, while a training step runs, the Python-level calls that force a
device-to-host wait on a GPU: ``Tensor.item/tolist/numpy/cpu``, ``bool/float/int/index`` of a
tensor, ``torch.unique/nonzero/equal/allclose`` and boolean-mask indexing. Each is charged to
the first frame outside ``torch`` that made it (``file, function``); calls from inside
``torch.optim`` are not counted (the optimizers' step counters live on the host). Logging
steps (``trainer.log_every_n_steps``) and a method's own evaluation or window boundaries may
sync; every other step must not, except where the method's algorithm branches on a value
every step (listed in ``INHERENT`` and in ``docs/performance.md``).
"""

from __future__ import annotations

import collections
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor

from asgml.core.base import BalancingCallback
from asgml.methods.gblending import GBlending
from asgml.methods.unimodal import make_unimodal
from asgml.run.config import method_callback_configs
from tests.conftest import compose_cfg
from tests.helpers import tiny_mlp_module, vector_loader

# sample_valuation needs a SplitDataModule (its train-set plans replace the train split at
# every epoch start, outside the step); its per-step path is the module's present-mask multiply
NEEDS_DATAMODULE = {"sample_valuation"}
METHODS = sorted(
    p.stem
    for p in (Path(__file__).parents[2] / "conf" / "method").glob("*.yaml")
    if p.stem not in NEEDS_DATAMODULE
)
STEPS, LOG_EVERY = 8, 4  # logging steps: 3 and 7
# overrides that put a method's per-step work into epoch 0
ACTIVE = {
    "opm": ["method.opm.modulation_starts=0"],
    "greedy": ["method.greedy.starting_epoch=0"],
    "arl": ["method.arl.start=-1"],
    "boost": ["method.probe.eval_freq=5"],
    "boost_ogm": ["method.probe.eval_freq=5"],
    "boost_cggm": ["method.probe.eval_freq=5"],
    "staleness": ["method.staleness.update_freq=5"],
}
# steps at which a method may sync by design (evaluations, window ends)
BOUNDARY: dict[str, Callable[[int], bool]] = {
    "boost": lambda s: s % 5 == 0,  # probe evaluation every eval_freq steps
    "boost_ogm": lambda s: s % 5 == 0,
    "boost_cggm": lambda s: s % 5 == 0,
    "staleness": lambda s: (s + 1) % 5 == 0,  # tau recomputed after update_freq steps
}
# per-step host reads inherent to a method: (file, function) -> at most this many per step
INHERENT: dict[str, dict[tuple[str, str], int]] = {
    # the re-balancing decision branches on the gradient energies (one read per decision)
    "greedy": {("greedy.py", "on_train_gradients"): 1},
    # the official per-step coin is drawn from a host (CPU) generator: not a device sync
    "opm": {("opm.py", "plan_drop"): 1},
}

_PATCHED = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
_FUNCS = ("unique", "nonzero", "equal", "allclose", "masked_select")


def _site() -> tuple[str, str] | None:
    """``(file, function)`` of the first caller outside ``torch``; ``None`` inside
    ``torch.optim`` (host-side step counters)."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename.replace("\\", "/")
        if "/torch/optim/" in name:
            return None
        if "/torch/" not in name and not name.endswith("test_reliability_host_syncs.py"):
            return Path(name).name, f.f_code.co_name
        f = f.f_back
    return None


class SyncCounter:
    """Counts host-sync calls per training step while :attr:`step` is not ``None``."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.counts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.logging: set[int] = set()
        self.logged: dict[int, set[str]] = collections.defaultdict(set)  # `log` calls per step
        self._saved: list[tuple[Any, str, Any]] = []

    def _record(self) -> None:
        if self.step is not None:
            site = _site()
            if site is not None:
                self.counts[self.step][site] += 1

    def _wrap(self, owner: Any, name: str, check: Callable[..., bool] | None = None) -> None:
        fn = getattr(owner, name)
        self._saved.append((owner, name, fn))

        def wrapped(*a: Any, **k: Any) -> Any:
            if self.step is not None and (check is None or check(*a, **k)):
                self._record()
            return fn(*a, **k)

        setattr(owner, name, wrapped)

    def __enter__(self) -> SyncCounter:
        for name in _PATCHED:
            self._wrap(Tensor, name)
        for name in _FUNCS:
            self._wrap(torch, name)
            if hasattr(Tensor, name):
                self._wrap(Tensor, name)

        def bool_index(_self: Tensor, idx: Any, *rest: Any) -> bool:
            idxs = idx if isinstance(idx, tuple) else (idx,)
            return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in idxs)

        self._wrap(Tensor, "__getitem__", bool_index)
        self._wrap(Tensor, "__setitem__", bool_index)
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)
        self._saved.clear()


class StepWindow(L.Callback):
    """Opens the counter at the first ``on_train_batch_start`` hook (place it first) and
    closes it at the last ``on_train_batch_end`` (a second instance placed last)."""

    def __init__(self, counter: SyncCounter, opens: bool) -> None:
        self.counter, self.opens = counter, opens

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.opens:
            self.counter.step = trainer.global_step
            if BalancingCallback.logging_step(trainer):
                self.counter.logging.add(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.opens:
            self.counter.step = None


def _checkpoint_overrides(method: str, root: Path) -> list[str]:
    """UMT's teachers and the linear probe's model: checkpoints of fresh tiny models."""
    model = tiny_mlp_module(unimodal_heads=method == "linear_probe")
    if method == "linear_probe":
        torch.save({"state_dict": model.state_dict()}, root / "model.ckpt")
        return [f"method.linear_probe.checkpoint={root / 'model.ckpt'}"]
    if method == "umt":
        out = []
        for m in model.modalities:
            uni = copy.deepcopy(model)
            make_unimodal(uni, m)
            config = {"method": {"name": "unimodal", "modality": m}}
            path = root / f"teacher_{m}.ckpt"
            torch.save({"state_dict": uni.state_dict(), "asgml_config": config}, path)
            out.append(f"method.umt.teachers.{m}={path}")
        return out
    return []


def count_syncs(method: str, root: Path, **module_kw: Any) -> SyncCounter:
    """Train ``method`` on the tiny MLP task for :data:`STEPS` steps, counting syncs."""
    overrides = [f"method={method}", *ACTIVE.get(method, []), *_checkpoint_overrides(method, root)]
    if method in ("ogm", "boost_ogm"):
        overrides.append("method.ogm.variant=generalized")  # MLP encoders: no conv weights
    cfg = compose_cfg(overrides)
    cbs = [instantiate(c) for _, c in method_callback_configs(cfg.method)]
    for cb in cbs:
        if isinstance(cb, GBlending):  # per-step path only (no weight re-estimation)
            cb.weights = {"audio": 1.0, "visual": 1.0, "fused": 1.0}
            cb.on_train_epoch_start = lambda *a, **k: None
    opts = {**dict(cfg.method.get("model_defaults") or {}), **module_kw}
    module = tiny_mlp_module(**opts)
    counter = SyncCounter()
    log = module.log

    def recording_log(name: str, *a: Any, **k: Any) -> None:
        if counter.step is not None:
            counter.logged[counter.step].add(name)
        log(name, *a, **k)

    module.log = recording_log
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(root),
        log_every_n_steps=LOG_EVERY,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[StepWindow(counter, True), *cbs, StepWindow(counter, False)],
    )
    with counter:
        trainer.fit(module, train_dataloaders=vector_loader(n=8 * STEPS, batch_size=8))
    return counter


def ordinary_step_syncs(method: str, counter: SyncCounter) -> dict[int, dict]:
    """The syncs of the steps that are neither logging nor boundary steps, minus the
    method's inherent ones (within their per-step allowance)."""
    boundary = BOUNDARY.get(method, lambda s: False)
    allowed = INHERENT.get(method, {})
    out = {}
    for step in range(STEPS):
        if step in counter.logging or boundary(step):
            continue
        extra = {
            site: n for site, n in counter.counts.get(step, {}).items() if n > allowed.get(site, 0)
        }
        if extra:
            out[step] = extra
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_no_host_sync_on_ordinary_steps(method: str, tmp_path: Path) -> None:
    # the module's non-finite guard syncs once per checked step: check only at step 999
    counter = count_syncs(method, tmp_path, nonfinite_check_every=1000)
    assert counter.logging == {3, 7}
    assert ordinary_step_syncs(method, counter) == {}
    # `log` calls only on the steps Lightning writes (the module's loss among them)
    quiet = [s for s in range(STEPS) if s not in counter.logging]
    assert {s: counter.logged.get(s, set()) for s in quiet} == {s: set() for s in quiet}
    assert all("train/loss_step" in counter.logged[s] for s in counter.logging)


def test_the_counter_sees_the_module_guard(tmp_path: Path) -> None:
    """The non-finite guard without a GradScaler: one sync per checked step, in
    ``training_step`` (in the guard it calls); with ``nonfinite_check_every=4`` only at steps
    3 and 7."""
    site = ("guard.py", "_skip_nonfinite_step")
    (tmp_path / "every").mkdir()
    every = count_syncs("baseline", tmp_path / "every")
    assert {s: dict(c) for s, c in every.counts.items()} == {s: {site: 1} for s in range(STEPS)}
    (tmp_path / "k4").mkdir()
    k4 = count_syncs("baseline", tmp_path / "k4", nonfinite_check_every=4)
    assert {s: dict(c) for s, c in k4.counts.items() if c} == {3: {site: 1}, 7: {site: 1}}


class EpochRecorder(BalancingCallback):
    """The summed loss terms, logits and labels of every step, per epoch (place it last)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float], Tensor, Tensor]] = []

    def on_train_gradients(self, trainer, module, out) -> None:
        terms = {k: float(v) for k, v in out.losses.items()}
        self.steps.append((trainer.current_epoch, terms, out.logits.detach(), out.labels))
        self.loss_at = getattr(self, "loss_at", {})
        self.loss_at[trainer.global_step] = float(out.loss)


def test_epoch_values_are_lightnings_epoch_means(tmp_path: Path) -> None:
    """The loss terms and the accuracy, accumulated on the device and logged at the epoch
    end, are what ``log(..., on_epoch=True)`` every step wrote: batch-size weighted means
    over the epoch's steps (uneven last batch), reset every epoch."""
    import csv

    rec = EpochRecorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[rec],
    )
    trainer.fit(tiny_mlp_module(gamma=0.5), train_dataloaders=vector_loader(n=36, batch_size=8))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    for epoch in (0, 1):
        steps = [(t, z, y) for e, t, z, y in rec.steps if e == epoch]
        assert len(steps) == 5  # 4 x 8 + 1 x 4
        sizes = [y.shape[0] for _, _, y in steps]
        (row,) = [r for r in rows if r.get("epoch") == str(epoch) and r.get("train/acc")]
        for k in ("fused", "unimodal_audio", "unimodal_visual"):
            mean = sum(t[k] * b for (t, _, _), b in zip(steps, sizes)) / sum(sizes)
            assert float(row[f"train/loss_{k}"]) == pytest.approx(mean, rel=1e-6)
        correct = sum(int((z.argmax(1) == y).sum()) for _, z, y in steps)
        assert float(row["train/acc"]) == pytest.approx(correct / sum(sizes), rel=1e-6)
        loss = sum(sum(t.values()) * b for (t, _, _), b in zip(steps, sizes)) / sum(sizes)
        assert float(row["train/loss_epoch"]) == pytest.approx(loss, rel=1e-6)
    # the step loss on the steps Lightning writes (every 2nd, and the last), at that step
    written = {int(r["step"]): float(r["train/loss_step"]) for r in rows if r["train/loss_step"]}
    assert sorted(written) == [1, 3, 5, 7, 9]
    assert written == pytest.approx({s: rec.loss_at[s] for s in written}, rel=1e-6)
    # what a monitor reads: the last epoch's mean under `train/loss`
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(loss, rel=1e-6)
