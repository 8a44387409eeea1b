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
