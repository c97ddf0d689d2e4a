"""mkdocs build hooks (registered in ``mkdocs.yml`` under ``hooks:``).

* ``<!-- asgml:hparams NAME -->`` in a page is replaced by a Markdown table of the
  hyperparameters of ``conf/method/NAME.yaml``: every key path as it is written on the
  command line (``method.<key>``), its default after Hydra composition (so
  ``boost_ogm = ogm + boost`` shows the composed values) and the YAML comment of the key
  as its description (the comment in the file that sets the value, else the one in the
  file it was composed from).
* Every ``conf/method/*.yaml`` must have a page ``docs/methods/<name>.md``: a missing one
  fails the build (``tests/test_docs.py`` checks the same without mkdocs).
* ``<!-- asgml:protocols -->`` becomes the training-schedule table of every method x real
  dataset (``asgml.run.protocols``: reference and official schedules, each value's source).
* ``<!-- asgml:api PACKAGE -->`` becomes one mkdocstrings ``::: module`` block per module
  file of the package, so the API reference lists a new module without an edit.
* A nav entry whose value is a folder (``methods/``) expands to that folder's
  ``index.md`` followed by its other pages in name order, each titled by its first
  heading without code marks (``# AGM (`method=agm`)`` -> ``AGM``; ``# `asgml.core``` ->
  ``asgml.core``; ``# CREMA-D (`dataset=cremad`, `dataset=cremad_3f`)`` -> ``CREMA-D
  (dataset=cremad, dataset=cremad_3f)``), so a page added to ``docs/methods/`` is linked without editing
  ``mkdocs.yml``.
* MathJax is served from the site itself, so formulas render offline: the files of the
  pip package ``django-static-mathjax`` (MathJax 3.2.2, the ``docs`` extra; it needs no
  Django) listed in :data:`MATHJAX_FILES` are added to the site under ``javascripts/mathjax/``
  (``mkdocs.yml`` loads ``javascripts/mathjax/tex-mml-chtml.js``; no CDN).

The functions below are plain Python so the tests can import this file without mkdocs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

try:  # mkdocs is an optional dependency (the `docs` extra); the tests run without it
    from mkdocs.exceptions import PluginError
except ImportError:  # pragma: no cover - exercised only without the docs extra
    PluginError = RuntimeError  # type: ignore[misc,assignment]

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
# a marker is replaced only on a line of its own (not when quoted in text or code)
MARKER = re.compile(r"^<!--\s*asgml:hparams\s+([A-Za-z0-9_\-]+)\s*-->[ \t]*$", re.M)
PROTOCOL_MARKER = re.compile(r"^<!--\s*asgml:protocols\s*-->[ \t]*$", re.M)
API_MARKER = re.compile(r"^<!--\s*asgml:api\s+([A-Za-z0-9_.]+)\s*-->[ \t]*$", re.M)
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_\-]+)\s*:(?P<rest>.*)$")
_LIST_LINE = re.compile(r"^ *- ")


# --------------------------------------------------------------------------- methods
def method_names(conf_dir: Path = CONF_DIR) -> list[str]:
    """Names of the method configs (``conf/method/<name>.yaml``)."""
    return sorted(p.stem for p in (conf_dir / "method").glob("*.yaml"))


def missing_method_pages(docs_dir: Path, conf_dir: Path = CONF_DIR) -> list[str]:
    """Method configs without a ``docs/methods/<name>.md`` page."""
    return [n for n in method_names(conf_dir) if not (docs_dir / "methods" / f"{n}.md").is_file()]


def _trailing_comment(rest: str) -> tuple[str, int]:
    """The ``# comment`` after a YAML value and its offset in ``rest`` (-1: none); a ``#``
    inside quotes is not a comment."""
    quote = ""
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[i + 1 :].strip(), i
    return "", -1


def yaml_comments(path: Path) -> dict[str, str]:
    """Comment of every key of a block-style YAML file, by dotted key path.

    A key's comment is its trailing ``# ...`` (continued by comment lines aligned under it)
    or, failing that, the block of full-line comments directly above it (the block at the very top of the file describes the file
    and belongs to no key). Keys under ``defaults:`` are skipped.
    """
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    seen_key = False
    last: tuple[str, int] | None = None  # key whose trailing comment may continue, its column
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            if last and raw.index("#") == last[1]:  # aligned under a trailing comment
                out[last[0]] += " " + stripped.lstrip("#").strip()
                continue
            last = None
            pending.append(stripped.lstrip("#").strip())
            continue
        last = None
        if not stripped:
            pending = []
            continue
        m = _KEY_LINE.match(raw)
        if not m or _LIST_LINE.match(raw):
            pending = []
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        key = ".".join(k for _, k in stack)
        trailing, offset = _trailing_comment(m["rest"])
        comment = trailing or (" ".join(pending) if seen_key else "")
        if comment and not key.startswith("defaults"):
            out[key] = comment
            if trailing:  # a comment line aligned under this one continues it
                last = (key, len(raw) - len(m["rest"]) + offset)
        pending = []
        seen_key = True
    return out


def _defaults_chain(name: str, conf_dir: Path) -> list[Path]:
    """The method files composed into ``name`` (its ``defaults:`` first, itself last)."""
    path = conf_dir / "method" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such method config")
    raw = OmegaConf.load(path)
    chain: list[Path] = []
    for entry in raw.get("defaults", []) if isinstance(raw, DictConfig) else []:
        # other methods composed in (`- ogm`); entries of other groups (`- /model@x: y`,
        # `_self_`) only change values, which the Hydra composition already shows
        if isinstance(entry, str) and (conf_dir / "method" / f"{entry}.yaml").is_file():
            chain.extend(p for p in _defaults_chain(entry, conf_dir) if p not in chain)
        # a file of another group composed into the method (`- /boost/callbacks@_here_`)
        elif isinstance(entry, str) and entry.startswith("/") and entry.endswith("@_here_"):
            other = conf_dir / f"{entry[1:].removesuffix('@_here_')}.yaml"
            if other.is_file() and other not in chain:
                chain.append(other)
    chain.append(path)
    return chain


def compose_method(name: str, conf_dir: Path = CONF_DIR) -> DictConfig:
    """``cfg.method`` as ``python -m asgml.train method=<name>`` composes it."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"method={name}"])
    finally:
        GlobalHydra.instance().clear()
    return cfg.method


