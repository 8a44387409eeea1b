"""Imputation, generation and embedding metrics (CountsDiff Sec. 4.3 / App. D.3.3-D.3.4, scDiffusion Sec. 2.4,
Sparse Data Diffusion Sec. 4.2, DICE App. D).

Low-level functions work on arrays (dense or sparse); the ``evaluate_*`` functions produce tidy tables from AnnData
and store them in ``adata.uns["countsdiff_metrics"]``.
"""

from __future__ import annotations

from ._distributional import energy_distance, median_heuristic_bandwidth, mmd, swd
from ._embedding import clisi, leiden_nmi_ari, silhouette_cosine
from ._embedding_table import evaluate_embedding
from ._frechet import frechet_distance, frechet_distance_from_embeddings
from ._generation import classifier_auc, gene_statistics_agreement, marker_gene_preservation, sparsity_fidelity
from ._generation_table import evaluate_generation
from ._imputation_table import evaluate_imputation
from ._pointwise import bias, mae, pearson, pointwise_metrics, r2, rmse, spearman
from ._scfid import ScFIDResult, clear_scfid_cache, embed_cells, fit_scfid_embedder, scfid
from ._tables import metrics_table

__all__ = [
    "ScFIDResult",
    "bias",
    "classifier_auc",
    "clear_scfid_cache",
    "clisi",
    "embed_cells",
    "energy_distance",
    "evaluate_embedding",
    "evaluate_generation",
    "evaluate_imputation",
    "fit_scfid_embedder",
    "frechet_distance",
    "frechet_distance_from_embeddings",
    "gene_statistics_agreement",
    "leiden_nmi_ari",
    "mae",
    "marker_gene_preservation",
    "median_heuristic_bandwidth",
    "metrics_table",
    "mmd",
    "pearson",
    "pointwise_metrics",
    "r2",
    "rmse",
    "scfid",
    "silhouette_cosine",
    "sparsity_fidelity",
    "spearman",
    "swd",
]
