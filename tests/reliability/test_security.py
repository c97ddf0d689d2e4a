"""Nothing in a data file or a checkpoint runs code: crafted MMSA / AVE pickles and a
checkpoint whose stored config names a foreign ``_target_`` are refused."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from asgml.data.avdataset import AVEKSDataModule
from asgml.data.mmsa import MMSADataModule
from asgml.data.safe_pickle import UnsafePickleError, safe_load
from asgml.run.build import build
from asgml.run.config import to_container
from asgml.run.evaluate import evaluate_checkpoint
from asgml.run.trust import (
    StoredInterpolationError,
    UntrustedConfigError,
    UntrustedTargetError,
    check_targets,
    screen_stored_config,
    trusted_targets,
)
from tests.conftest import compose_cfg
from tests.data.fixtures import make_ave, make_mmsa, mmsa_split

ROOT = Path(__file__).resolve().parents[2]


class _Evil:
    """Pickles as a call of ``os.system``: loading it with ``pickle.load`` runs the shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_crafted_mmsa_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = {s: mmsa_split(4, seed=i) for i, s in enumerate(("train", "valid", "test"))}
    data["train"]["annotations"] = _Evil(marker)
    path = tmp_path / "unaligned_39.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(UnsafePickleError, match=r"unaligned_39\.pkl.*(posix|os)\.system"):
        MMSADataModule(str(path)).setup()
    assert not marker.exists()


def test_crafted_ave_spectrogram_is_refused(tmp_path: Path) -> None:
    root = make_ave(tmp_path / "ave", spec_shape=(8, 12))
    marker = tmp_path / "pwned"
    victim = sorted((root / "audio_spec").iterdir())[0]
    victim.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    dm = AVEKSDataModule(str(root), name="ave", frames=1, image_size=16, cache="off")
    dm.setup()
    with pytest.raises(UnsafePickleError, match=re.escape(victim.name)):
        dm.load_audio(victim)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_legitimate_pickles_load_unchanged(tmp_path: Path, protocol: int) -> None:
    """The MMSA fixture (numpy arrays of floats, ints, strings) and numpy scalars load as
    ``pickle.load`` loads them, under every protocol."""
    path = make_mmsa(tmp_path / "x.pkl", sizes=(3, 2, 2))
    with open(path, "rb") as f:
        raw = pickle.load(f)
    raw["extra"] = {"scalar": np.float32(1.5), "obj": np.array(["a", None], dtype=object)}
    path.write_bytes(pickle.dumps(raw, protocol=protocol))
    got = safe_load(path)
    assert got.keys() == raw.keys()
    for split in ("train", "valid", "test"):
        for k, v in raw[split].items():
            np.testing.assert_array_equal(got[split][k], v)
    assert got["extra"]["scalar"] == np.float32(1.5) and got["extra"]["obj"][0] == "a"


# ----------------------------------------------------------------- _target_ allowlist
def _conf_targets() -> set[str]:
    out: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "_target_":
                    out.add(str(v))
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in (ROOT / "conf").rglob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    return out


def test_allowlist_covers_every_shipped_target() -> None:
    """Every `_target_` of conf/ is allowed (so the list stays complete as configs grow)."""
    targets = _conf_targets()
    assert "asgml.core.module.MultimodalModule" in targets and "torch.optim.SGD" in targets
    for t in sorted(targets):
        assert t in trusted_targets(), t
        check_targets({"x": {"_target_": t}}, source="conf/")


@pytest.mark.parametrize(
    ("key", "target"),
    [("model.encoders.audio.extra", "builtins.open"), ("dataset.datamodule.extra", "numpy.save")],
)
def test_checkpoint_with_foreign_target_is_refused(tmp_path: Path, key: str, target: str) -> None:
    cfg = compose_cfg(["trainer.max_epochs=1"], output_dir=tmp_path)
    _, model, _ = build(cfg, callbacks=False)
    stored = to_container(cfg)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    node = stored
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    if target == "builtins.open":  # opening for writing empties the file
        node[leaf] = {"_target_": target, "file": str(victim), "mode": "w"}
    else:
        node[leaf] = {"_target_": target, "file": str(victim), "arr": [0]}
    ckpt = tmp_path / "crafted.ckpt"
    torch.save({"asgml_config": stored, "state_dict": model.state_dict()}, ckpt)
    with pytest.raises(UntrustedTargetError, match=re.escape(f"{key}._target_='{target}'")):
        evaluate_checkpoint(ckpt, device="cpu")
    assert victim.read_text() == "precious" and not (tmp_path / "victim.txt.npy").exists()