def _flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf; an empty mapping is a leaf."""
    if isinstance(node, dict) and node:
        out: list[tuple[str, Any]] = []
        for k, v in node.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, node)]


def _fmt(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict) and not value:
        return "`{}`"
    return f"`{value}`"


def hparams_table(name: str, conf_dir: Path = CONF_DIR) -> str:
    """Markdown table of ``conf/method/<name>.yaml`` after Hydra composition."""
    method = compose_method(name, conf_dir)
    comments: dict[str, str] = {}
    for path in _defaults_chain(name, conf_dir):  # later files override earlier comments
        comments.update(yaml_comments(path))
    callbacks = []
    rows = []
    for key, value in _flatten(OmegaConf.to_container(method, resolve=False)):
        if key == "name":
            continue
        if value == {}:  # e.g. `module: {}`: nothing to set
            continue
        if key.endswith("._target_"):
            callbacks.append(f"`method.{key.rsplit('.', 1)[0]}`: `{value}`")
            continue
        desc = comments.get(key, "").replace("|", "\\|")
        rows.append(f"| `method.{key}` | {_fmt(value)} | {desc} |")
    files = ", ".join(f"`conf/{p.parent.name}/{p.name}`" for p in _defaults_chain(name, conf_dir))
    lines = [f"Composed from {files}."]
    if callbacks:
        lines += ["", "Callbacks, applied in this order: " + "; ".join(callbacks) + "."]
    if rows:
        lines += ["", "| key | default | description |", "|---|---|---|", *rows]
    else:
        lines += ["", "No hyperparameters."]
    return "\n".join(lines) + "\n"


def render_hparams(markdown: str, conf_dir: Path = CONF_DIR) -> str:
    """Replace every ``<!-- asgml:hparams NAME -->`` marker by its table."""
    return MARKER.sub(lambda m: hparams_table(m[1], conf_dir), markdown)


# --------------------------------------------------------------------------- protocols
def render_protocols(markdown: str, conf_dir: Path = CONF_DIR) -> str:
    """Replace every ``<!-- asgml:protocols -->`` marker by the protocol table."""
    if not PROTOCOL_MARKER.search(markdown):
        return markdown
    from asgml.run.protocols import protocols_markdown

    table = protocols_markdown(method_names(conf_dir))
    return PROTOCOL_MARKER.sub(lambda m: table, markdown)


# --------------------------------------------------------------------------- API pages
def api_markdown(package: str, root: Path = ROOT) -> str:
    """A ``::: module`` block for every module of ``package`` (from its files, not imports)."""
    folder = root.joinpath(*package.split("."))
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such package")
    blocks = []
    for path in sorted(folder.glob("*.py")):
        if path.stem == "__main__" or (path.stem == "__init__" and not path.read_text().strip()):
            continue
        module = package if path.stem == "__init__" else f"{package}.{path.stem}"
        blocks.append(f"::: {module}\n")
    return "\n".join(blocks)


def render_api(markdown: str, root: Path = ROOT) -> str:
    """Replace every ``<!-- asgml:api PACKAGE -->`` marker by its modules' blocks."""
    return API_MARKER.sub(lambda m: api_markdown(m[1], root), markdown)


