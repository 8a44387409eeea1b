"""Metrics comparing generated cells with real cells (scDiffusion Sec. 2.4; Sparse Data Diffusion Sec. 4.2).

* :func:`classifier_auc` - random forest real vs generated, held-out ROC AUC (0.5 = indistinguishable).
* :func:`gene_statistics_agreement` - agreement of per-gene mean, variance and zero fraction.
* :func:`sparsity_fidelity` - overall and per-cell sparsity of real vs generated cells.
* :func:`marker_gene_preservation` - overlap of the top marker genes found with real and with generated cells.

All functions accept AnnData (with an optional layer) or cells x genes matrices (dense or sparse). Two AnnData
objects are matched by gene name (another order is reordered, different gene sets are an error); matrices must hold
the same genes in the same order. "log-normalised" means ``log1p(1e4 * x / total counts of the cell)``; an all-zero
cell stays all zero.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata, wasserstein_distance

from .._genes import align_genes
from .._utils import log_normalize, to_dense
from ._checks import as_matrix, check_int, check_nonnegative, labels_array, warn_nan
from ._docs import fill_doc

GENE_STAT_METRICS = tuple(
    f"gene_{stat}_{kind}" for stat in ("mean", "var", "zero_frac") for kind in ("pearson", "spearman", "mae")
)
SPARSITY_METRICS = ("sparsity_real", "sparsity_generated", "sparsity_abs_diff", "sparsity_w1")


def count_pair(real: Any, generated: Any, layer: str | None, generated_layer: str | None) -> tuple[Any, Any]:
    """The count matrices of real and generated cells, genes matched by name, checked (>= 2 cells, >= 1 gene,
    finite non-negative values)."""
    generated = align_genes(real, generated, "real", "generated")
    r = as_matrix(real, "real", layer)
    g = as_matrix(generated, "generated", generated_layer)
    if r.shape[1] != g.shape[1]:
        raise ValueError(
            f"real has {r.shape[1]} genes but generated has {g.shape[1]}; both must have the same genes in the same "
            "order (subset with adata[:, genes])."
        )
    if r.shape[1] == 0:
        raise ValueError("real and generated have 0 genes; there is nothing to compare.")
    for name, mat in (("real", r), ("generated", g)):
        if mat.shape[0] < 2:
            raise ValueError(f"{name} has {mat.shape[0]} cells; at least 2 are needed.")
        check_nonnegative(mat, name)
    return r, g


def pca_features(real: np.ndarray, generated: np.ndarray, n_pcs: int) -> tuple[np.ndarray, np.ndarray]:
    """Project real and generated cells on the top ``n_pcs`` PCs of the pooled cells.

    The PCA is fitted on real and generated cells together so that neither set is favoured: a PCA fitted on the real
    cells alone overfits them (their spread along the trailing components is inflated relative to any other cells),
    which a classifier or a two-sample distance would detect even between two halves of the same data. The
    components are the top eigenvectors of the pooled covariance (exact; ``O(n d^2)``) for up to 4096 genes, and
    come from a randomized SVD (``sklearn.utils.extmath.randomized_svd``, fixed seed) beyond.
    """
    pooled = np.vstack([real, generated]).astype(np.float64, copy=False)
    mean = pooled.mean(axis=0)
    k = int(min(n_pcs, pooled.shape[1], pooled.shape[0] - 1))
    if pooled.shape[1] <= 4096:
        scatter = pooled.T @ pooled - pooled.shape[0] * np.outer(mean, mean)  # centred scatter, no centred copy
        _, vecs = np.linalg.eigh(scatter)
        components = vecs[:, ::-1][:, :k]
    else:
        from sklearn.utils.extmath import randomized_svd

        components = randomized_svd(pooled - mean, k, random_state=0)[2].T
    del pooled
    shift = mean @ components
    return real @ components - shift, generated @ components - shift


@fill_doc
def classifier_auc(
    real: Any,
    generated: Any,
    *,
    layer: str | None = None,
    generated_layer: str | None = None,
    features: Literal["pca", "log1p"] = "pca",
    n_pcs: int = 50,
    n_estimators: int = 1000,
    max_depth: int | None = 5,
    test_size: float = 0.25,
    seed: int = 0,
    n_jobs: int | None = None,
) -> float:
    """Random-forest real-vs-generated ROC AUC on held-out cells (scDiffusion, Sec. 2.4, following scGAN).

    Cells are log-normalised; with ``features="pca"`` they are projected on the top ``n_pcs`` principal components
    of the pooled real and generated cells (a PCA fitted on the real cells alone would overfit them, which the
    forest detects even between two halves of the same data). A random forest (``n_estimators`` trees of depth
    ``max_depth``; the paper uses 1000 and 5) is trained on a stratified ``1 - test_size`` split (paper:
    0.75 / 0.25) and scored by the ROC AUC of its probabilities on the held-out cells. 0.5 means the generated
    cells cannot be told apart from real ones, 1.0 that they are perfectly separable; values slightly below 0.5 are
    chance fluctuations.

    Parameters
    ----------
    %(real_generated)s
    features
        "pca" (default) or "log1p" (all log-normalised genes).
    n_pcs
        Number of principal components for ``features="pca"``.
    n_estimators, max_depth
        Random forest size.
    test_size
        Fraction of cells held out for the AUC.
    seed
        Seed of the split and of the forest.
    n_jobs
        Parallel jobs of the forest (None = 1).

    Returns
    -------
    The held-out ROC AUC.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> real, fake = rng.poisson(5, (200, 30)), rng.poisson(5, (200, 30))
    >>> 0.3 < classifier_auc(real, fake, n_estimators=50) < 0.7
    True
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    r, g = count_pair(real, generated, layer, generated_layer)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size!r}.")
    n_pcs = check_int(n_pcs, "n_pcs", 1)
    n_estimators = check_int(n_estimators, "n_estimators", 1)
    if max_depth is not None:
        max_depth = check_int(max_depth, "max_depth", 1)
    n_test = int(np.ceil(test_size * (r.shape[0] + g.shape[0])))
    if n_test < 2 or r.shape[0] + g.shape[0] - n_test < 2:
        raise ValueError(f"test_size={test_size} splits {r.shape[0] + g.shape[0]} cells into {n_test} held-out and "
                         f"{r.shape[0] + g.shape[0] - n_test} training cells; each side needs at least 2 (one real, "
                         "one generated). Use more cells or another test_size.")
    fr, fg = log_normalize(r), log_normalize(g)
    if features == "pca":
        fr, fg = pca_features(fr, fg, n_pcs)
    elif features != "log1p":
        raise ValueError(f"features must be 'pca' or 'log1p', got {features!r}.")
    x = np.vstack([fr, fg])
    y = np.concatenate([np.zeros(fr.shape[0]), np.ones(fg.shape[0])])
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    forest = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=n_jobs)
    forest.fit(x_tr, y_tr)
    return float(roc_auc_score(y_te, forest.predict_proba(x_te)[:, 1]))


