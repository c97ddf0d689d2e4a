"""The documentation contract, checked without mkdocs: every method config has its page in
the agreed format, the hyperparameter tables are generated from the composed configs with
their YAML comments, and the command-line entry point stays free of torch."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_hooks():
    spec = importlib.util.spec_from_file_location("asgml_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()
METHODS = hooks.method_names()


def test_every_method_config_has_a_page() -> None:
    assert METHODS, "no conf/method/*.yaml found"
    assert hooks.missing_method_pages(ROOT / "docs") == []


@pytest.mark.parametrize("name", METHODS)
def test_method_page_format(name: str) -> None:
    """Title names the config; the formula comes from a module docstring (one source); the
    hyperparameter table is generated (marker), not written by hand."""
    text = (ROOT / "docs" / "methods" / f"{name}.md").read_text()
    assert re.search(rf"^# .+\(`method={re.escape(name)}`\)\s*$", text, re.M), "title line"
    assert f"<!-- asgml:hparams {name} -->" in text
    if name != "baseline":
        targets = re.findall(r"^::: (asgml\.methods\.\w+)\s*$", text, re.M)
        assert targets, "no `::: asgml.methods.<module>` block"
        for target in targets:
            assert (ROOT / (target.replace(".", "/") + ".py")).is_file(), target
    for heading in ("## Hyperparameters", "## Official settings per dataset", "## Deviations"):
        assert heading in text, heading


def test_missing_page_is_reported(tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "method"
    conf.mkdir(parents=True)
    (conf / "alpha.yaml").write_text("name: alpha\n")
    (conf / "beta.yaml").write_text("name: beta\n")
    docs = tmp_path / "docs" / "methods"
    docs.mkdir(parents=True)
    (docs / "alpha.md").write_text("# Alpha (`method=alpha`)\n")
    assert hooks.missing_method_pages(tmp_path / "docs", tmp_path / "conf") == ["beta"]


def test_build_fails_on_a_missing_page(tmp_path: Path) -> None:
    (tmp_path / "methods").mkdir()
    with pytest.raises(hooks.PluginError, match=r"docs/methods/baseline\.md"):
        hooks.on_config({"docs_dir": str(tmp_path), "nav": None})


FIXTURE = {
    "train.yaml": "defaults:\n  - _self_\n  - method: combo\nseed: 1\n",
    "method/throttle.yaml": (
        "# file header: describes the file, belongs to no key\n"
        "name: throttle\n"
        "module: {}\n"
        "throttle:\n"
        "  _target_: pkg.Throttle\n"
        "  alpha: 0.8              # throttle strength\n"
        "  # the window, in epochs\n"
        "  ends: 50\n"
        "  mode: 'a#b'             # a value with a hash\n"
        "  clip: null              # clip norm; null = off,\n"
        "                          # continued on the next line\n"
        "  # about the next key\n"
        "  last: 1\n"
    ),
    "method/push.yaml": (
        "name: push\n"
        "module:\n"
        "  gamma: 1.0              # unimodal-loss weight\n"
        "push:\n"
        "  _target_: pkg.Push\n"
        "  alpha: 0.5              # push strength\n"
        "  scales: [1, 2]          # per modality\n"
        "  cap: null\n"
    ),
    "method/combo.yaml": (
        "defaults:\n  - throttle\n  - push\n  - /extra@opts: big\n  - _self_\n"
        "name: combo\npush:\n  alpha: 0.75\n"
    ),
    "extra/big.yaml": "size: 2\n",
}


def _fixture_conf(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    for rel, text in FIXTURE.items():
        (conf / rel).parent.mkdir(parents=True, exist_ok=True)
        (conf / rel).write_text(text)
    return conf


def test_yaml_comments(tmp_path: Path) -> None:
    conf = _fixture_conf(tmp_path)
    assert hooks.yaml_comments(conf / "method" / "throttle.yaml") == {
        "throttle.alpha": "throttle strength",
        "throttle.ends": "the window, in epochs",
        "throttle.mode": "a value with a hash",
        "throttle.clip": "clip norm; null = off, continued on the next line",
        "throttle.last": "about the next key",
    }


def test_hparams_table_composes_defaults(tmp_path: Path) -> None:
    conf = _fixture_conf(tmp_path)
    table = hooks.hparams_table("combo", conf)
    rows = [line for line in table.splitlines() if line.startswith("| `method.")]
    assert rows == [
        "| `method.module.gamma` | `1.0` | unimodal-loss weight |",
        "| `method.throttle.alpha` | `0.8` | throttle strength |",
        "| `method.throttle.ends` | `50` | the window, in epochs |",
        "| `method.throttle.mode` | `a#b` | a value with a hash |",
        "| `method.throttle.clip` | `null` | clip norm; null = off, continued on the next line |",
        "| `method.throttle.last` | `1` | about the next key |",
        # overridden by combo.yaml (0.75), described by push.yaml's comment
        "| `method.push.alpha` | `0.75` | push strength |",
        "| `method.push.scales` | `[1, 2]` | per modality |",
        "| `method.push.cap` | `null` |  |",
        "| `method.opts.size` | `2` |  |",  # from another group, composed in
    ]
    assert "`method.throttle`: `pkg.Throttle`; `method.push`: `pkg.Push`" in table
    assert "`conf/method/throttle.yaml`, `conf/method/push.yaml`, `conf/method/combo.yaml`" in table


def test_composition_with_other_groups(tmp_path: Path) -> None:
    """A method that overrides another group's option still gets its table."""
    conf = _fixture_conf(tmp_path)
    assert hooks.compose_method("combo", conf).opts.size == 2
    assert [p.name for p in hooks._defaults_chain("combo", conf)] == [
        "throttle.yaml",
        "push.yaml",
        "combo.yaml",
    ]


