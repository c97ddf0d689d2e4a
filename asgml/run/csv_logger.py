"""A CSV logger that appends to the run's ``metrics.csv`` instead of deleting it, and whose
header always comes from the file.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a run
resumed into its own directory lost every row logged before the interruption. Here the
file is kept and the new rows are appended (with the header widened when new columns
appear). A run directory that holds another run is refused at start-up
(`asgml.run.rundir`), so only a resumed run ever finds an existing file. Rows logged after
the checkpoint the run resumed from and before the interruption appear twice (the resumed
run logs those steps again); keep the later row of a step.

The header is read from the file at every save, not remembered: under ``ddp_spawn`` the
logger is pickled into new processes for ``fit`` and again for ``test``, each time as the
main process holds it, i.e. with the writer's column list of before the fit. Lightning's
writer trusted that list, so the test stage rewrote the file with the test columns only,
raised ``dict contains fields not in fieldnames`` and left only the test header behind
(lightning/fabric/loggers/csv_logs.py: ``_ExperimentWriter.save`` and
``_rewrite_with_new_header``, Lightning 2.6). A widened header is written to a temporary file
next to ``metrics.csv`` and renamed over it, so a failure never truncates the history.
"""

from __future__ import annotations

import csv
import os
import tempfile

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from typing_extensions import override


class AppendingExperimentWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv``; its columns are the file's header plus new keys."""

    def file_header(self) -> list[str]:
        """The columns of ``metrics.csv`` as written on disk (``[]`` without a file)."""
        if not self._fs.isfile(self.metrics_file_path):
            return []
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            return next(csv.reader(f), [])

    @override
    def _check_log_dir_exists(self) -> None:
        self.metrics_keys = sorted(self.file_header())

    @override
    def save(self) -> None:
        if not self.metrics:
            return
        on_disk = self.file_header()
        # the file may have been written by another process since this writer was made
        keys = sorted(set(on_disk) | set(self.metrics_keys) | set().union(*self.metrics))
        if on_disk and keys != on_disk:
            self._rewrite_with_new_header(keys)
        self.metrics_keys = keys
        with self._fs.open(
            self.metrics_file_path, mode="a" if on_disk else "w", newline=""
        ) as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            if not on_disk:
                writer.writeheader()
            writer.writerows(self.metrics)
        self.metrics = []

    @override
    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        extra = set().union(*rows) - set(fieldnames) if rows else set()
        if extra:  # never drop a column (save() passes a superset of the file's header)
            raise ValueError(f"{self.metrics_file_path}: new header lacks columns {sorted(extra)}")
        if not self._is_local():
            super()._rewrite_with_new_header(fieldnames)
            return
        fd, tmp = tempfile.mkstemp(
            dir=self.log_dir, prefix=f".{self.NAME_METRICS_FILE}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, self.metrics_file_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _is_local(self) -> bool:
        protocol = self._fs.protocol
        return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))


class AppendingCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose ``metrics.csv`` survives a resume and
    a ``ddp_spawn`` run's separate fit and test processes."""

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
