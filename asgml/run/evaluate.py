"""Evaluate a checkpoint: ``python -m asgml.eval ckpt_path=<run>/checkpoints/best.ckpt``.

Rebuilds the datamodule and the model from the resolved run config stored in the
checkpoint (key ``asgml_config``), loads the weights and reports on one split (``test`` by
default):

* fused accuracy / macro-F1 and each modality's unimodal accuracy / macro-F1;
* the fused accuracy of every modality subset ``S`` (absent modalities zeroed) and each
  modality's **Shapley value** over those subsets, the imbalance measure BalanceBenchmark
  reports. ``v(S)`` is the fused accuracy with only ``S`` present; ``v(empty)`` the accuracy
  with every modality zeroed.

Absent modalities are zeroed at the **feature** level by default (``mask=feature``): each
encoder runs once on the real input and the fusion head sees zeros for the absent
modalities, so a modality's "missing" value is exactly "contributes nothing to the head".
``mask=input`` zeroes the raw input tensors instead and re-runs the encoders (what a model
sees when a sensor is blank; encoder biases and normalisation statistics still produce
non-zero features).

The method's test-time fusion is applied as in training (MLA's uncertainty weights, AMCo's
star layer, Greedy's gates, ReconBoost's ensemble), to the subsets' features too: the method
callbacks are rebuilt from the stored config (`attach_methods`). A ``method=unimodal``
checkpoint is rebuilt as its single-modality model; it reports that modality's unimodal
metrics only.

The result is written as JSON to ``out`` (default: ``eval.json`` in the checkpoint's run
directory, i.e. the parent of ``checkpoints/``), where ``python -m asgml.report
--with-shapley`` picks it up. Config: ``conf/eval.yaml``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from asgml.core.base import BalancingCallback
from asgml.data.progress import progress
from asgml.report.shapley import Coalition, all_subsets, coalition_name, shapley_values
from asgml.run.build import build, build_method_callbacks
from asgml.run.config import to_container
from asgml.run.feedback import quiet_known_noise
from asgml.run.moved import upgrade_targets
from asgml.run.trust import screen_stored_config

log = logging.getLogger("asgml")

MASK_MODES = ("feature", "input")


STORED = "the config stored in the checkpoint"


def load_checkpoint(ckpt_path: str | Path, allow_targets: Sequence[str] = ()) -> dict[str, Any]:
    """Load a checkpoint written by ``asgml.train`` (on CPU, tensors and plain data only)
    whose stored config passes `asgml.run.trust.screen_stored_config` (no
    interpolation, every ``_target_`` exactly allowed; ``allow_targets`` opts classes in)."""
    ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    if "asgml_config" not in ckpt:
        raise KeyError(
            f"{ckpt_path} has no 'asgml_config' entry: it was not written by asgml.train"
        )
    upgrade_targets(ckpt["asgml_config"])  # classes that moved since it was written (moved.py)
    screen_stored_config(ckpt["asgml_config"], allow_targets, f"{STORED} {ckpt_path}")
    return ckpt


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The run directory of a checkpoint: the parent of ``checkpoints/`` (else its folder)."""
    p = Path(ckpt_path).resolve().parent
    return p.parent if p.name == "checkpoints" else p


