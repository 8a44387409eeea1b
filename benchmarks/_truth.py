"""Scoring against a known truth, shared by ``downstream.py`` and ``restored_depth.py``: binomially thinned cells,
labels transferred from a reference, and :class:`Truth` (per-cell correlation, RMSE at the dropouts, gene-gene
structure, false signal, clustering and markers)."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from benchmarks._common import row_pearson


def dense(x: Any) -> np.ndarray:
    from countsdiff_sc._utils import to_dense

    return np.asarray(to_dense(x), dtype=np.float64)


def lognorm(x: np.ndarray) -> np.ndarray:
    from countsdiff_sc.pp import log_normalize

    return log_normalize(np.clip(x, 0.0, None), 1e4)


def gene_corr(logx: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(logx, rowvar=False)
    return np.nan_to_num(c, nan=0.0)


def top_markers(logx: np.ndarray, labels: np.ndarray, groups: list[str], n: int = 50) -> dict[str, set[int]]:
    import scanpy as sc

    a = ad.AnnData(X=logx.astype(np.float32), obs=pd.DataFrame({"label": pd.Categorical(labels)}))
    a.var_names = [f"g{j}" for j in range(logx.shape[1])]
    sc.tl.rank_genes_groups(a, "label", groups=groups, reference="rest", method="wilcoxon", n_genes=n)
    names = a.uns["rank_genes_groups"]["names"]
    return {g: {int(s[1:]) for s in names[g]} for g in groups}


class Truth:
    """What every method is scored against: the true counts, the dropout entries and the labels (computed once)."""

    def __init__(self, truth: np.ndarray, dropout: np.ndarray, labels: np.ndarray, *, n_top_genes: int = 200,
                 n_pcs: int = 30, seed: int = 0) -> None:
        self.counts = np.asarray(truth, dtype=np.float64)
        self.dropout = np.asarray(dropout, dtype=bool)
        self.labels = np.asarray(labels).astype(str)
        self.lib = self.counts.sum(axis=1)
        self.zero = self.counts == 0
        self.log = lognorm(self.counts)
        self.genes = np.sort(np.argsort(-self.log.var(axis=0))[: min(n_top_genes, self.counts.shape[1])])
        self.corr = gene_corr(self.log[:, self.genes])
        self.pairs = np.triu_indices(len(self.genes), 1)
        sizes = pd.Series(self.labels).value_counts()
        self.groups = sorted(sizes.index[sizes >= 5])
        self.markers = top_markers(self.log, self.labels, self.groups)
        self.n_pcs, self.seed = n_pcs, seed

    def _rescaled(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A method's output clipped at 0, and that output rescaled to the truth's library of each cell."""
        x = np.clip(np.asarray(x, dtype=np.float64), 0.0, None)
        tot = x.sum(axis=1, keepdims=True)
        return x, np.divide(x * self.lib[:, None], tot, out=np.zeros_like(x), where=tot > 0)

    def entry_scores(self, x: np.ndarray) -> dict[str, float]:
        """The metrics read entry by entry (no clustering, markers or gene correlations): per-cell r, the RMSEs and
        the false signal of one method's output (counts scale), after rescaling it to the truth's libraries."""
        x, scaled = self._rescaled(x)
        return {
            "cell_r": float(row_pearson(lognorm(x), self.log).mean()),
            "rmse_dropouts": float(np.sqrt(np.mean((scaled - self.counts)[self.dropout] ** 2))),
            "false_signal": float(scaled[self.zero].mean()),
            # every entry the method sees as 0 (a dropout or a true zero): selected on the data, not on the truth
            "rmse_zeros": float(np.sqrt(np.mean((scaled - self.counts)[self.dropout | self.zero] ** 2))),
            "rmse_all": float(np.sqrt(np.mean((scaled - self.counts) ** 2))),
        }

    def dropout_errors_by_label(self, x: np.ndarray) -> list[dict[str, Any]]:
        """Per label of the truth: the dropout entries, their summed squared error and that over every entry, with the
        rescaling of :meth:`entry_scores` (the sums add up to the totals behind its RMSEs)."""
        sq = (self._rescaled(x)[1] - self.counts) ** 2
        rows = []
        for label in np.unique(self.labels):
            cells = self.labels == label
            rows.append({"label": str(label), "cells": int(cells.sum()), "dropouts": int(self.dropout[cells].sum()),
                         "sse_dropouts": float(sq[cells][self.dropout[cells]].sum()),
                         "sse_all": float(sq[cells].sum())})
        return rows

    def score(self, x: np.ndarray) -> dict[str, float]:
        """All metrics of one method's output (counts scale): :meth:`entry_scores` and the analyses (gene-gene
        correlations, Leiden ARI / NMI, marker overlap)."""
        from sklearn.decomposition import PCA

        from countsdiff_sc import metrics

        x = np.clip(np.asarray(x, dtype=np.float64), 0.0, None)
        logx = lognorm(x)
        corr = gene_corr(logx[:, self.genes])
        ref, got = self.corr[self.pairs], corr[self.pairs]
        n_comp = min(self.n_pcs, x.shape[0] - 1, x.shape[1])
        emb = PCA(n_components=n_comp, svd_solver="randomized", random_state=self.seed).fit_transform(logx)
        clus = metrics.leiden_nmi_ari(emb, self.labels, rule="max_ari", seed=self.seed)
        top = top_markers(logx, self.labels, self.groups)
        return {
            **self.entry_scores(x),
            "gene_r": float(np.corrcoef(ref, got)[0, 1]) if got.std() > 0 else 0.0,
            "gene_abs_dr": float(np.abs(ref - got).mean()),
            "ari": clus["ari"],
            "nmi": clus["nmi"],
            "markers": float(np.mean([len(top[g] & self.markers[g]) / 50 for g in self.groups])),
        }


def thin_counts(x: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Binomial thinning ``Binomial(x, fraction)`` of every entry (seeded)."""
    rng = np.random.default_rng(seed)
    return rng.binomial(np.asarray(x, dtype=np.int64), fraction).astype(np.float32)


def transfer_labels(ref_x: np.ndarray, ref_labels: Any, query_x: np.ndarray, *, n_neighbors: int = 15,
                    n_pcs: int = 30, seed: int = 0) -> np.ndarray:
    """Labels of query cells by majority vote of their nearest reference cells.

    PCA (``n_pcs``) fitted on the reference's log-normalised profiles (``log1p`` at the reference's median library),
    query cells projected, ``n_neighbors`` Euclidean neighbours, most frequent label (ties: the nearest).
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    from countsdiff_sc.pp import log_normalize

    lab = np.asarray(ref_labels).astype(str)
    target = float(np.median(ref_x.sum(axis=1)))
    pca = PCA(n_components=min(n_pcs, ref_x.shape[0] - 1, ref_x.shape[1]), svd_solver="randomized",
              random_state=seed).fit(log_normalize(ref_x, target))
    emb_ref = pca.transform(log_normalize(ref_x, target))
    emb_q = pca.transform(log_normalize(query_x, target))
    idx = NearestNeighbors(n_neighbors=n_neighbors).fit(emb_ref).kneighbors(emb_q)[1]
    out = []
    for row in lab[idx]:
        values, counts = np.unique(row, return_counts=True)
        best = set(values[counts == counts.max()])
        out.append(next(v for v in row if v in best))  # ties: the label of the nearest tied neighbour
    return np.asarray(out)