_STAT_NAMES = {"mean": "mean", "var": "variance", "zero_frac": "zero fraction"}


def constant_stat_reason(row: str) -> str:
    """Why the gene-statistics row ``gene_<stat>_<pearson|spearman>`` is NaN."""
    stat = _STAT_NAMES[row.removeprefix("gene_").rsplit("_", 1)[0]]
    return (f"the per-gene {stat} is the same for every gene in the real or in the generated cells (e.g. all-zero "
            "generated cells), so its correlation across genes is undefined")


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Pearson and Spearman correlation (NaN if either vector is constant) and mean absolute difference."""
    mae = float(np.mean(np.abs(a - b)))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan"), mae
    pear = float(np.corrcoef(a, b)[0, 1])
    spear = float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])
    return pear, spear, mae


def gene_statistics_weighted(
    real: np.ndarray, generated: np.ndarray, wr: np.ndarray, wg: np.ndarray, normalize: bool = True
) -> dict[str, np.ndarray]:
    """:func:`gene_statistics_agreement` for every column of the multiplicity matrices (bootstrap helper).

    ``real`` / ``generated`` are dense raw counts.
    """
    zr, zg = (real == 0).astype(np.float64), (generated == 0).astype(np.float64)
    vr = log_normalize(real) if normalize else real.astype(np.float64)
    vg = log_normalize(generated) if normalize else generated.astype(np.float64)
    out = {name: np.empty(wr.shape[1]) for name in GENE_STAT_METRICS}
    nr, ng = wr.sum(axis=0)[:, None], wg.sum(axis=0)[:, None]
    mean_r, mean_g = (wr.T @ vr) / nr, (wg.T @ vg) / ng
    var_r = (wr.T @ (vr * vr)) / nr - mean_r**2
    var_g = (wg.T @ (vg * vg)) / ng - mean_g**2
    zero_r, zero_g = (wr.T @ zr) / nr, (wg.T @ zg) / ng
    for k in range(wr.shape[1]):
        for stat, a, b in (
            ("mean", mean_r[k], mean_g[k]),
            ("var", np.clip(var_r[k], 0, None), np.clip(var_g[k], 0, None)),
            ("zero_frac", zero_r[k], zero_g[k]),
        ):
            pear, spear, mae = _agreement(a, b)
            out[f"gene_{stat}_pearson"][k] = pear
            out[f"gene_{stat}_spearman"][k] = spear
            out[f"gene_{stat}_mae"][k] = mae
    return out


@fill_doc
def gene_statistics_agreement(
    real: Any,
    generated: Any,
    *,
    layer: str | None = None,
    generated_layer: str | None = None,
    normalize: bool = True,
) -> dict[str, float]:
    """Agreement of per-gene mean, variance and zero fraction between real and generated cells.

    For every gene, the mean and the variance (population variance) are computed on log-normalised expression when
    ``normalize`` (scDiffusion compares log-normalised means, Sec. 2.4) or on raw counts otherwise, and the fraction
    of cells with a zero count on raw counts. Each statistic is then compared across genes by Pearson and Spearman
    correlation and by the mean absolute difference. A correlation is NaN, with a RuntimeWarning, when the
    statistic is the same for every gene on one side (e.g. all-zero generated cells): it is undefined there.

    Parameters
    ----------
    %(real_generated)s
    normalize
        Compare means and variances of log-normalised expression (default) instead of raw counts.

    Returns
    -------
    Dictionary with keys ``gene_{mean,var,zero_frac}_{pearson,spearman,mae}``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).poisson(3, (100, 20))
    >>> gene_statistics_agreement(x, x)["gene_mean_mae"]
    0.0
    """
    r, g = count_pair(real, generated, layer, generated_layer)
    r, g = to_dense(r), to_dense(g)
    values = gene_statistics_weighted(r, g, np.ones((r.shape[0], 1)), np.ones((g.shape[0], 1)), normalize)
    out = {k: float(v[0]) for k, v in values.items()}
    for name, value in out.items():
        if np.isnan(value):
            warn_nan(name, constant_stat_reason(name))
    return out


def zero_fraction_per_cell(x: np.ndarray | sp.spmatrix) -> np.ndarray:
    if sp.issparse(x):
        nonzero = np.asarray((sp.csr_matrix(x) != 0).sum(axis=1)).ravel()
    else:
        nonzero = np.count_nonzero(np.asarray(x), axis=1)
    return 1.0 - nonzero / x.shape[1]


def sparsity_weighted(zr: np.ndarray, zg: np.ndarray, wr: np.ndarray, wg: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`sparsity_fidelity` from per-cell zero fractions for every column of the multiplicity matrices."""
    s_r = (wr.T @ zr) / wr.sum(axis=0)
    s_g = (wg.T @ zg) / wg.sum(axis=0)
    w1 = np.array([wasserstein_distance(zr, zg, u_weights=wr[:, k], v_weights=wg[:, k]) for k in range(wr.shape[1])])
    return {"sparsity_real": s_r, "sparsity_generated": s_g, "sparsity_abs_diff": np.abs(s_r - s_g), "sparsity_w1": w1}


