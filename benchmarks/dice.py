"""DICE benchmarks: the paper's synthetic setups, CBMC query mapping, confidence sets, diagnostics, embed() timing.

Usage::

    python -m benchmarks.dice --quick                      # reduced sizes (about 10-15 minutes on 2 shared cores)
    python -m benchmarks.dice                              # the paper's sizes where feasible on a CPU
    python -m benchmarks.dice --parts diagnostics --merge  # one part, merged into the existing results

Parts: synthetic, confidence, cbmc, cbmc_splits, uncertainty, diagnostics, timing (all by default).

Parts

(a) ``synthetic``: the four setups of the paper's Sec. 4 (k = 15, d = 2000; reference of 1600 cells from
    1/2 N(0, 1.5 I) + 1/2 N(1, 1.3 I) latents, X = V U + N(0, I), V ~ N(0, 1) entries; 400 test cells per setup:
    1 matched, 2 noise variance 10, 3 multivariate t_4 noise, 4 latents 1/2 N(1, 1.5 I) + 1/2 t_4(1.3 I) with noise
    variance 10). PCA = test cells projected on the reference's 15 principal axes; DICE = 200 Gibbs iterations, mean
    of 10 chains, at the default coupling (``rho="auto"``: annealed from 2c to 0.2c, c the spread of the reference
    embedding), at the paper's constant rho = 20 and at a constant rho = c. Metrics on the true cluster labels: raw
    cosine silhouette
    (``countsdiff_sc.metrics.silhouette_cosine``, ``rescale=False``) and mean cLISI (``countsdiff_sc.metrics.clisi``:
    exact 90-NN graph, perplexity 30; 1 = pure neighbourhoods, 2 = fully mixed).
(b) ``cbmc``: CITE-seq CBMC RNA counts (8617 cells x 500 genes, 13 labels); a stratified query of 1000 cells, the rest
    is the reference (PCA with k = 25 as in the paper, prior trained on it). Query embeddings: reference PCA, DICE
    at the default coupling (``rho="auto"``: 2c -> 0.2c linear over 100 iterations, 10 chains; c = the spread of the
    reference embedding, about 2.6 here, so this is close to the paper's 5 -> 0.5 of Sec. 5.1), DICE at the paper's
    5 -> 0.5 and at a constant rho = c (the setting that gives the synthetic gain of part (a)), DICE with the paper's
    same-label mixup (App. C; uses the reference labels), and an scVI latent (10 dims, trained on the reference). Leiden
    clustering on a 15-NN graph of each embedding over resolutions 0.1, 0.2, ..., 2.0
    (``countsdiff_sc.metrics.leiden_nmi_ari``); as in the paper (App. I) the resolution with the best ARI is kept and
    ARI and NMI are reported there (the best NMI over the sweep is listed too). Also cosine silhouette and cLISI on
    the cell types. UMAP figure of the query (PCA vs DICE).
(c) ``confidence``: the paper's Fig. 2 picture on synthetic setup 1: 500 chains on the noise-free centre of cluster 2
    and on the midpoint of the two centres; per-dimension spread and the share of chains on each cluster (nearest
    reference cluster mean), plus a figure (UMAP of the reference embeddings with the chains' end points).
(d) ``timing``: embed() on 10,000 CBMC-like cells (drawn with replacement) x 10 chains x 100 iterations with the
    default settings and the CBMC model.
(e) ``diagnostics``: why DICE ties PCA on CBMC. (e1) Gaussian noise added to the query's PCA coordinates is
    removed by the posterior mean under the learned prior (default network; and a 4.5 M-parameter one trained for
    20,000 steps, about 27 minutes) and under the empirical prior of the reference points; MSE and 15-NN
    label-transfer accuracy before / after. (e2) Query counts thinned to 25% depth: PCA vs DICE with the reference's
    and with the query's residual variance as the likelihood variance (3 splits x 4 Leiden seeds).

(f) ``uncertainty``: what ``X_dice_std`` is for. CBMC query of 1000 cells, labels transferred by a 15-NN vote from
    the reference's PCA coordinates to the query's DICE embedding; AUROC of the per-cell chain spread (mean of
    ``X_dice_std``) for predicting a wrong transferred label, next to two baselines (distance to the nearest
    reference label centroid; the share of disagreeing neighbours), at ``n_prior_steps`` 20 (default) and 5.

The network is the package default (about 0.2 M parameters) in every part but (e); the paper's single-cell network
has 35 M parameters and trains for 10,000 epochs on a GPU.

Writes ``benchmarks/results[/quick]/dice.md``, ``dice.json``, ``dice_cbmc_umap.png`` and ``dice_confidence.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

from benchmarks import _common as common
from countsdiff_sc import metrics

PAPER_NV = "DICE, noise_var=1 (paper)"  # the paper's unit likelihood variance instead of the PPCA estimate
PAPER_RHO = "DICE, rho 5 -> 0.5 (paper)"  # the paper's single-cell schedule in PCA units (the default before 0.2)
CONSTANT_C = "DICE, rho = c (constant)"  # the coupling that gives the synthetic gain of part (a)
PAPER_TABLE1 = {  # setup: (silhouette PCA, DICE, cLISI PCA, DICE)
    1: (0.25, 0.37, 1.27, 1.17),
    2: (0.24, 0.36, 1.27, 1.17),
    3: (0.22, 0.34, 1.32, 1.18),
    4: (0.22, 0.28, 1.35, 1.27),
}
PAPER_CITESEQ = {"DICE": {"ARI": 0.805, "NMI": 0.740, "cLISI": 1.344}, "PCA": {"ARI": 0.745, "NMI": 0.689,
                                                                             "cLISI": 1.334},
                 "scVI": {"ARI": 0.641, "NMI": 0.595, "cLISI": 1.361}}
TRAINER = {"enable_progress_bar": False, "enable_model_summary": False}


# ---------------------------------------------------------------------- metrics (countsdiff_sc.metrics)
def leiden_scores(x: np.ndarray, labels: np.ndarray, resolutions: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """ARI and NMI at the best-ARI resolution of a Leiden sweep (the paper's rule, App. I), and the best NMI over
    the sweep, from :func:`countsdiff_sc.metrics.leiden_nmi_ari`."""
    out = metrics.leiden_nmi_ari(x, labels, resolutions=resolutions, rule="max_ari", seed=seed)
    return {"ARI": out["ari"], "NMI": out["nmi"], "resolution": out["ari_resolution"],
            "NMI_best_over_sweep": float(out["sweep"]["nmi"].max()), "sweep": out["sweep"].to_dict(orient="records")}


def label_scores(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Raw cosine silhouette (as the paper's Table 1) and mean cLISI (90 neighbours) of the labels."""
    return {"silhouette": metrics.silhouette_cosine(x, labels, rescale=False), "cLISI": metrics.clisi(x, labels)}


# ---------------------------------------------------------------------- synthetic data of the paper (Sec. 4)
def mixture(rng: np.random.Generator, n: int, k: int, shifted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Latents and labels (1 = cluster 1, the component centred at 1_k; 2 = cluster 2)."""
    cluster1 = rng.random(n) < 0.5
    if not shifted:  # 1/2 N(0, 1.5 I) + 1/2 N(1, 1.3 I)
        c1 = 1.0 + np.sqrt(1.3) * rng.normal(size=(n, k))
        c2 = np.sqrt(1.5) * rng.normal(size=(n, k))
    else:  # setup 4: 1/2 N(1, 1.5 I) + 1/2 t_4(1.3 I)
        c1 = 1.0 + np.sqrt(1.5) * rng.normal(size=(n, k))
        c2 = np.sqrt(1.3) * rng.normal(size=(n, k)) * np.sqrt(4.0 / rng.chisquare(4.0, size=(n, 1)))
    return np.where(cluster1[:, None], c1, c2), np.where(cluster1, 1, 2)


def synthetic_data(seed: int, n_ref: int = 1600, n_test: int = 400, k: int = 15, d: int = 2000):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(d, k))
    u, lab = mixture(rng, n_ref, k)
    ref = u @ v.T + rng.normal(size=(n_ref, d))
    tests = {}
    for setup in (1, 2, 3, 4):
        u, lab_t = mixture(rng, n_test, k, shifted=setup == 4)
        if setup == 1:
            noise = rng.normal(size=(n_test, d))
        elif setup in (2, 4):
            noise = np.sqrt(10.0) * rng.normal(size=(n_test, d))
        else:  # multivariate t_4 with scale I: one chi-square mixing variable per cell
            noise = rng.normal(size=(n_test, d)) * np.sqrt(4.0 / rng.chisquare(4.0, size=(n_test, 1)))
        tests[setup] = (u @ v.T + noise, lab_t)
    names = [f"g{i}" for i in range(d)]
    return ref, lab, tests, v, names


def as_adata(x: np.ndarray, names: list[str], labels: np.ndarray | None = None) -> ad.AnnData:
    out = ad.AnnData(np.asarray(x, dtype=np.float32))
    out.var_names = names
    if labels is not None:
        out.obs["cluster"] = np.asarray(labels).astype(str)
    return out


def train_synthetic_model(quick: bool, seed: int):
    from countsdiff_sc.model import DICEModel

    ref_x, ref_lab, tests, v, names = synthetic_data(seed)
    ref = as_adata(ref_x, names, ref_lab)
    DICEModel.setup_anndata(ref, is_counts=False)
    model = DICEModel(ref, n_latent=15, scale=False)
    steps = 1000 if quick else 3000
    t = time.perf_counter()
    model.train(max_steps=steps, batch_size=512, check_val_every_n_epoch=20, **TRAINER)
    train_s = time.perf_counter() - t
    return model, ref, tests, v, names, train_s, steps


def run_synthetic(quick: bool, seed: int, cache: dict, stem: Path) -> dict[str, Any]:
    common.log("synthetic: training the prior on the 1600 reference cells")
    model, ref, tests, v, names, train_s, steps = train_synthetic_model(quick, seed)
    cache["synthetic"] = (model, ref, v, names)
    scale = float(model.embedding_scale)
    n_iter = 50 if quick else 200
    rhos = {"default": "auto", "paper_rho20": 20.0, "rho_eq_latent_scale": round(scale, 2)}
    sweep_rhos = [10.0, 20.0, 40.0, round(scale, 2), 80.0, 120.0]
    out: dict[str, Any] = {"train_seconds": train_s, "train_steps": steps, "latent_scale": scale, "n_iter": n_iter,
                           "residual_var": model.residual_var, "n_chains": 10, "rho_settings": rhos, "setups": {},
                           "rho_sweep_setup1": []}
    for setup, (x, lab) in tests.items():
        q = as_adata(x, names, lab)
        pca = model.project(q, key_added=None)
        row = {"PCA": label_scores(pca, lab)}
        for name, rho in rhos.items():
            t = time.perf_counter()
            mean, _ = model.embed(q, n_iter=n_iter, rho=rho, n_chains=10, seed=seed, progress=False)
            used = q.uns["countsdiff"]["X_dice"]
            row[f"DICE_{name}"] = {**label_scores(mean, lab), "rho": rho, "rho_start": used["rho_start"],
                                   "rho_end": used["rho_end"], "seconds": time.perf_counter() - t}
        paper = PAPER_TABLE1[setup]
        row["paper"] = {"PCA": {"silhouette": paper[0], "cLISI": paper[2]},
                        "DICE": {"silhouette": paper[1], "cLISI": paper[3]}}
        out["setups"][setup] = row
        common.log(f"synthetic setup {setup}: " + ", ".join(f"{k} sil={v['silhouette']:.3f} cLISI={v['cLISI']:.3f}"
                                                     for k, v in row.items() if k != "paper"))
    x, lab = tests[1]
    q = as_adata(x, names, lab)
    for rho in sweep_rhos:
        mean, sd = model.embed(q, n_iter=n_iter, rho=rho, n_chains=10, seed=seed, progress=False)
        out["rho_sweep_setup1"].append({"rho": rho, **label_scores(mean, lab),
                                        "mean_chain_std": float(sd.mean())})
        common.log(f"synthetic setup 1, rho={rho}: sil={out['rho_sweep_setup1'][-1]['silhouette']:.3f}")
    return out


# ---------------------------------------------------------------------- confidence sets (paper Fig. 2)
def run_confidence(quick: bool, seed: int, cache: dict, stem: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import umap

    if "synthetic" not in cache:
        model, ref, _, v, names, _, _ = train_synthetic_model(quick, seed)
        cache["synthetic"] = (model, ref, v, names)
    model, ref, v, names = cache["synthetic"]
    k = v.shape[1]
    ref_emb = model.project(ref, key_added=None)
    lab = ref.obs["cluster"].to_numpy()
    centres = {c: ref_emb[lab == c].mean(0) for c in ("1", "2")}
    inputs = {"centre of cluster 2": np.zeros(k), "midpoint of clusters 1 and 2": np.full(k, 0.5)}
    q = as_adata(np.stack([v @ u for u in inputs.values()]), names)
    n_chains = 200 if quick else 500
    scale = float(model.module.latent_scale)
    out: dict[str, Any] = {"n_chains": n_chains, "n_iter": 50 if quick else 200, "results": []}
    reducer = umap.UMAP(random_state=seed).fit(ref_emb)
    ref_2d = reducer.embedding_
    rhos = [20.0, round(scale, 2)]
    fig, axes = plt.subplots(len(rhos), 2, figsize=(9, 4.2 * len(rhos)), squeeze=False)
    for i, rho in enumerate(rhos):
        model.embed(q, n_iter=out["n_iter"], rho=rho, n_chains=n_chains, seed=seed, key_added="dice",
                    store_samples=True, progress=False)
        samples = q.obsm["dice_samples"]
        for j, name in enumerate(inputs):
            s = samples[j]
            d1 = np.linalg.norm(s - centres["1"], axis=1)
            d2 = np.linalg.norm(s - centres["2"], axis=1)
            res = {"input": name, "rho": rho, "mean_std_per_dim": float(s.std(0).mean()),
                   "share_cluster1": float(np.mean(d1 < d2)), "share_cluster2": float(np.mean(d2 <= d1))}
            out["results"].append(res)
            common.log(f"confidence: {name}, rho={rho}: spread={res['mean_std_per_dim']:.2f}, "
                f"cluster1={res['share_cluster1']:.2f}, cluster2={res['share_cluster2']:.2f}")
            pts = reducer.transform(s)
            ax = axes[i, j]
            for c, colour in (("1", "#a6c8e8"), ("2", "#f6c89a")):
                sel = lab == c
                ax.scatter(ref_2d[sel, 0], ref_2d[sel, 1], s=3, c=colour, label=f"reference, cluster {c}")
            ax.scatter(pts[:, 0], pts[:, 1], s=4, c="black", alpha=0.6, label="DICE chains")
            ax.set_title(f"{name}, rho={rho}\ncluster 1: {res['share_cluster1']:.0%}, "
                         f"cluster 2: {res['share_cluster2']:.0%}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{stem}_confidence.png", dpi=120)
    out["figure"] = f"{stem.name}_confidence.png"
    plt.close(fig)
    return out


# ---------------------------------------------------------------------- CBMC
def stratified_query(labels: np.ndarray, n_query: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = []
    for lab in np.unique(labels):
        members = np.flatnonzero(labels == lab)
        take = max(1, round(n_query * members.size / labels.size))
        idx.extend(rng.choice(members, size=min(take, members.size - 1), replace=False))
    return np.sort(np.asarray(idx))


def run_cbmc(quick: bool, seed: int, cache: dict, with_scvi: bool, stem: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    import countsdiff_sc as cds
    from countsdiff_sc.model import DICEModel

    adata = cds.datasets.cbmc()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    q_idx = stratified_query(labels, 1000, seed)
    is_query = np.zeros(adata.n_obs, dtype=bool)
    is_query[q_idx] = True
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    q_lab = query.obs["cell_type"].astype(str).to_numpy()
    common.log(f"cbmc: reference {ref.n_obs} cells, query {query.n_obs} cells")
    steps = 1500 if quick else 6000
    n_iter = 50 if quick else 100
    out: dict[str, Any] = {"n_reference": int(ref.n_obs), "n_query": int(query.n_obs), "k": 25, "train_steps": steps,
                           "n_iter": n_iter, "n_chains": 10, "rho": "auto", "methods": {}}
    reps: dict[str, np.ndarray] = {}
    DICEModel.setup_anndata(ref, labels_key="cell_type")
    models = {}
    for name, mixup in [("DICE", 0.0), ("DICE + mixup (labels)", 0.9)]:
        model = DICEModel(ref, n_latent=25, mixup_prob=mixup)
        t = time.perf_counter()
        model.train(max_steps=steps, batch_size=256, check_val_every_n_epoch=5, **TRAINER)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        mean, std = model.embed(query, n_iter=n_iter, n_chains=10, seed=seed, progress=False)  # rho="auto"
        reps[name] = mean
        out["methods"][name] = {"train_seconds": train_s, "embed_seconds": time.perf_counter() - t,
                                "mean_chain_std": float(std.mean()),
                                "final_validation_loss": float(model.history["validation_loss"].iloc[-1, 0])}
        models[name] = model
        common.log(f"cbmc: {name} trained in {train_s:.0f}s, embedded in {out['methods'][name]['embed_seconds']:.0f}s")
    reps["PCA"] = models["DICE"].project(query, key_added=None)
    out["rho_auto"] = [query.uns["countsdiff"]["X_dice"]["rho_start"], query.uns["countsdiff"]["X_dice"]["rho_end"]]
    c = models["DICE"].embedding_scale
    for name, rho, extra in [(PAPER_NV, "auto", {"noise_var": 1.0}), (PAPER_RHO, (5.0, 0.5), {}),
                             (CONSTANT_C, c, {})]:
        t = time.perf_counter()
        reps[name] = models["DICE"].embed(query, n_iter=n_iter, rho=rho, n_chains=10, seed=seed, key_added="X_other",
                                          progress=False, **extra)[0]
        out["methods"][name] = {"embed_seconds": time.perf_counter() - t}
    out["latent_scale"] = c
    out["residual_var"] = models["DICE"].residual_var
    cache["cbmc_model"] = models["DICE"]
    cache["cbmc"] = adata
    if with_scvi:
        import scvi

        scvi.settings.seed = seed
        ref_s, query_s = ref.copy(), query.copy()
        scvi.model.SCVI.setup_anndata(ref_s)
        vae = scvi.model.SCVI(ref_s, n_latent=10)
        t = time.perf_counter()
        vae.train(max_epochs=60 if quick else 200, batch_size=256, **TRAINER)
        reps["scVI"] = vae.get_latent_representation(query_s)
        out["methods"]["scVI"] = {"train_seconds": time.perf_counter() - t}
        common.log("cbmc: scVI done")
    resolutions = np.round(np.arange(0.1, 2.01, 0.1), 2)
    for name, x in reps.items():
        res = {**leiden_scores(x, q_lab, resolutions, seed), **label_scores(x, q_lab)}
        out["methods"].setdefault(name, {}).update(res)
        common.log(f"cbmc {name}: ARI={res['ARI']:.3f} NMI={res['NMI']:.3f} sil={res['silhouette']:.3f} "
            f"cLISI={res['cLISI']:.3f} (resolution {res['resolution']})")
    # UMAP figure of the query cells
    panels = [n for n in ("PCA", "DICE", "DICE + mixup (labels)", "scVI") if n in reps]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.8))
    cats = sorted(np.unique(q_lab))
    palette = dict(zip(cats, plt.get_cmap("tab20").colors, strict=False))
    for ax, name in zip(axes, panels, strict=True):
        tmp = ad.AnnData(np.zeros((query.n_obs, 1), dtype=np.float32))
        tmp.obsm["rep"] = reps[name]
        sc.pp.neighbors(tmp, use_rep="rep", n_neighbors=15, random_state=seed)
        sc.tl.umap(tmp, random_state=seed)
        xy = tmp.obsm["X_umap"]
        for c in cats:
            sel = q_lab == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=palette[c], label=c)
        m = out["methods"][name]
        ax.set_title(f"{name}\nARI {m['ARI']:.3f}, NMI {m['NMI']:.3f}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=3)
    fig.suptitle(f"CBMC: {query.n_obs} query cells embedded with a reference of {ref.n_obs} cells")
    fig.tight_layout()
    fig.savefig(f"{stem}_cbmc_umap.png", dpi=110)
    out["figure"] = f"{stem.name}_cbmc_umap.png"
    plt.close(fig)
    out["paper_citeseq_table2"] = PAPER_CITESEQ
    return out


def run_uncertainty(quick: bool, seed: int, cache: dict) -> dict[str, Any]:
    """What ``X_dice_std`` is for: does a query cell's chain spread predict its label-transfer error?

    A stratified query of 1000 CBMC cells; the DICE prior is trained on the reference (or the ``cbmc`` part's model is
    reused). Labels go from the reference (its PCA coordinates, the prior's space) to the query's DICE embedding by a
    15-NN majority vote. Scores of each query cell, AUROC for "the transferred label is wrong": the mean of
    ``X_dice_std`` over the latent dimensions; the distance to the nearest reference label centroid (baseline); the
    share of the 15 neighbours that disagree with the vote (baseline).
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier

    import countsdiff_sc as cds
    from countsdiff_sc.model import DICEModel

    adata = cache["cbmc"] if "cbmc" in cache else cds.datasets.cbmc()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    is_query = np.zeros(adata.n_obs, dtype=bool)
    is_query[stratified_query(labels, 1000, seed)] = True
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    steps = 1500 if quick else 6000
    n_iter = 50 if quick else 100
    model = cache.get("cbmc_model")
    out: dict[str, Any] = {"n_reference": int(ref.n_obs), "n_query": int(query.n_obs), "n_iter": n_iter,
                           "n_chains": 10, "rho": [5.0, 0.5], "reused_cbmc_model": model is not None, "rows": []}
    if model is None:
        DICEModel.setup_anndata(ref, labels_key="cell_type")
        model = DICEModel(ref, n_latent=25)
        t = time.perf_counter()
        model.train(max_steps=steps, batch_size=256, check_val_every_n_epoch=5, **TRAINER)
        out["train_seconds"] = time.perf_counter() - t
        out["train_steps"] = steps
    u_ref = model.project(ref, key_added=None)
    ref_lab, q_lab = labels[~is_query], labels[is_query]
    knn = KNeighborsClassifier(15).fit(u_ref, ref_lab)
    cats = np.unique(ref_lab)
    centroids = np.stack([u_ref[ref_lab == c].mean(0) for c in cats])
    for n_prior_steps in (20, 5):
        t = time.perf_counter()
        mean, std = model.embed(query, n_iter=n_iter, rho=(5.0, 0.5), n_chains=10, seed=seed, progress=False,
                                n_prior_steps=n_prior_steps, key_added=f"X_dice_p{n_prior_steps}")
        seconds = time.perf_counter() - t
        proba = knn.predict_proba(mean)
        wrong = knn.classes_[proba.argmax(1)] != q_lab
        dist = np.linalg.norm(mean[:, None, :] - centroids[None], axis=-1).min(1)
        scores = {
            "X_dice_std (mean over dims)": std.mean(1),
            "distance to nearest reference centroid": dist,
            "15-NN disagreement (1 - vote share)": 1.0 - proba.max(1),
        }
        row = {"n_prior_steps": n_prior_steps, "embed_seconds": seconds, "error_rate": float(wrong.mean()),
               "mean_chain_std": float(std.mean()),
               "auroc": {k: float(roc_auc_score(wrong, v)) if 0 < wrong.sum() < wrong.size else float("nan")
                         for k, v in scores.items()}}
        out["rows"].append(row)
        common.log(f"uncertainty n_prior_steps={n_prior_steps}: error {row['error_rate']:.3f}, "
                   + ", ".join(f"{k} {v:.3f}" for k, v in row["auroc"].items()))
    return out


def run_cbmc_splits(quick: bool, seed: int, n_splits: int) -> dict[str, Any]:
    """PCA vs DICE on several stratified reference / query splits, Leiden with several seeds: the spread of the
    ARI / NMI comparison that one split and one clustering seed hide."""
    import countsdiff_sc as cds
    from countsdiff_sc.model import DICEModel

    adata = cds.datasets.cbmc()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    steps, n_iter = (1500, 50) if quick else (6000, 100)
    leiden_seeds = range(2 if quick else 4)
    resolutions = np.round(np.arange(0.1, 2.01, 0.1), 2)
    rows: list[dict[str, Any]] = []
    residual_vars: list[float] = []
    for split in range(n_splits):
        is_query = np.zeros(adata.n_obs, dtype=bool)
        is_query[stratified_query(labels, 1000, seed + split)] = True
        ref, query = adata[~is_query].copy(), adata[is_query].copy()
        q_lab = labels[is_query]
        DICEModel.setup_anndata(ref, labels_key="cell_type")
        model = DICEModel(ref, n_latent=25)
        model.train(max_steps=steps, batch_size=256, check_val_every_n_epoch=5, **TRAINER)
        embed = {"n_iter": n_iter, "rho": (5.0, 0.5), "n_chains": 10, "seed": seed, "progress": False}
        residual_vars.append(model.residual_var)
        reps = {"PCA": model.project(query, key_added=None),
                "DICE": model.embed(query, **embed)[0],
                PAPER_NV: model.embed(query, noise_var=1.0, key_added="X_dice_nv1", **embed)[0]}
        for name, x in reps.items():
            for ls in leiden_seeds:
                res = leiden_scores(x, q_lab, resolutions, ls)
                rows.append({"split": split, "leiden_seed": ls, "embedding": name, "ARI": res["ARI"],
                             "NMI": res["NMI"]})
            mine = [r for r in rows if r["split"] == split and r["embedding"] == name]
            common.log(f"cbmc split {split} {name}: ARI {np.mean([r['ARI'] for r in mine]):.3f}, "
                f"NMI {np.mean([r['NMI'] for r in mine]):.3f}")
    out: dict[str, Any] = {"n_splits": n_splits, "n_leiden_seeds": len(leiden_seeds), "train_steps": steps,
                           "n_iter": n_iter, "residual_var": residual_vars, "rows": rows, "summary": {}}
    for name in reps:
        for metric in ("ARI", "NMI"):
            v = np.array([r[metric] for r in rows if r["embedding"] == name])
            out["summary"][f"{name}_{metric}"] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)),
                                                  "n": int(v.size)}
    for name in ("DICE", PAPER_NV):
        for metric in ("ARI", "NMI"):
            d = np.array([r[metric] for r in rows if r["embedding"] == name]) - np.array(
                [r[metric] for r in rows if r["embedding"] == "PCA"])
            out["summary"][f"{name}_minus_PCA_{metric}"] = {
                "mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(d.size)), "n": int(d.size),
                "wins": int(np.sum(d > 0)), "ties": int(np.sum(d == 0))}
    return out


