"""The benchmark harness is a package whose scripts share code only through underscore modules: no script imports
another script, none carries the old ``try: import _common / except ImportError`` workaround, and every usage line
runs the script as a module from the repository root."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_"))
MODULES = sorted(BENCHMARKS.glob("*.py"))


def imported_names(tree: ast.AST) -> list[tuple[str, int]]:
    """Every imported module as a dotted name (``from a import b`` gives ``a.b`` too), with its line."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.module, node.lineno))
            names += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative import: from . import x / from .x import y
            base = "benchmarks" + (f".{node.module}" if node.module else "")
            names.append((base, node.lineno))
            names += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return names


def script_imports(path: Path) -> list[str]:
    """``line N: <module>`` for each harness module that ``path`` imports as a script: another script (by name or
    as ``benchmarks.<script>``) or a sibling imported as a top-level module (``import _common``)."""
    found = set()
    for name, line in imported_names(ast.parse(path.read_text())):
        parts = name.split(".")
        if parts[0] == "benchmarks" and len(parts) > 1 and parts[1] in SCRIPTS:
            found.add(f"line {line}: {parts[1]}")
        elif parts[0] in SCRIPTS or parts[0] == "_common":
            found.add(f"line {line}: {parts[0]}")
    return sorted(found)


def import_fallbacks(path: Path) -> list[int]:
    """Lines of ``try: <imports> except ImportError:`` blocks whose ``try`` body imports a module of the harness."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Try):
            continue
        catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
        if not catches & {"ImportError", "ModuleNotFoundError"}:
            continue
        body_names = [n for stmt in node.body for n, _ in imported_names(stmt)]
        if any(n.split(".")[0] in {*SCRIPTS, "_common", "benchmarks"} or n.startswith("_") for n in body_names):
            lines.append(node.lineno)
    return lines


def test_the_harness_is_a_package_with_scripts():
    assert (BENCHMARKS / "__init__.py").is_file()
    assert {"imputation", "generation", "generation_levers", "perf", "scale", "transfer"} <= set(SCRIPTS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_module_imports_a_script(path):
    assert script_imports(path) == [], f"{path.name} imports another script; move the shared code to _common.py"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_import_fallback(path):
    assert import_fallbacks(path) == [], f"{path.name} keeps the try / except ImportError import workaround"


@pytest.mark.parametrize("name", SCRIPTS)
def test_usage_runs_the_script_as_a_module(name):
    text = (BENCHMARKS / f"{name}.py").read_text()
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert f"python -m benchmarks.{name}" in doc, f"{name}.py: the usage should read `python -m benchmarks.{name}`"
    assert "python benchmarks/" not in text, f"{name}.py still runs a script by its path"


def test_the_checks_catch_what_they_look_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "try:\n    import _common as common\n    from perf import _run\nexcept ImportError:\n"
        "    from benchmarks import _common as common\n    from benchmarks.perf import _run\n"
        "from benchmarks import generation\nfrom . import transfer\n"
    )
    assert script_imports(bad) == ["line 2: _common", "line 3: perf", "line 6: perf", "line 7: generation",
                                   "line 8: transfer"]
    assert import_fallbacks(bad) == [1]
    good = tmp_path / "good.py"
    good.write_text(
        "from benchmarks import _common as common\nfrom benchmarks._generation_common import set_metrics\n"
        "try:\n    import inmoose\nexcept ImportError:\n    inmoose = None\n"
    )
    assert script_imports(good) == [] and import_fallbacks(good) == []


@pytest.mark.parametrize(("first", "expected"), [("", "1"), ("import numba; ", "None")])
def test_numba_threads_set_only_before_numba(first, expected):
    """A benchmark run (``python -m benchmarks.x`` imports the package first) gets one numba thread; an importer that
    already loaded numba (the test suite, via scanpy) keeps its environment, since a changed NUMBA_NUM_THREADS makes
    numba's next compilation fail once a cached kernel has started the thread pool."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    code = f"{first}import os, benchmarks; print(os.environ.get('NUMBA_NUM_THREADS'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=BENCHMARKS.parent, env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == expected
