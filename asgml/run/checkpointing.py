"""How checkpoints are written: ``last.ckpt`` at every finished epoch (and every N steps),
atomically, and never with non-finite weights.

* `LastCheckpoint` keeps ``<run>/checkpoints/last.ckpt`` at the latest state: the end
  of every training epoch and, with ``every_n_train_steps``, every N optimizer steps, and on
  SIGTERM. Lightning 2.6's ``ModelCheckpoint(save_last=True, monitor=...)`` writes ``last``
  only together with a top-k save, i.e. only when the monitored metric improved; ``best.ckpt``
  stays with the (first) ``ModelCheckpoint`` that monitors ``val/acc``.
* `AtomicCheckpointIO` writes each checkpoint to a temporary file next to its target
  (same directory, hence the same filesystem), flushes it to disk and renames it over the
  target (``os.replace``, atomic on POSIX); a failed or interrupted write removes the
  temporary file and leaves the previous checkpoint intact. Lightning's own
  ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in
  ``$TMPDIR`` (``tempfile.mkstemp()``): a killed write leaves it there, and the final move
  across filesystems is a copy, not an atomic rename.
  It also refuses to write a checkpoint whose weights are not finite (``inf``/``nan``): the
  previous file stays, so ``best.ckpt`` and ``last.ckpt`` always hold finite weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

log = logging.getLogger("asgml")


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for ``best.ckpt`` whose best score survives a resume into another
    directory.

    Lightning reloads only ``best_model_path`` when the resumed run writes elsewhere, so
    the first epoch after the resume always became the "best" and the final test could
    load a worse model than the interrupted run had found. Here the score and the top-k
    bookkeeping are restored too: a later epoch replaces the best only if it is better,
    and until then the final test loads the interrupted run's ``best.ckpt`` (a file outside
    this run's directory is never deleted)."""

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) != self.dirpath:
            self.best_model_score = state_dict["best_model_score"]
            self.best_k_models = state_dict.get("best_k_models", self.best_k_models)
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.kth_value = state_dict.get("kth_value", self.kth_value)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the latest finished epoch, always (plus every N steps, on SIGTERM).

    Saved at every training epoch end (after validation, the LR scheduler step and every
    callback's epoch-end hook, so a resume continues with the next epoch exactly), every
    ``every_n_train_steps`` optimizer steps when that is > 0 (a mid-epoch checkpoint; the
    train loader restores its position, see `asgml.data.base.ResumableLoader`), and
    when Lightning stops on SIGTERM. The file is overwritten in place (no ``-v1`` versions),
    also when a resumed run writes into the directory it resumes from.

    Args:
        dirpath: directory of the checkpoint (``<run>/checkpoints``).
        filename: file name without ``.ckpt``.
        every_n_train_steps: also save every this many optimizer steps (0: only at epoch ends).
    """

    def __init__(
        self, dirpath: str | os.PathLike, filename: str = "last", every_n_train_steps: int = 0
    ) -> None:
        n = int(every_n_train_steps or 0)
        if n < 0:
            raise ValueError(f"callbacks.last_checkpoint.every_n_train_steps must be >= 0, got {n}")
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=1,
            save_last=False,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
            auto_insert_metric_name=False,
        )
        self.every_n_steps = n

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(filename=self.filename, every_n_steps=self.every_n_steps)

    def _save_latest(self, trainer: L.Trainer) -> None:
        path = self.format_checkpoint_name(self._monitor_candidates(trainer))
        self.best_model_path = self.last_model_path = path
        self._save_checkpoint(trainer, path)

    def _may_save(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.fast_dev_run and trainer.state.fn == "fit" and not trainer.sanity_checking
        )

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        step = trainer.global_step
        if (
            self.every_n_steps > 0
            and step > 0
            and step % self.every_n_steps == 0
            and step != self._last_global_step_saved
            and self._may_save(trainer)
        ):
            self._save_latest(trainer)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._may_save(trainer):  # every epoch, even right after a step save
            self._save_latest(trainer)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # saved at the train epoch end, which comes after validation

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # SIGTERM: Lightning finishes the current batch, then raises SIGTERMException
        if isinstance(exception, SIGTERMException) and self._may_save(trainer):
            log.warning("SIGTERM: saving the current state to %s", self.dirpath)
            self._save_latest(trainer)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass


def nonfinite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` that hold ``inf`` or ``nan``."""
    bad = []
    for k, v in state_dict.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
            if not bool(torch.isfinite(v).all()):
                bad.append(k)
    return bad


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file next to the target, then an atomic rename.

    Non-local paths (``s3://`` ...) go through Lightning's own writer. A checkpoint whose
    weights are not finite is not written (a warning names it); the previous file stays.
    The module says so in ``asgml_weights_finite`` (parameters and BatchNorm statistics;
    metric states such as a ``MaxMetric``'s initial ``-inf`` are not weights); without that
    key every floating-point tensor of ``state_dict`` is checked."""

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        finite = checkpoint.get("asgml_weights_finite")
        if finite is None:
            bad = nonfinite_tensors(checkpoint.get("state_dict") or {})
            finite, where = not bad, ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        else:
            where = "the model's parameters or BatchNorm statistics"
        if not finite:
            log.warning(
                "not saving %s: non-finite weights (%s); the previous file (if any) stays",
                path,
                where,
            )
            return
        if not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, Path(path))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` via ``<dir>/.<name>.<random>.tmp`` + ``os.replace``; the
    temporary file is removed when anything fails (including ``KeyboardInterrupt``), and a
    successful write removes what a killed earlier write of ``path`` left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
