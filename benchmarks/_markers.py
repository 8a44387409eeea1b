"""Marker pairs on real PBMCs with gene names, shared by ``markers.py`` and ``restored_depth.py``: the data sets, the
off / on ratio of known markers and the library statistics of an imputation (definitions: ``markers.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _data

#: Marker -> (types that express it, types that do not), per data set.
PAIRS = {
    "pbmc68k": {
        "MS4A1": (["CD19+ B"], ["CD4+/CD25 T Reg", "CD4+/CD45RO+ Memory", "CD8+ Cytotoxic T",
                                "CD8+/CD45RA+ Naive Cytotoxic", "CD4+/CD45RA+/CD25- Naive T", "CD56+ NK"]),
        "CD79A": (["CD19+ B"], ["CD4+/CD25 T Reg", "CD4+/CD45RO+ Memory", "CD8+ Cytotoxic T",
                                "CD8+/CD45RA+ Naive Cytotoxic", "CD4+/CD45RA+/CD25- Naive T", "CD56+ NK"]),
        "CD8A": (["CD8+ Cytotoxic T", "CD8+/CD45RA+ Naive Cytotoxic"],
                 ["CD4+/CD25 T Reg", "CD4+/CD45RO+ Memory", "CD4+/CD45RA+/CD25- Naive T"]),
        "NKG7": (["CD56+ NK"], ["CD19+ B"]),
        "GNLY": (["CD56+ NK"], ["CD19+ B", "CD14+ Monocyte"]),
        "LYZ": (["CD14+ Monocyte"], ["CD4+/CD25 T Reg", "CD19+ B"]),
        "S100A8": (["CD14+ Monocyte"], ["CD4+/CD25 T Reg", "CD19+ B"]),
        "CD3E": (["CD4+/CD25 T Reg", "CD8+ Cytotoxic T"], ["CD19+ B", "CD14+ Monocyte"]),
        "FCER1A": (["Dendritic"], ["CD4+/CD25 T Reg", "CD19+ B"]),
    },
    "hao": {
        "CD79A": (["B cells"], ["T cells CD4 conv", "T cells CD8", "Tregs", "NK cells"]),
        "IGKC": (["B cells", "Plasma cells"], ["T cells CD4 conv", "T cells CD8", "NK cells"]),
        "CD8A": (["T cells CD8"], ["T cells CD4 conv", "Tregs"]),
        "GNLY": (["NK cells"], ["B cells", "Monocytes"]),
        "CD3E": (["T cells CD4 conv", "T cells CD8", "Tregs"], ["B cells", "Monocytes"]),
        "S100A8": (["Monocytes"], ["T cells CD4 conv", "B cells"]),
        "PF4": (["Platelet"], ["T cells CD4 conv", "B cells"]),
        "FOXP3": (["Tregs"], ["T cells CD8", "B cells"]),
        "FCGR3A": (["NK cells"], ["T cells CD4 conv", "B cells"]),
    },
}
LABELS = {"pbmc68k": "bulk_labels", "hao": "cell_type"}
RATIO_FLOOR = 0.005


def load(name: str, quick: bool) -> Any:
    """The data set, genes selected (Hao: 2,000 highly variable genes plus the markers)."""
    import scanpy as sc

    import countsdiff_sc as cds

    if name == "pbmc68k":
        adata = cds.datasets.pbmc68k_reduced_counts()
    else:
        adata = _data.hao_pbmc()
        sc.pp.filter_genes(adata, min_cells=3)
        hv = sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", inplace=False)
        keep = set(adata.var_names[hv["highly_variable"].to_numpy()]) | set(PAIRS[name])
        adata = adata[:, [g for g in adata.var_names if g in keep]].copy()
    if quick:
        sc.pp.subsample(adata, n_obs=min(adata.n_obs, 300), random_state=0)
    for col in list(adata.obs.columns):
        if col != LABELS[name]:
            del adata.obs[col]
    return adata


def ratios(matrix: np.ndarray, adata: Any, name: str) -> pd.Series:
    """Off / on ratio of every marker (library-normalised means per 10,000)."""
    x = np.asarray(matrix, dtype=np.float64)
    x = x / np.maximum(x.sum(axis=1, keepdims=True), 1e-12) * 1e4
    labels = adata.obs[LABELS[name]].astype(str).to_numpy()
    out = {}
    for gene, (on, off) in PAIRS[name].items():
        if gene not in adata.var_names:
            continue
        j = adata.var_names.get_loc(gene)
        m_on, m_off = x[np.isin(labels, on), j].mean(), x[np.isin(labels, off), j].mean()
        out[gene] = m_off / m_on if m_on > 0 else np.nan
    return pd.Series(out)


def library_stats(imputed: np.ndarray, raw: np.ndarray) -> dict[str, float]:
    """Median library ratio and the share of the imputed library on entries that were 0."""
    lib_raw = raw.sum(axis=1)
    lib_imp = imputed.sum(axis=1)
    on_zeros = np.where(raw == 0, imputed, 0.0).sum(axis=1)
    return {"library_ratio": float(np.median(lib_imp / np.maximum(lib_raw, 1e-12))),
            "share_on_zeros": float(np.median(on_zeros / np.maximum(lib_imp, 1e-12)))}
