from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from countsdiff_sc.baselines import impute_magic


def test_missing_package_gives_install_hint(masked, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "magic":
            raise ImportError("No module named 'magic'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install magic-impute"):
        impute_magic(masked)


def test_magic_outputs(masked):
    pytest.importorskip("magic")
    masked = masked[:300, :300].copy()
    mask = masked.layers["countsdiff_mask"]
    x = masked.X.toarray()
    out = impute_magic(masked, knn=5, t=3, n_pca=20, seed=0)
    assert out.dtype == np.float32 and out.shape == masked.shape
    np.testing.assert_array_equal(out[~mask], x[~mask])
    assert np.isfinite(out).all() and (out[mask] >= 0).all() and out[mask].std() > 0
    assert masked.uns["countsdiff"]["magic_imputed"]["knn"] == 5
    # the held-out truth does not leak
    poisoned = masked.copy()
    x[mask] = 1000
    poisoned.X = sp.csr_matrix(x)
    np.testing.assert_allclose(impute_magic(poisoned, knn=5, t=3, n_pca=20, seed=0)[mask], out[mask], rtol=1e-5)
