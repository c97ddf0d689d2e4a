"""No import cycles in ``asgml``: every module imports first in a clean interpreter, and the
static check CI runs (``tools/check_imports.py``) finds cycles wherever their imports stand."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("check_imports", ROOT / "tools" / "check_imports.py")
assert _spec is not None and _spec.loader is not None
check_imports = importlib.util.module_from_spec(_spec)
sys.modules["check_imports"] = check_imports
_spec.loader.exec_module(check_imports)

# One interpreter started for this test; before each module every `asgml*` entry is
# dropped from sys.modules, so that module is the first asgml module imported (third-party
# packages stay loaded: they cannot be part of a cycle in asgml).
IMPORT_EACH = """
import importlib, json, pkgutil, sys, traceback
import asgml
names = ["asgml"] + [m.name for m in pkgutil.walk_packages(asgml.__path__, "asgml.")]
failed = {}
for name in names:
    for key in [k for k in sys.modules if k == "asgml" or k.startswith("asgml.")]:
        del sys.modules[key]
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=3)
print(json.dumps({"names": names, "failed": failed}))
"""


@pytest.mark.slow
def test_every_module_imports_first_in_a_clean_interpreter() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH], capture_output=True, text=True, cwd=ROOT, check=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"asgml.train", "asgml.run.build", "asgml.data.audiovisual"} <= set(result["names"])
    assert result["failed"] == {}


def test_asgml_has_no_import_cycle() -> None:
    out = io.StringIO()
    status = check_imports.check(ROOT / "asgml", out=out)
    assert status == 0, out.getvalue()


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_cycles_are_found_through_functions_and_type_checking(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            # a -> b at module level, b -> a inside a function
            "a.py": "from pkg.b import g\n",
            "b.py": "def g():\n    from pkg import a\n",
            # c -> d under TYPE_CHECKING, d -> c (relative, module level)
            "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.d\n",
            "d.py": "from .c import TYPE_CHECKING\n",
            # no cycle: e -> sub.f, sub/__init__ -> nothing; external imports ignored
            "e.py": "import os\nfrom pkg.sub import f\n",
            "sub/__init__.py": "",
            "sub/f.py": "import json\n",
        },
    )
    modules = {check_imports.module_name(p, root) for p in root.rglob("*.py")}
    edges = [
        e for p in sorted(root.rglob("*.py")) for e in check_imports.imports_of(p, root, modules)
    ]
    kinds = {(e.source, e.target): e.kind for e in edges}
    assert kinds[("pkg.b", "pkg.a")] == "function"
    assert kinds[("pkg.c", "pkg.d")] == "type-checking"
    assert kinds[("pkg.d", "pkg.c")] == "module" and kinds[("pkg.e", "pkg.sub.f")] == "module"
    assert check_imports.cycles(edges, modules) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]
    out = io.StringIO()
    assert check_imports.check(root, out=out) == 1
    assert "import cycle: pkg.a <-> pkg.b" in out.getvalue()
    assert "pkg/b.py:2: pkg.b -> pkg.a (function)" in out.getvalue()


def test_acyclic_package_passes_and_strict_flags_local_imports(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "a.py": "from pkg import b\nfrom pkg.sub import c\n",
            "b.py": "import os\n",
            "sub/__init__.py": "from . import c\n",
            "sub/c.py": "def f():\n    import submitit\n    import numpy\n",
        },
    )
    assert check_imports.check(root, out=io.StringIO()) == 0
    out = io.StringIO()
    assert check_imports.check(root, strict=True, out=out) == 1
    assert "numpy  <- not optional" in out.getvalue()
    assert "submitit  <- not optional" not in out.getvalue()


def test_layer_check_refuses_upward_imports(tmp_path: Path) -> None:
    """The wings' rules (``LAYERS``): an upward import fails the check, also inside a
    function or under TYPE_CHECKING; a downward one passes."""
    ok = {
        "core/__init__.py": "",
        "core/base.py": "import os\n",
        "methods/__init__.py": "",
        "methods/m.py": "from pkg.core import base\n",
        "run/__init__.py": "",
        "run/build.py": "from pkg.methods import m\nfrom pkg.report import table\n",
        "report/__init__.py": "",
        "report/table.py": "import json\n",
    }
    root = _package(tmp_path / "ok", ok)
    root = root.rename(root.parent / "asgml")  # the rules are keyed by wing under the package
    assert check_imports.check(root, out=io.StringIO()) == 0
    for name, text in [
        ("core/base.py", "from asgml.run import build\n"),  # core -> run
        ("methods/m.py", "def f():\n    from asgml.methods import other\n"),  # method -> method
        (
            "report/table.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asgml.core.base\n",
        ),
    ]:
        bad = _package(
            tmp_path / name.replace("/", "_"), {**ok, "methods/other.py": "", name: text}
        )
        bad = bad.rename(bad.parent / "asgml")
        out = io.StringIO()
        assert check_imports.check(bad, out=out) == 1, name
        assert "layer violation" in out.getvalue()
