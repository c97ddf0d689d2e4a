"""The non-finite guard of a training step: a skipped (or refused) step when the loss or the
gradients are ``inf``/``nan``, a stop after too many in a row, and a check of the weights at
every epoch end. `MultimodalModule` inherits it; its options are the
module's ``nonfinite``, ``nonfinite_check_every`` and ``max_consecutive_nonfinite``."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from asgml.core.toolkit import all_finite, has_grad_scaler, loss_and_grads_finite


class NonFiniteTrainingError(FloatingPointError):
    """Training was stopped: the weights became non-finite, or too many consecutive steps
    had a non-finite loss or gradients (``model.max_consecutive_nonfinite``)."""


class NonFiniteGuard:
    """Mixin of `MultimodalModule` (a ``LightningModule``): the
    attributes it reads (``nonfinite``, ``nonfinite_check_every``,
    ``max_consecutive_nonfinite``, the counters) are set in the module's ``__init__``."""

    nonfinite: str
    nonfinite_check_every: int
    max_consecutive_nonfinite: int | None
    skipped_nonfinite_steps: int
    _consecutive_nonfinite: int
    _pending_nonfinite: Tensor | int
    _pending_window: Tensor

    def _skip_nonfinite_step(self, loss: Tensor, opt: Any) -> bool:
        """After backward: whether this step's update must be skipped (its gradients are then
        cleared); raises with ``nonfinite=raise``."""
        # Without a GradScaler: one host sync per checked step (every step by default, every
        # k-th with nonfinite_check_every=k); the (rank-averaged) gradients are checked too,
        # so under DDP a non-finite loss on any rank makes every rank skip. Under 16-mixed
        # the GradScaler skips such steps itself (on every rank alike), so the optimizer
        # step still runs; with nonfinite=skip the non-finite losses are only counted on the
        # device (no host sync) and reported at the epoch end.
        scaler = has_grad_scaler(self.trainer)
        bad_loss = ~torch.isfinite(loss.detach())
        if scaler and self.nonfinite == "skip":
            # the GradScaler guards the update: count on the device, no host sync per step
            self._pending_nonfinite = bad_loss.long() + self._pending_nonfinite
            bad = None
        else:
            bad = bad_loss if scaler else ~loss_and_grads_finite(loss, self.parameter_list())
            if self.nonfinite_check_every > 1 and not scaler:
                window = bad | self._pending_window
                if (self.trainer.global_step + 1) % self.nonfinite_check_every:
                    self._pending_window = window  # unchecked step: applied as computed
                    bad = None
                else:
                    self._pending_window = torch.zeros((), dtype=torch.bool, device=bad.device)
                    window_bad, step_bad = torch.stack([window, bad]).tolist()  # one sync
                    bad = step_bad
                    if window_bad and not step_bad:
                        msg = (
                            f"non-finite loss or gradients in the {self.nonfinite_check_every} "
                            f"steps before step {self.trainer.global_step}: those updates were "
                            f"applied (model.nonfinite_check_every={self.nonfinite_check_every})"
                        )
                        if self.nonfinite == "raise":
                            raise FloatingPointError(msg)
                        warnings.warn(msg, stacklevel=1)
        if bad is not None and bool(bad):  # the host sync of a checked step
            what = "training loss" if bool(bad_loss) else "gradients"
            msg = f"non-finite {what} at step {self.trainer.global_step}"
            if self.nonfinite == "raise":
                raise FloatingPointError(msg + " (model.nonfinite=raise)")
            self.skipped_nonfinite_steps += 1
            if not scaler:
                warnings.warn(msg + ": step skipped (model.nonfinite=skip)", stacklevel=1)
                opt.zero_grad(set_to_none=True)
                self._count_consecutive_nonfinite()
                return True
            warnings.warn(msg + ": the GradScaler skips the update", stacklevel=1)
        elif bad is not None:
            self._consecutive_nonfinite = 0
        return False

    def _count_consecutive_nonfinite(self) -> None:
        self._consecutive_nonfinite += 1
        k = self.max_consecutive_nonfinite
        if k is not None and self._consecutive_nonfinite >= k:
            finite = bool(self.weights_finite())
            raise NonFiniteTrainingError(
                f"training stopped at step {self.trainer.global_step}: {k} consecutive steps "
                f"had a non-finite loss or gradients and were skipped "
                f"({self.skipped_nonfinite_steps} in all; the weights are "
                f"{'finite' if finite else 'NOT finite'}). Lower the learning rate, or set "
                f"model.max_consecutive_nonfinite (now {k}; null never stops)"
            )

    def _weights(self) -> list[tuple[str, Tensor]]:
        """Parameters and floating-point buffers (BatchNorm statistics): the model's weights."""
        named = [*self.named_parameters(), *self.named_buffers()]
        return [(n, t.detach()) for n, t in named if t.is_floating_point() and t.numel()]

    def weights_finite(self) -> Tensor:
        """0-d bool: every parameter and floating-point buffer finite (no host sync)."""
        return all_finite([t for _, t in self._weights()])

    def check_weights_finite(self) -> None:
        """Raise `NonFiniteTrainingError` if a parameter or a BatchNorm statistic holds
        ``inf``/``nan`` (one host sync)."""
        if bool(self.weights_finite()):
            return
        bad = [n for n, t in self._weights() if not bool(torch.isfinite(t).all())]
        raise NonFiniteTrainingError(
            f"training stopped at the end of epoch {self.current_epoch} (step "
            f"{self.trainer.global_step}): the weights are not finite ({', '.join(bad[:5])}"
            f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}); "
            f"{self.skipped_nonfinite_steps} step(s) were skipped as non-finite. Lower the "
            "learning rate; no checkpoint with these weights is saved"
        )

    def _flush_nonfinite(self) -> int:
        """Fold the device-side count of non-finite losses (GradScaler + skip) in."""
        pending = self._pending_nonfinite
        self._pending_nonfinite = 0
        n = int(pending)
        self.skipped_nonfinite_steps += n
        return n
