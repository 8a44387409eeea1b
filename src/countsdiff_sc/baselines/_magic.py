"""MAGIC imputation baseline (van Dijk et al., 2018) through the optional ``magic-impute`` package."""

from __future__ import annotations

import warnings
from typing import Literal

import anndata as ad
import numpy as np

from .._keys import MASK
from ._common import load_inputs, write_output

_INSTALL_HINT = (
    "impute_magic needs the optional package 'magic-impute' (import name 'magic'): pip install magic-impute. "
    "Note: its dependency scprep 1.2.3 declares pandas<2.1, which conflicts with anndata>=0.12; if pip wants to "
    "downgrade pandas, install it without dependencies instead: pip install --no-deps magic-impute scprep "
    "graphtools pygsp tasklogger Deprecated future decorator."
)


def impute_magic(
    adata: ad.AnnData,
    *,
    mask_layer: str = MASK,
    key_added: str = "magic_imputed",
    layer: str | None = None,
    valid_layer: str | None = None,
    knn: int = 5,
    t: int | Literal["auto"] = 3,
    decay: float = 1.0,
    n_pca: int | None = 100,
    seed: int = 0,
    n_jobs: int = 1,
    verbose: bool = False,
) -> np.ndarray:
    """Impute held-out entries with MAGIC graph diffusion (van Dijk et al., 2018).

    As in the CountsDiff paper (App. D.3.2), MAGIC is given *all* cells of ``adata`` (training and test) to build
    its neighbour graph; only held-out entries are replaced. The paper tunes ``knn`` on a validation set; do the
    same by calling this function on a validation mask with several ``knn`` values.

    Procedure: held-out entries are set to 0 (they are unknown); each cell's observed counts are normalised to the
    median observed library size; MAGIC (``genes="all_genes"``) smooths these profiles (a row-stochastic diffusion
    operator, so every smoothed profile keeps the normalised total); the smoothed profile ``y_i`` is mapped back to
    counts by matching the cell's observed total, ``x_ij = y_ij * l_obs_i / sum_{k observed} y_ik``, the same
    library correction as :func:`impute_scvi`. No square-root or log transform is applied, so the smoothing
    averages counts linearly. Cells whose observed entries sum to 0 get 0 (``UserWarning``).

    Parameters
    ----------
    adata
        AnnData with counts in ``X`` (or ``layers[layer]``) and a boolean held-out mask in ``layers[mask_layer]``.
    mask_layer
        Boolean layer, ``True`` = held out.
    key_added
        Output layer (float32).
    layer
        Layer holding the counts; ``None`` uses ``X``.
    valid_layer
        Optional validity layer: held-out entries that are not valid are left as observed.
    knn, t, decay, n_pca
        MAGIC parameters (neighbours, diffusion time or ``"auto"``, kernel decay, number of PCs used to build the
        graph; ``n_pca`` is dropped when the data have fewer dimensions).
    seed
        Random state of MAGIC (PCA, graph).
    n_jobs
        Number of threads of MAGIC.
    verbose
        Let MAGIC print its progress.

    Returns
    -------
    The imputed matrix (float32, dense), also stored in ``adata.layers[key_added]``; observed entries unchanged.
    Parameters are recorded in ``adata.uns["countsdiff"][key_added]``. Raises ``ImportError`` when
    ``magic-impute`` is not installed.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> cds.pp.mask_mcar(adata, rate=0.5, valid_layer=None)
    >>> out = cds.baselines.impute_magic(adata, knn=5)  # doctest: +SKIP
    """
    try:
        import magic
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from err

    inputs = load_inputs(adata, mask_layer, layer, valid_layer, key_added)
    x_obs = inputs.observed_input.astype(np.float64)
    lib_obs = x_obs.sum(axis=1)
    has_counts = lib_obs > 0
    if not has_counts.all():
        warnings.warn(
            f"{int((~has_counts).sum())} cells have no observed counts; their held-out entries are imputed with 0.",
            UserWarning,
            stacklevel=2,
        )
    if not has_counts.any():
        raise ValueError("No cell has observed counts; MAGIC needs observed data to build its graph.")
    target = float(np.median(lib_obs[has_counts]))
    normalised = x_obs * (target / np.where(has_counts, lib_obs, 1.0))[:, None]
    if n_pca is not None and n_pca >= min(adata.shape) - 1:
        n_pca = None
    operator = magic.MAGIC(
        knn=knn, t=t, decay=decay, n_pca=n_pca, random_state=seed, n_jobs=n_jobs, verbose=int(verbose)
    )
    smoothed = np.asarray(operator.fit_transform(normalised, genes="all_genes"), dtype=np.float64)
    smoothed = np.clip(smoothed, 0.0, None)
    denom = np.where(inputs.mask, 0.0, smoothed).sum(axis=1)
    scale = np.where(has_counts & (denom > 0), lib_obs / np.maximum(denom, 1e-300), 0.0)
    estimate = smoothed * scale[:, None]
    params = {
        "method": "magic",
        "mask_layer": mask_layer,
        "layer": layer,
        "valid_layer": valid_layer,
        "knn": int(knn),
        "t": t if isinstance(t, str) else int(t),
        "decay": float(decay),
        "n_pca": n_pca,
        "seed": int(seed),
    }
    return write_output(adata, inputs, estimate, key_added, params)
