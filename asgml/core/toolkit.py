"""The method toolkit: the plumbing every balancing method shares.

A method reads and edits gradients in `BalancingCallback.on_train_gradients`, between
``manual_backward`` and the optimizer step. What it sees there depends on the run, and these
helpers hide that:

* **Precision.** Under ``16-mixed`` the gradients carry the GradScaler's loss scale ``S``
  until the optimizer step unscales them (Lightning unscales inside ``optimizer.step``, so a
  callback cannot unscale earlier). `grad_norm`, `grad_amax`, `unscaled`
  and `clip_grad_norm_` give true (unscaled) values under every precision plugin
  (``32-true``, ``bf16-mixed``, ``16-mixed``); `loss_scale` gives ``S`` for a term a
  method adds to the gradients (multiply it by ``S``).
* **Skipped steps.** `step_finite` says whether the step will be applied: the module
  skips a step with a non-finite loss or gradient (``model.nonfinite=skip``) and the
  GradScaler skips an overflowing one; both key on the same test. A statistic a method
  accumulates must not take values from such a step; `NonFiniteCounter` counts the
  steps left out and reports them once per epoch.
* **Several processes.** The gradients are DDP-averaged (identical on every rank), but
  anything a method derives from the rank's own batch (scores, accuracies, a per-loss
  gradient) differs per rank. Reduce it with `sum_over_ranks` / `mean_over_ranks`
  (or gather with `gather_ranks`) *before* it touches the gradients, so every rank
  applies the same edit and the replicas stay identical.
* **Epoch windows, checkpoint state.** `EpochWindow` is the inclusive 0-based window
  of epochs a method is active in; `DeferredState` holds a loaded callback state until
  ``on_fit_start``, when the module is on its device.

The module's modality list is ``module.modalities`` (read it, do not copy it), its encoder
parameters ``module.encoder_parameters(m)`` and its optimizer groups of an encoder
``module.encoder_param_groups(m)``. ``docs/architecture.md`` lists every helper with an
example.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor, nn
from torch.utils.data import DataLoader

from asgml.core.types import StepOutput

PARAM_SELECTIONS = ("conv", "weights", "all")


# --------------------------------------------------------------------- parameters
def select_parameters(encoder: nn.Module, which: str) -> list[nn.Parameter]:
    """Parameters of ``encoder`` chosen by module type, never by name-splitting.

    * ``conv``: weights of convolution layers (the 4-D tensors OGM-GE modulates);
    * ``weights``: weights of every conv and linear layer (no biases, no norm layers),
      so MLP encoders are covered too;
    * ``all``: every trainable parameter.
    """
    if which not in PARAM_SELECTIONS:
        raise ValueError(f"parameter selection must be one of {PARAM_SELECTIONS}, got {which!r}")
    if which == "all":
        return [p for p in encoder.parameters() if p.requires_grad]
    kinds: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    if which == "weights":
        kinds = (*kinds, nn.Linear, nn.Bilinear)
    out = []
    for mod in encoder.modules():
        if isinstance(mod, kinds) and mod.weight is not None and mod.weight.requires_grad:
            out.append(mod.weight)
    return out


def module_parameters(module: nn.Module) -> Sequence[nn.Parameter]:
    """All parameters of ``module``: the module's cached list when it keeps one
    (`MultimodalModule.parameter_list`),
    so a per-step hook does not walk the module tree every step."""
    cached = getattr(module, "parameter_list", None)
    return cached() if callable(cached) else list(module.parameters())


def present_grads(params: Iterable[nn.Parameter]) -> list[Tensor]:
    """The ``.grad`` tensors that exist (parameters unused in this step have none)."""
    return [p.grad for p in params if p.grad is not None]


def scale_(grads: Sequence[Tensor], scale: float | Tensor) -> None:
    """In-place ``g *= scale`` for all ``grads`` with one fused foreach kernel."""
    if grads:
        torch._foreach_mul_(list(grads), scale)


def all_finite(grads: Sequence[Tensor]) -> Tensor:
    """A 0-d bool tensor: every tensor finite (no host sync)."""
    if not grads:
        return torch.tensor(True)
    norms = torch._foreach_norm(list(grads))
    return torch.isfinite(torch.stack(norms).sum())


# ------------------------------------------------------------------------ logging
def should_log(trainer: Any) -> bool:
    """Whether ``LightningModule.log(..., on_step=True)`` values are written this step
    (every ``trainer.log_every_n_steps``, and at the last step). Per-step values logged on
    other steps are dropped, so the per-step path computes and logs them only when this is
    true (outside a fit: true)."""
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


# ---------------------------------------------------------------------- precision
def _scaler(trainer: Any) -> Any:
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def has_grad_scaler(trainer: Any) -> bool:
    """Whether an enabled GradScaler (``16-mixed``) handles overflowing steps itself."""
    return _scaler(trainer) is not None


def loss_scale(trainer: Any) -> Tensor | float:
    """The loss scale ``S`` the gradients carry in ``on_train_gradients``: the GradScaler's
    scale under ``16-mixed``, ``1.0`` otherwise (``32-true``, ``bf16-mixed``). A device tensor
    when possible (no host sync)."""
    scaler = _scaler(trainer)
    if scaler is None:
        return 1.0
    # the scale tensor exists once the scaler has scaled a loss (before that: its init value)
    scale = scaler._get_scale_async() if hasattr(scaler, "_get_scale_async") else None
    return scale if scale is not None else float(scaler.get_scale())


def grad_norm(trainer: Any, grads: Sequence[Tensor]) -> Tensor:
    """The true (unscaled) total L2 norm of ``grads``, 0-d float32 (0 for no tensors)."""
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(grads))).float())
    return total / loss_scale(trainer)


def grad_amax(trainer: Any, grads: Sequence[Tensor]) -> Tensor:
    """The true (unscaled) largest ``|g|`` entry of ``grads``, 0-d float32."""
    if not grads:
        return torch.zeros(())
    return torch.stack([g.abs().amax().float() for g in grads]).amax() / loss_scale(trainer)


def unscaled(trainer: Any, grads: Sequence[Tensor]) -> list[Tensor]:
    """``grads`` divided by the loss scale: the true gradients, to read (statistics), not to
    edit (without a loss scale they are the gradient tensors themselves)."""
    s = loss_scale(trainer)
    if not grads or (isinstance(s, float) and s == 1.0):
        return list(grads)
    return torch._foreach_div(list(grads), s)


def clip_grad_norm_(
    trainer: Any,
    grads: Sequence[Tensor],
    max_norm: float,
    eps: float = 1e-6,
    where: Tensor | None = None,
) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` on the *true* gradients, fused and without a host
    sync: ``g *= min(1, max_norm / (||g / S|| + eps))`` (a scale-free factor, so the scaled
    gradients are clipped exactly as their unscaled values would be). ``where``: a 0-d bool
    tensor; clip only if it is true. Returns the true norm."""
    total = grad_norm(trainer, grads)
    if grads:
        coef = (max_norm / (total + eps)).clamp(max=1.0)
        if where is not None:
            coef = torch.where(where.to(coef.device), coef, torch.ones_like(coef))
        scale_(grads, coef)
    return total


