"""Sphinx configuration of the countsdiff-sc documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``. No network is needed: intersphinx is off and the
tutorial notebooks are rendered with their stored outputs (never executed). Before reading the sources, a hook
copies the pieces that live outside ``docs/`` into ``docs/generated/`` (git-ignored): the tutorial notebooks of
``tutorials/``, the benchmark result pages of ``benchmarks/results/`` and the ``--help`` text of every command.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from datetime import date
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "generated"
sys.path.insert(0, str(ROOT / "src"))

import countsdiff_sc  # noqa: E402

# -- project -------------------------------------------------------------------------------------------------------
project = "countsdiff-sc"
author = "countsdiff-sc developers"
copyright = f"{date.today().year}, {author}"
release = countsdiff_sc.__version__
version = ".".join(release.split(".")[:2])

# -- extensions ------------------------------------------------------------------------------------------------------
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
templates_path = ["_templates"]
# generated/*.md are fragments included by other pages (toctree entries are relative to the including page)
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "generated/*.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True

myst_enable_extensions = ["amsmath", "colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the outputs stored in the notebooks
nb_merge_streams = True

# -- html ------------------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "countsdiff-sc"
html_static_path = ["_static"]
html_theme_options = {"show_toc_level": 2}


# -- generated pages -------------------------------------------------------------------------------------------------
def _write_if_changed(path: Path, text: str) -> None:
    """Rewrite a generated page only when it changes, so incremental builds stay incremental."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _sync(files: list[Path], dest: Path) -> list[Path]:
    """Copy ``files`` into ``dest`` (replacing what was there); return the copies."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    out = []
    for f in files:
        shutil.copy2(f, dest / f.name)
        out.append(dest / f.name)
    return out


def _toctree(entries: list[str], caption: str | None = None, maxdepth: int = 1) -> str:
    lines = ["```{toctree}", f":maxdepth: {maxdepth}"]
    if caption:
        lines.append(f":caption: {caption}")
    lines += ["", *entries, "```", ""]
    return "\n".join(lines)


def _tutorials() -> None:
    notebooks = sorted((ROOT / "tutorials").glob("*.ipynb"))
    copies = _sync(notebooks, GENERATED / "tutorials")
    for extra in ("data", "figures"):  # files the notebooks may link to
        if (ROOT / "tutorials" / extra).is_dir():
            shutil.copytree(ROOT / "tutorials" / extra, GENERATED / "tutorials" / extra)
    if copies:
        text = _toctree([f"generated/tutorials/{c.stem}" for c in copies])
    else:
        text = "No tutorial notebook has been published yet: the `tutorials/` folder of the repository is empty.\n"
    _write_if_changed(GENERATED / "tutorials_toctree.md", text)


def _benchmarks() -> None:
    results = ROOT / "benchmarks" / "results"
    pages = sorted(results.glob("*.md"))
    stems = {p.stem for p in pages}
    # a full run supersedes its quick smoke-test version
    pages = [p for p in pages if not (p.stem.endswith("_quick") and p.stem.removesuffix("_quick") in stems)]
    images = sorted(f for ext in ("png", "svg") for f in results.glob(f"*.{ext}"))
    copies = _sync(pages + images, GENERATED / "benchmarks")
    md = [c for c in copies if c.suffix == ".md"]
    if md:
        text = _toctree([f"generated/benchmarks/{c.stem}" for c in md])
    else:
        text = "No benchmark result has been written yet; run the scripts under `benchmarks/`.\n"
    _write_if_changed(GENERATED / "benchmarks_toctree.md", text)


def _changelog() -> None:
    """The changelog, its links to ``benchmarks/results/`` pointed at the copies of those pages in the docs."""
    text = (ROOT / "CHANGELOG.md").read_text()
    _write_if_changed(GENERATED / "changelog.md", text.replace("](benchmarks/results/", "](generated/benchmarks/"))


def _cli_help() -> None:
    from countsdiff_sc.cli import _parser

    parser = _parser()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width; make the page reproducible
    try:
        parts = [("countsdiff-sc", parser.format_help())]
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        for name, p in sub.choices.items():
            parts.append((f"countsdiff-sc {name}", p.format_help()))
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    text = "".join(f"### `{title}`\n\n```text\n{body.rstrip()}\n```\n\n" for title, body in parts)
    _write_if_changed(GENERATED / "cli_help.md", text)


def _generate(app) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        _tutorials()
        _benchmarks()
        _changelog()
        _cli_help()


# -- docstrings -------------------------------------------------------------------------------------------------------
def _is_header(lines: list[str], i: int) -> bool:
    return i + 1 < len(lines) and bool(lines[i].strip()) and set(lines[i + 1].strip()) == {"-"}


def _free_text_returns(app, what, name, obj, options, lines: list[str]) -> None:
    """Let napoleon render a free-text Returns section ("The table as a DataFrame.") as one paragraph.

    The package's docstrings describe return values in prose, without a ``name : type`` line; napoleon would treat
    every unindented line as a separate return value. The prose is moved under an empty ``:`` field instead.
    """
    for i in range(len(lines)):
        if lines[i].strip() == "Returns" and _is_header(lines, i):
            start = i + 2
            end = start
            while end < len(lines) and not _is_header(lines, end):
                end += 1
            body = lines[start:end]
            text = [line for line in body if line.strip()]
            if not text or " : " in text[0] or any(line.startswith((" ", "\t")) for line in text):
                return
            while body and not body[-1].strip():
                body.pop()
            lines[start:end] = [":", *(f"    {line}" if line.strip() else "" for line in body), ""]
            return


def setup(app) -> None:
    app.connect("builder-inited", _generate)
    app.connect("autodoc-process-docstring", _free_text_returns, priority=400)  # before napoleon (500)