def build_from_config(
    run_cfg: Mapping[str, Any],
    data_dir: str | None = None,
    datamodule_overrides: Mapping[str, Any] | None = None,
    allow_targets: Sequence[str] = (),
) -> tuple[Any, torch.nn.Module]:
    """``(datamodule, model)`` from a resolved run config (as stored in checkpoints), built
    by `asgml.run.build.build` as the training run built them. The stored config is
    screened first (`asgml.run.trust.screen_stored_config`: no interpolation, only
    exactly allowed ``_target_`` classes; ``allow_targets`` opts classes in)."""
    run_cfg = dict(run_cfg)
    upgrade_targets(run_cfg)  # classes that moved since the checkpoint was written (moved.py)
    screen_stored_config(run_cfg, allow_targets, STORED)
    cfg = OmegaConf.create(run_cfg)
    if data_dir is not None:
        cfg.data_dir = data_dir
        # dataset configs read ``${data_dir}``; stored configs are resolved, so also patch
        # the datamodule's own ``data_dir`` / ``root`` entries when present
        for key in ("data_dir", "root"):
            if key in cfg.dataset.datamodule:
                cfg.dataset.datamodule[key] = data_dir
    if datamodule_overrides:
        cfg.dataset.datamodule = OmegaConf.merge(cfg.dataset.datamodule, dict(datamodule_overrides))
    # the stored config is resolved: model.* holds every option the run used. Checkpoints
    # written before model options had one home kept the method's options in method.module,
    # merged over model.* at training time: replay that for them.
    legacy = cfg.method.pop("module", None) or {}
    if legacy:
        cfg.model = OmegaConf.merge(cfg.model, legacy)
    # the checkpoint's weights replace pre-trained ones: the weights file is not needed here
    for enc in (cfg.model.get("encoders") or {}).values():
        if isinstance(enc, Mapping) and enc.get("pretrained"):
            enc["pretrained"] = None
    datamodule, model, _ = build(cfg, callbacks=False)
    return datamodule, model


def attach_methods(
    run_cfg: Mapping[str, Any],
    model: Any,
    callback_states: Mapping[str, Any] | None = None,
    allow_targets: Sequence[str] = (),
) -> list[BalancingCallback]:
    """The run's method callbacks that change the model or its test-time fusion, set up on
    ``model`` as in training (before its weights are loaded).

    Built from the stored config's ``method`` (screened by
    `asgml.run.trust.screen_stored_config`, ``allow_targets`` as for the model); each
    `BalancingCallback` with ``changes_model`` gets
    ``setup(None, model, "test")`` (MLA's head, Greedy's gates, AMCo's star layer,
    ReconBoost's learners' head, the unimodal model's single head) and its checkpoint state
    (``callback_states``, keyed as Lightning keys them). All of them score through
    ``on_eval_logits`` in `collect_logits`."""
    run_cfg = dict(run_cfg)
    upgrade_targets(run_cfg)
    screen_stored_config(run_cfg, allow_targets, STORED)
    cfg = OmegaConf.create(run_cfg)
    methods = [cb for cb in build_method_callbacks(cfg) if isinstance(cb, BalancingCallback)]
    states = callback_states or {}
    for cb in methods:
        if not cb.changes_model:
            continue
        cb.setup(None, model, "test")  # type: ignore[arg-type]
        state = states.get(cb.state_key)
        if state is not None:
            cb.load_state_dict(state)
    return methods