@fill_doc
def sparsity_fidelity(
    real: Any, generated: Any, *, layer: str | None = None, generated_layer: str | None = None
) -> dict[str, float]:
    """How well generated cells reproduce the exact zeros of real cells (Sparse Data Diffusion, Sec. 4.2).

    The sparsity of a cell is its fraction of genes with an exact zero count. Reported: the overall sparsity of the
    real and of the generated cells, their absolute difference, and the 1-Wasserstein distance between the per-cell
    sparsity distributions (the histograms of the SDD paper's Fig. 3), in units of "fraction of genes".

    Parameters
    ----------
    %(real_generated)s

    Returns
    -------
    Dictionary with keys ``sparsity_real``, ``sparsity_generated``, ``sparsity_abs_diff`` and ``sparsity_w1``.

    Examples
    --------
    >>> import numpy as np
    >>> sparsity_fidelity(np.array([[0, 1], [0, 0]]), np.array([[1, 1], [0, 1]]))["sparsity_abs_diff"]
    0.5
    """
    r, g = count_pair(real, generated, layer, generated_layer)
    zr, zg = zero_fraction_per_cell(r), zero_fraction_per_cell(g)
    values = sparsity_weighted(zr, zg, np.ones((zr.size, 1)), np.ones((zg.size, 1)))
    return {k: float(v[0]) for k, v in values.items()}


