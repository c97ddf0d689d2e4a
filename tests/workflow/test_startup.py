"""The start-up block's method, trainer and code lines, and the git provenance."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import lightning as L
import pytest

from asgml.run.feedback import code_lines, method_lines, startup_lines, trainer_lines
from asgml.run.provenance import commit_text, git_state, versions
from tests.conftest import compose_cfg


def test_method_lines_list_each_callbacks_options() -> None:
    cfg = compose_cfg(["method=boost_ogm", "method.boost.alpha=1.25", "method.ogm.alpha=0.3"])
    lines = method_lines(cfg)
    assert [line.split(" ", 1)[0] for line in lines] == [
        "method.ogm",
        "method.probe",
        "method.boost",
    ]
    assert lines[2].startswith("method.boost alpha=1.25, scale_max=2.0, ema=True, ema_alpha=0.3, ")
    assert "signal=probe" in lines[2]
    assert lines[0].startswith("method.ogm alpha=0.3, ")
    assert method_lines(compose_cfg([])) == []  # baseline: no callbacks


def test_trainer_lines_and_the_whole_block() -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        logger=False,
        enable_progress_bar=False,
    )
    assert trainer_lines(trainer) == [
        "device    cpu (cpu, 1 device x 1 node)",
        "precision bf16-mixed",
        "strategy  single_device (world size 1)",
    ]
    cfg = compose_cfg(["method=boost"])
    lines = startup_lines(cfg, "/run", (), trainer)
    assert lines[0] == "run dir   /run"
    assert lines.index("precision bf16-mixed") > lines.index(method_lines(cfg)[-1])
    assert lines[-2:] == code_lines()


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")
def test_git_state_commit_and_dirty_flag(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    sha = _git(repo, "rev-parse", "HEAD")
    assert git_state(repo) == {"commit": sha, "dirty": False}
    (repo / "b.py").write_text("")  # untracked: not dirty
    git_state.cache_clear()
    assert git_state(repo)["dirty"] is False
    (repo / "a.py").write_text("x = 2\n")
    git_state.cache_clear()
    state = git_state(repo)
    assert state == {"commit": sha, "dirty": True}
    assert commit_text(state) == f"{sha[:12]} (uncommitted changes)"
    git_state.cache_clear()
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_state(outside) == {"commit": "unknown", "dirty": None}
    assert commit_text(git_state(outside)) == "unknown"
    git_state.cache_clear()


def test_versions_name_each_package() -> None:
    got = versions(("lightning", "no-such-package-asgml"))
    assert got == {"lightning": L.__version__, "no-such-package-asgml": "unknown"}