def _fuse(
    model: Any,
    methods: Sequence[BalancingCallback],
    logits: Tensor,
    uni: dict[str, Tensor],
    feats: dict[str, Tensor],
) -> Tensor:
    """The logits the method scores (its test-time fusion, as ``MultimodalModule._eval_step``)."""
    for cb in methods:
        logits = cb.on_eval_logits(None, model, logits, uni, feats)  # type: ignore[arg-type]
    return logits


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load weights; unexpected extra entries (e.g. method state) are ignored, missing fail."""
    result = model.load_state_dict(dict(state_dict), strict=False)
    if result.missing_keys:
        raise RuntimeError(f"checkpoint lacks model weights: {result.missing_keys[:8]}...")
    if result.unexpected_keys:
        log.info("ignored %d checkpoint entries not in the model", len(result.unexpected_keys))


def _mask_inputs(inputs: Mapping[str, Tensor], present: Coalition) -> dict[str, Tensor]:
    return {m: (x if m in present else torch.zeros_like(x)) for m, x in inputs.items()}


@torch.no_grad()
def collect_logits(
    model: Any,
    batches: Iterable[Mapping[str, Any]],
    mask: str = "feature",
    device: torch.device | str = "cpu",
    methods: Sequence[BalancingCallback] = (),
) -> dict[str, Any]:
    """Run ``model`` over ``batches``.

    Returns ``{"labels", "fused", "unimodal": {m: logits}, "subsets": {coalition: logits}}``
    with the fused logits of every modality subset (absent modalities zeroed as ``mask``
    says). ``methods``: the run's method callbacks (`attach_methods`); their
    ``on_eval_logits`` gives the fused logits, of every subset too. ``unimodal`` holds the
    modalities the model has unimodal logits for (one for a ``method=unimodal`` model).
    """
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}")
    model.eval().to(device)
    modalities: list[str] = list(model.modalities)
    subsets = all_subsets(modalities)
    labels: list[Tensor] = []
    fused: list[Tensor] = []
    uni: dict[str, list[Tensor]] = {m: [] for m in modalities}
    sub: dict[Coalition, list[Tensor]] = {s: [] for s in subsets}
    for batch in batches:
        batch = move_data_to_device(batch, device)
        inputs, lengths, y = model.split_batch(batch)
        feats = model.encode(inputs, lengths)
        logits, uni_logits = model.heads(feats)
        logits = _fuse(model, methods, logits, uni_logits, feats)
        labels.append(y.cpu())
        fused.append(logits.cpu())
        for m in modalities:
            if m in uni_logits:
                uni[m].append(uni_logits[m].cpu())
        for s in subsets:
            if mask == "feature":
                masked = {m: (f if m in s else torch.zeros_like(f)) for m, f in feats.items()}
                out, u = model.heads(masked)
            else:
                out, u, masked = model(_mask_inputs(inputs, s), lengths)
            sub[s].append(_fuse(model, methods, out, dict(u), masked).cpu())
    if not labels:
        raise ValueError("the evaluation split has no batches")
    return {
        "labels": torch.cat(labels),
        "fused": torch.cat(fused),
        "unimodal": {m: torch.cat(v) for m, v in uni.items() if v},
        "subsets": {s: torch.cat(v) for s, v in sub.items()},
    }


def _acc(logits: Tensor, y: Tensor, num_classes: int) -> float:
    return float(multiclass_accuracy(logits, y, num_classes, average="micro"))


def _f1(logits: Tensor, y: Tensor, num_classes: int) -> float:
    return float(multiclass_f1_score(logits, y, num_classes, average="macro"))


def summarize_logits(
    outputs: Mapping[str, Any], modalities: Sequence[str], num_classes: int
) -> dict[str, Any]:
    """Metrics, subset accuracies and Shapley values from `collect_logits` output."""
    y = outputs["labels"]
    metrics = {
        "acc": _acc(outputs["fused"], y, num_classes),
        "f1": _f1(outputs["fused"], y, num_classes),
    }
    for m in modalities:
        if m not in outputs["unimodal"]:  # a method=unimodal model has one modality's
            continue
        metrics[f"acc_{m}"] = _acc(outputs["unimodal"][m], y, num_classes)
        metrics[f"f1_{m}"] = _f1(outputs["unimodal"][m], y, num_classes)
    subset_acc = {s: _acc(lg, y, num_classes) for s, lg in outputs["subsets"].items()}
    phi = shapley_values(lambda s: subset_acc[frozenset(s)], modalities)
    total = sum(phi.values())
    return {
        "metrics": metrics,
        "subset_acc": {coalition_name(s, modalities): v for s, v in subset_acc.items()},
        "shapley": phi,
        # each modality's share of v(N) - v(empty); undefined when the total is 0
        "shapley_share": {m: (v / total if total else float("nan")) for m, v in phi.items()},
        "num_samples": int(y.shape[0]),
    }


def _split_loader(datamodule: Any, split: str) -> Any:
    stage = {"test": "test", "val": "validate", "train": "fit"}[split]
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    datamodule.setup(stage)
    return {
        "test": datamodule.test_dataloader,
        "val": datamodule.val_dataloader,
        "train": datamodule.train_dataloader,
    }[split]()


def _num_batches(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an iterable dataset without a length
        return None


def evaluate_checkpoint(
    ckpt_path: str | Path,
    split: str = "test",
    mask: str = "feature",
    device: str | None = None,
    data_dir: str | None = None,
    datamodule_overrides: Mapping[str, Any] | None = None,
    allow_targets: Sequence[str] = (),
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Evaluate ``ckpt_path`` on ``split``; returns the dict written to ``eval.json``.
    ``progress_bar`` shows a bar over the split's batches (with ETA) on stderr."""
    if split not in ("test", "val", "train"):
        raise ValueError(f"split must be test, val or train, got {split!r}")
    ckpt = load_checkpoint(ckpt_path, allow_targets)
    run_cfg = ckpt["asgml_config"]
    datamodule, model = build_from_config(run_cfg, data_dir, datamodule_overrides, allow_targets)
    methods = attach_methods(run_cfg, model, ckpt.get("callbacks"), allow_targets)
    load_weights(model, ckpt["state_dict"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loader = _split_loader(datamodule, split)
    batches = progress(
        loader, total=_num_batches(loader), desc=f"eval {split}", unit="batch", enable=progress_bar
    )
    outputs = collect_logits(model, batches, mask=mask, device=dev, methods=methods)
    result = summarize_logits(outputs, list(model.modalities), int(model.num_classes))
    return {
        "checkpoint": str(ckpt_path),
        "split": split,
        "mask": mask,
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "dataset": run_cfg.get("dataset", {}).get("name"),
        "method": run_cfg.get("method", {}).get("name"),
        "seed": run_cfg.get("seed"),
        **result,
    }


def format_eval(result: Mapping[str, Any]) -> str:
    """A short human-readable summary of an `evaluate_checkpoint` result."""
    m = result["metrics"]
    lines = [
        f"== asgml eval: {result['checkpoint']} ({result['split']}, {result['num_samples']} samples) ==",
        f"fused       acc {100 * m['acc']:6.2f} %  macro-F1 {100 * m['f1']:6.2f} %",
    ]
    for mod, phi in result["shapley"].items():
        if f"acc_{mod}" not in m:  # no unimodal logits (method=unimodal, other modality)
            lines.append(f"{mod:<10}  {'':39}Shapley {100 * phi:+6.2f} pp")
            continue
        lines.append(
            f"{mod:<10}  acc {100 * m[f'acc_{mod}']:6.2f} %  macro-F1 {100 * m[f'f1_{mod}']:6.2f} %"
            f"  Shapley {100 * phi:+6.2f} pp"
        )
    subsets = ", ".join(f"{k}: {100 * v:.2f}" for k, v in result["subset_acc"].items())
    lines.append(f"subset acc (mask={result['mask']}): {subsets}")
    return "\n".join(lines)


def write_eval(result: Mapping[str, Any], out: str | Path | None = None) -> Path:
    """Write ``result`` as JSON to ``out`` (default ``<run dir>/eval.json``)."""
    path = Path(out) if out else run_dir_of(result["checkpoint"]) / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


def run_eval(cfg: DictConfig) -> float:
    """Evaluate ``cfg.ckpt_path`` (a composed ``eval`` config) and write ``eval.json``;
    returns the fused accuracy."""
    quiet_known_noise()
    overrides = to_container(cfg.get("datamodule") or {})
    result = evaluate_checkpoint(
        cfg.ckpt_path,
        split=cfg.split,
        mask=cfg.mask,
        device=cfg.get("device"),
        data_dir=cfg.get("data_dir"),
        datamodule_overrides=overrides,
        allow_targets=list(cfg.get("allow_targets") or []),
        progress_bar=bool(cfg.get("progress_bar", True)),
    )
    path = write_eval(result, cfg.get("out"))
    print(format_eval(result))
    print(f"wrote {path}")
    return result["metrics"]["acc"]
