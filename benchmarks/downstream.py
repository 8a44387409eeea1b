"""Downstream benchmark: does imputation / denoising help the analyses a biologist runs, against a known truth?

Two settings with a truth to score against (issue 21, item 6; the targets of issue 30):

(a) **Simulated dropout.** ``countsdiff_sc.datasets.simulate_counts`` (Splatter's model, Zappia et al., Genome Biol.
    2017: gamma gene means, log-normal DE factors per group, log-normal library sizes, gamma-Poisson counts with a
    biological CV, logistic dropout on the log mean). 500 genes, 5 groups, library sizes matched to CBMC
    (``lib_loc = log 1500``, ``lib_scale = 0.5``: CBMC's median library is 1,418 and the s.d. of its log library
    0.50). Three dropout rates: ``dropout_mid`` is solved (bisection on the simulator's own expected rate, from its
    Poisson means, before any method runs) so that 20% / 40% / 60% of the non-zero true entries are zeroed; the
    realised rates are reported. The same seed gives the same true counts at every rate, and DE factors
    ``LogNormal(0.3, 0.4)`` (Splatter's location is 0.1) so that Leiden on the true counts finds the groups with an
    ARI of about 0.7, close to CBMC's; this was set on the truth alone, before any method ran. Every method sees only
    the observed counts; the true counts before dropout are the truth. The simulated groups are never given to a
    method: the labels the methods use (CountsDiff's conditioning, scVI's covariate, the groups of
    ``pp.mark_dropouts``) are Leiden clusters of the observed counts (``pp.mark_dropouts(groupby=None)``, scIDPMs'
    recipe for data without cell types).
(b) **Real data downsampled.** CBMC (8,617 cells x 500 genes): a seeded 10% of the cells, stratified by cell type,
    are held out as test cells; models train on the other 90% at full depth. The test cells are binomially thinned
    to 10%, 25% and 50% of their counts (``Binomial(x, f)`` per entry); the original test cells are the truth.
    The training cells keep their annotated cell types (a labelled reference); the test cells' labels are *not*
    given to any method: they are transferred from the training cells by 15-NN in PCA space of the thinned counts
    (accuracy reported), and these predicted labels drive ``pp.mark_dropouts``, CountsDiff's conditioning and
    scVI's covariate. (Conditioning on the true test labels and then scoring the clustering against them would be
    circular; one extra row, marked "leak" and excluded from the targets, shows CountsDiff depth restoration with
    the true test labels.)

Methods (each output is a cells x genes matrix on the counts scale):

* **No imputation**: the observed (dropped-out / thinned) counts.
* **kNN, fill dropouts**: ``countsdiff_sc.baselines.impute_knn`` (15 neighbours, 30 PCs) on the suspected dropouts
  (``pp.mark_dropouts``); neighbours from observed data only (a: the observed cells; b: the training cells).
* **kNN-smoothing**: every entry replaced by the mean library-normalised profile of the cell and its 15 nearest
  neighbours (PCA of log-normalised observed profiles, 30 PCs), times the cell's library; one step of the
  kNN-smoothing of Wagner, Yan & Yanai (2017), on normalised profiles. Neighbours: (a) among the observed cells;
  (b) among the training cells at full depth (its best honest setting; the cell itself is added).
* **MAGIC** (van Dijk et al., 2018; optional ``magic-impute``): fills the suspected dropouts; skipped with a line
  when ``magic`` is not importable.
* **scVI**: ``SCVI`` (NB likelihood, 10 latent dims, labels as a categorical covariate of the decoder as in
  ``baselines.impute_scvi``; SCVI itself ignores ``labels_key``) trained on the observed cells (a) or the training
  cells (b), all cells in training (``train_size=1``), for the number of epochs of scvi-tools' own heuristic
  (400 at these sizes) or ``--scvi-epochs``;
  ``get_normalized_expression(library_size=1, n_samples=25)`` times each cell's observed library.
Two CountsDiff models are trained per data set (default MLP backbone, with the labels):

* the **default flow**, as a user types it: ``pp.mark_dropouts(groupby=labels)`` (its default rule: a zero is suspected
  only where the group predicts >= 3 counts at the cell's depth), ``setup_anndata(labels_key, valid_layer)``,
  ``CountsDiffModel(adata)`` (the default preset: depth-conditioned, ``nll`` weight, condition dropout 0.2, short EMA
  window) and ``train()`` (the budget scaled to the cells, early stopping on 10% of them);
* the **0.1 flow** (the before): Algorithm 1 marks (``mark_dropouts(preset="paper")``), ``preset="paper"``, 3,000
  steps per simulated data set and 6,000 on CBMC, ``train_size=1`` (as ``imputation.py``).

CountsDiff rows:

* **CountsDiff impute (default)**: ``impute(adata, n_samples=5)``, the plain call (target ``"denoise"``: every entry's
  expected count at the cell's own depth, ``f * E[x_D | x]``, with the default guidance towards the cell's label).
* **CountsDiff impute, guidance 0**: the same with ``sampler=Sampler(guidance=0)`` (label-free).
* **CountsDiff impute, guidance 1**: the same with ``sampler=Sampler(guidance=1)``: the conditional posterior mean
  itself (the default of 0.2.0).
* **CountsDiff impute, guidance 1.5 without the cap**: ``sampler=Sampler(guidance=1.5, guidance_cap=math.inf)``, the
  development default before the cap: guided both ways, so a wrong label may also raise genes.
* **(demo) the default, zeros filled at their unconditioned level**: not a method and not a target: the default's
  output with every fill at an observed zero divided by ``1 - f`` (``f`` the cell's depth fraction ``L / D``), the
  entry's expected count had its zero not been seen. It shows what "RMSE dropouts" rewards (below).
* **CountsDiff restoration, 1 draw**: one draw of the restored profile (``get_normalized_expression(method="depth",
  n_samples=1)``) times the cell's library: a single sample, which keeps the spread of real cells.
* **CountsDiff 0.1 (Alg. 1 marks, dropouts)**: the 0.1 flow's ``impute(target="dropouts")`` (RePaint over the
  suspected dropouts, observed entries kept; 50 Euler reverse steps, no resampling, guidance 0.5), mean of 5 draws.

Metrics against the truth (computed the same way for every method; "log-normalised" = ``log1p(1e4 x / rowsum)``):

* **cell r**: per-cell Pearson correlation of log-normalised profiles with the truth's, mean over cells (higher).
* **RMSE dropouts**: RMSE on the dropout entries, (a) entries zeroed by dropout, (b) entries 0 in the thinned cell
  and > 0 in the truth, after rescaling each method's output to the truth cell's library size
  (``x * L_true / sum(x)``): a common scale for methods that return different depths (lower).
* **false signal**: mean value (same rescaling) given to entries that are 0 in the truth (lower; the observed counts
  score 0 by construction, so no method can beat no-imputation here).
* **RMSE observed zeros** and **RMSE all** (extra, not targets): the same RMSE over every entry the method sees as 0
  (a dropout or a true zero) and over every entry. "RMSE dropouts" picks its entries by the truth (> 0), which no
  method can see: on that set a fill above the expected count wins, since the true zeros it would be charged for are
  left out. Among the zeros a method sees, the expected count given the cell, ``E[truth | observed]``, is the
  best possible fill in squared error (the posterior mean minimises the expected squared error on any set chosen
  from the observed data); these two columns score that, and the gap between them and "RMSE dropouts" shows which
  methods gain by filling high.
* **gene r**: recovery of gene-gene correlations: Pearson correlation, over the gene pairs, between the gene-gene
  Pearson correlation matrix of the method's log-normalised output and that of the truth, on the 200 genes most
  variable in the log-normalised truth (undefined correlations, from constant genes, count as 0) (higher).
  **gene |dr|** (extra, not a target): mean absolute difference of those correlations; over-smoothing inflates it.
* **ARI / NMI**: ``countsdiff_sc.metrics.leiden_nmi_ari`` (Leiden on a 15-NN graph over resolutions 0.01-2.0, the
  resolution of best ARI kept) on 30 PCs of the log-normalised output, against the labels (a: simulated groups,
  b: CBMC cell types) (higher).
* **markers**: overlap of the top-50 ``scanpy.tl.rank_genes_groups`` genes (Wilcoxon, log-normalised) of every label
  with >= 5 cells with the truth's top 50, mean over labels (higher).

The targets of the issue are checked and reported as met / not met; nothing is tuned on the truth.

Usage::

    python -m benchmarks.downstream            # full run (about half an hour on 2 uncontended CPU cores)
    python -m benchmarks.downstream --quick    # smoke test (a few minutes: 300 simulated cells x 200 genes,
                                               # 1,000 CBMC cells, 200 training steps, 10 reverse steps)
    python -m benchmarks.downstream --splits 0,1,2,3,4   # setting (b) on five train / test splits, two worker
                                                       # processes at a time (about 40 min): downstream_splits.md

Writes ``benchmarks/results[/quick]/downstream.md`` and ``.json`` (``--splits``: ``downstream_splits.md`` and
``.json``: one split cannot rank methods whose scores differ by less than the split-to-split spread).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from benchmarks import _common as common
from benchmarks._truth import Truth, thin_counts, transfer_labels
from benchmarks._truth import dense as _dense

SUSPECT = "suspected_dropout"
NOT_INSTALLED = "not installed"

#: metric -> (column title, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "cell_r": ("cell r", True),
    "rmse_dropouts": ("RMSE dropouts", False),
    "false_signal": ("false signal", False),
    "rmse_zeros": ("RMSE observed zeros (extra)", False),
    "rmse_all": ("RMSE all (extra)", False),
    "gene_r": ("gene r", True),
    "gene_abs_dr": ("gene abs dr (extra)", False),
    "ari": ("ARI", True),
    "nmi": ("NMI", True),
    "markers": ("markers", True),
}
EXTRA_METRICS = ("gene_abs_dr", "rmse_zeros", "rmse_all")  # reported, not targets
TARGET_METRICS = [m for m in METRICS if m not in EXTRA_METRICS]
NO_IMPUTATION = "No imputation"
LEAK = "CountsDiff impute (default), true test labels (leak)"
COUNTSDIFF = ("CountsDiff impute (default)", "CountsDiff impute, guidance 0", "CountsDiff restoration, 1 draw",
              "CountsDiff 0.1 (Alg. 1 marks, dropouts)", "CountsDiff impute, guidance 1",
              "CountsDiff impute, guidance 1.5 without the cap")
#: Not a method: the default's output with its fills at observed zeros divided by ``1 - f`` (what RMSE dropouts rewards)
DEMO = "(demo) the default, zeros filled at their unconditioned level"
#: validity layers: ``pp.mark_dropouts``' default rule, and scIDPMs Algorithm 1 as written (the paper preset)
VALID_DEFAULT, VALID_PAPER = "countsdiff_valid", "countsdiff_valid_alg1"


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings for a smoke test")
    p.add_argument("--max-steps", type=int, default=6000, help="CountsDiff training steps on CBMC (full mode)")
    p.add_argument("--sim-max-steps", type=int, default=3000, help="CountsDiff training steps per simulated data set")
    p.add_argument("--sim-cells", type=int, default=2000, help="cells of the simulated data sets (full mode)")
    p.add_argument("--scvi-epochs", type=int, default=None, help="scVI epochs (default: scvi-tools' heuristic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default="sim,cbmc", help="comma-separated: sim, cbmc")
    p.add_argument("--merge", action="store_true",
                   help="keep the other setting's results from the existing page's JSON (run the settings separately)")
    p.add_argument("--splits", default=None,
                   help="comma-separated split seeds: run setting (b) on each split (lean method set, entry metrics) "
                        "and write downstream_splits.md instead of the main page")
    p.add_argument("--jobs", type=int, default=2, help="--splits: worker processes at a time (one thread each)")
    p.add_argument("--timeout", type=float, default=7200.0, help="--splits: seconds per split before it is dropped")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------- methods


def knn_smooth(
    x: np.ndarray, reference: np.ndarray | None = None, *, n_neighbors: int = 15, n_pcs: int = 30, seed: int = 0
) -> np.ndarray:
    """kNN-smoothing (one step, after Wagner, Yan & Yanai 2017) on library-normalised profiles.

    Neighbours are searched in a PCA (fitted on the reference) of ``log1p`` profiles normalised to the reference's
    median library; the cell's new profile is the mean of ``x / rowsum`` over itself and its ``n_neighbors``
    nearest reference cells, scaled back to the cell's own library. ``reference=None``: the cells of ``x`` are their
    own reference (the cell itself is its nearest neighbour). Only observed counts enter (no leakage).

    Parameters
    ----------
    x
        Counts of the cells to smooth ``(n_cells, n_genes)``.
    reference
        Counts of the cells the neighbours come from, or None for ``x`` itself.
    n_neighbors
        Neighbours besides the cell itself.
    n_pcs
        Principal components of the neighbour search (capped by the data).
    seed
        Random state of the (randomized) PCA.

    Returns
    -------
    Smoothed counts (float64), same shape and per-cell totals as ``x``.
    """
    import scipy.sparse as sp
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    from countsdiff_sc.pp import log_normalize

    x = np.asarray(x, dtype=np.float64)
    ref = x if reference is None else np.asarray(reference, dtype=np.float64)
    lib_x, lib_ref = x.sum(axis=1), ref.sum(axis=1)
    target = float(np.median(lib_ref[lib_ref > 0]))
    emb_ref, emb_x = log_normalize(ref, target), log_normalize(x, target)
    n_comp = min(n_pcs, ref.shape[0] - 1, ref.shape[1])
    pca = PCA(n_components=n_comp, svd_solver="randomized", random_state=seed).fit(emb_ref)
    emb_ref, emb_x = pca.transform(emb_ref), pca.transform(emb_x)
    k = min(n_neighbors + (1 if reference is None else 0), ref.shape[0])
    idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(emb_ref).kneighbors(emb_x)[1]
    rel_ref = ref / np.maximum(lib_ref, 1e-12)[:, None]
    rel_x = x / np.maximum(lib_x, 1e-12)[:, None]
    graph = sp.csr_matrix((np.ones(idx.size), (np.repeat(np.arange(x.shape[0]), k), idx.ravel())),
                          shape=(x.shape[0], ref.shape[0]))
    profile = np.asarray(graph @ rel_ref)
    if reference is None:
        profile /= k
    else:
        profile = (profile + rel_x) / (k + 1)
    return profile * lib_x[:, None]


def _scvi_model(train: ad.AnnData, label: str, epochs: int | None, seed: int) -> Any:
    """SCVI on ``train`` (counts in X) with the labels as a categorical covariate; returns the model and epochs."""
    import scvi

    scvi.settings.seed = seed
    data = ad.AnnData(X=train.X.copy(), obs=train.obs[[label]].copy(), var=pd.DataFrame(index=train.var_names))
    scvi.model.SCVI.setup_anndata(data, labels_key=label, categorical_covariate_keys=[label])
    model = scvi.model.SCVI(data, n_latent=10, gene_likelihood="nb")
    model.train(max_epochs=epochs, train_size=1.0, accelerator="cpu", enable_progress_bar=False)
    return model, int(model.history["elbo_train"].shape[0])


def _scvi_output(model: Any, data: ad.AnnData, label: str, seed: int) -> np.ndarray:
    import scvi

    scvi.settings.seed = seed
    q = ad.AnnData(X=data.X.copy(), obs=data.obs[[label]].copy(), var=pd.DataFrame(index=data.var_names))
    rho = model.get_normalized_expression(q, library_size=1.0, n_samples=25, return_mean=True, return_numpy=True)
    return np.asarray(rho, dtype=np.float64) * _dense(data.X).sum(axis=1, keepdims=True)


def _countsdiff_model(train: ad.AnnData, label: str, max_steps: int | None, seed: int, valid_layer: str,
                      preset: str) -> tuple[Any, float]:
    import scvi

    import countsdiff_sc as cds

    scvi.settings.seed = seed
    cds.CountsDiffModel.setup_anndata(train, labels_key=label, valid_layer=valid_layer)
    model = cds.CountsDiffModel(train, preset=preset)
    t0 = time.perf_counter()
    if preset == "default":  # the plain call: the default budget with early stopping
        model.train(accelerator="cpu", enable_progress_bar=False,
                    **({} if max_steps is None else {"max_steps": max_steps}))
    else:
        model.train(max_steps=max_steps, train_size=1.0, accelerator="cpu", enable_progress_bar=False)
    return model, time.perf_counter() - t0


def mark_both(data: ad.AnnData, groupby: str | None, seed: int) -> str:
    """Both validity layers: the default rule (``groupby=None``: on Leiden clusters of the counts, which it stores) and
    Algorithm 1 on the same groups. Returns the column of the groups."""
    from countsdiff_sc import pp

    pp.mark_dropouts(data, groupby=groupby, seed=seed, key_added=VALID_DEFAULT)
    label = "countsdiff_leiden" if groupby is None else groupby
    pp.mark_dropouts(data, groupby=label, preset="paper", key_added=VALID_PAPER)
    return label


def train_countsdiff(train: ad.AnnData, label: str, max_steps: int, seed: int, timings: dict[str, float],
                     tag: str, default_steps: int | None = None) -> dict[str, Any]:
    """The two CountsDiff models: the default flow and the 0.1 flow (Algorithm 1 marks, the paper preset)."""
    models = {}
    for key, layer, preset, steps in (("default", VALID_DEFAULT, "default", default_steps),
                                      ("paper", VALID_PAPER, "paper", max_steps)):
        data = train.copy()  # each model registers its own copy
        models[key], timings[f"{tag}: countsdiff_train_{key}"] = _countsdiff_model(data, label, steps, seed, layer,
                                                                                    preset)
    return models


def run_methods(
    data: ad.AnnData,
    label: str,
    cd_models: dict[str, Any],
    scvi_model: Any | None,
    *,
    reference: ad.AnnData | None,
    n_steps: int,
    seed: int,
    timings: dict[str, float],
    tag: str,
    lean: bool = False,
) -> dict[str, np.ndarray | None]:
    """Every method's output (counts scale, dense) on the observed cells ``data``.

    ``data`` holds the observed counts in X, the labels the methods may use in ``obs[label]`` (never the labels
    they are scored against: clusters or transferred labels) and both validity layers of ``mark_both``;
    ``cd_models`` the CountsDiff models of ``train_countsdiff``; ``reference`` holds full-depth training cells
    (setting b) or is None (setting a: the observed cells are their own reference). An output of None means "not
    available". ``n_steps``: reverse steps of CountsDiff's chains. ``lean``: the baselines and the default flow's
    ``impute`` at guidance default / 0 / 1 only (the split replicates; ``cd_models`` needs no ``"paper"`` model).
    """
    from countsdiff_sc import baselines

    x = _dense(data.X)
    lib = x.sum(axis=1, keepdims=True)
    data.layers[SUSPECT] = ~np.asarray(data.layers[VALID_PAPER], dtype=bool)
    out: dict[str, np.ndarray | None] = {NO_IMPUTATION: x}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        res = fn()
        timings[f"{tag}: {name}"] = time.perf_counter() - t0
        return res

    out["kNN, fill dropouts"] = timed("knn_fill", lambda: baselines.impute_knn(
        data, reference=reference, mask_layer=SUSPECT, n_neighbors=15, n_pcs=30, seed=seed, key_added="knn"))
    ref_x = None if reference is None else _dense(reference.X)
    out["kNN-smoothing"] = timed("knn_smooth", lambda: knn_smooth(x, ref_x, n_neighbors=15, n_pcs=30, seed=seed))
    try:
        import magic  # noqa: F401
    except ImportError:
        out["MAGIC"] = None
    else:
        out["MAGIC"] = timed("magic", lambda: baselines.impute_magic(data, mask_layer=SUSPECT, seed=seed))
    if scvi_model is not None:
        out["scVI normalised x library"] = timed("scvi", lambda: _scvi_output(scvi_model, data, label, seed))
    import countsdiff_sc as cds

    model = cd_models["default"]
    mine = data.copy()  # the default flow reads its own validity layer under its registered name
    imputed, _ = timed("countsdiff_impute", lambda: model.impute(mine, n_samples=5, sampler=cds.Sampler(seed=seed)))
    out[COUNTSDIFF[0]] = np.asarray(imputed, dtype=np.float64)
    free = data.copy()
    imputed, _ = timed("countsdiff_impute_g0", lambda: model.impute(
        free, n_samples=5, sampler=cds.Sampler(seed=seed, guidance=0.0)))
    out[COUNTSDIFF[1]] = np.asarray(imputed, dtype=np.float64)
    plain = data.copy()  # the conditional posterior mean itself (guidance 1, the default of 0.2.0)
    imputed, _ = timed("countsdiff_impute_g1", lambda: model.impute(
        plain, n_samples=5, sampler=cds.Sampler(seed=seed, guidance=1.0)))
    out[COUNTSDIFF[4]] = np.asarray(imputed, dtype=np.float64)
    if lean:
        return out
    uncapped = data.copy()  # the development default before the cap (guidance above 1 may raise a gene too)
    imputed, _ = timed("countsdiff_impute_g15_uncapped", lambda: model.impute(
        uncapped, n_samples=5, sampler=cds.Sampler(seed=seed, guidance=1.5, guidance_cap=math.inf)))
    out[COUNTSDIFF[5]] = np.asarray(imputed, dtype=np.float64)
    out[DEMO] = _unconditioned_zeros(out[COUNTSDIFF[0]], x, model.depth_)
    draw = timed("countsdiff_restoration_draw", lambda: model.get_normalized_expression(
        data, library_size=1, n_samples=1, method="depth", return_numpy=True, sampler=cds.Sampler(seed=seed)))
    out[COUNTSDIFF[2]] = np.asarray(draw, dtype=np.float64) * lib
    old, legacy = cd_models["paper"], data.copy()
    legacy.layers[VALID_DEFAULT] = legacy.layers[VALID_PAPER]  # the 0.1 model reads the Algorithm 1 marks
    imputed, _ = timed("countsdiff_dropouts_alg1", lambda: old.impute(
        legacy, target="dropouts", n_samples=5, store_samples=False, key_added="cd_alg1",
        sampler=cds.Sampler(n_steps=n_steps, seed=seed, step_rule="euler", resample_iters=1, guidance=0.5,
                            progress=False)))
    out[COUNTSDIFF[3]] = np.asarray(imputed, dtype=np.float64)
    return out


def _unconditioned_zeros(imputed: np.ndarray, x: np.ndarray, depth: float) -> np.ndarray:
    """The default's output with each fill at an observed zero divided by ``1 - f`` (``f = L / D``, the cell's depth
    fraction): the expected count of the entry had its zero not been seen (a zero of a thinned cell says the entry
    lost its molecules, so its expected count is ``(1 - f)`` times the unconditioned one). Not a method: it shows
    that "RMSE dropouts", whose entries are picked by the truth, rewards filling zeros above their expected count."""
    from countsdiff_sc.model._denoise import restored_depths

    lib = x.sum(axis=1)
    f = lib / restored_depths(lib, depth)
    out = imputed.copy()
    zero = x == 0
    out[zero] = (imputed / np.maximum(1.0 - f, 1e-6)[:, None])[zero]
    return out


# --------------------------------------------------------------------------------------------------- metrics


def score_methods(outputs: dict[str, np.ndarray | None], truth: Truth, condition: str, setting: str) -> pd.DataFrame:
    """A tidy table (one row per method) of every metric; the truth itself as the ceiling row."""
    rows = []
    for name, x in {"Truth (ceiling)": truth.counts, **outputs}.items():
        row = {"setting": setting, "condition": condition, "method": name}
        if x is None:
            row.update({m: np.nan for m in METRICS}, note=NOT_INSTALLED)
        else:
            row.update(truth.score(x), note="")
        rows.append(row)
        if x is not None:
            common.log(f"  {name:32s} " + "  ".join(f"{m}={row[m]:.4g}" for m in METRICS))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------- settings


def dropout_mid_for_rate(means: np.ndarray, rate: float, shape: float = -1.0) -> float:
    """``dropout_mid`` at which the simulator's expected share of non-zero true entries zeroed equals ``rate``.

    Expected share ``sum_ij pi_ij (1 - exp(-mu_ij)) / sum_ij (1 - exp(-mu_ij))`` with the logistic ``pi_ij`` of
    ``simulate_counts`` on the Poisson means ``mu`` (it increases with ``mid`` for a negative shape); bisection.
    """
    mu = np.asarray(means, dtype=np.float64)
    pos = -np.expm1(-mu)
    with np.errstate(divide="ignore"):
        logmu = np.log(mu)

    def expected(mid: float) -> float:
        with np.errstate(over="ignore"):
            pi = 1.0 / (1.0 + np.exp(-shape * (logmu - mid)))
        return float((pi * pos).sum() / pos.sum())

    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected(mid) < rate else (lo, mid)
    return (lo + hi) / 2


def setting_sim(cfg: dict[str, Any], timings: dict[str, float]) -> tuple[list[pd.DataFrame], dict[str, Any]]:
    """Setting (a): simulated dropout at three rates.

    The methods never see the simulated groups they are scored against: the labels they use (CountsDiff's
    conditioning, scVI's covariate, the groups of ``pp.mark_dropouts``) are Leiden clusters of the observed counts,
    what ``pp.mark_dropouts(groupby=None)`` computes for data without cell types (scIDPMs Sec. 2.2).
    """
    import countsdiff_sc as cds

    sim_kw = {"n_cells": cfg["sim_cells"], "n_genes": cfg["sim_genes"], "n_groups": cfg["sim_groups"],
              "lib_loc": float(np.log(1500)), "lib_scale": 0.5, "de_fac_loc": 0.3, "seed": cfg["seed"]}
    clean = cds.datasets.simulate_counts(**sim_kw, dropout_mid=None)
    truth = None
    tables, info = [], {"simulator": dict(sim_kw), "rates": []}
    info["simulator"]["zero_fraction_truth"] = clean.uns["simulation"]["zero_fraction_truth"]
    for rate in cfg["dropout_rates"]:
        mid = dropout_mid_for_rate(clean.layers["cell_means"], rate)
        data = cds.datasets.simulate_counts(**sim_kw, dropout_mid=mid)
        if not np.array_equal(data.layers["truth"], clean.layers["truth"]):
            raise RuntimeError("simulate_counts gave other true counts for another dropout_mid with the same seed.")
        s = data.uns["simulation"]
        cond = f"dropout {s['dropout_rate']:.0%}"
        if truth is None:
            truth = Truth(data.layers["truth"], data.layers["dropout"], data.obs["group"], seed=cfg["seed"])
        else:
            truth.dropout = np.asarray(data.layers["dropout"], dtype=bool)
        obs = ad.AnnData(X=data.X.copy(), obs=data.obs[["group"]].copy(), var=pd.DataFrame(index=data.var_names))
        label = mark_both(obs, None, cfg["seed"])  # Leiden clusters of the observed counts
        clusters = _ari(obs.obs[label], data.obs["group"])
        info["rates"].append({"target": rate, "dropout_mid": mid, "realised": s["dropout_rate"],
                              "zero_fraction_observed": s["zero_fraction_observed"],
                              "clusters_used_as_labels": int(obs.obs[label].nunique()), "cluster_ari": clusters})
        common.log(f"== (a) target dropout {rate:.0%}: mid={mid:.3f}, realised {s['dropout_rate']:.3f}, zeros "
                   f"{s['zero_fraction_truth']:.3f} -> {s['zero_fraction_observed']:.3f}; "
                   f"{obs.obs[label].nunique()} Leiden clusters (ARI {clusters:.3f} with the groups)")
        models = train_countsdiff(obs, label, cfg["sim_max_steps"], cfg["seed"], timings, f"(a) {cond}",
                                  cfg["default_steps"])
        t_train = timings[f"(a) {cond}: countsdiff_train_default"]
        info.setdefault("default_budget", {})[cond] = dict(models["default"].train_budget_)
        t0 = time.perf_counter()
        scvi_model, epochs = _scvi_model(obs, label, cfg["scvi_epochs"], cfg["seed"])
        timings[f"(a) {cond}: scvi_train"] = time.perf_counter() - t0
        info["scvi_epochs_sim"] = epochs
        common.log(f"   CountsDiff trained in {t_train:.0f} s; scVI {epochs} epochs in "
                   f"{timings[f'(a) {cond}: scvi_train']:.0f} s")
        outputs = run_methods(obs, label, models, scvi_model, reference=None, n_steps=cfg["n_steps"],
                              seed=cfg["seed"], timings=timings, tag=f"(a) {cond}")
        tables.append(score_methods(outputs, truth, cond, "a"))
    return tables, info


def _ari(a: Any, b: Any) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(a).astype(str), np.asarray(b).astype(str)))


def cbmc_split(n_cells: int | None, seed: int) -> tuple[ad.AnnData, ad.AnnData]:
    """Setting (b)'s cells: CBMC (or a seeded subset of ``n_cells``), split 90% training / 10% test, stratified by
    cell type (``pp.split_cells`` with ``seed``); the training cells carry both validity layers (``mark_both``)."""
    from countsdiff_sc import pp

    adata = common.cbmc(n_cells, seed)
    pp.split_cells(adata, train=0.9, validation=0.0, test=0.1, seed=seed, stratify="cell_type")
    split = adata.obs["countsdiff_split"]
    train, test = adata[split == "train"].copy(), adata[split == "test"].copy()
    common.log(f"== (b) CBMC {adata.n_obs} cells (split seed {seed}): {train.n_obs} training, {test.n_obs} test")
    mark_both(train, "cell_type", seed)
    return train, test


def thinned_test_cells(train: ad.AnnData, test: ad.AnnData, fraction: float, seed: int,
                       index: int) -> tuple[ad.AnnData, np.ndarray, np.ndarray]:
    """The test cells thinned to ``fraction`` (thinning seed ``seed + 1000 + index``), with cell types transferred
    from the training cells by 15-NN and both validity layers; returns the AnnData, the thinned counts and the
    predicted labels."""
    import scipy.sparse as sp

    x_thin = thin_counts(_dense(test.X), fraction, seed + 1000 + index)
    predicted = transfer_labels(_dense(train.X), train.obs["cell_type"], x_thin, seed=seed)
    categories = train.obs["cell_type"].cat.categories
    obs = ad.AnnData(X=sp.csr_matrix(x_thin), var=pd.DataFrame(index=test.var_names),
                     obs=pd.DataFrame({"cell_type": pd.Categorical(predicted, categories=categories)},
                                      index=test.obs_names))
    mark_both(obs, "cell_type", seed)
    return obs, x_thin, predicted


def setting_cbmc(cfg: dict[str, Any], timings: dict[str, float]) -> tuple[list[pd.DataFrame], dict[str, Any]]:
    """Setting (b): CBMC test cells thinned to 10 / 25 / 50% depth, the original cells as truth.

    The training cells keep their annotated cell types (a labelled reference). The test cells' labels are not given
    to any method: they are transferred from the training cells by 15-NN in PCA space (``transfer_labels``) on the
    thinned counts, and those predicted labels drive ``pp.mark_dropouts``, CountsDiff's conditioning and scVI's
    covariate. One extra row, marked as a leak and not a target, gives CountsDiff depth restoration the true test
    labels, to show how much of its clustering comes from them.
    """
    train, test = cbmc_split(cfg["cbmc_cells"], cfg["seed"])
    models = train_countsdiff(train, "cell_type", cfg["max_steps"], cfg["seed"], timings, "(b)", cfg["default_steps"])
    model, t_train = models["default"], timings["(b): countsdiff_train_default"]
    t0 = time.perf_counter()
    scvi_model, epochs = _scvi_model(train, "cell_type", cfg["scvi_epochs"], cfg["seed"])
    timings["(b): scvi_train"] = time.perf_counter() - t0
    common.log(f"   CountsDiff trained in {t_train:.0f} s; scVI {epochs} epochs in {timings['(b): scvi_train']:.0f} s")
    info: dict[str, Any] = {"n_train": int(train.n_obs), "n_test": int(test.n_obs), "scvi_epochs_cbmc": epochs,
                            "depth_D": float(model.depth_), "fractions": [],
                            "depth_by_label": model.restored_depth_table()["restored_depth"].to_dict(),
                            "default_budget": dict(model.train_budget_)}
    x_true = _dense(test.X)
    true_labels = test.obs["cell_type"].astype(str).to_numpy()
    categories = train.obs["cell_type"].cat.categories
    truth = None
    tables = []
    for i, f in enumerate(cfg["fractions"]):
        obs, x_thin, predicted = thinned_test_cells(train, test, f, cfg["seed"], i)
        dropout = (x_thin == 0) & (x_true > 0)
        if truth is None:
            truth = Truth(x_true, dropout, true_labels, seed=cfg["seed"])
        else:
            truth.dropout = dropout
        cond = f"depth {f:.0%}"
        accuracy = float(np.mean(predicted == true_labels))
        info["fractions"].append({"fraction": f, "median_library": float(np.median(x_thin.sum(axis=1))),
                                  "dropout_entries": int(dropout.sum()),
                                  "dropout_share_of_nonzero": float(dropout.sum() / np.count_nonzero(x_true)),
                                  "label_transfer_accuracy": accuracy})
        common.log(f"== (b) {cond}: median library {np.median(x_thin.sum(axis=1)):.0f} "
                   f"(truth {np.median(truth.lib):.0f}); {dropout.sum() / np.count_nonzero(x_true):.1%} of the "
                   f"non-zero true entries are 0 after thinning; label transfer accuracy {accuracy:.3f}")
        outputs = run_methods(obs, "cell_type", models, scvi_model, reference=train, n_steps=cfg["n_steps"],
                              seed=cfg["seed"], timings=timings, tag=f"(b) {cond}")
        oracle = obs.copy()
        oracle.obs["cell_type"] = pd.Categorical(true_labels, categories=categories)
        leak, _ = model.impute(oracle, n_samples=1, store_samples=False)
        outputs[LEAK] = np.asarray(leak, dtype=np.float64)
        tables.append(score_methods(outputs, truth, cond, "b"))
    return tables, info


# --------------------------------------------------------------------------------------------------- split replicates

#: the metrics scored per split (entry by entry; the analyses of the main page are left out)
SPLIT_METRICS = ("cell_r", "rmse_dropouts", "false_signal", "rmse_zeros", "rmse_all")
#: the CountsDiff rows of the split replicates (``run_methods(lean=True)``)
SPLIT_COUNTSDIFF = (COUNTSDIFF[0], COUNTSDIFF[1], COUNTSDIFF[4])


def split_replicate(spec: dict[str, Any]) -> dict[str, Any]:
    """Setting (b) on one train / test split (split, thinning and training seed ``spec["seed"]``): the default flow's
    CountsDiff model and scVI trained on its training cells, the baselines and the default flow's ``impute`` at
    guidance default / 0 / 1 (``run_methods(lean=True)``) on its thinned test cells, scored entry by entry
    (``Truth.entry_scores``). Split seed 0 is the main page's split. Returns the rows and the run's facts."""
    seed = int(spec["seed"])
    common.start(seed, int(spec["threads"]))
    cfg = config(_parse(["--quick"] if spec["quick"] else []))
    cfg["scvi_epochs"] = spec.get("scvi_epochs") or cfg["scvi_epochs"]
    train, test = cbmc_split(cfg["cbmc_cells"], seed)
    model, t_train = _countsdiff_model(train.copy(), "cell_type", cfg["default_steps"], seed, VALID_DEFAULT,
                                       "default")
    t0 = time.perf_counter()
    scvi_model, epochs = _scvi_model(train, "cell_type", cfg["scvi_epochs"], seed)
    t_scvi = time.perf_counter() - t0
    x_true = _dense(test.X)
    true_labels = test.obs["cell_type"].astype(str).to_numpy()
    rows, by_label, truth, timings = [], [], None, {}
    for i, f in enumerate(cfg["fractions"]):
        obs, x_thin, _ = thinned_test_cells(train, test, f, seed, i)
        dropout = (x_thin == 0) & (x_true > 0)
        if truth is None:
            truth = Truth(x_true, dropout, true_labels, seed=seed)
        else:
            truth.dropout = dropout
        cond = f"depth {f:.0%}"
        outputs = run_methods(obs, "cell_type", {"default": model}, scvi_model, reference=train,
                              n_steps=cfg["n_steps"], seed=seed, timings=timings, tag=cond, lean=True)
        for name, x in outputs.items():
            if x is not None:
                rows.append({"seed": seed, "condition": cond, "method": name, **truth.entry_scores(x)})
                by_label += [{"seed": seed, "condition": cond, "method": name, **r}
                             for r in truth.dropout_errors_by_label(x)]
    depth_table = model.restored_depth_table()
    return {"rows": rows, "by_label": by_label, "countsdiff_train_s": t_train, "scvi_train_s": t_scvi,
            "scvi_epochs": epochs,
            "countsdiff_steps": int(model.train_budget_.get("steps_run") or 0),
            **{key: depth_table[key].to_dict() for key in ("label_median", "restored_depth")}}


def split_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and s.d. over the splits of every metric, per condition and method (the methods in their order)."""
    order = list(dict.fromkeys(table.method))
    agg = table.groupby(["condition", "method"], sort=False)[list(SPLIT_METRICS)].agg(["mean", "std"])
    agg.columns = [f"{m}_{stat}" for m, stat in agg.columns]
    agg = agg.reset_index()
    agg["n_splits"] = table.groupby(["condition", "method"], sort=False).size().to_numpy()
    agg["order"] = agg.method.map(order.index)
    return agg.sort_values(["condition", "order"], kind="stable").drop(columns="order").reset_index(drop=True)


def split_targets(table: pd.DataFrame) -> pd.DataFrame:
    """Issue 30's target on the split replicates: at 10% and 25% depth, each CountsDiff row against no imputation and
    every baseline, on the mean over the splits, with the splits won one by one (paired: same split, same cells)."""
    rows = []
    for cond in [c for c in dict.fromkeys(table.condition) if c in ("depth 10%", "depth 25%")]:
        here = table[table.condition == cond]
        rivals = [m for m in dict.fromkeys(here.method) if m not in SPLIT_COUNTSDIFF]
        for variant in SPLIT_COUNTSDIFF:
            mine = here[here.method == variant].set_index("seed")
            for metric in ("cell_r", "rmse_dropouts"):
                higher = METRICS[metric][1]
                for rival in rivals:
                    theirs = here[here.method == rival].set_index("seed")[metric].reindex(mine.index)
                    diff = mine[metric] - theirs
                    won = int(sum(_better(a, b, higher) for a, b in zip(mine[metric], theirs, strict=True)))
                    rows.append({"condition": cond, "variant": variant, "metric": METRICS[metric][0], "rival": rival,
                                 "mean": float(mine[metric].mean()), "rival mean": float(theirs.mean()),
                                 "mean difference": float(diff.mean()), "s.d. of difference": float(diff.std()),
                                 "splits won": f"{won} / {len(diff)}",
                                 "met (mean)": _better(mine[metric].mean(), theirs.mean(), higher)})
    return pd.DataFrame(rows)


def split_by_label(by_label: pd.DataFrame, condition: str, method: str, rival: str) -> pd.DataFrame:
    """Where ``method``'s RMSE at the dropouts differs from ``rival``'s in ``condition``: per cell type (the truth's
    labels), the test cells and dropout entries, each method's RMSE over them, pooled over the splits, and the type's
    share of the difference in summed squared error (positive: ``method`` has the larger error there; the shares add
    up to 1), the largest first."""
    here = by_label[by_label.condition == condition]
    sums = here.groupby(["method", "label"])[["dropouts", "sse_dropouts", "cells"]].sum()
    mine, theirs = sums.loc[method], sums.loc[rival]
    diff = mine.sse_dropouts - theirs.sse_dropouts
    out = pd.DataFrame({"test cells (all splits)": mine.cells, "dropouts": mine.dropouts,
                        f"RMSE {method}": np.sqrt(mine.sse_dropouts / mine.dropouts),
                        f"RMSE {rival}": np.sqrt(theirs.sse_dropouts / theirs.dropouts),
                        "share of the SSE difference": diff / diff.sum()})
    return out.sort_values("share of the SSE difference", ascending=False)


def replicates(args: argparse.Namespace) -> None:
    """``--splits``: setting (b) on several splits, one worker process per split (``--jobs`` at a time, one torch
    thread each); writes ``downstream_splits.md`` / ``.json``."""
    from concurrent.futures import ThreadPoolExecutor

    t_all = time.perf_counter()
    seeds = [int(v) for v in args.splits.split(",") if v.strip()]
    specs = [{"task": "split", "seed": s, "threads": 1, "quick": bool(args.quick), "scvi_epochs": args.scvi_epochs}
             for s in seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda spec: common.run_worker("benchmarks.downstream", spec, args.timeout), specs))
    failed = [r for r in results if "error" in r]
    if failed:
        raise RuntimeError(f"split replicates failed: {[(r['seed'], r['error']) for r in failed]}")
    table = pd.DataFrame([row for r in results for row in r["rows"]])
    summary, targets = split_summary(table), split_targets(table)
    by_label = pd.DataFrame([row for r in results for row in r["by_label"]])
    depths = pd.DataFrame({f"{key.replace('_', ' ')} (mean)": pd.DataFrame([r[key] for r in results]).mean()
                           for key in ("label_median", "restored_depth")})
    facts = pd.DataFrame([{k: r[k] for k in ("seed", "countsdiff_train_s", "countsdiff_steps", "scvi_train_s",
                                            "scvi_epochs", "wall_s")} for r in results]).round(0)
    lines = ["# Downstream benchmark, setting (b) on several train / test splits", "",
             common.command_header("downstream", args.quick, time.perf_counter() - t_all) + f" {args.jobs} worker "
             "processes at a time, one torch thread each; timings are indicative.", "",
             "The main page (`downstream.md`) scores one split (seed 0). Here the same protocol runs on "
             f"{len(seeds)} splits (seeds {', '.join(map(str, seeds))}): each seed draws its own 10% of test cells "
             "(stratified by cell type), its own thinning and its own training of the default CountsDiff model "
             "(the plain `train()`) and of scVI (as on the main page). The methods are the main page's baselines "
             "and the default model's `impute` at the default guidance, 0 and 1; the metrics are those read entry "
             "by entry (definitions on the main page). Split seed 0 is the main page's split.", "",
             "## Mean (s.d.) over the splits", ""]
    for cond, sub in summary.groupby("condition", sort=False):
        frame = pd.DataFrame({METRICS[m][0]: [f"{a:.4g} ({b:.2g})" for a, b in zip(sub[f"{m}_mean"], sub[f"{m}_std"],
                                                                                     strict=True)]
                              for m in SPLIT_METRICS}, index=sub.method.to_numpy())
        frame.index.name = "method"
        lines += [f"### {cond}", "", common.frame_to_markdown(frame), ""]
    lines += ["## Per split: RMSE dropouts", ""]
    pivot = table.pivot_table(index=["condition", "method"], columns="seed", values="rmse_dropouts", sort=False)
    pivot.columns = [f"seed {c}" for c in pivot.columns]
    lines += [common.frame_to_markdown(pivot.reset_index(), index=False), "",
              "## Target of issue 30 on the splits", "",
              "At 10% and 25% depth, each CountsDiff row against no imputation and every baseline: the mean over the "
              "splits (met when better), the paired difference (CountsDiff minus the rival, same cells) and the "
              "splits won one by one.", "",
              common.frame_to_markdown(targets.assign(**{"met (mean)": targets["met (mean)"].map(
                  {True: "met", False: "not met"})}), index=False), "",
              "## Where the default and scVI differ at the dropouts, by cell type (25% depth)", "",
              "Dropout entries and RMSE pooled over the splits, per true cell type; the type's median training depth "
              "and the depth the default restores it to (that median, at most the median over all training cells), "
              "means over the splits' models; the column before them is the type's share of the difference in "
              "summed squared error (positive: the default's error is larger there).", "",
              common.frame_to_markdown(split_by_label(by_label, "depth 25%", COUNTSDIFF[0], "scVI normalised x library")
                                       .join(depths)), "",
              "## Runs", "", common.frame_to_markdown(facts, index=False), ""]
    payload = {"settings": {"seeds": seeds, "quick": bool(args.quick), "jobs": args.jobs}, **common.machine_info(),
               "runs": [{k: v for k, v in r.items() if k not in ("rows", "by_label")} for r in results],
               "table": table.to_dict(orient="records"), "targets": targets.to_dict(orient="records"),
               "by_label": by_label.to_dict(orient="records")}
    common.write_results(common.result_stem("downstream_splits", args.quick), lines, payload)


