"""The tutorial notebooks run top to bottom, in their small mode (``COUNTSDIFF_TUTORIAL_SMALL=1``).

Each notebook is executed with nbclient in a temporary working directory (the files it writes land there, not in
the repository), with a kernel started from the interpreter running the tests, so it sees the same environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
_MISSING = [m for m in ("nbclient", "nbformat", "ipykernel", "jupyter_client") if importlib.util.find_spec(m) is None]
KERNEL_NAME = "countsdiff-tutorials"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason=f"notebook tools not installed ({', '.join(_MISSING)}); "
                       "install them with pip install -e '.[test]'"),
    pytest.mark.skipif(not NOTEBOOKS, reason="no tutorials/ folder (installed from a wheel)"),
]


def _kernel_manager(kernel_dir: Path):
    """A kernel manager whose only kernel is ipykernel on ``sys.executable`` (not whatever ``python3`` resolves to)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = kernel_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "countsdiff-sc tutorials",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_runs_in_small_mode(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec") and nb.metadata.get("language_info"), (
        f"{path.name} lacks kernelspec / language_info metadata (the Sphinx build warns about it)"
    )
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "COUNTSDIFF_TUTORIAL_SMALL" in first_code.source, f"{path.name}: the first code cell must read the mode"

    # the kernel inherits this environment
    monkeypatch.setenv("COUNTSDIFF_TUTORIAL_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("MKL_NUM_THREADS", os.environ.get("MKL_NUM_THREADS", "1"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
    workdir = tmp_path / "work"
    workdir.mkdir()
    km = _kernel_manager(tmp_path / "kernels")
    client = NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute(cleanup_kc=True)  # raises CellExecutionError with the failing cell and its traceback
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code_cells), "some code cells were not executed"
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    figures = [o for c in code_cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} produced no figure"
    assert "small settings" in "".join(
        o.get("text", "") for o in first_code.get("outputs", []) if o.get("output_type") == "stream"
    )
