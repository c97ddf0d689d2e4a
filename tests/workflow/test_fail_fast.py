"""Fail fast: a bad data_dir or a misspelt option is refused before torch is imported, before
the start-up block and before any run folder is made; per-machine data roots."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from asgml.data.layout import DataLayoutError, check_datamodule_config
from asgml.run.build import build_datamodule
from asgml.run.precheck import PreCheckError, check_added_options, check_data, suggest


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def _cli(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        k: v for k, v in os.environ.items() if not (k.startswith("ASGML_") and k.endswith("_DIR"))
    }
    env.update(OMP_NUM_THREADS="1", ASGML_LOG_DIR=str(tmp_path / "logs"))
    start = time.perf_counter()
    proc = subprocess.run(
        # -X importtime: every module the process imported, on stderr
        [sys.executable, "-X", "importtime", "-m", "asgml.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.perf_counter() - start


def _message(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


def _imported(stderr: str) -> set[str]:
    names = (line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines())
    return {n for n in names if n}


def test_cli_without_data_dir_fails_before_torch_and_before_the_run_folder(
    tmp_path: Path,
) -> None:
    proc, seconds = _cli(["dataset=cremad"], tmp_path)
    assert proc.returncode == 1
    lines = _message(proc.stderr)
    assert lines[0].startswith("cremad: data_dir is not set; pass data_dir=/path/to/cremad")
    assert "Expected layout:" in lines and "<data_dir>/" in lines  # one line each
    assert any(line.startswith("  train.csv ") for line in lines)
    assert "\\n" not in proc.stderr
    assert "torch" not in _imported(proc.stderr) and "lightning" not in _imported(proc.stderr)
    assert "asgml train" not in proc.stdout  # no start-up block
    assert not (tmp_path / "logs").exists()  # no run folder
    print(f"failed in {seconds:.2f} s")


def test_cli_misspelt_added_option_gets_did_you_mean_before_torch(tmp_path: Path) -> None:
    proc, _ = _cli(["method=boost", "+method.boost.alpah=1"], tmp_path)
    assert proc.returncode == 1
    lines = _message(proc.stderr)
    assert lines[0] == (
        "+method.boost.alpah=1: method.boost has no option 'alpah' (did you mean 'alpha'?)"
    )
    assert any(
        x.startswith("  options of method.boost: alpha, scale_max, ema, ema_alpha, ") for x in lines
    )
    assert "torch" not in _imported(proc.stderr)
    assert not (tmp_path / "logs").exists()


def test_cli_hydra_override_error_gets_did_you_mean(tmp_path: Path) -> None:
    proc, _ = _cli(["method=boost", "method.boost.alpah=1"], tmp_path)
    assert proc.returncode == 1
    lines = _message(proc.stderr)
    assert "Could not override 'method.boost.alpah'." in lines  # Hydra's own message
    assert lines[-1] == "method.boost.alpah: (did you mean 'alpha'?)"


def test_suggest_for_a_config_group_option() -> None:
    assert suggest("train", ["method=boots"]) == "method=boots: (did you mean 'boost'?)"
    assert suggest("train", ["method=boost"]) is None  # composes: nothing to suggest
    assert suggest("train", ["method=zzzzzz"]) is None  # nothing close


def test_added_option_check_only_refuses_near_misses() -> None:
    with pytest.raises(PreCheckError, match=r"did you mean 'alpha'"):
        check_added_options(_compose(["method=boost", "+method.boost.alpah=1"]))
    # a new option that looks like none of the existing ones, or `++`, passes
    check_added_options(_compose(["method=boost", "+method.boost.warmup=1"]))
    check_added_options(_compose(["method=boost", "++method.boost.alpah=1"]))


def test_check_data_names_the_missing_split_file(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(PreCheckError, match=r"cremad: missing file '.*test\.csv'\nExpected"):
        check_data(_compose(["dataset=cremad", f"data_dir={tmp_path}"]))
    (tmp_path / "test.csv").write_text("")
    check_data(_compose(["dataset=cremad", f"data_dir={tmp_path}"]))
    check_data(_compose([]))  # synthetic: no data_dir


def test_layout_check_of_ave_ks_and_mmsa(tmp_path: Path) -> None:
    base = {"_target_": "asgml.data.avdataset.AVEKSDataModule", "name": "ave"}
    (tmp_path / "my_train.txt").write_text("")
    (tmp_path / "my_test.txt").write_text("")
    with pytest.raises(DataLayoutError, match=r"missing file '.*stat\.txt'"):
        check_datamodule_config({**base, "data_dir": str(tmp_path)})
    check_datamodule_config({**base, "data_dir": str(tmp_path), "split_format": "ks"})
    mmsa = {"_target_": "asgml.data.mmsa.MMSADataModule", "name": "mosi", "file": "u.pkl"}
    with pytest.raises(DataLayoutError, match=r"mosi: missing file '.*u\.pkl'"):
        check_datamodule_config({**mmsa, "data_dir": str(tmp_path)})
    (tmp_path / "u.pkl").write_bytes(b"")
    check_datamodule_config({**mmsa, "data_dir": str(tmp_path / "u.pkl")})  # the pickle itself
    with pytest.raises(DataLayoutError, match="does not exist"):
        check_datamodule_config({**mmsa, "data_dir": str(tmp_path / "nowhere")})


def test_datamodule_error_is_raised_as_itself_not_as_one_line(tmp_path: Path) -> None:
    cfg = _compose(["dataset=cremad", f"data_dir={tmp_path}"])
    with pytest.raises(DataLayoutError) as err:
        build_datamodule(cfg)
    assert "\nExpected layout:\n<data_dir>/\n" in str(err.value)


def test_data_roots_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ASGML_CREMAD_DIR", str(tmp_path))
    for name in ("cremad", "cremad_3f"):
        cfg = _compose([f"dataset={name}"])
        assert cfg.dataset.datamodule.data_dir == str(tmp_path)
    # the command line wins
    cfg = _compose(["dataset=cremad", "data_dir=/elsewhere"])
    assert cfg.dataset.datamodule.data_dir == "/elsewhere"
    monkeypatch.delenv("ASGML_CREMAD_DIR")
    assert _compose(["dataset=cremad"]).dataset.datamodule.data_dir is None
