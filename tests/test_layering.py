"""Architecture rules of the package, read from its import statements (every one, deferred imports included).

1. Layers: diffusion -> nn -> module -> model; a lower layer never imports a higher one, and diffusion/ imports
   neither AnnData nor scvi-tools.
2. No import cycle between modules of the package.
3. No module imports a private module (``_name``) of another subpackage: each subpackage's public names are
   re-exported by its ``__init__``.

Each rule is also run on a small synthetic tree that breaks it, so the checks themselves are known to fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import countsdiff_sc as cds

ROOT = Path(cds.__file__).parent
LAYERS = ["diffusion", "nn", "module", "model"]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, with ``from pkg import sub`` resolved to the submodule."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                bases = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                bases = [(base, [a.name for a in node.names])]
            else:
                continue
            for base, names in bases:
                if not base.startswith(root.name):
                    continue
                subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in files]
                targets.update(subs or [base])
                if subs and len(subs) < len(names):
                    targets.add(base)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and not parts[1].startswith("_")) else None


def private_crossings(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports of a private module that lives in another subpackage than the importer."""
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            private = any(p.startswith("_") and p != "__init__" for p in dst.split(".")[2:])
            if private and subpackage(dst) is not None and subpackage(dst) != subpackage(src):
                bad.append((src, dst))
    return sorted(bad)


def upward_imports(graph: dict[str, set[str]], root_name: str) -> list[tuple[str, str]]:
    bad = []
    for src, targets in graph.items():
        layer = subpackage(src)
        if layer not in LAYERS:
            continue
        higher = LAYERS[LAYERS.index(layer) + 1 :]
        bad += [(src, dst) for dst in targets if subpackage(dst) in higher]
    return sorted(bad)


def test_layering_no_upward_imports():
    assert upward_imports(import_graph(ROOT), ROOT.name) == []


def imported_roots(path: Path) -> set[str]:
    """Top-level package names a file imports (deferred imports included)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        roots.update(n.split(".")[0] for n in names)
    return roots


def test_diffusion_imports_neither_anndata_nor_scvi():
    for path in (ROOT / "diffusion").rglob("*.py"):
        assert not imported_roots(path) & {"anndata", "scvi", "mudata"}, path


#: The one module of module/ that builds an AnnData: DICE's preprocessing runs scanpy's normalisation on the
#: reference (docs/architecture.md says why).
ANNDATA_IN_MODULE = {"module/dice/_preprocess.py"}


def test_module_and_nn_do_not_import_anndata():
    for layer in ("module", "nn"):
        for path in (ROOT / layer).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ANNDATA_IN_MODULE:
                continue
            assert not imported_roots(path) & {"anndata", "mudata"}, rel


def test_no_import_cycle():
    assert find_cycle(import_graph(ROOT)) is None


def test_no_private_module_of_another_subpackage_is_imported():
    assert private_crossings(import_graph(ROOT)) == []


@pytest.fixture
def bad_tree(tmp_path: Path) -> Path:
    """A package that breaks all three rules."""
    root = tmp_path / "pkg"
    for sub in ("diffusion", "model"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "diffusion" / "_a.py").write_text("def f():\n    from ._b import g\n")  # deferred: still a cycle
    (root / "diffusion" / "_b.py").write_text("from pkg.diffusion._a import f\nfrom pkg.model import M\n")
    (root / "model" / "_m.py").write_text("from pkg.diffusion._a import f\n")
    return root


def test_checks_catch_a_broken_tree(bad_tree: Path):
    graph = import_graph(bad_tree)
    assert set(find_cycle(graph)) == {"pkg.diffusion._a", "pkg.diffusion._b"}
    assert private_crossings(graph) == [("pkg.model._m", "pkg.diffusion._a")]
    assert upward_imports(graph, "pkg") == [("pkg.diffusion._b", "pkg.model")]
