"""Which code made a run: the git commit of the asgml source (and whether it had uncommitted
changes) and the versions of torch, Lightning and asgml. Shown in the start-up block
(``asgml.run.feedback.code_lines``) and written to ``metrics.json`` (key
``provenance``), so a table can be traced back to the code that produced it.

The commit is read with the ``git`` command in the directory of the ``asgml`` package (an
editable install or a clone); ``"unknown"`` when there is no ``git``, the package is not in a
repository (a wheel install) or ``git`` does not answer within 5 s. ``dirty`` is ``True`` when
tracked files differ from the commit (``git status --porcelain --untracked-files=no``),
``None`` when unknown.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"
PACKAGES = ("torch", "lightning", "asgml")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


@functools.lru_cache(maxsize=4)
def git_state(path: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or "unknown", "dirty": bool or None}`` of the repository holding
    ``path`` (default: the ``asgml`` package)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[1]
    commit = _git(["rev-parse", "HEAD"], where)
    if commit is None or not commit.strip():
        return {"commit": UNKNOWN, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"unknown"`` when it has no metadata)."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = UNKNOWN
    return out


def provenance() -> dict[str, Any]:
    """What ``metrics.json`` records under ``provenance``."""
    return {**git_state(), "versions": versions()}


def commit_text(state: dict[str, Any]) -> str:
    """``"1a2b3c4d5e6f (uncommitted changes)"``, ``"1a2b3c4d5e6f"`` or ``"unknown"``."""
    if state.get("commit", UNKNOWN) == UNKNOWN:
        return UNKNOWN
    text = str(state["commit"])[:12]
    if state.get("dirty"):
        text += " (uncommitted changes)"
    return text
