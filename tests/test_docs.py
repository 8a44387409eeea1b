"""The documentation builds without warnings (``sphinx-build -W``), as CI checks it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
_MISSING = [m for m in ("sphinx", "myst_nb", "sphinx_book_theme") if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(not DOCS.joinpath("conf.py").exists(), reason="no docs/ folder (installed from a wheel)")
@pytest.mark.skipif(bool(_MISSING), reason=f"documentation tools not installed ({', '.join(_MISSING)}); "
                    "install them with pip install -e '.[docs]'")
def test_docs_build_without_warnings(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stderr[-5000:]}"
    html = tmp_path / "html"
    for page in ("index", "installation", "concepts", "api", "tutorials", "benchmarks", "changelog", "cli",
                 "architecture", "inputs"):
        assert (html / f"{page}.html").exists(), page
    assert (html / "generated" / "api" / "countsdiff_sc.pl.imputed_vs_true.html").exists()
    assert "countsdiff-sc train" in (html / "cli.html").read_text()