# --------------------------------------------------------------------------------------------------- targets


def _better(a: float, b: float, higher: bool) -> bool:
    return bool(a > b) if higher else bool(a < b)


def check_targets(table: pd.DataFrame) -> pd.DataFrame:
    """Issue 30's target for the default ``impute``: at 10% and 25% depth, per-cell correlation above and RMSE at the
    dropouts below no imputation and every baseline; per CountsDiff variant, met / not met with the rivals named."""
    rows = []
    conditions = [c for c in dict.fromkeys(table.condition) if c in ("depth 10%", "depth 25%")]
    for variant in COUNTSDIFF:
        for cond in conditions:
            here = table[table.condition == cond]
            if variant not in set(here.method):
                continue
            sub = here.set_index("method")
            # the rivals scored in this condition (a merged page may hold other methods in the other setting)
            baselines = [m for m in here.method.unique() if m not in (*COUNTSDIFF, LEAK, DEMO, "Truth (ceiling)")
                         and here[here.method == m].note.eq("").all()]
            fails = []
            for m in ("cell_r", "rmse_dropouts"):
                beaten_by = [b for b in baselines if not _better(sub.at[variant, m], sub.at[b, m], METRICS[m][1])]
                if beaten_by:
                    fails.append(f"{METRICS[m][0]}: not better than {', '.join(beaten_by)}")
            rows.append({"variant": variant, "target": f"{cond}: cell r and RMSE dropouts better than no imputation "
                         "and every baseline", "met": not fails, "detail": "; ".join(fails)})
    return pd.DataFrame(rows)