def _top_markers(target: np.ndarray, reference: np.ndarray, var_names: pd.Index, n_top: int, method: str) -> set[str]:
    """Top ``n_top`` genes of scanpy's rank_genes_groups (target vs reference, log-normalised input)."""
    import anndata as ad
    import scanpy as sc

    x = np.vstack([target, reference])
    groups = np.array(["target"] * target.shape[0] + ["reference"] * reference.shape[0])
    tmp = ad.AnnData(X=x, obs=pd.DataFrame({"group": pd.Categorical(groups)}, index=[str(i) for i in range(len(x))]))
    tmp.var_names = var_names
    sc.tl.rank_genes_groups(tmp, "group", groups=["target"], reference="reference", method=method, n_genes=n_top)
    return {str(name) for name in tmp.uns["rank_genes_groups"]["names"]["target"]}


@fill_doc
def marker_gene_preservation(
    real: Any,
    generated: Any,
    labels: Any,
    generated_labels: Any = None,
    *,
    layer: str | None = None,
    generated_layer: str | None = None,
    n_top: int = 20,
    method: Literal["t-test", "t-test_overestim_var", "wilcoxon", "logreg"] = "t-test",
    min_cells: int = 3,
) -> pd.DataFrame:
    """Overlap of the top marker genes of each label found with real and with generated cells.

    For every label L present (with at least ``min_cells`` cells) in both real and generated data, the markers of L
    are the ``n_top`` highest-scoring genes of :func:`scanpy.tl.rank_genes_groups` (``method``, default Welch's
    t-test, on log-normalised expression) comparing the L cells against all *real* cells of the other labels. This is
    done once with the real L cells and once with the generated L cells (against the same real background, so it also
    works when only one label was generated), and the two marker sets are compared by their Jaccard index
    ``|A & B| / |A | B|`` and their overlap ``|A & B| / n_top``.

    Parameters
    ----------
    %(real_generated)s
    labels
        Labels of the real cells: an obs column name (AnnData input) or an array.
    generated_labels
        Labels of the generated cells (obs column name or array); None uses ``labels`` if it is a column name.
    n_top
        Number of markers per label.
    method
        Test used by :func:`scanpy.tl.rank_genes_groups`.
    min_cells
        Minimum number of cells of a label on each side (and of the real background).

    Returns
    -------
    DataFrame with one row per evaluated label: ``label``, ``n_real``, ``n_generated``, ``jaccard``, ``overlap``.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> df = marker_gene_preservation(adata, adata, "bulk_labels")  # doctest: +SKIP
    >>> bool((df["jaccard"] == 1).all())  # doctest: +SKIP
    True
    """
    r, g = count_pair(real, generated, layer, generated_layer)
    min_cells = check_int(min_cells, "min_cells", 1)
    if method not in ("t-test", "t-test_overestim_var", "wilcoxon", "logreg"):
        raise ValueError(f"method must be 't-test', 't-test_overestim_var', 'wilcoxon' or 'logreg', got {method!r}.")
    lab_r = labels_array(real, labels, r.shape[0], "real")
    if generated_labels is None:
        if not isinstance(labels, str):
            raise ValueError("Pass generated_labels (an obs column name or an array) for the generated cells.")
        generated_labels = labels
    lab_g = labels_array(generated, generated_labels, g.shape[0], "generated")
    var_names = (
        pd.Index(real.var_names.astype(str))
        if hasattr(real, "var_names")
        else pd.Index([f"gene_{j}" for j in range(r.shape[1])])
    )
    n_top = check_int(n_top, "n_top (markers per label, at most the number of genes)", 1, r.shape[1])
    xr, xg = log_normalize(r), log_normalize(g)
    rows = []
    for label in sorted(set(lab_r) & set(lab_g)):
        in_r, in_g = lab_r == label, lab_g == label
        background = xr[~in_r]
        if min(in_r.sum(), in_g.sum(), background.shape[0]) < min_cells:
            continue
        a = _top_markers(xr[in_r], background, var_names, n_top, method)
        b = _top_markers(xg[in_g], background, var_names, n_top, method)
        rows.append(
            {
                "label": label,
                "n_real": int(in_r.sum()),
                "n_generated": int(in_g.sum()),
                "jaccard": len(a & b) / len(a | b),
                "overlap": len(a & b) / n_top,
            }
        )
    if not rows:
        raise ValueError(
            f"No label has >= {min_cells} cells in both the real and the generated data (and a real background of "
            "other labels); marker genes cannot be compared. Check that the label columns use the same names."
        )
    return pd.DataFrame(rows)