def test_target_allowlist_rules() -> None:
    check_targets({"a": [{"_target_": "torch.optim.SGD"}]})
    with pytest.raises(UntrustedTargetError, match=r"a\[0\]\.b\._target_='os\.system'"):
        check_targets({"a": [{"b": {"_target_": "os.system"}}]})
    with pytest.raises(UntrustedTargetError, match="not in the allow-list"):  # asgml functions
        check_targets({"_target_": "asgml.run.evaluate.write_eval"})
    # exact names: a class reached through an allowed module's namespace is refused
    for chain in ("asgml.data.safe_pickle.io.FileIO", "asgml.run.evaluate.logging.FileHandler"):
        with pytest.raises(UntrustedTargetError, match="not in the allow-list"):
            check_targets({"_target_": chain})
    # the opt-in: an exact class, or a prefix admitting classes defined under it only
    check_targets({"_target_": "collections.OrderedDict"}, ["collections.OrderedDict"])
    check_targets({"_target_": "collections.OrderedDict"}, ["collections."])
    with pytest.raises(UntrustedTargetError, match="does not name a class of a module"):
        check_targets({"_target_": "asgml.data.safe_pickle.io.FileIO"}, ["asgml."])
    with pytest.raises(UntrustedTargetError, match="defined outside the allowed prefixes"):
        check_targets({"_target_": "asgml.data.base.DataLoader"}, ["asgml."])
    with pytest.raises(UntrustedTargetError, match="is not a class"):
        check_targets({"_target_": "asgml.run.evaluate.write_eval"}, ["asgml."])


# ------------------------------------------------- crafted stored configs (marker files)
def _crafted(tmp_path: Path, key: str, value: Any) -> Path:
    """A checkpoint of the tiny synthetic model whose stored config has ``value`` at ``key``."""
    cfg = compose_cfg(["trainer.max_epochs=1", "method=ogm"], output_dir=tmp_path)
    _, model, _ = build(cfg, callbacks=False)
    stored = to_container(cfg)
    node = stored
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    ckpt = tmp_path / "crafted.ckpt"
    torch.save({"asgml_config": stored, "state_dict": model.state_dict()}, ckpt)
    return ckpt


def _attacks(victim: Path) -> dict[str, tuple[str, Any, type, str]]:
    """name -> (key, value, error, message) of configs that wrote or emptied ``victim`` on
    the prefix allow-list (a class reached through an allowed module; a resolver building
    a target that no check saw)."""
    v = str(victim)
    return {
        "file_handler_chain": (
            "model.encoders.audio.extra",
            {"_target_": "asgml.run.evaluate.logging.FileHandler", "filename": v, "mode": "w"},
            UntrustedTargetError,
            "asgml.run.evaluate.logging.FileHandler",
        ),
        "file_io_chain_in_method": (
            "method.ogm.extra",
            {"_target_": "asgml.data.safe_pickle.io.FileIO", "file": v, "mode": "w"},
            UntrustedTargetError,
            "asgml.data.safe_pickle.io.FileIO",
        ),
        "oc_decode": (
            "dataset.datamodule.extra",
            "${oc.decode:'{_target_: builtins.open, file: " + v + ", mode: w}'}",
            StoredInterpolationError,
            "oc.decode",
        ),
        "oc_create_in_method": (
            "method.ogm.extra",
            "${oc.create:{_target_: numpy.save, file: " + v + ", arr: [0]}}",
            StoredInterpolationError,
            "oc.create",
        ),
        "oc_env": ("seed", "${oc.env:HOME}", StoredInterpolationError, "oc.env"),
    }


ATTACKS = list(_attacks(Path("x")))


@pytest.mark.parametrize("attack", ATTACKS)
def test_crafted_stored_config_is_refused_before_any_side_effect(
    tmp_path: Path, attack: str
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    key, value, error, message = _attacks(victim)[attack]
    ckpt = _crafted(tmp_path, key, value)
    with pytest.raises(error, match=re.escape(key)) as info:
        evaluate_checkpoint(ckpt, device="cpu")
    assert message in str(info.value)
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.ckpt", "victim.txt"]


@pytest.mark.slow
def test_eval_cli_refuses_a_crafted_method_config(tmp_path: Path) -> None:
    """``python -m asgml.eval`` exits non-zero, the marker file untouched, for a resolver
    hidden under ``method:``."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    key, value, *_ = _attacks(victim)["oc_create_in_method"]
    ckpt = _crafted(tmp_path, key, value)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "asgml.eval",
        f"ckpt_path={ckpt}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        "device=cpu",
        "progress_bar=false",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "StoredInterpolationError" in res.stderr and key in res.stderr
    assert victim.read_text() == "precious" and not (tmp_path / "eval.json").exists()


def test_stored_config_screen_walks_keys_lists_and_allows_clean_configs(tmp_path: Path) -> None:
    cfg = compose_cfg(["trainer.max_epochs=1", "method=boost_ogm"], output_dir=tmp_path)
    stored = to_container(cfg)
    screen_stored_config(stored)  # a real run's stored config passes
    with pytest.raises(StoredInterpolationError, match=r"a\[1\]"):
        screen_stored_config({"a": [1, "x${y}"]})
    with pytest.raises(UntrustedConfigError, match="interpolation"):
        screen_stored_config({"a": {"${oc.env:HOME}": 1}})
