"""Live feedback: the per-epoch line (``asgml.run.epoch_log``) and the progress-bar metrics."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from asgml.run.build import build
from asgml.run.epoch_log import EpochLog, emit, epoch_line, format_duration, select_metrics
from tests.conftest import FAST


def test_select_metrics_orders_by_pattern_and_excludes() -> None:
    metrics = {
        "val/acc": 0.5,
        "val/acc_visual": 0.25,
        "val/acc_audio": 0.75,
        "val/acc_best": 0.6,
        "boost/scale_visual": 1.5,
        "train/loss": 2.0,
    }
    got = select_metrics(metrics, ["val/acc", "val/acc_*", "!val/acc_best", "boost/scale_*"])
    assert got == [
        ("val/acc", 0.5),
        ("val/acc_audio", 0.75),
        ("val/acc_visual", 0.25),
        ("boost/scale_visual", 1.5),
    ]


def test_epoch_line_text() -> None:
    line = epoch_line(
        3, 10, [("val/acc", 0.6125), ("boost/scale_visual", 1.41999)], 12.34, 7 * 12.34
    )
    assert line == "epoch 3/10  val/acc 61.25%  boost/scale_visual 1.42  epoch 12.3s  ETA 1m26s"
    assert format_duration(7384) == "2h03m"
    assert epoch_line(1, -1, [], 1.0, None) == "epoch 1  epoch 1.0s"


def test_emit_goes_to_files_and_to_the_console_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("asgml.test_epoch_log")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    log_file = tmp_path / "train.log"
    file_handler = logging.FileHandler(log_file)
    stream = tmp_path / "console.txt"
    with open(stream, "w") as console_stream:
        console = logging.StreamHandler(console_stream)
        logger.addHandler(file_handler)
        logger.addHandler(console)
        try:
            emit("line one", console=False, logger=logger)
            emit("line two", console=True, logger=logger)
        finally:
            logger.removeHandler(file_handler)
            logger.removeHandler(console)
            file_handler.close()
    assert log_file.read_text().splitlines() == ["line one", "line two"]
    assert stream.read_text().splitlines() == ["line two"]
    # no handler at all (a plain script): printed
    bare = logging.getLogger("asgml.test_epoch_log.bare_root_less")
    bare.propagate = False
    emit("line three", console=True, logger=bare)
    assert capsys.readouterr().out == "line three\n"


def test_console_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="console must be one of"):
        EpochLog(console="sometimes")


@pytest.mark.slow
def test_progress_bar_shows_fused_and_modality_accuracy_and_boost_scales(make_cfg) -> None:
    cfg = make_cfg(["method=boost_ogm", "method.probe.eval_freq=1"])
    datamodule, model, callbacks = build(cfg)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, default_root_dir=cfg.paths.output_dir)
    trainer.fit(model, datamodule=datamodule)
    bar = set(trainer.progress_bar_metrics)
    expected = {"val/acc", "val/acc_audio", "val/acc_visual"}
    expected |= {"boost/scale_audio", "boost/scale_visual"}
    assert expected <= bar, bar
    assert "val/f1" not in bar  # the loggers have it, the bar does not


@pytest.mark.slow
def test_cli_off_a_terminal_prints_one_line_per_epoch_and_train_log_has_them(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    overrides = [o for o in FAST if not o.startswith("trainer.max_epochs")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ASGML_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asgml.train",
            "method=boost_ogm",
            "trainer.max_epochs=2",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,  # stdout is a pipe, not a terminal
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pattern = re.compile(
        r"epoch (\d)/2  val/acc \d+\.\d\d%  val/acc_audio \d+\.\d\d%  val/acc_visual \d+\.\d\d%"
        r"  boost/scale_audio [\d.]+  boost/scale_visual [\d.]+(  .*)?  epoch [\d.]+s  ETA \S+$"
    )
    printed = [m.group(0) for m in map(pattern.search, proc.stdout.splitlines()) if m]
    assert [p.split("/", 1)[0] for p in printed] == ["epoch 1", "epoch 2"], proc.stdout
    logged = [
        m.group(0)
        for m in map(pattern.search, (run_dir / "train.log").read_text().split("\n"))
        if m
    ]
    assert logged == printed
