"""A CSV logger that appends to the run's ``metrics.csv`` instead of deleting it.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a run
resumed into its own directory lost every row logged before the interruption. Here the
file is kept and the new rows are appended (with the header widened when new columns
appear). A run directory that holds another run is refused at start-up
(`asgml.run.rundir`), so only a resumed run ever finds an existing file. Rows logged after
the checkpoint the run resumed from and before the interruption appear twice (the resumed
run logs those steps again); keep the later row of a step.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from typing_extensions import override


class AppendingExperimentWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` and its columns."""

    @override
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


class AppendingCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose ``metrics.csv`` survives a resume."""

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