def loss_and_grads_finite(loss: Tensor, params: Iterable[nn.Parameter]) -> Tensor:
    """0-d bool: ``loss`` and every present gradient of ``params`` finite."""
    grads = present_grads(params)
    ok = torch.isfinite(loss.detach()).all()
    return ok & all_finite(grads).to(ok.device) if grads else ok


def step_finite(module: nn.Module, out: StepOutput) -> Tensor:
    """0-d bool tensor: this step's loss and gradients are finite, i.e. the optimizer will
    apply it (the module skips a non-finite step under ``model.nonfinite=skip``; the
    GradScaler skips an overflowing one). Computed once per step (cached on ``out``) from
    the DDP-averaged gradients, so it is the same on every rank. No host sync."""
    if out.finite is None:
        loss = out.loss if out.loss is not None else torch.zeros(())
        out.finite = loss_and_grads_finite(loss, module_parameters(module))
    return out.finite


# --------------------------------------------------------------------------- DDP
def sum_over_ranks(trainer: Any, t: Tensor) -> Tensor:
    """All-reduce (sum) ``t`` over the DDP ranks; identity on one process."""
    if getattr(trainer, "world_size", 1) > 1:
        return trainer.strategy.reduce(t, reduce_op="sum")
    return t


def mean_over_ranks(trainer: Any, t: Tensor) -> Tensor:
    """All-reduce (mean) ``t`` over the DDP ranks; identity on one process."""
    world = getattr(trainer, "world_size", 1)
    return sum_over_ranks(trainer, t) / world if world > 1 else t


def mean_over_ranks_(trainer: Any, tensors: Sequence[Tensor]) -> None:
    """In-place rank mean of several tensors with one all-reduce (flattened in one buffer)."""
    if getattr(trainer, "world_size", 1) <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    flat = mean_over_ranks(trainer, flat)
    i = 0
    for t in tensors:
        t.copy_(flat[i : i + t.numel()].view_as(t))
        i += t.numel()


def gather_ranks(trainer: Any, t: Tensor) -> Tensor:
    """``(world_size, *t.shape)``: ``t`` from every rank (a leading 1 on one process)."""
    if getattr(trainer, "world_size", 1) > 1:
        return trainer.strategy.all_gather(t)
    return t[None]


