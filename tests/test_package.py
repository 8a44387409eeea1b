from __future__ import annotations

import subprocess
import sys

import countsdiff_sc as cds


def test_public_names_resolve():
    for name in cds.__all__:
        assert getattr(cds, name) is not None
    assert cds.CountsDiffModel.__name__ == "CountsDiffModel"
    assert callable(cds.pp.mask_mcar) and callable(cds.metrics.evaluate_imputation)


def test_import_is_light():
    code = "import sys, countsdiff_sc; print('scvi' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["False", "False"]


def test_layering_no_upward_imports():
    """diffusion -> nn -> module -> model: lower layers never import higher ones (DESIGN.md)."""
    import re
    from pathlib import Path

    root = Path(cds.__file__).parent
    order = ["diffusion", "nn", "module", "model"]

    def imports(path: Path) -> list[str]:
        pattern = re.compile(r"^\s*(?:from\s+(\S+)\s+import|import\s+(\S+))", re.MULTILINE)
        return [a or b for a, b in pattern.findall(path.read_text())]

    for i, pkg in enumerate(order):
        for f in (root / pkg).glob("*.py"):
            for mod in imports(f):
                for higher in order[i + 1 :]:
                    assert not mod.startswith((f"countsdiff_sc.{higher}", f"..{higher}")), (f, mod)
    for f in (root / "diffusion").glob("*.py"):
        assert not any(m.split(".")[0] in ("anndata", "scvi") for m in imports(f)), f
