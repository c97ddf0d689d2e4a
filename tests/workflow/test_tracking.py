"""Experiment trackers: the wandb group and tags, media at the end of a run and a sweep,
the optional TensorBoard / MLflow loggers, and the multirun-end report callback."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, compose_cfg
from omegaconf import OmegaConf

from asgml.run.sweep_report import SweepReport
from asgml.run.tracking import (
    WANDB_GROUP_MAX,
    WandbLogger,
    build_loggers,
    check_optional_logger,
    sweep_group,
    swept_keys,
)

JOB = ["seed=1", "method=boost", "method.boost.alpha=0.5", "trainer.max_epochs=1"]


def test_group_has_the_swept_keys_but_never_the_seed() -> None:
    keys = swept_keys({}, ["seed=0,1", "method=boost", "method.boost.alpha=0.5,1.0"])
    assert keys == ["seed", "method.boost.alpha"]
    assert sweep_group("synthetic-boost", JOB, keys) == "synthetic-boost-method.boost.alpha=0.5"
    # a preset's hydra.sweeper.params count as swept; a swept method is in the base name
    keys = swept_keys({"seed": "42,0", "model.fusion": "concat,sum"}, ["method=boost,ogm"])
    job = ["seed=0", "method=ogm", "model.fusion=sum", "+x=3"]
    assert sweep_group("cremad-ogm", job, keys) == "cremad-ogm-model.fusion=sum"
    # no sweep: the base name alone
    assert sweep_group("synthetic-baseline", [], []) == "synthetic-baseline"
    long = sweep_group(
        "d-m", [f"model.k{i}=1234567890" for i in range(20)], [f"model.k{i}" for i in range(20)]
    )
    assert len(long) == WANDB_GROUP_MAX and long.startswith("d-m-model.k0=1234567890,")
    other = sweep_group(
        "d-m", [f"model.k{i}=1234567899" for i in range(20)], [f"model.k{i}" for i in range(20)]
    )
    assert other[-8:] != long[-8:]  # the cut names stay distinct


def test_wandb_logger_tags_and_no_anonymous(tmp_path: Path) -> None:
    lg = WandbLogger(
        group="synthetic-boost",
        tags=["synthetic", "boost"],
        preset_tags=["cremad", "boost", "ablation"],
        save_dir=str(tmp_path),
        mode="disabled",
    )
    assert lg.tags == ["synthetic", "boost", "cremad", "ablation"]
    assert lg._wandb_init["tags"] == lg.tags
    assert lg._wandb_init["group"] == "synthetic-boost"
    assert "anonymous" not in lg._wandb_init  # wandb warns about any value
    assert lg.media == {"table": True, "figures": True, "shapley": True}
    assert WandbLogger(media={"shapley": False}, mode="disabled").media["shapley"] is False


def test_wandb_config_passes_the_preset_tags(tmp_path: Path) -> None:
    cfg = compose_cfg(["logger=wandb", "+tags=[cremad,ablation]"], output_dir=tmp_path)
    cfg.logger.wandb.mode = "disabled"
    (wandb_lg,) = [lg for lg in build_loggers(cfg) if isinstance(lg, WandbLogger)]
    assert wandb_lg.tags == ["synthetic", "baseline", "seed-42", "cremad", "ablation"]
    assert wandb_lg.group == "synthetic-baseline"
    cfg.logger.wandb.media.figures = False
    (wandb_lg,) = [lg for lg in build_loggers(cfg) if isinstance(lg, WandbLogger)]
    assert wandb_lg.media == {"table": True, "figures": False, "shapley": True}


def test_optional_logger_names_its_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        ModuleNotFoundError, match=r"logger\.mlflow: .*pip install 'asgml\[mlflow\]'"
    ):
        check_optional_logger("mlflow", "lightning.pytorch.loggers.MLFlowLogger")
    with pytest.raises(ModuleNotFoundError, match=r"asgml\[tensorboard\]"):
        check_optional_logger("tb", "lightning.pytorch.loggers.TensorBoardLogger")
    check_optional_logger("csv", "lightning.pytorch.loggers.CSVLogger")  # not optional


def test_mlflow_config_without_mlflow_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name)
    )
    with pytest.raises(ModuleNotFoundError, match=r"asgml\[mlflow\]"):
        build_loggers(compose_cfg(["logger=mlflow"], output_dir=tmp_path))


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None
    and importlib.util.find_spec("tensorboardX") is None,
    reason="needs the tensorboard extra",
)
def test_tensorboard_config_builds_lightnings_logger(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    from asgml.run.csv_logger import AppendingCSVLogger

    loggers = build_loggers(compose_cfg(["logger=tensorboard"], output_dir=tmp_path))
    assert [type(lg) for lg in loggers] == [AppendingCSVLogger, TensorBoardLogger]
    assert Path(loggers[1].log_dir) == tmp_path / "tensorboard"


def test_sweep_report_failure_warns(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "empty")}}})
    with pytest.warns(RuntimeWarning, match=r"python -m asgml\.report .*empty"):
        SweepReport().on_multirun_end(cfg)  # no finished job: a warning, not an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SweepReport(enabled=False).on_multirun_end(cfg)


# ----------------------------------------------------------------- offline wandb sweep
def read_wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a wandb ``run-*.wandb`` file (a LevelDB-style log: a 7-byte
    file header, 32 KiB blocks of chunks with a 7-byte header: crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def _run_record(run_dir: Path) -> Any:
    (data,) = run_dir.glob("run-*.wandb")
    runs = [r.run for r in read_wandb_records(data) if r.WhichOneof("record_type") == "run"]
    return runs[0]


@pytest.fixture(scope="module")
def wandb_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-job multirun with logger=wandb (offline): seeds 0 and 1 of one configuration.

    ``method.boost.alpha=choice(0.5)`` is a sweep of one value, so alpha is a swept key
    while two jobs suffice."""
    tmp = tmp_path_factory.mktemp("wandb_sweep")
    sweep = tmp / "multirun"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "ASGML_LOG_DIR": str(tmp / "logs"),
        "WANDB_MODE": "offline",
        **{
            v: str(tmp / "wandb_home")
            for v in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
        },
    }
    args = [
        "-m",
        "asgml.train",
        "-m",
        "seed=0,1",
        "method=boost",
        "method.boost.alpha=choice(0.5)",
        "method.probe.eval_freq=1",
        "logger=wandb",
        f"hydra.sweep.dir={sweep}",
        *FAST,
    ]
    proc = subprocess.run(
        [sys.executable, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sweep / "stdout.txt").write_text(proc.stdout)
    (sweep / "stderr.txt").write_text(proc.stderr)
    return sweep


@pytest.mark.slow
def test_wandb_sweep_groups_seeds_and_logs_media(wandb_sweep: Path) -> None:
    groups = []
    for job, seed in (("0", 0), ("1", 1)):
        (run_dir,) = (wandb_sweep / job / "wandb").glob("offline-run-*")
        record = _run_record(run_dir)
        groups.append(record.run_group)
        assert f"seed-{seed}" in record.tags and "seed" not in record.run_group
        media = run_dir / "files" / "media"
        assert list((media / "table" / "report").glob("table_*.table.json"))
        assert list((media / "table" / "shapley").glob("table_*.table.json"))
        stems = {p.name.split("_")[0] for p in (media / "images" / "report").glob("*.png")}
        assert {"val", "probe", "boost"} <= stems, stems  # val_acc, probe_acc, boost_scale
        assert (wandb_sweep / job / "eval.json").is_file()  # the Shapley values' source
    # the swept key is in the group, the seed is not: both seeds land in one group
    assert groups == ["synthetic-boost-method.boost.alpha=0.5"] * 2
    # no "anonymous setting has no effect" warning (wandb is not silenced here)
    assert "anonymous" not in (wandb_sweep / "stderr.txt").read_text()


@pytest.mark.slow
def test_multirun_end_writes_the_sweep_report(wandb_sweep: Path) -> None:
    for name in ("report.md", "report.csv", "runs.csv", "val_acc.png"):
        assert (wandb_sweep / name).stat().st_size > 0, name
    table = (wandb_sweep / "report.md").read_text()
    assert "| boost |" in table and table.splitlines()[2].endswith("| 2 |")  # 2 seeds
    assert "== asgml sweep report:" in (wandb_sweep / "stdout.txt").read_text()
    # and the sweep's summary wandb run holds the table and figures
    (summary,) = (wandb_sweep / "wandb").glob("offline-run-*")
    assert _run_record(summary).job_type == "sweep-report"
    assert list((summary / "files" / "media" / "table" / "report").glob("*.table.json"))
    assert list((summary / "files" / "media" / "images" / "report").glob("val_acc_*.png"))
