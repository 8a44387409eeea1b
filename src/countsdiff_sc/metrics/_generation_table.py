"""The generation metric table, :func:`evaluate_generation`, and the registry of its metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from .._genes import align_genes
from .._utils import log_normalize, to_dense
from ._bootstrap import bootstrap_weights
from ._checks import check_int, check_key, labels_array
from ._distributional import mmd_weighted, swd_weighted
from ._docs import fill_doc
from ._frechet import frechet_weighted
from ._generation import (
    GENE_STAT_METRICS,
    SPARSITY_METRICS,
    classifier_auc,
    constant_stat_reason,
    count_pair,
    gene_statistics_weighted,
    marker_gene_preservation,
    pca_features,
    sparsity_weighted,
    zero_fraction_per_cell,
)
from ._scfid import describe_embedder, embed_cells, fit_scfid_embedder
from ._tables import (
    MetricSpec,
    compute_metrics,
    registry,
    resolve_metrics,
    rows_from_values,
    store_table,
    warn_nan_rows,
)

if TYPE_CHECKING:
    from scvi.model import SCVI


@dataclass(eq=False)
class _GenerationInputs:
    """The real and generated cells of one :func:`evaluate_generation` call, and the intermediates its metrics
    share (computed on first use, once)."""

    real: Any  # as given (AnnData or matrix), for the metrics that read layers or labels
    generated: Any
    dense_r: np.ndarray  # dense counts
    dense_g: np.ndarray
    wr: np.ndarray  # bootstrap multiplicities, column 0 = the original sample
    wg: np.ndarray
    layer: str | None
    generated_layer: str | None
    labels_key: str | None
    generated_labels_key: str | None
    space: str
    n_pcs: int
    n_estimators: int
    n_top_markers: int
    seed: int
    embedder: SCVI | None
    scfid_kwargs: dict[str, Any] | None
    cache_dir: str | Path | None

    @property
    def nan_resamples(self) -> np.ndarray:
        """NaN for every bootstrap resample (metrics without a standard error)."""
        return np.full(self.wr.shape[1] - 1, np.nan)

    @cached_property
    def features(self) -> tuple[np.ndarray, np.ndarray, str]:
        """Real and generated cells in the feature space of the MMD and the SWD, and its description."""
        if self.space == "counts":
            fr, fg = self.dense_r.astype(np.float64), self.dense_g.astype(np.float64)
        else:
            fr, fg = log_normalize(self.dense_r), log_normalize(self.dense_g)
            if self.space == "pca":
                fr, fg = pca_features(fr, fg, self.n_pcs)
        space_note = f"{fr.shape[1]} PCs of log1p-CP10k (pooled fit)" if self.space == "pca" else self.space
        return fr, fg, space_note


# --------------------------------------------------------------------------------------------------------------------
# the metrics
# --------------------------------------------------------------------------------------------------------------------
def _mmd(d: _GenerationInputs) -> dict[str, tuple[np.ndarray, str]]:
    fr, fg, space_note = d.features
    values, sigma = mmd_weighted(fr, fg, d.wr, d.wg, seed=d.seed)
    return {"mmd": (values, f"unbiased MMD^2, RBF mixture at (0.25..4) x sigma={sigma:.4g}, {space_note}")}


def _swd(d: _GenerationInputs) -> dict[str, tuple[np.ndarray, str]]:
    fr, fg, space_note = d.features
    return {"swd": (swd_weighted(fr, fg, d.wr, d.wg, seed=d.seed), f"sliced W2, 1000 directions, {space_note}")}


def _scfid(d: _GenerationInputs) -> dict[str, tuple[np.ndarray, str]]:
    embedder = d.embedder
    if embedder is None:
        embedder = fit_scfid_embedder(
            d.real, layer=d.layer, seed=d.seed, cache_dir=d.cache_dir, **(d.scfid_kwargs or {})
        )
    z_r = embed_cells(embedder, d.real, layer=d.layer, name="real")
    z_g = embed_cells(embedder, d.generated, layer=d.generated_layer, name="generated")
    return {"scfid": (frechet_weighted(z_r, z_g, d.wr, d.wg), describe_embedder(embedder))}


def _classifier_auc(d: _GenerationInputs) -> dict[str, tuple[np.ndarray, str]]:
    auc = classifier_auc(d.dense_r, d.dense_g, n_pcs=d.n_pcs, n_estimators=d.n_estimators, seed=d.seed)
    note = f"random forest ({d.n_estimators} trees, depth 5) on PCs, held-out 25%"
    return {"classifier_auc": (np.concatenate([[auc], d.nan_resamples]), note)}


def _gene_statistics(d: _GenerationInputs) -> dict[str, tuple[np.ndarray, str]]:
    values = gene_statistics_weighted(d.dense_r, d.dense_g, d.wr, d.wg)
    return {
        name: (values[name], "zero fraction on counts" if "zero_frac" in name else "log1p-CP10k expression")
        for name in values
    }


def _sparsity(d: _GenerationInputs) -> dict[str, tuple[np.ndarray, str]]:
    values = sparsity_weighted(zero_fraction_per_cell(d.dense_r), zero_fraction_per_cell(d.dense_g), d.wr, d.wg)
    return {name: (values[name], "fraction of zero counts") for name in values}


def _marker_genes(d: _GenerationInputs) -> dict[str, tuple[np.ndarray, str]]:
    table = marker_gene_preservation(
        d.real,
        d.generated,
        labels_array(d.real, d.labels_key, d.dense_r.shape[0], "real"),
        labels_array(d.generated, d.generated_labels_key or d.labels_key, d.dense_g.shape[0], "generated"),
        layer=d.layer,
        generated_layer=d.generated_layer,
        n_top=d.n_top_markers,
    )
    note = f"top {d.n_top_markers} t-test markers, mean over {len(table)} labels"
    means = {col: np.concatenate([[table[col].mean()], d.nan_resamples]) for col in ("jaccard", "overlap")}
    return {f"marker_{col}": (values, note) for col, values in means.items()}


#: The metric groups of :func:`evaluate_generation`, in the order they are computed and reported.
GENERATION_REGISTRY: dict[str, MetricSpec] = registry(
    [
        MetricSpec("mmd", _mmd),
        MetricSpec("swd", _swd),
        MetricSpec("scfid", _scfid, needs=frozenset({"embedder"})),
        MetricSpec("classifier_auc", _classifier_auc, higher_is_better=None),  # best at 0.5
        MetricSpec("gene_statistics", _gene_statistics, rows=GENE_STAT_METRICS, higher_is_better=None),
        MetricSpec("sparsity", _sparsity, rows=SPARSITY_METRICS, higher_is_better=None),
        MetricSpec(
            "marker_genes",
            _marker_genes,
            rows=("marker_jaccard", "marker_overlap"),
            needs=frozenset({"labels"}),
            higher_is_better=True,
        ),
    ]
)


# --------------------------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------------------------
@fill_doc
def evaluate_generation(
    real: ad.AnnData | Any,
    generated: ad.AnnData | Any,
    labels_key: str | None = None,
    *,
    generated_labels_key: str | None = None,
    layer: str | None = None,
    generated_layer: str | None = None,
    metrics: Sequence[str] | None = None,
    space: Literal["pca", "log1p", "counts"] = "pca",
    n_pcs: int = 50,
    n_bootstrap: int = 10,
    scfid: bool = False,
    embedder: SCVI | None = None,
    n_estimators: int = 1000,
    n_top_markers: int = 20,
    scfid_kwargs: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    key_added: str = "generation",
) -> pd.DataFrame:
    """Compare generated cells with real cells (scDiffusion Sec. 2.4; Sparse Data Diffusion Sec. 4.2; CountsDiff).

    Metric groups (``metrics``):

    * ``mmd``, ``swd`` - :func:`mmd` / :func:`swd` between the two sets of cells in ``space``: "pca" (default,
      log-normalised cells projected on the top ``n_pcs`` PCs of the pooled real and generated cells, as
      scDiffusion computes its MMD on PCs),
      "log1p" (all log-normalised genes) or "counts".
    * ``scfid`` - :func:`scfid` (with ``embedder`` or an SCVI trained on ``real``); added by default when
      ``scfid=True`` or an embedder is given.
    * ``classifier_auc`` - :func:`classifier_auc` (random forest with ``n_estimators`` trees of depth 5 on PCs).
    * ``gene_statistics`` - the 9 values of :func:`gene_statistics_agreement`.
    * ``sparsity`` - the 4 values of :func:`sparsity_fidelity`.
    * ``marker_genes`` - mean Jaccard index and overlap of :func:`marker_gene_preservation` over labels; only with
      ``labels_key``.

    Standard errors come from ``n_bootstrap`` independent bootstrap resamples of the real and of the generated cells
    for mmd, swd, scfid, gene_statistics and sparsity; classifier_auc and marker_genes have no standard error (NaN)
    because each resample would refit a forest / rerun the tests.

    Genes are matched by name: two AnnData objects with the same genes in another order are compared gene by gene
    (``generated`` is reordered to ``real``'s genes); different gene sets are an error that names the missing
    genes. Matrices carry no names and must hold the same genes in the same order.

    A value that is undefined for the input is NaN, with a RuntimeWarning naming it and saying why (e.g. the
    correlation of per-gene means when every generated cell is all zero).

    The table is stored in ``generated.uns["countsdiff_metrics"][key_added]`` when ``generated`` is an AnnData (not
    a view; for a view a warning is emitted instead). ``real`` is never modified (it is often a view such as
    ``adata[adata.obs.cell_type == "B"]``).

    Parameters
    ----------
    %(real_generated)s
    labels_key
        obs column of the labels of ``real`` (enables ``marker_genes``).
    generated_labels_key
        obs column of the labels of ``generated``; None uses ``labels_key``.
    metrics
        Subset of the metric groups above; None = all that apply.
    space
        Feature space of mmd and swd.
    n_pcs
        Number of PCs for ``space="pca"`` and for the classifier.
    n_bootstrap
        Number of bootstrap resamples (0 = none).
    scfid, embedder, scfid_kwargs, cache_dir
        scFID settings (see :func:`scfid` / :func:`fit_scfid_embedder`).
    n_estimators
        Trees of the random forest.
    n_top_markers
        Markers per label.
    seed
        Seed of the bootstrap, PCA, directions, classifier and embedder.
    key_added
        Key under ``generated.uns["countsdiff_metrics"]``.

    Returns
    -------
    DataFrame with columns ``metric, value, std_error, n_bootstrap, n_real, n_generated, note``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> real, fake = rng.poisson(3, (100, 20)), rng.poisson(3, (80, 20))
    >>> df = evaluate_generation(real, fake, metrics=["sparsity"], n_bootstrap=2)
    >>> df["metric"].tolist()
    ['sparsity_real', 'sparsity_generated', 'sparsity_abs_diff', 'sparsity_w1']
    """
    available = {"labels"} if labels_key is not None else set()
    if scfid or embedder is not None:
        available.add("embedder")
    chosen = resolve_metrics(metrics, GENERATION_REGISTRY, available)
    for name in chosen:
        if "labels" in GENERATION_REGISTRY[name].needs and labels_key is None:
            raise ValueError(f"The {name} metric needs labels_key (an obs column of real with the cell labels).")
    if space not in ("pca", "log1p", "counts"):
        raise ValueError(f"space must be 'pca', 'log1p' or 'counts', got {space!r}.")
    n_pcs = check_int(n_pcs, "n_pcs", 1)
    n_bootstrap = check_int(n_bootstrap, "n_bootstrap", 0)
    n_estimators = check_int(n_estimators, "n_estimators", 1)
    n_top_markers = check_int(n_top_markers, "n_top_markers", 1)
    check_key(key_added)
    stored_in = generated
    generated = align_genes(real, generated, "real", "generated")  # genes by name: a view in real's gene order
    r, g = count_pair(real, generated, layer, generated_layer)
    dense_r, dense_g = to_dense(r), to_dense(g)
    rng = np.random.default_rng(seed)
    wr = bootstrap_weights(dense_r.shape[0], n_bootstrap, rng)
    wg = bootstrap_weights(dense_g.shape[0], n_bootstrap, rng)
    inputs = _GenerationInputs(
        real=real,
        generated=generated,
        dense_r=dense_r,
        dense_g=dense_g,
        wr=wr,
        wg=wg,
        layer=layer,
        generated_layer=generated_layer,
        labels_key=labels_key,
        generated_labels_key=generated_labels_key,
        space=space,
        n_pcs=n_pcs,
        n_estimators=n_estimators,
        n_top_markers=n_top_markers,
        seed=seed,
        embedder=embedder,
        scfid_kwargs=scfid_kwargs,
        cache_dir=cache_dir,
    )
    # rows in registry order, whatever the order of ``metrics``
    results = compute_metrics(GENERATION_REGISTRY, chosen, inputs)
    df = pd.DataFrame(
        rows_from_values(results, {"n_real": int(dense_r.shape[0]), "n_generated": int(dense_g.shape[0])})
    )
    warn_nan_rows(df, {name: constant_stat_reason(name) for name in GENE_STAT_METRICS if "_mae" not in name})
    if isinstance(stored_in, ad.AnnData):
        store_table(
            stored_in,
            key_added,
            df,
            {
                "labels_key": labels_key,
                "metrics": chosen,
                "space": space,
                "n_pcs": n_pcs,
                "n_bootstrap": n_bootstrap,
                "seed": seed,
            },
        )
    return df
