"""Feedback while asgml works: progress bars, the start-up block, the summary in the run's
log file, and no warning caused by asgml's own configs in a default run. (The bar of
``asgml.prepare`` is tested with the CREMA-D cache in ``tests/data/test_data_cremad.py``.)"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from asgml.data.progress import progress
from asgml.run.feedback import KNOWN_NOISE, quiet_known_noise

# Small data, one epoch; every other trainer key (limit_*_batches, the progress bar, ...)
# keeps its default, which is what the warning count is about.
TINY_DEFAULT = [
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "dataset.datamodule.num_train=160",
    "dataset.datamodule.num_val=32",
    "dataset.datamodule.num_test=32",
    "dataset.datamodule.batch_size=32",
]
# third-party stderr lines a default run still prints, by exact text (none today); each
# entry must say where it comes from
THIRD_PARTY_STDERR: tuple[str, ...] = ()
# what asgml's own configs used to cause (conf/trainer/default.yaml set limit_*_batches=1.0)
OWN_CONFIG_NOISE = re.compile(r"limit_(train|val|test)_batches=")


def _python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ASGML_LOG_DIR": str(cwd / "logs")}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_progress_bar_counts_and_can_be_off(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress(range(3), total=3, desc="clips", enable=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    assert list(progress(iter(range(3)), total=3, desc="clips", unit="clip")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "clips: 100%" in err and "3/3" in err and "clip/s" in err


def test_known_noise_filtered_by_exact_message() -> None:
    quiet_known_noise()
    category, _ = KNOWN_NOISE[0]
    exact = (
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) "
        "and treespec.is_leaf()` instead."
    )
    with warnings.catch_warnings(record=True) as caught:
        # catch_warnings keeps the installed filters; only "always" for the rest
        warnings.simplefilter("always")
        quiet_known_noise()
        warnings.warn(exact, category, stacklevel=1)
        warnings.warn("`isinstance(x, LeafSpec)` is deprecated", category, stacklevel=1)
        warnings.warn(exact, UserWarning, stacklevel=1)
    assert [(type(w.message), str(w.message)) for w in caught] == [
        (category, "`isinstance(x, LeafSpec)` is deprecated"),
        (UserWarning, exact),
    ]

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.addHandler(handler)
    try:
        rank_zero.warning(
            "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
            "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger"
        )
        rank_zero.warning("GPU available: False, used: False")
    finally:
        rank_zero.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["GPU available: False, used: False"]


@pytest.mark.slow
def test_default_run_is_quiet_logs_its_start_and_summary_and_eval_shows_progress(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    proc = _python(["-m", "asgml.train", f"hydra.run.dir={run_dir}", *TINY_DEFAULT], tmp_path)
    stderr = [line for line in proc.stderr.splitlines() if line.strip()]
    # nothing caused by asgml's configs, anywhere
    for text in (proc.stdout, proc.stderr, (run_dir / "train.log").read_text()):
        assert not OWN_CONFIG_NOISE.search(text), text
        assert "[WARNING]" not in text, text
    # stderr: only the listed third-party lines (none today)
    assert [line for line in stderr if line not in THIRD_PARTY_STDERR] == []
    # Lightning's own messages reach the console and the log file once, not twice
    assert proc.stdout.count("GPU available:") == 1
    log = (run_dir / "train.log").read_text()
    # the start-up block, then the final summary, both in the run's log file
    start = log.index("asgml train\n  run dir   " + str(run_dir))
    for line in ("  dataset   synthetic", "  method    baseline", "  optimizer SGD("):
        assert line in log[start:], line
    summary = log.index("== asgml results: dataset=synthetic method=baseline seed=42 ==")
    assert summary > start and "test accuracy" in log[summary:]

    ev = _python(
        [
            "-m",
            "asgml.eval",
            f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        tmp_path,
    )
    assert "Shapley" in ev.stdout
    assert re.search(r"eval test: 100%.* 1/1 ", ev.stderr), ev.stderr  # 32 test items / 32