def summary_lines(table: pd.DataFrame) -> list[str]:
    """Who wins each metric in each condition (written from the numbers)."""
    lines = []
    methods = table[~table.method.isin(["Truth (ceiling)", LEAK, DEMO]) & (table.note == "")]
    for cond, sub in methods.groupby("condition", sort=False):
        wins = []
        for m, (title, higher) in METRICS.items():
            if m == "false_signal":
                continue
            vals = sub.set_index("method")[m]
            best = vals.idxmax() if higher else vals.idxmin()
            wins.append(f"{title}: {best} ({vals[best]:.3g})")
        nonzero = sub[sub.method != NO_IMPUTATION].set_index("method")["false_signal"]
        wins.append(f"least false signal after no imputation: {nonzero.idxmin()} ({nonzero.min():.3g})")
        lines.append(f"- **{cond}** - " + "; ".join(wins) + ".")
    return lines


# --------------------------------------------------------------------------------------------------- main


def config(args: argparse.Namespace) -> dict[str, Any]:
    """Sizes and steps of a run (``--quick``: 300 simulated cells, 1,000 CBMC cells, 200 training steps, 10 reverse
    steps)."""
    cfg = {"seed": args.seed, "dropout_rates": [0.2, 0.4, 0.6], "fractions": [0.1, 0.25, 0.5],
           "sim_cells": args.sim_cells, "sim_genes": 500, "sim_groups": 5, "sim_max_steps": args.sim_max_steps,
           "cbmc_cells": None, "max_steps": args.max_steps, "scvi_epochs": args.scvi_epochs, "n_steps": 50,
           "default_steps": None,
           "settings": [s.strip() for s in args.settings.split(",") if s.strip()]}
    if args.quick:
        cfg.update(sim_cells=300, sim_genes=200, sim_groups=3, sim_max_steps=200, cbmc_cells=1000, max_steps=200,
                   scvi_epochs=args.scvi_epochs or 10, n_steps=10, default_steps=200)
    return cfg