def test_marker_is_replaced(tmp_path: Path) -> None:
    conf = _fixture_conf(tmp_path)
    page = "# Push\n\n<!-- asgml:hparams push -->\n\nafter\n"
    out = hooks.render_hparams(page, conf)
    assert "<!-- asgml:hparams" not in out
    assert "| `method.push.alpha` | `0.5` | push strength |" in out
    assert out.endswith("after\n")
    quoted = "Write `<!-- asgml:hparams push -->` on its own line.\n"
    assert hooks.render_hparams(quoted, conf) == quoted  # quoted in text: left alone


def test_real_composed_method_table() -> None:
    """boost_ogm = ogm + boost: the table shows both parts and boost_ogm's own alpha."""
    table = hooks.hparams_table("boost_ogm")
    assert "| `method.boost.alpha` | `0.75` |" in table
    assert "| `method.ogm.alpha` | `0.8` |" in table
    assert "| `method.probe.eval_freq` | `20` |" in table


def test_folder_nav_lists_every_page(tmp_path: Path) -> None:
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "index.md").write_text("# Methods\n")
    (folder / "zeta.md").write_text("# Zeta method (`method=zeta`)\n")
    (folder / "alpha.md").write_text("no heading\n")
    nav = hooks._expand_nav([{"Home": "index.md"}, {"Methods": "methods/"}], tmp_path)
    assert nav == [
        {"Home": "index.md"},
        {
            "Methods": [
                {"Overview": "methods/index.md"},
                {"alpha": "methods/alpha.md"},
                {"Zeta method": "methods/zeta.md"},
            ]
        },
    ]