# --------------------------------------------------------------------------- nav
def _title(page: Path) -> str:
    """A page's nav title: its first heading without a trailing ``(`method=x`)`` and without
    backticks (a nav entry is plain text: Markdown code marks would show literally)."""
    for line in page.read_text().splitlines():
        if line.startswith("# "):
            title = re.sub(r"\s*\(`[^`]*`\)\s*$", "", line[2:].strip())
            return title.replace("`", "").strip() or page.stem
    return page.stem


# --------------------------------------------------------------------------- MathJax
# what the site needs of MathJax's es5 build: the combined TeX + MathML component, its CHTML
# fonts, the TeX extensions it autoloads (\boldsymbol, \text, ...) and the menu's helpers
MATHJAX_FILES = (
    "tex-mml-chtml.js",
    "output/chtml/fonts/woff-v2",
    "input/tex/extensions",
    "ui",
)
MATHJAX_SITE_DIR = "javascripts/mathjax"


def mathjax_root() -> Path:
    """MathJax's ``es5`` folder in the installed ``django-static-mathjax`` package.

    Raises:
        PluginError: when the package is not installed.
    """
    from importlib.util import find_spec

    spec = find_spec("mathjax")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        root = Path(loc) / "static" / "mathjax" / "es5"
        if (root / "tex-mml-chtml.js").is_file():
            return root
    raise PluginError(
        "the docs serve MathJax from the site: install it with `pip install -e .[docs]` "
        "(package django-static-mathjax; looked for static/mathjax/es5/tex-mml-chtml.js in "
        f"{locations or 'no installed package named mathjax'})"
    )


def mathjax_files(root: Path | None = None) -> dict[str, Path]:
    """``{site path: source file}`` of every MathJax file the site ships."""
    root = root or mathjax_root()
    out: dict[str, Path] = {}
    for entry in MATHJAX_FILES:
        path = root / entry
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in paths:
            out[f"{MATHJAX_SITE_DIR}/{p.relative_to(root).as_posix()}"] = p
    return out


def expand_folder(folder: str, docs_dir: Path) -> list[Any]:
    """Nav entries of a docs folder: ``index.md`` first, then the rest by name."""
    base = docs_dir / folder
    if not base.is_dir():
        raise PluginError(f"mkdocs.yml nav: folder '{folder}' does not exist under {docs_dir}")
    pages = sorted(base.glob("*.md"), key=lambda p: (p.name != "index.md", p.name))
    return [
        {("Overview" if p.name == "index.md" else _title(p)): p.relative_to(docs_dir).as_posix()}
        for p in pages
    ]


def _expand_nav(nav: Any, docs_dir: Path) -> Any:
    if isinstance(nav, list):
        return [_expand_nav(item, docs_dir) for item in nav]
    if isinstance(nav, dict):
        out = {}
        for title, value in nav.items():
            if isinstance(value, str) and value.endswith("/"):
                out[title] = expand_folder(value, docs_dir)
            else:
                out[title] = _expand_nav(value, docs_dir)
        return out
    return nav


# --------------------------------------------------------------------------- mkdocs hooks
def on_config(config: Any) -> Any:
    docs_dir = Path(config["docs_dir"])
    missing = missing_method_pages(docs_dir)
    if missing:
        raise PluginError(
            "conf/method/ has configs without a docs page: "
            + ", ".join(f"docs/methods/{n}.md" for n in missing)
        )
    if config.get("nav"):
        config["nav"] = _expand_nav(config["nav"], docs_dir)
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    try:
        return render_api(render_protocols(render_hparams(markdown)))
    except Exception as e:  # name the page whose marker failed
        raise PluginError(f"{page.file.src_path}: asgml:hparams: {e}") from e


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for uri, path in mathjax_files().items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