# ---------------------------------------------------------------------- timing
def run_timing(quick: bool, seed: int, cache: dict, threads: list[int]) -> dict[str, Any]:
    import countsdiff_sc as cds
    from countsdiff_sc.model import DICEModel

    if "cbmc_model" not in cache:
        adata = cds.datasets.cbmc()
        DICEModel.setup_anndata(adata)
        model = DICEModel(adata, n_latent=25)
        model.train(max_steps=300, batch_size=256, check_val_every_n_epoch=5, **TRAINER)
        cache["cbmc_model"], cache["cbmc"] = model, adata
    model, adata = cache["cbmc_model"], cache["cbmc"]
    n_cells = 2000 if quick else 10_000
    rng = np.random.default_rng(seed)
    query = adata[rng.choice(adata.n_obs, size=n_cells, replace=True)].copy()
    query.obs_names_make_unique()
    out: dict[str, Any] = {"n_cells": n_cells, "n_chains": 10, "n_iter": 100, "rho": [5.0, 0.5],
                           "n_prior_steps": 20, "batch_size": 1024, "runs": []}
    diff = model.module.diffusion
    scale = float(model.module.latent_scale)
    rhos = np.linspace(5.0, 0.5, 100)
    evals = sum(min(20, diff.select_t0(r / scale)) for r in rhos)  # min(n_prior_steps, t0) calls per prior step
    out["network_calls_per_batch"] = int(evals)
    old = torch.get_num_threads()
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        load = os.getloadavg()[0]
        t = time.perf_counter()
        model.embed(query, n_iter=100, rho=(5.0, 0.5), n_chains=10, seed=seed, progress=False)
        secs = time.perf_counter() - t
        out["runs"].append({"threads": n_threads, "seconds": secs, "load_average_before": load,
                            "extrapolated_10k_seconds": secs * 10_000 / n_cells})
        common.log(f"timing: {n_cells} cells x 10 chains x 100 iterations with {n_threads} thread(s): {secs:.0f}s "
            f"(load average before: {load:.1f})")
    torch.set_num_threads(old)
    return out