def test_cli_entry_point_does_not_import_torch() -> None:
    """`--help` and shell completion must not pay for torch/Lightning: importing the
    entry point (which is all `--help` does before Hydra answers) leaves them unloaded."""
    code = (
        "import sys, asgml.train, asgml.prepare; "
        "heavy = sorted(m for m in ('torch', 'lightning', 'torchvision', 'librosa') "
        "if m in sys.modules); print(heavy); sys.exit(1 if heavy else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_train_help_lists_groups_and_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "asgml.train", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"^method: .*\bboost_ogm\b", out.stdout, re.M)
    assert re.search(r"^dataset: .*\bcremad\b", out.stdout, re.M)
    assert "select_on: val" in out.stdout  # an option of the composed config
    assert "Usage: asgml-train" in out.stdout


def test_lazy_reexport_of_run() -> None:
    from asgml import train
    from asgml.run import training

    assert train.run is training.run
    with pytest.raises(AttributeError):
        _ = train.no_such_name


def test_readme_is_a_front_door() -> None:
    """README stays short, keeps the CI test command, and its links to the docs resolve."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "python -m pytest -q\n" in text
    for target in re.findall(r"\]\(((?:docs/|LICENSE)[^)#]*)", text):
        assert (ROOT / target).exists(), f"README links to missing {target}"


def _layout_block() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_architecture_layout_matches_the_tree() -> None:
    """Every module file of asgml/ is named in the Layout block under its folder, and every
    ``name.py`` the block names exists."""
    block = _layout_block()
    # the block's lines by folder: a line "  <folder>/" opens a folder, deeper lines belong to it
    named: dict[str, set[str]] = {}
    folder = ""
    for line in block.splitlines():
        m = re.match(r"^  (\w+)/", line)
        if m:
            folder = m.group(1)
        elif re.match(r"^\S", line):
            folder = "-"  # conf/, tests/, ... (outside asgml/)
        elif re.match(r"^  \S", line):
            folder = ""  # a top-level file of asgml/
        named.setdefault(folder, set()).update(re.findall(r"\b(\w+)\.py\b", line))
    missing, absent = [], []
    for path in sorted((ROOT / "asgml").rglob("*.py")):
        rel = path.relative_to(ROOT / "asgml")
        if rel.name in ("__init__.py", "__main__.py"):
            continue
        where = rel.parts[0] if len(rel.parts) > 1 else ""
        if rel.stem not in named.get(where, set()):
            missing.append(str(rel))
    for where, stems in named.items():
        if where == "-":
            continue
        for stem in stems:
            if not (ROOT / "asgml" / where / f"{stem}.py").is_file():
                absent.append(f"{where}/{stem}.py")
    assert missing == [], f"modules not in docs/architecture.md's Layout: {missing}"
    assert absent == [], f"Layout names files that do not exist: {absent}"


def _fenced(text: str, first_line: str) -> str:
    """The fenced code block of a page whose first line is ``first_line``."""
    for block in re.findall(r"```\w*\n(.*?)```", text, re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no code block starting with {first_line!r}")


def test_extending_example_method_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/extending.md's worked method, taken from the page as written: the module imports,
    its config passes the start-up checks, and a run trains with it and doubles the visual
    encoder's gradients."""
    import torch
    from omegaconf import OmegaConf

    from asgml.train import run
    from tests.conftest import compose_cfg

    page = (ROOT / "docs" / "extending.md").read_text()
    code = _fenced(page, "# asgml/methods/fixedscale.py")
    conf = _fenced(page, "# conf/method/fixedscale.yaml")
    spec = importlib.util.spec_from_loader("asgml.methods.fixedscale", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(code, "docs/extending.md", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "asgml.methods.fixedscale", module)
    assert module.scales_for(["audio", "visual"], {"visual": 2.0}) == {"audio": 1.0, "visual": 2.0}
    with pytest.raises(ValueError, match="factors must be >= 0"):
        module.FixedScale({"visual": -1.0})

    # one step of a tiny model with and without it: the visual gradients double
    from tests.helpers import GradRecorder, fit, tiny_mlp_module, vector_loader

    runs = []
    for cbs in ([], [module.FixedScale({"visual": 2.0})]):
        rec = GradRecorder()
        fit(tiny_mlp_module(), vector_loader(), [*cbs, rec], max_steps=1)
        runs.append(rec.grads[0])
    plain, scaled = runs
    for name, g in plain.items():
        factor = 2.0 if name.startswith("encoders.visual.") else 1.0
        assert torch.allclose(scaled[name], factor * g), name

    # the page's config passes the start-up checks and trains end to end
    cfg = compose_cfg([], output_dir=tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.method = OmegaConf.create(conf)
    assert run(cfg)["metrics"], "the run wrote no metrics"


# ------------------------------------------------------------ rendering: roles, nav, math
def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


roles = _load_tool("docstring_roles")


def test_no_sphinx_role_in_the_package_docstrings() -> None:
    """mkdocstrings renders Markdown docstrings: a Sphinx role would print as raw text."""
    found = roles.find_roles(ROOT / "asgml")
    assert not found, "run `python tools/docstring_roles.py --fix`:\n" + "\n".join(
        f"{p.relative_to(ROOT)}:{line}: {role}" for p, line, role in found[:20]
    )


def test_role_conversion() -> None:
    text = (
        "see :class:`Foo`, :func:`~asgml.report.figures.plot`, :py:meth:`a.b`,\n"
        ":meth:`Module.step\n    <asgml.core.module.Module.step>` and ``:class:`` as text"
    )
    assert roles.convert(text) == (
        "see `Foo`, `plot`, `a.b`,\n`Module.step` and ``:class:`` as text"
    )


def test_nav_titles_are_plain_text(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.md").write_text("# AGM (`method=agm`)\n")
    (tmp_path / "d" / "b.md").write_text("# CREMA-D (`dataset=cremad`, `dataset=cremad_3f`)\n")
    (tmp_path / "d" / "c.md").write_text("# `asgml.core`\n")
    titles = [next(iter(e)) for e in hooks.expand_folder("d", tmp_path)]
    assert titles == ["AGM", "CREMA-D (dataset=cremad, dataset=cremad_3f)", "asgml.core"]
    for folder in ("methods", "datasets", "reproduce", "api"):  # the real folders
        for entry in hooks.expand_folder(f"{folder}/", ROOT / "docs"):
            assert "`" not in next(iter(entry)), entry


def test_math_is_served_by_the_site_not_a_cdn() -> None:
    import yaml

    conf = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))
    scripts = conf["extra_javascript"]
    assert not [s for s in scripts if "://" in str(s)], scripts
    assert f"{hooks.MATHJAX_SITE_DIR}/tex-mml-chtml.js" in scripts
    pytest.importorskip("mathjax", reason="the docs extra (django-static-mathjax) is not installed")
    files = hooks.mathjax_files()
    assert f"{hooks.MATHJAX_SITE_DIR}/tex-mml-chtml.js" in files
    fonts = [u for u in files if u.startswith(f"{hooks.MATHJAX_SITE_DIR}/output/chtml/fonts/")]
    assert any(u.endswith("MathJax_Main-Regular.woff") for u in fonts), fonts[:5]
    assert all(p.is_file() for p in files.values())


def _method_page_sources(name: str) -> list[str]:
    """A method page's text and the docstrings' modules it renders (``::: asgml.methods.x``)."""
    page = (ROOT / "docs" / "methods" / f"{name}.md").read_text()
    modules = re.findall(r"^::: (asgml\.methods\.\w+)", page, re.M)
    return [page] + [(ROOT / (m.replace(".", "/") + ".py")).read_text() for m in modules]


@pytest.mark.parametrize("name", METHODS)
def test_method_page_writes_its_formulas_in_latex(name: str) -> None:
    """Every method page shows LaTeX (MathJax) formulas, from the page or its module's
    docstring; the eight that wrote pseudo-code blocks now have display formulas."""
    sources = _method_page_sources(name)
    assert any(re.search(r"\$\$|\$[^$\s][^$\n]*\$", s) for s in sources), name
    if name in {"agm", "arl", "cggm", "inforeg", "miles", "mmpareto", "ogm", "staleness"}:
        assert any("$$" in s for s in sources), name


@pytest.mark.slow
def test_built_site_renders_offline(tmp_path: Path) -> None:
    """`mkdocs build --strict` passes; the site carries MathJax itself, prints no raw Sphinx
    role, no backtick in the navigation, and `cremad_3f` keeps its underscore."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    pytest.importorskip("mathjax", reason="the docs extra (django-static-mathjax) is not installed")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (site / "javascripts" / "mathjax" / "tex-mml-chtml.js").stat().st_size > 100_000
    home = (site / "index.html").read_text()
    assert 'src="javascripts/mathjax/tex-mml-chtml.js"' in home
    assert "cremad_3f" in home
    raw = re.compile(r":(class|func|attr|meth|mod|data|exc|obj):(<code>|`)")
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert not raw.search(text), page.relative_to(site)
        assert "unpkg.com" not in text and "cdn.jsdelivr" not in text, page.relative_to(site)
        nav = re.findall(r'class="md-ellipsis">\s*([^<]*?)\s*<', text)
        assert not [t for t in nav if "`" in t], (page.relative_to(site), nav)
    # a method page's formula reaches the browser as MathJax input (arithmatex)
    ogm = (site / "methods" / "ogm" / "index.html").read_text()
    assert 'class="arithmatex"' in ogm


def test_recipes_page_generates_the_protocol_table() -> None:
    """The schedule table of docs/recipes.md comes from asgml.run.protocols (a marker)."""
    text = (ROOT / "docs" / "recipes.md").read_text()
    assert "<!-- asgml:protocols -->" in text
    page = hooks.render_protocols(text)
    assert "<!-- asgml:protocols -->" not in page
    row = next(line for line in page.splitlines() if line.startswith("| mmcosine | cremad |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2:6] == ["SGD", "0.001", "0.9", "0.0001"]
    assert cells[6].startswith("StepLR(step_size=100, gamma=0.1)")
    assert cells[7:10] == ["200", "32", "1"]
    assert "main_CD.py:60 --batch_size 32" in cells[10]
    for name in hooks.method_names():  # every method appears: official row or reason
        assert re.search(rf"^\| {name} \|", page, re.M), name
    assert hooks.render_protocols("no marker") == "no marker"
