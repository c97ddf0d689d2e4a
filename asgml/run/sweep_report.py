"""Hydra callback: the report of a multirun, written when the sweep ends.

Registered in ``conf/hydra/default.yaml`` as ``hydra.callbacks.sweep_report``; at the end of
``python -m asgml.train -m ...`` it writes what ``python -m asgml.report <sweep dir>`` writes
(``report.md``, ``report.csv``, ``runs.csv``, the figures) into the sweep directory and prints
the table. With ``logger=wandb`` it also logs the table and figures to one summary wandb run
(job type ``sweep-report``). Switches: ``hydra.callbacks.sweep_report.enabled=false``,
``...plots=false``, ``...wandb=false``. A report that cannot be made (no finished job, a
plotting error) is a warning: the sweep's runs are complete either way.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from typing_extensions import override


class SweepReport(Callback):
    """Writes the sweep's report into the sweep directory at ``on_multirun_end``.

    Args:
        enabled: make the report (default on).
        with_shapley: add the Shapley columns of jobs that have an ``eval.json``.
        plots: write the figures too.
        wandb: with a wandb logger in the sweep's config, log the report to a summary run.
    """

    def __init__(
        self,
        enabled: bool = True,
        with_shapley: bool = False,
        plots: bool = True,
        wandb: bool = True,
    ) -> None:
        self.enabled = enabled
        self.with_shapley = with_shapley
        self.plots = plots
        self.wandb = wandb

    @override
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            self.report(config, sweep_dir)
        except Exception as err:  # the sweep's runs are done; the report is extra
            warnings.warn(
                f"the report of sweep {sweep_dir} could not be made ({err!r}); make it with "
                f"`python -m asgml.report {sweep_dir}`",
                RuntimeWarning,
                stacklevel=1,
            )

    def report(self, config: DictConfig, sweep_dir: Path) -> None:
        """Write the report of ``sweep_dir`` (and log it to wandb when configured)."""
        # lazy: torch, Lightning and pandas load only when a sweep ends (CLI speed)
        from asgml.run.tracking import log_sweep_report_to_wandb, report_artifacts

        artifacts = report_artifacts(sweep_dir, sweep_dir, self.with_shapley, self.plots)
        print(f"\n== asgml sweep report: {sweep_dir} ==\n{artifacts['markdown']}")
        print("wrote " + ", ".join(str(f) for f in artifacts["files"]))
        wandb_cfg = (config.get("logger") or {}).get("wandb")
        if self.wandb and wandb_cfg is not None and "_target_" in wandb_cfg:
            log_sweep_report_to_wandb(wandb_cfg, artifacts, sweep_dir)