def broadcast_module_(trainer: Any, module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers of ``module`` (a method's own network) to every
    rank, so rank-local state starts identical."""
    if getattr(trainer, "world_size", 1) <= 1:
        return
    for t in [*module.parameters(), *module.buffers()]:
        t.data.copy_(trainer.strategy.broadcast(t.data, src=0))


# ---------------------------------------------------------------- shared scores
def ogm_scores(unimodal_logits: Mapping[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
    """``sum_i softmax(z_m)[i, y_i]`` per modality (0-d tensors, float32)."""
    return {
        m: torch.softmax(z.float(), dim=1).gather(1, labels[:, None]).sum()
        for m, z in unimodal_logits.items()
    }


# ------------------------------------------------------------------ train loader
def plain_train_loader(trainer: Any) -> DataLoader:
    """The training ``DataLoader`` Lightning iterates (unwrapped from a CombinedLoader)."""
    loader = trainer.train_dataloader
    if isinstance(loader, CombinedLoader):
        loader = loader.iterables
        if isinstance(loader, dict | list | tuple):
            loader = next(iter(loader.values() if isinstance(loader, dict) else loader))
    if not isinstance(loader, DataLoader):
        raise TypeError(f"expected a torch DataLoader for training, got {type(loader).__name__}")
    return loader


# ------------------------------------------------------------------- epoch window
@dataclass(frozen=True)
class EpochWindow:
    """The inclusive window ``start <= epoch <= end`` a method acts in (0-based Lightning
    epochs unless the method says otherwise: AGM passes 1-based ones, as official)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"modulation_ends ({self.end}) < modulation_starts ({self.start})")

    def __contains__(self, epoch: int) -> bool:
        return self.start <= epoch <= self.end


# ------------------------------------------------------------- non-finite steps
class NonFiniteCounter:
    """Counts the steps a method left out (non-finite gradients, losses or features) on the
    device, without a host sync per step, and reports them once per epoch.

    ``add`` a 0-d bool (or bool) per step; call `end_epoch` at ``on_train_epoch_end``;
    save `total` in the callback's ``state_dict``."""

    def __init__(self, owner: str, what: str) -> None:
        self.owner = owner
        self.what = what
        self.reported = 0
        self._pending: Tensor | None = None

    def add(self, bad: Tensor | bool) -> None:
        b = torch.as_tensor(bad).long()
        self._pending = b if self._pending is None else self._pending + b.to(self._pending)

    @property
    def total(self) -> int:
        """All steps counted so far (one host sync when some are pending)."""
        return self.reported + (0 if self._pending is None else int(self._pending))

    def load(self, total: int) -> None:
        self.reported, self._pending = int(total), None

    def end_epoch(self, trainer: Any) -> int:
        """Fold this epoch's count in and warn if it is not zero (not under ``16-mixed``,
        where the GradScaler's overflow steps are expected). Returns the epoch's count."""
        n = 0 if self._pending is None else int(self._pending)
        self._pending = None
        self.reported += n
        if n and not has_grad_scaler(trainer):
            warnings.warn(
                f"{self.owner} left {n} step(s) of epoch {trainer.current_epoch} {self.what}: "
                "non-finite values",
                stacklevel=2,
            )
        return n


# ---------------------------------------------------------------- deferred state
class DeferredState:
    """A callback state loaded from a checkpoint before it can be applied.

    Lightning calls ``load_state_dict`` after ``setup`` but before the model is moved to its
    device; ``put`` it there and ``take`` it in ``on_fit_start``, moved to the device::

        def load_state_dict(self, state):
            self._restore.put(state)

        def on_fit_start(self, trainer, module):
            state = self._restore.take(module.device)
            if state is not None:
                ...
    """

    def __init__(self) -> None:
        self._state: dict[str, Any] | None = None

    def put(self, state: dict[str, Any]) -> None:
        self._state = dict(state)

    @property
    def pending(self) -> dict[str, Any] | None:
        """The state not taken yet (to save it again if no fit ran in between)."""
        return self._state

    def take(self, device: torch.device | str) -> dict[str, Any] | None:
        state, self._state = self._state, None
        return None if state is None else move_data_to_device(state, device)


# ------------------------------------------------------------- unused parameters
def require_unused_parameter_detection(trainer: Any, owner: str, why: str) -> None:
    """Refuse a DDP run whose strategy does not detect unused parameters, for a method whose
    steps leave some parameters out of the loss (``why``): plain ``ddp`` would fail at the
    second step with a less helpful message."""
    strategy = getattr(trainer, "strategy", None)
    kwargs = getattr(strategy, "_ddp_kwargs", None)
    if getattr(trainer, "world_size", 1) > 1 and isinstance(kwargs, dict):
        if not kwargs.get("find_unused_parameters", False):
            raise ValueError(
                f"{owner} under DDP needs trainer.strategy=ddp_find_unused_parameters_true "
                f"(or ddp_spawn_find_unused_parameters_true): {why}"
            )
