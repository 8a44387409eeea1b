"""The installed ``countsdiff-sc`` command, run as a separate process: exit codes and one-line error messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

COMMANDS = ["demo", "train", "impute", "sample", "evaluate", "embed"]


def _script() -> str:
    """The console script installed next to this interpreter (or on PATH)."""
    candidate = Path(sys.executable).parent / "countsdiff-sc"
    found = str(candidate) if candidate.exists() else shutil.which("countsdiff-sc")
    if found is None:
        pytest.skip("the countsdiff-sc console script is not installed (pip install -e .)")
    return found


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_console_script_help_of_every_command():
    script = _script()
    for cmd in COMMANDS:
        proc = _run(script, cmd, "--help")
        assert proc.returncode == 0, (cmd, proc.stderr)
        assert proc.stdout.startswith(f"usage: countsdiff-sc {cmd}"), cmd
        assert proc.stderr == "", cmd


def test_usage_error_exits_2():
    proc = _run(_script(), "train")  # the input file and --model are required
    assert proc.returncode == 2
    assert "the following arguments are required" in proc.stderr


def test_missing_file_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope.h5ad"
    proc = _run(sys.executable, "-m", "countsdiff_sc", "evaluate", str(missing))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"countsdiff-sc evaluate: error: input file not found: {missing}"]
    assert proc.stdout == ""


def test_non_count_data_is_a_one_line_error(tmp_path):
    rng = np.random.default_rng(0)
    ad.AnnData(rng.random((12, 4)).astype(np.float32)).write_h5ad(tmp_path / "normalised.h5ad")
    proc = _run(_script(), "train", "normalised.h5ad", "--model", "m", "--quiet", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0] == proc.stderr.splitlines()[-1]
    assert errors[0].startswith("countsdiff-sc train: error: adata.X contains 48 non-integer entries")
    assert not (tmp_path / "m").exists()
