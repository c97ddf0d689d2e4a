"""Import-graph check of a package (default: ``asgml``); run by CI (``.ci/run``).

    python tools/check_imports.py [PACKAGE_DIR]

Reads every ``.py`` file of the package with :mod:`ast` (nothing is imported) and builds
the graph of its internal imports. An edge is any ``import`` / ``from ... import`` of a
module of the package, wherever it stands: at module level, inside a function, or under
``if TYPE_CHECKING:`` -- a cycle hidden in a function or behind ``TYPE_CHECKING`` is still
a cycle between the two modules' designs. ``from pkg.a import b`` is an edge to
``pkg.a.b`` when that is a module, else to ``pkg.a``; importing ``pkg.a.b`` is not counted
as importing the package ``pkg.a`` itself.

Exit status 1 when the graph has a cycle (each is printed with the import lines that make
it), unless the cycle is listed in ``KNOWN_CYCLES``, or when an import crosses a layer the
wrong way (``LAYERS``): the four wings of ``asgml/`` are ``core`` (what a method may touch),
``methods`` (one file per method), ``run`` (config to finished run) and ``report`` (finished
runs to tables and figures); ``core`` never imports ``methods``/``run``/``report``, a method
imports only ``core`` and ``models`` (and ``data``'s plain helpers), ``data`` and ``models``
never import ``run``/``methods``/``report``, and ``report`` imports no training code. Function-level imports are listed
too: the code base allows them for optional dependencies only; ``--strict`` makes any
function-level import of a module that is not in ``OPTIONAL`` fail as well.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------
# KNOWN EXCEPTIONS -- cycles that are being removed elsewhere; listed ones are reported but
# do not fail the check. Delete an entry as soon as its cycle is gone (the check says so).
KNOWN_CYCLES: list[frozenset[str]] = []
# ---------------------------------------------------------------------------------------

# LAYERS -- for modules under a wing (key, relative to the package), the wings they may not
# import (an import of the package root `asgml` itself is not counted). Every edge is checked,
# including function-level and TYPE_CHECKING imports.
LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("methods", "run", "report", "data", "train", "eval", "prepare"),
    "methods": ("methods", "run", "report", "train", "eval", "prepare"),
    "models": ("core", "methods", "run", "report", "data", "train", "eval", "prepare"),
    "data": ("methods", "run", "report", "train", "eval", "prepare"),
    "report": ("core", "methods", "run", "data", "models", "train", "eval", "prepare"),
    "run": ("train", "eval", "prepare"),
}
# the one sanctioned import between two methods' modules is none: a method that needs another
# one's output reads it through a `core` contract (e.g. core.types.UtilizationSource)

# top-level names of optional dependencies, which may be imported inside a function
OPTIONAL: frozenset[str] = frozenset({"hydra_plugins", "submitit", "sklearn"})


@dataclass(frozen=True)
class Import:
    """One import statement of a module of the package."""

    source: str  # importing module
    target: str  # imported module (internal) or top-level name (external)
    kind: str  # "module", "function" or "type-checking"
    path: str  # relative to the package's parent directory
    line: int


def module_name(path: Path, root: Path) -> str:
    """``pkg/sub/mod.py`` -> ``pkg.sub.mod``; ``pkg/sub/__init__.py`` -> ``pkg.sub``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, kind: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import under ``node`` with the context it runs in."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, kind
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, "function")
        elif isinstance(child, ast.If) and _is_type_checking(child.test) and kind == "module":
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), "type-checking")
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), kind)
        else:
            yield from _walk(child, kind)


def _absolute(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path, root: Path, modules: set[str]) -> list[Import]:
    """The imports of one file; internal targets are resolved to modules of the package."""
    source = module_name(path, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[Import] = []
    for node, kind in _walk(tree, "module"):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _absolute(node, source, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for t in targets:
            if t in modules or t.split(".")[0] == root.name:
                # an internal name that is not a module resolves to its closest module
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
            out.append(Import(source, t, kind, str(path.relative_to(root.parent)), node.lineno))
    return out


def cycles(edges: Iterable[Import], modules: set[str]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        if e.target in modules:
            graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(1000, 10 * len(modules)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _wing(module: str, package: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == package and len(parts) > 1 else None


def layer_violations(edges: Iterable[Import], package: str) -> list[Import]:
    """Imports from a wing into a wing it may not import (:data:`LAYERS`); imports within
    the same module file's wing are allowed except between two ``methods`` modules."""
    bad = []
    for e in edges:
        src, dst = _wing(e.source, package), _wing(e.target, package)
        if src is None or dst is None or src not in LAYERS:
            continue
        if dst == src and src != "methods":
            continue
        if dst in LAYERS[src]:
            bad.append(e)
    return bad


def check(root: Path, strict: bool = False, out=sys.stdout) -> int:
    """Print the report for the package at ``root``; returns the exit status."""
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    modules = {module_name(p, root) for p in files}
    # one edge per (file, line, target): `from m import a, b` is one import of m
    edges = list(dict.fromkeys(e for p in files for e in imports_of(p, root, modules)))
    status = 0
    found = cycles(edges, modules)
    for comp in found:
        known = frozenset(comp) in KNOWN_CYCLES
        label = "known import cycle (KNOWN_CYCLES)" if known else "import cycle"
        print(f"{label}: {' <-> '.join(comp)}", file=out)
        for e in edges:
            if e.source in comp and e.target in comp:
                print(f"  {e.path}:{e.line}: {e.source} -> {e.target} ({e.kind})", file=out)
        status |= 0 if known else 1
    ours = {k for k in KNOWN_CYCLES if k <= modules}
    for gone in sorted(ours - {frozenset(c) for c in found}, key=sorted):
        print(f"note: KNOWN_CYCLES entry {sorted(gone)} no longer occurs; delete it", file=out)
    for e in layer_violations(edges, root.name):
        print(f"layer violation: {e.path}:{e.line}: {e.source} -> {e.target} ({e.kind})", file=out)
        status = 1
    local = [e for e in edges if e.kind == "function"]
    if local:
        print(
            f"function-level imports ({len(local)}; allowed for optional dependencies):", file=out
        )
    for e in local:
        optional = e.target.split(".")[0] in OPTIONAL
        bad = strict and not optional
        print(f"  {e.path}:{e.line}: {e.target}{'  <- not optional' if bad else ''}", file=out)
        status |= int(bad)
    if not found:
        print(f"no import cycles among the {len(modules)} modules of {root.name}", file=out)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[1] / "asgml"
    parser.add_argument("package", nargs="?", type=Path, default=default)
    parser.add_argument("--strict", action="store_true", help="fail on non-optional local imports")
    args = parser.parse_args(argv)
    return check(args.package.resolve(), strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