def run(cfg: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, float]]:
    """The benchmark's core: both settings, every method, every metric, and the targets."""
    timings: dict[str, float] = {}
    tables, info = [], {}
    if "sim" in cfg["settings"]:
        t, info["sim"] = setting_sim(cfg, timings)
        tables += t
    if "cbmc" in cfg["settings"]:
        t, info["cbmc"] = setting_cbmc(cfg, timings)
        tables += t
    table = pd.concat(tables, ignore_index=True)
    return table, check_targets(table), info, timings


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.worker:
        import json

        print("RESULT " + json.dumps(split_replicate(json.loads(args.worker)), default=float), flush=True)
        return
    if args.splits:
        replicates(args)
        return
    import scvi

    common.quiet()
    scvi.settings.verbosity = 30
    t_all = time.perf_counter()
    cfg = config(args)
    common.log(f"downstream benchmark ({'quick' if args.quick else 'full'}): {cfg}")
    table, targets, info, timings = run(cfg)
    timings["total_s"] = time.perf_counter() - t_all
    if args.merge:
        table, info, timings = _merged(table, info, timings, args.quick)
        targets = check_targets(table)
    _write(table, targets, info, timings, cfg, args.quick)


def _merged(table: pd.DataFrame, info: dict[str, Any], timings: dict[str, float],
            quick: bool) -> tuple[pd.DataFrame, dict[str, Any], dict[str, float]]:
    """The results of this run with those of the other setting, read from the existing page's JSON."""
    import json

    path = common.result_stem("downstream", quick).with_suffix(".json")
    if not path.exists():
        return table, info, timings
    old = json.loads(path.read_text())
    kept = pd.DataFrame(old["table"])
    kept = kept[~kept.setting.isin(table.setting.unique())]
    merged = pd.concat([kept, table], ignore_index=True).sort_values("setting", kind="stable", ignore_index=True)
    info = {**{k: v for k, v in old.get("info", {}).items() if k not in info}, **info}
    times = {**{k: v for k, v in old.get("timings", {}).items() if not any(k.startswith(p) for p in ("(a)", "(b)"))
                or k[:3] not in {t[:3] for t in timings}}, **timings}
    return merged, info, times


