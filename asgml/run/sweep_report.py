"""Hydra callback: the report of a multirun, written when the sweep ends.

Registered in ``conf/hydra/default.yaml`` as ``hydra.callbacks.sweep_report``; at the end of
``python -m asgml.train -m ...`` it writes what ``python -m asgml.report <sweep dir>`` writes
(``report.md``, ``report.csv``, ``runs.csv``, the figures) into the sweep directory and prints
the table. With ``logger=wandb`` it also logs the table and figures to one summary wandb run
(job type ``sweep-report``). Switches: ``hydra.callbacks.sweep_report.enabled=false``,
``...plots=false``, ``...wandb=false``. A report that cannot be made (no finished job, a
plotting error) is a warning: the sweep's runs are complete either way.

A SIGTERM'd parallel sweep (``launcher=joblib``): the callback makes the launcher process
wait for its running jobs to stop the way a single run does (finish the batch, save
``last.ckpt``, exit 143; the signal is forwarded to the loky workers when only the launcher
got it), up to ``stop_grace_s`` seconds; joblib then ends the sweep, terminating its workers
(which otherwise stayed alive, ~1 GB each, until loky's idle timeout of 5 minutes), the report
of the jobs that finished is written (``python -m asgml.report``; not logged to wandb) and the
launcher exits with status 143.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from typing_extensions import override

log = logging.getLogger("asgml")

SIGTERM_EXIT_CODE = 143


class SweepReport(Callback):
    """Writes the sweep's report into the sweep directory at ``on_multirun_end``.

    Args:
        enabled: make the report (default on).
        with_shapley: add the Shapley columns of jobs that have an ``eval.json``.
        plots: write the figures too.
        wandb: with a wandb logger in the sweep's config, log the report to a summary run.
        stop_grace_s: after a SIGTERM to a ``launcher=joblib`` sweep, how long its running
            jobs get to save ``last.ckpt`` and stop before the workers are terminated.
    """

    def __init__(
        self,
        enabled: bool = True,
        with_shapley: bool = False,
        plots: bool = True,
        wandb: bool = True,
        stop_grace_s: float = 20.0,
    ) -> None:
        self.enabled = enabled
        self.with_shapley = with_shapley
        self.plots = plots
        self.wandb = wandb
        self.stop_grace_s = float(stop_grace_s)
        self.terminated = False

    @override
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
        if "joblib" not in target or threading.current_thread() is not threading.main_thread():
            return  # jobs in this process: Lightning's own SIGTERM handling applies

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.terminated:  # the grace period is over, or a second SIGTERM
                raise SystemExit(SIGTERM_EXIT_CODE)
            self.terminated = True
            log.error(
                "SIGTERM: the running jobs save last.ckpt and stop (at most %.0f s); the "
                "report of the finished jobs follows",
                self.stop_grace_s,
            )
            forward_sigterm_to_workers()
            timer = threading.Timer(self.stop_grace_s, _thread.interrupt_main, (signal.SIGTERM,))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, on_sigterm)
        atexit.register(self._report_after_sigterm, config)

    def _report_after_sigterm(self, config: DictConfig) -> None:
        """At exit after a SIGTERM (Hydra never reaches ``on_multirun_end``; the workers are
        gone): the report of the finished jobs, made by ``python -m asgml.report`` in a new
        process (at interpreter exit the report's libraries can no longer start threads)."""
        if not self.terminated:
            return
        sweep_dir = str(config.hydra.sweep.dir)
        if self.enabled:
            cmd = [sys.executable, "-m", "asgml.report", sweep_dir]
            cmd += [] if self.plots else ["--no-plots"]
            cmd += ["--with-shapley"] if self.with_shapley else []
            if subprocess.run(cmd, check=False).returncode != 0:
                print(
                    f"the report of sweep {sweep_dir} could not be made; make it with "
                    f"`python -m asgml.report {sweep_dir}`",
                    file=sys.stderr,
                )
        # joblib ended the sweep with whichever job's error came first: a stopped job's 143,
        # or loky's TerminatedWorkerError when the signal also reached an idle worker (status
        # 1); the sweep was terminated either way, and says so. The workers are gone already.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(SIGTERM_EXIT_CODE)

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


def forward_sigterm_to_workers() -> list[int]:
    """Send SIGTERM to this process's loky worker processes (Linux ``/proc``; elsewhere
    nothing): a SIGTERM sent to the launcher alone (``kill <pid>``) reaches its jobs too.
    Returns the process ids signalled."""
    me, sent = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"loky" in cmd and b"resource_tracker" not in cmd:
                pid = int(stat.parent.name)
                os.kill(pid, signal.SIGTERM)
                sent.append(pid)
    return sent