# ---------------------------------------------------------------------- diagnostics: why DICE ties PCA on CBMC
def _posterior_means(model, noisy: np.ndarray, s: float, u_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means of clean PCA coordinates given ``noisy = u + N(0, s^2 I)``, under the learned DDPM prior (one
    network call: the x0-prediction at the matching noise level, Tweedie's formula) and under the empirical prior of
    the reference points (a softmax-weighted mean of the reference embeddings; the ideal denoiser a prior network
    trained on those points can reach)."""
    import math

    module = model.module
    diff, c = module.diffusion, float(module.latent_scale)
    t0 = diff.select_t0(s / c)
    ab = float(diff.alpha_bars[t0])
    with torch.inference_mode():
        y_t = math.sqrt(ab) * torch.from_numpy(noisy) / c
        learned = (diff.predict_x0(y_t, t0, module.eps_fn(True)(y_t, t0)) * c).numpy()
        ref = torch.from_numpy(u_ref)
        weights = torch.softmax(-torch.cdist(torch.from_numpy(noisy), ref).pow(2) / (2 * s * s), dim=1)
        empirical = (weights @ ref).numpy()
    return learned, empirical


def _query_residual_var(model, counts: np.ndarray) -> float:
    """Mean over cells of the residual variance per gene off the reference's k axes, ``||x - V V^T x||^2 / (g - k)``
    (the per-cell analogue of ``DICEModel.residual_var``), as the likelihood variance of a noisier query."""
    module = model.module
    with torch.inference_mode():
        x = module.transform(torch.from_numpy(counts.astype(np.float32))) - module.pca_mean
        projected = module.loadings.abs().sum(1) > 0  # the genes of the projection (an HVG subset, if any)
        resid = (x - (x @ module.loadings) @ module.loadings.T)[:, projected]
    return float(resid.pow(2).sum(1).mean() / (int(projected.sum()) - model.n_latent))


def run_diagnostics(quick: bool, seed: int) -> dict[str, Any]:
    """(e1) How much a DICE prior denoises CBMC query embeddings, and whether denoising adds label information:
    Gaussian noise of s.d. s (PCA units) added to the query's PCA coordinates, then posterior means under the learned
    prior (default network, and a 24x larger one trained longer) and under the empirical prior of the reference
    points; MSE to the noise-free coordinates and 15-NN label-transfer accuracy from the reference. (e2) Queries
    shallower than the reference (counts thinned to 25%): PCA vs DICE with the reference's likelihood variance and
    with the query's own residual variance, over query splits and Leiden seeds."""
    import scipy.sparse as sp
    from sklearn.neighbors import KNeighborsClassifier

    import countsdiff_sc as cds
    from countsdiff_sc._utils import to_dense
    from countsdiff_sc.model import DICEModel

    adata = cds.datasets.cbmc()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    steps = 1500 if quick else 6000
    networks = {"default": ({}, steps), "n_hidden=512, n_blocks=4": ({"n_hidden": 512, "n_blocks": 4},
                                                                     2000 if quick else 20000)}
    out: dict[str, Any] = {"noise_sd": [0.5, 1.0, 2.0, 3.0], "networks": {}, "shallow": {}}
    is_query = np.zeros(adata.n_obs, dtype=bool)
    is_query[stratified_query(labels, 1000, seed)] = True
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    DICEModel.setup_anndata(ref, labels_key="cell_type")
    rng = np.random.default_rng(seed)
    for name, (kwargs, n_steps) in networks.items():
        model = DICEModel(ref, n_latent=25, **kwargs)
        t = time.perf_counter()
        model.train(max_steps=n_steps, batch_size=256, check_val_every_n_epoch=10, **TRAINER)
        u_ref, u_q = model.project(ref, key_added=None), model.project(query, key_added=None)
        knn = KNeighborsClassifier(15).fit(u_ref, labels[~is_query])
        rows = []
        for s in out["noise_sd"]:
            noisy = u_q + s * rng.normal(size=u_q.shape).astype(np.float32)
            learned, empirical = _posterior_means(model, noisy, s, u_ref)
            row = {"s": s}
            for key, x in (("noisy", noisy), ("learned", learned), ("empirical", empirical)):
                row[f"{key}_mse"] = float(np.mean((x - u_q) ** 2))
                row[f"{key}_acc"] = float(np.mean(knn.predict(x) == labels[is_query]))
            rows.append(row)
        out["networks"][name] = {
            "train_steps": n_steps, "train_seconds": time.perf_counter() - t,
            "n_parameters": int(sum(p.numel() for p in model.module.net.parameters())),
            "validation_loss": float(model.history["validation_loss"].iloc[-1, 0]),
            "clean_acc": float(np.mean(knn.predict(u_q) == labels[is_query])), "rows": rows}
        common.log(f"diagnostics: {name}: " + "; ".join(
            f"s={r['s']}: mse {r['noisy_mse']:.2f} -> {r['learned_mse']:.2f}, acc {r['noisy_acc']:.3f} -> "
            f"{r['learned_acc']:.3f} (empirical {r['empirical_acc']:.3f})" for r in rows))
    # (e2) shallow queries
    depth = 0.25
    n_splits = 2 if quick else 3
    resolutions = np.round(np.arange(0.1, 2.01, 0.1), 2)
    embed = {"n_iter": 50 if quick else 100, "rho": (5.0, 0.5), "n_chains": 10, "seed": seed, "progress": False}
    runs = []
    for split in range(n_splits):
        is_query = np.zeros(adata.n_obs, dtype=bool)
        is_query[stratified_query(labels, 1000, seed + split)] = True
        ref = adata[~is_query].copy()
        x = adata.X[is_query]
        x = to_dense(x)
        thinned = np.random.default_rng(seed + split).binomial(x.astype(np.int64), depth).astype(np.float32)
        query = ad.AnnData(sp.csr_matrix(thinned), obs=adata.obs[is_query].copy(), var=adata.var.copy())
        DICEModel.setup_anndata(ref)
        model = DICEModel(ref, n_latent=25)
        model.train(max_steps=steps, batch_size=256, check_val_every_n_epoch=10, **TRAINER)
        query_var = _query_residual_var(model, thinned)
        reps = {"PCA": model.project(query, key_added=None),
                "DICE, reference noise_var": model.get_latent_representation(query, **embed),
                "DICE, query noise_var": model.get_latent_representation(query, noise_var=query_var, **embed)}
        for name, rep in reps.items():
            for ls in range(2 if quick else 4):
                res = leiden_scores(rep, labels[is_query], resolutions, ls)
                runs.append({"split": split, "leiden_seed": ls, "embedding": name, "ARI": res["ARI"],
                             "NMI": res["NMI"], "noise_var": model.residual_var if "reference" in name else query_var})
        common.log(f"diagnostics: shallow split {split}: reference noise_var {model.residual_var:.3f}, "
                   f"query {query_var:.3f}")
    summary = {}
    for name in reps:
        mine = [r for r in runs if r["embedding"] == name]
        pca = [r for r in runs if r["embedding"] == "PCA"]
        summary[name] = {m: float(np.mean([r[m] for r in mine])) for m in ("ARI", "NMI")}
        for m in ("ARI", "NMI"):
            d = np.array([a[m] - b[m] for a, b in zip(mine, pca, strict=True)])
            summary[name][f"{m}_minus_PCA"] = float(d.mean())
            summary[name][f"{m}_minus_PCA_se"] = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
        summary[name]["noise_var"] = float(np.mean([r["noise_var"] for r in mine]))
    out["shallow"] = {"depth": depth, "n_splits": n_splits, "runs": runs, "summary": summary}
    return out


# ---------------------------------------------------------------------- report
def fmt(x: float) -> str:
    return f"{x:.3f}"


def markdown(results: dict[str, Any]) -> str:
    lines = ["# DICE benchmarks", "",
             common.machine_header("dice", results["quick"], results["total_seconds"], results), ""]
    if "synthetic" in results:
        s = results["synthetic"]
        lines += ["## (a) Synthetic setups of the paper (Sec. 4, Table 1)", "",
                  f"Prior trained for {s['train_steps']} steps ({s['train_seconds']:.0f} s); DICE: {s['n_iter']} Gibbs "
                  f"iterations, mean of {s['n_chains']} chains, at the default coupling (`rho=\"auto\"`: annealed "
                  f"from 2c to 0.2c), at the paper's constant rho = 20 and at a constant rho = c. The spread of the "
                  f"reference embedding (RMS standard deviation per PC, `embedding_scale`) is c = "
                  f"{s['latent_scale']:.1f}; rho is in PCA units. The likelihood variance (`noise_var=\"auto\"`, "
                  f"probabilistic-PCA estimate) is {s.get('residual_var', float('nan')):.3f}; the true noise variance "
                  "of the reference is 1.",
                  "",
                  "| setup | silhouette PCA | DICE default | DICE rho=20 | DICE rho=c | paper PCA | paper DICE "
                  "| cLISI PCA | DICE default | DICE rho=20 | DICE rho=c | paper PCA | paper DICE |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for setup, row in s["setups"].items():
            p = row["paper"]
            default = row.get("DICE_default", {"silhouette": float("nan"), "cLISI": float("nan")})
            lines.append(
                f"| {setup} | {fmt(row['PCA']['silhouette'])} | {fmt(default['silhouette'])} | "
                f"{fmt(row['DICE_paper_rho20']['silhouette'])} | "
                f"{fmt(row['DICE_rho_eq_latent_scale']['silhouette'])} | {p['PCA']['silhouette']} | "
                f"{p['DICE']['silhouette']} | {fmt(row['PCA']['cLISI'])} | {fmt(default['cLISI'])} | "
                f"{fmt(row['DICE_paper_rho20']['cLISI'])} | {fmt(row['DICE_rho_eq_latent_scale']['cLISI'])} | "
                f"{p['PCA']['cLISI']} | {p['DICE']['cLISI']} |")
        lines += ["", "rho sweep on setup 1 (the effect of the coupling level):", "",
                  "| rho | silhouette | cLISI | mean spread across chains |", "|---|---|---|---|"]
        for r in s["rho_sweep_setup1"]:
            lines.append(f"| {r['rho']} | {fmt(r['silhouette'])} | {fmt(r['cLISI'])} | {r['mean_chain_std']:.2f} |")
        lines.append("")
    if "cbmc" in results:
        c = results["cbmc"]
        rho_auto = f"{c['rho_auto'][0]:.2f} -> {c['rho_auto'][1]:.2f}" if "rho_auto" in c else "5 -> 0.5"
        lines += ["## (b) CBMC query mapping", "",
                  f"Reference {c['n_reference']} cells, stratified query {c['n_query']} cells, k = {c['k']}, prior "
                  f"trained for {c['train_steps']} steps; DICE at the default coupling `rho=\"auto\"` = 2c -> 0.2c "
                  f"(c = {c.get('latent_scale', float('nan')):.2f}: rho {rho_auto}, linear), {c['n_iter']} "
                  f"iterations, {c['n_chains']} chains, likelihood variance `noise_var=\"auto\"` = "
                  f"{c.get('residual_var', float('nan')):.3f} (the reference's probabilistic-PCA residual variance). "
                  "Extra rows: the paper's unit likelihood variance, the paper's schedule 5 -> 0.5 in PCA units, and a "
                  "constant rho = c (the synthetic gain's setting of part (a)). Leiden on a 15-NN graph, resolutions "
                  "0.1-2.0, ARI and NMI at the best-ARI resolution (the paper's rule, App. I).", "",
                  "| embedding | ARI | NMI | (best NMI over sweep) | resolution | cosine silhouette | cLISI |",
                  "|---|---|---|---|---|---|---|"]
        for name in ("PCA", "DICE", PAPER_NV, PAPER_RHO, CONSTANT_C, "DICE + mixup (labels)", "scVI"):
            if name in c["methods"] and "ARI" in c["methods"][name]:
                m = c["methods"][name]
                lines.append(f"| {name} | {fmt(m['ARI'])} | {fmt(m['NMI'])} | {fmt(m['NMI_best_over_sweep'])} | "
                             f"{m['resolution']} | {fmt(m['silhouette'])} | {fmt(m['cLISI'])} |")
        lines += ["", "Paper, Table 2 (CITE-seq PBMC of Hao et al., 9000 / 1000 cells, 3000 HVGs, k = 25, "
                  "35 M-parameter network on a GPU; a different dataset):", "",
                  "| embedding | ARI | NMI | cLISI |", "|---|---|---|---|"]
        for name, m in c["paper_citeseq_table2"].items():
            lines.append(f"| {name} | {m['ARI']} | {m['NMI']} | {m['cLISI']} |")
        lines += ["", f"![CBMC UMAP]({c['figure']})", ""]
    if "cbmc_splits" in results:
        cs = results["cbmc_splits"]
        sm = cs["summary"]
        lines += ["### (b2) Spread over query splits and clustering seeds", "",
                  f"{cs['n_splits']} stratified reference / query splits (1000 query cells each), a DICE prior trained "
                  f"per split ({cs['train_steps']} steps), {cs['n_leiden_seeds']} Leiden seeds per embedding; same "
                  "protocol as (b). DICE uses the default likelihood variance `noise_var=\"auto\"` (the reference's "
                  "probabilistic-PCA residual variance, "
                  + ", ".join(f"{v:.3f}" for v in cs.get("residual_var", [])) + " on these splits); the paper's "
                  "unit variance is the other row (same model, same seed). Mean (sd) over the split x seed runs, and "
                  "the paired difference to PCA (mean, s.e., runs where the embedding is higher / equal).", "",
                  "| embedding | ARI | NMI | ARI - PCA | NMI - PCA | higher / equal / runs (ARI; NMI) |",
                  "|---|---|---|---|---|---|"]
        for name in ("PCA", "DICE", PAPER_NV):
            if f"{name}_ARI" not in sm:
                continue
            a, n = sm[f"{name}_ARI"], sm[f"{name}_NMI"]
            row = f"| {name} | {fmt(a['mean'])} ({fmt(a['sd'])}) | {fmt(n['mean'])} ({fmt(n['sd'])}) |"
            if name == "PCA":
                row += " | | |"
            else:
                da, dn = sm[f"{name}_minus_PCA_ARI"], sm[f"{name}_minus_PCA_NMI"]
                row += (f" {da['mean']:+.3f} ({da['se']:.3f}) | {dn['mean']:+.3f} ({dn['se']:.3f}) | "
                        f"{da['wins']} / {da['ties']} / {da['n']}; {dn['wins']} / {dn['ties']} / {dn['n']} |")
            lines.append(row)
        lines.append("")
    if "confidence" in results:
        cf = results["confidence"]
        lines += ["## (c) Confidence sets (paper Fig. 2)", "",
                  f"{cf['n_chains']} chains of {cf['n_iter']} iterations on one noise-free input, setup-1 model.", "",
                  "| input | rho | mean spread per dim | share on cluster 1 | share on cluster 2 |",
                  "|---|---|---|---|---|"]
        for r in cf["results"]:
            lines.append(f"| {r['input']} | {r['rho']} | {r['mean_std_per_dim']:.2f} | {r['share_cluster1']:.2f} | "
                         f"{r['share_cluster2']:.2f} |")
        lines += ["", f"![confidence sets]({cf['figure']})", ""]
    if "timing" in results:
        tm = results["timing"]
        lines += ["## (d) embed() timing", "",
                  f"{tm['n_cells']} cells x {tm['n_chains']} chains x {tm['n_iter']} iterations, rho 5 -> 0.5, "
                  f"n_prior_steps={tm['n_prior_steps']} ({tm['network_calls_per_batch']} network calls per batch of "
                  f"{tm['batch_size']} cells x {tm['n_chains']} chains), CBMC model (k = 25, default network).", "",
                  "| torch threads | seconds | extrapolated to 10k cells | load average before |", "|---|---|---|---|"]
        for r in tm["runs"]:
            lines.append(f"| {r['threads']} | {r['seconds']:.0f} | {r['extrapolated_10k_seconds']:.0f} | "
                         f"{r['load_average_before']:.1f} |")
        lines.append("")
    if "uncertainty" in results:
        un = results["uncertainty"]
        lines += ["## (f) What X_dice_std is for: predicting label-transfer errors on CBMC", "",
                  f"Reference {un['n_reference']} cells, stratified query {un['n_query']} cells, DICE rho 5 -> 0.5, "
                  f"{un['n_iter']} iterations, {un['n_chains']} chains. Query labels by a 15-NN vote from the "
                  "reference's PCA coordinates (the prior's space) in the DICE embedding; AUROC of each per-cell score "
                  "for \"the transferred label is wrong\" (0.5 = no information). `n_prior_steps=20` is the default "
                  "(20 network calls per prior step); 5 is about what the former default ran at rho = 0.5.", "",
                  "| n_prior_steps | error rate | mean chain spread | AUROC X_dice_std | AUROC centroid distance "
                  "| AUROC 15-NN disagreement | embed seconds |", "|---|---|---|---|---|---|---|"]
        for r in un["rows"]:
            a = list(r["auroc"].values())
            lines.append(f"| {r['n_prior_steps']} | {r['error_rate']:.3f} | {r['mean_chain_std']:.3f} | {fmt(a[0])} "
                         f"| {fmt(a[1])} | {fmt(a[2])} | {r['embed_seconds']:.0f} |")
        lines.append("")
    if "diagnostics" in results:
        dg = results["diagnostics"]
        lines += ["## (e) Why DICE ties PCA on CBMC", "",
                  "(e1) One split (1000 query cells). Gaussian noise of s.d. s (PCA units; the reference's own noise "
                  "is about 0.84 per axis) added to the query's PCA coordinates, then denoised by the posterior mean "
                  "under the learned DDPM prior (one network call at the matching noise level, Tweedie's formula) and "
                  "under the empirical prior of the reference embeddings (the denoiser a prior network would learn if "
                  "it fitted the reference points exactly). MSE to the noise-free coordinates, and the accuracy of a "
                  "15-NN label transfer from the reference embeddings.", "",
                  "| prior network | parameters | steps | validation loss | s | MSE noisy | MSE learned "
                  "| MSE empirical | accuracy noisy | accuracy learned | accuracy empirical |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, net in dg["networks"].items():
            for r in net["rows"]:
                lines.append(f"| {name} | {net['n_parameters'] / 1e6:.2f} M | {net['train_steps']} | "
                             f"{net['validation_loss']:.4f} | {r['s']} | "
                             f"{r['noisy_mse']:.3f} | {r['learned_mse']:.3f} | {r['empirical_mse']:.3f} | "
                             f"{r['noisy_acc']:.3f} | {r['learned_acc']:.3f} | {r['empirical_acc']:.3f} |")
        first = next(iter(dg["networks"].values()))
        lines += ["", f"Noise-free query accuracy: {first['clean_acc']:.3f}. Training time of the networks: "
                  + ", ".join(f"{n} {v['train_seconds']:.0f} s" for n, v in dg["networks"].items()) + ".", ""]
        sh = dg["shallow"]
        lines += [f"(e2) Queries shallower than the reference: query counts thinned binomially to {sh['depth']:.0%} "
                  f"of their depth, {sh['n_splits']} splits x Leiden seeds, protocol of (b). Mean, and paired "
                  "difference to PCA (s.e.).", "",
                  "| embedding | likelihood variance | ARI | NMI | ARI - PCA | NMI - PCA |",
                  "|---|---|---|---|---|---|"]
        for name, m in sh["summary"].items():
            nv = "" if name == "PCA" else f"{m['noise_var']:.3f}"
            diffs = "| |" if name == "PCA" else (f"{m['ARI_minus_PCA']:+.3f} ({m['ARI_minus_PCA_se']:.3f}) | "
                                                 f"{m['NMI_minus_PCA']:+.3f} ({m['NMI_minus_PCA_se']:.3f}) |")
            lines.append(f"| {name} | {nv} | {fmt(m['ARI'])} | {fmt(m['NMI'])} | {diffs}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes for a fast run")
    parser.add_argument("--parts", default="synthetic,confidence,cbmc,cbmc_splits,uncertainty,diagnostics,timing",
                        help="comma-separated subset of synthetic, confidence, cbmc, cbmc_splits, uncertainty, "
                        "diagnostics, timing")
    parser.add_argument("--n-splits", type=int, default=5, help="query splits of the cbmc_splits part")
    parser.add_argument("--merge", action="store_true",
                        help="update the parts run in an existing results JSON instead of replacing it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--timing-threads", default="1,2", help="thread counts for the timing part")
    parser.add_argument("--no-scvi", action="store_true", help="skip the scVI baseline on CBMC")
    parser.add_argument("--out", default=None,
                        help="output stem (default benchmarks/results/dice, or dice_quick with --quick)")
    args = parser.parse_args()
    common.quiet()
    torch.set_num_threads(args.threads)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    stem = Path(args.out) if args.out else common.result_stem("dice", args.quick)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"quick": args.quick, "seed": args.seed, **common.machine_info()}
    if args.merge and stem.with_suffix(".json").exists():
        previous = json.loads(stem.with_suffix(".json").read_text())
        results = {**previous, **{k: v for k, v in results.items() if k not in ("machine", "cpu", "cpus")}}
        t0 -= previous.get("total_seconds", 0.0)
    cache: dict[str, Any] = {}
    if "synthetic" in parts:
        results["synthetic"] = run_synthetic(args.quick, args.seed, cache, stem)
    if "confidence" in parts:
        results["confidence"] = run_confidence(args.quick, args.seed, cache, stem)
    if "cbmc" in parts:
        results["cbmc"] = run_cbmc(args.quick, args.seed, cache, with_scvi=not args.no_scvi, stem=stem)
    if "cbmc_splits" in parts:
        results["cbmc_splits"] = run_cbmc_splits(args.quick, args.seed, args.n_splits)
    if "uncertainty" in parts:
        results["uncertainty"] = run_uncertainty(args.quick, args.seed, cache)
    if "diagnostics" in parts:
        results["diagnostics"] = run_diagnostics(args.quick, args.seed)
    if "timing" in parts:
        results["timing"] = run_timing(args.quick, args.seed, cache,
                                       [int(t) for t in args.timing_threads.split(",") if t])
    results["total_seconds"] = time.perf_counter() - t0
    common.write_results(stem, markdown(results), results, echo=False)


if __name__ == "__main__":
    main()