def _depth_range(c: dict[str, Any]) -> str:
    """The range of the restored depths over the labels (the run's one depth for runs that did not record them)."""
    per = list(c.get("depth_by_label", {}).values())
    return f"{min(per):.0f}-{max(per):.0f}" if per else f"{c['depth_D']:.0f}"


def _fmt_table(sub: pd.DataFrame) -> str:
    cols = list(METRICS)
    shown = sub.set_index("method")
    frame = pd.DataFrame(index=shown.index, columns=[METRICS[m][0] for m in cols], dtype=object)
    for name, row in shown.iterrows():
        for m in cols:
            frame.at[name, METRICS[m][0]] = row["note"] if row["note"] else f"{row[m]:.4g}"
    frame.index.name = "method"
    return common.frame_to_markdown(frame)


def _write(table: pd.DataFrame, targets: pd.DataFrame, info: dict[str, Any], timings: dict[str, float],
           cfg: dict[str, Any], quick: bool) -> None:
    import torch

    stem = common.result_stem("downstream", quick)
    mi = common.machine_info()
    cd_train = {k: round(v) for k, v in timings.items() if "countsdiff_train" in k}
    lines = [f"# Downstream benchmark: imputation and denoising against a known truth ({'quick' if quick else 'full'}"
             " mode)", "",
             common.machine_header("downstream", quick, timings["total_s"], mi) + f" OMP / torch threads: "
             f"{torch.get_num_threads()}; the cores may be shared with other processes, so timings are indicative.",
             "",
             "Protocol, methods and metric definitions: the docstring of `benchmarks/downstream.py`. In short: every "
             "method's output is scored against the truth (setting a: simulated counts before dropout; setting b: "
             "the original CBMC test cells before thinning). `cell r` = mean per-cell Pearson correlation of "
             "log-normalised profiles; `RMSE dropouts` = RMSE on the dropout entries (a: zeroed by dropout; b: 0 "
             "after thinning but > 0 in the truth) and `false signal` = mean value at true zeros, both after "
             "rescaling each output to the truth cell's library size; `RMSE observed zeros` / `RMSE all` (extra, "
             "not targets) = the same RMSE over every entry observed as 0 (a set chosen from the data, where the "
             "expected count is the best fill; `RMSE dropouts` picks its entries by the truth, which rewards filling "
             "high) and over every entry; `gene r` = Pearson correlation between the "
             "gene-gene correlation matrices (log-normalised) of the output and of the truth over the 200 genes most "
             "variable in the truth (gene pairs of the upper triangle); `gene abs dr` = mean absolute difference of "
             "those correlations (extra, not a target); ARI / NMI = Leiden on 30 PCs (best-ARI resolution of "
             "0.01-2.0, `metrics.leiden_nmi_ari`) against the labels; `markers` = overlap of the top-50 Wilcoxon "
             "`rank_genes_groups` genes per label (labels with >= 5 cells) with the truth's, mean over labels. The "
             "truth row is the ceiling of each metric.", "",
             "Configuration: CountsDiff (default MLP). The default flow trains with `train()`'s default budget (scaled "
             "to the cells, early stopping on 10% of them; budgets used: "
             f"{info.get('cbmc', {}).get('default_budget', '-')} on CBMC) and imputes with `impute`'s defaults "
             f"(10 trapezoid steps for the spread, 5 draws); the 0.1 flow trains {cfg['sim_max_steps']} steps per "
             f"simulated data set and {cfg['max_steps']} on CBMC (`train_size` 1) and fills its suspected dropouts "
             f"with {cfg['n_steps']} Euler steps, guidance 0.5. scVI: "
             f"{info.get('sim', {}).get('scvi_epochs_sim', '-')} epochs (a) / "
             f"{info.get('cbmc', {}).get('scvi_epochs_cbmc', '-')} epochs (b), 10 latent dimensions, NB, labels as "
             "a categorical covariate, 25 posterior samples. kNN methods: 15 neighbours, 30 PCs. CountsDiff "
             f"training times (s): {cd_train}.", "",
             "Labels: no method is given the labels it is scored against. (a) the methods' labels are Leiden "
             "clusters of the observed counts; (b) the training cells keep their cell types, the test cells get "
             "labels transferred from them by 15-NN (accuracy below). The row marked 'leak' gives CountsDiff the "
             "true test labels and is not a target. The row marked '(demo)' is not a method either: the default's "
             "output with each fill at an observed zero raised to the entry's expected count had its zero not been "
             "seen (divided by 1 - f, f = L / D), to show what `RMSE dropouts` rewards.", ""]
    if "sim" in info:
        s = info["sim"]
        lines += [f"## (a) Simulated dropout ({s['simulator']['n_cells']} cells x {s['simulator']['n_genes']} genes, "
                  f"{s['simulator']['n_groups']} groups)", "",
                  f"Splatter model (`datasets.simulate_counts`, lib_loc = log 1500, lib_scale = 0.5, de_fac_loc = "
                  f"0.3, Splatter's other defaults, dropout shape -1); {s['simulator']['zero_fraction_truth']:.1%} of "
                  "the true entries are 0. Realised dropout (share of the non-zero true entries zeroed) and the Leiden "
                  "clusters the methods use as labels (their ARI with the simulated groups):", "",
                  common.frame_to_markdown(pd.DataFrame(s["rates"]).rename(columns={
                      "target": "target rate", "dropout_mid": "dropout_mid", "realised": "realised rate",
                      "zero_fraction_observed": "zeros observed"}), index=False), ""]
        for cond, sub in table[table.setting == "a"].groupby("condition", sort=False):
            lines += [f"### {cond}", "", _fmt_table(sub), ""]
    if "cbmc" in info:
        c = info["cbmc"]
        lines += [f"## (b) CBMC test cells thinned ({c['n_train']} training cells at full depth, {c['n_test']} test "
                  "cells)", "",
                  f"Depth restoration restores each cell to the median depth of its label's training cells, at "
                  f"most the median over every training cell (D = {_depth_range(c)} counts; at guidance 0 every "
                  f"cell to the latter, {c['depth_D']:.0f}). Thinned test cells:", "",
                  common.frame_to_markdown(pd.DataFrame(c["fractions"]), index=False), ""]
        for cond, sub in table[table.setting == "b"].groupby("condition", sort=False):
            lines += [f"### {cond}", "", _fmt_table(sub), ""]
    lines += ["## Target of issue 30", "",
              "At 10% and 25% depth, the default `impute` has a higher per-cell correlation and a lower RMSE at the "
              "dropout entries than no imputation and every baseline (kNN fill, kNN-smoothing, MAGIC when installed, "
              "scVI). Checked per CountsDiff variant, on this one split; `downstream_splits.md` (`--splits "
              "0,1,2,3,4`) checks it over five splits, since one split cannot rank methods whose scores differ by less "
              "than the split-to-split spread.", "",
              common.frame_to_markdown(targets.assign(met=targets.met.map({True: "met", False: "not met"})),
                                       index=False), "",
              "## What wins, per condition (from the numbers above)", "", *summary_lines(table), "",
              "## Timings (s)", "",
              common.frame_to_markdown(pd.Series(timings).round(1).to_frame("seconds")), ""]
    payload = {"settings": cfg, **mi, "info": info, "timings": timings, "table": table.to_dict(orient="records"),
               "targets": targets.to_dict(orient="records")}
    common.write_results(stem, lines, payload)


if __name__ == "__main__":
    main()
