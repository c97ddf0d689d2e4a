"""Find (and with ``--fix`` convert) Sphinx cross-reference roles in the package's docstrings.

The API reference is rendered by mkdocstrings with Markdown docstrings (Google style):
a Sphinx role such as ``:class:`Foo``` or ``:func:`~asgml.x.bar``` would be printed as raw
text. ``--fix`` rewrites each role to a Markdown code span: ``:class:`Foo``` -> `` `Foo` ``,
``:func:`~asgml.x.bar``` -> `` `bar` `` (a leading ``~`` keeps the last component, as in
Sphinx), ``:meth:`title <target>``` -> `` `title` ``. Only the role text changes; nothing
else of a line is touched.

    python tools/docstring_roles.py            # list the roles; exit 1 if there is any
    python tools/docstring_roles.py --fix      # convert them in place
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# :role:`target`, :py:role:`target`; the target may not contain a backtick
ROLE = re.compile(
    r":(?:py:)?(?P<role>class|func|attr|meth|mod|data|exc|obj|const|ref|doc|term)"
    r":`(?P<target>[^`]+)`"
)


def _replacement(match: re.Match[str]) -> str:
    target = " ".join(match["target"].split())  # a role broken over lines
    titled = re.fullmatch(r"(?P<title>.+?)\s*<(?P<ref>[^<>]+)>", target)
    if titled:
        text = titled["title"]
    elif target.startswith("~"):
        text = target[1:].rsplit(".", 1)[-1]
    else:
        text = target
    return f"`{text}`"


def convert(text: str) -> str:
    """``text`` with every Sphinx role replaced by a Markdown code span."""
    return ROLE.sub(_replacement, text)


def find_roles(root: Path = ROOT / "asgml") -> list[tuple[Path, int, str]]:
    """``(file, line, role)`` of every Sphinx role in the ``.py`` files under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        for m in ROLE.finditer(text):
            found.append((path, text.count("\n", 0, m.start()) + 1, m.group(0)))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fix", action="store_true", help="convert the roles in place")
    p.add_argument("root", nargs="?", default=str(ROOT / "asgml"), help="folder to scan")
    args = p.parse_args(argv)
    found = find_roles(Path(args.root))
    if args.fix:
        for path in sorted({f for f, _, _ in found}):
            path.write_text(convert(path.read_text()))
        print(f"converted {len(found)} roles in {len({f for f, _, _ in found})} files")
        return 0
    for path, line, role in found:
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}: {role}")
    if found:
        print(f"{len(found)} Sphinx roles: mkdocstrings prints them as raw text; run with --fix")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
