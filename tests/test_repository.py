"""The repository as a product (issue 31): a license, one version everywhere, a short README and release notes, no
lab notebook in the installed package, and every committed benchmark page made by a script the docs list."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import countsdiff_sc as cds

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))


def _release_sections() -> list[tuple[str, str]]:
    """``(heading, body)`` of every ``## [...]`` section of the changelog, in file order."""
    text = (ROOT / "CHANGELOG.md").read_text()
    parts = re.split(r"^(## \[[^\]]+\].*)$", text, flags=re.MULTILINE)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def test_license_is_bsd_3_clause_and_declared():
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "BSD-3-Clause" in str(project.get("license")) or "LICENSE" in str(project.get("license-files"))


def test_one_version_in_metadata_package_and_changelog():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cds.__version__ == version
    released = [h for h, _ in _release_sections() if "Unreleased" not in h]
    assert released[0].startswith(f"## [{version}] - "), f"the newest release in CHANGELOG.md is not {version}"


def test_readme_and_release_notes_stay_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    for heading, body in _release_sections():
        if "Unreleased" not in heading and "0.1.0" not in heading:  # 0.1.0 predates the rule
            assert len(body.splitlines()) <= 150, f"{heading}: figures belong on the benchmark pages it links"


def test_package_sources_cite_no_benchmark_paths():
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "src").rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if "benchmarks/" in line]
    assert offenders == [], "an installed wheel has no benchmarks/ folder; cite the docs instead"


def test_every_benchmark_script_is_documented_and_every_page_has_its_script():
    listed = (ROOT / "docs" / "benchmarks.md").read_text()
    assert [s for s in SCRIPTS if f"benchmarks.{s}" not in listed] == []
    pages = sorted(p.stem for p in RESULTS.glob("*.md"))
    orphans = [page for page in pages if not any(page == s or page.startswith(f"{s}_") for s in SCRIPTS)
               and page != "repaint_budget"]  # repaint_known --budget writes repaint_budget
    assert orphans == [], "a committed page whose script is gone"
    assert "/benchmarks/results/quick/" in (ROOT / ".gitignore").read_text().splitlines()  # smoke tests stay out
