"""scVI imputation baseline: train scvi-tools' SCVI on the reference cells, impute the held-out entries of others."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._keys import MASK
from .._utils import check_writable
from ..pp import ObsSelection
from ._common import load_inputs, load_reference, query_labels, reference_labels, write_output

if TYPE_CHECKING:
    from scvi.model import SCVI

_LABEL_COLUMN = "_countsdiff_label"


class SCVIImputation(NamedTuple):
    """Result of :func:`impute_scvi`."""

    imputed: np.ndarray
    """Point estimate (float32, dense), as written to ``layers[key_added]``."""
    sample: np.ndarray
    """One posterior-predictive draw (float32 holding integers), as written to ``layers[sample_key_added]``."""
    model: SCVI
    """The trained (or passed-in) SCVI model, for reuse (e.g. another mask, latent embeddings)."""


def impute_scvi(
    adata: ad.AnnData,
    reference: ad.AnnData | ObsSelection | None,
    *,
    labels_key: str | None = None,
    layer: str | None = None,
    mask_layer: str = MASK,
    valid_layer: str | None = None,
    key_added: str = "scvi_imputed",
    sample_key_added: str = "scvi_sample",
    n_latent: int = 10,
    n_hidden: int = 128,
    n_layers: int = 1,
    gene_likelihood: Literal["nb", "zinb"] = "nb",
    max_epochs: int = 100,
    batch_size: int = 128,
    n_posterior_samples: int = 25,
    seed: int = 0,
    model: SCVI | None = None,
    progress_bar: bool = True,
    train_kwargs: dict[str, Any] | None = None,
) -> SCVIImputation:
    """Impute held-out entries with scVI (Lopez et al., 2018) trained on the reference cells.

    A VAE baseline for the imputation benchmark of the CountsDiff paper (Sec. 4.3; the paper's VAE baseline is
    HI-VAE, App. D.3.2, and it uses scVI for scFID, App. D.3.4). Procedure:

    1. **Training.** ``scvi.model.SCVI`` is trained on the reference (training) cells only, on a private AnnData.
       scVI has no notion of missing entries, so held-out entries *of reference cells* (if any) are set to 0 for
       training (a ``UserWarning`` gives their number); mask only non-reference cells (``pp.mask_mcar(...,
       subset=...)``) to avoid this. With ``labels_key`` the label is a categorical covariate of the decoder
       (``categorical_covariate_keys``), the analogue of the conditional-mean baseline and of CountsDiff's label
       conditioning.
    2. **Query input.** For every cell with entries to impute, held-out entries are *unknown*; they are set to 0 in
       the query's input copy, so the encoder sees them as zeros and the observed library size ``l_obs`` is the sum
       of the observed entries. Consequence: the latent state is pulled towards lower expression of the held-out
       genes, so the estimates are biased downwards, increasingly so with the mask rate (an honest, documented
       limitation shared with any method that cannot marginalise missing inputs).
    3. **Point estimate.** For posterior draws ``z_s ~ q(z | x_obs)`` (``n_posterior_samples`` of them), the
       decoder gives expected counts ``m_sj = l_obs * (1 - pi_sj) * rho_sj`` (``pi`` = zero-inflation, 0 for NB).
       Because ``l_obs`` counts only the observed genes, the full library is estimated by matching the observed
       total, ``l_full = l_obs / sum_{j observed} (1 - pi_sj) rho_sj``, giving the conditional expectation
       ``E[x_j] = m_sj * l_obs / sum_{k observed} m_sk``; the point estimate is its average over ``s``. (Plain
       ``get_normalized_expression(library_size=l_obs)`` would be too low by the observed fraction of the profile.)
    4. **Draw.** One posterior-predictive draw for the first ``z_s``: ``NB(mean, theta)`` (times the zero-inflation
       Bernoulli for ZINB) with the same library correction, drawn with numpy from ``seed``. ``SCVI``'s own
       ``posterior_predictive_sample`` cannot take a corrected library, which is why the draw is made here from
       ``get_likelihood_parameters``.

    Cells whose observed entries sum to 0 carry no library information: their held-out entries are imputed with 0
    (``UserWarning`` with their number).

    Parameters
    ----------
    adata
        AnnData with counts in ``X`` (or ``layers[layer]``) and a boolean held-out mask in ``layers[mask_layer]``.
        Only ``layers[key_added]``, ``layers[sample_key_added]`` and ``uns["countsdiff"]`` are written.
    reference
        Training cells: an AnnData with the same genes, or a selection of cells of ``adata`` (boolean array /
        Series, boolean obs column, ``(column, value)``, e.g. ``("countsdiff_split", "train")``), or ``None`` for
        all cells of ``adata``. See :func:`impute_mean`.
    labels_key
        Optional obs column used as a categorical covariate; query labels must occur in the reference.
    layer
        Layer holding the counts; ``None`` uses ``X``.
    mask_layer
        Boolean layer, ``True`` = held out.
    valid_layer
        Optional validity layer: held-out entries that are not valid are left as observed in the outputs.
    key_added
        Layer for the point estimate (float32).
    sample_key_added
        Layer for the posterior-predictive draw (float32 holding integers); observed entries copied.
    n_latent, n_hidden, n_layers, gene_likelihood
        ``SCVI`` architecture (``gene_likelihood`` ``"nb"`` or ``"zinb"``).
    max_epochs, batch_size
        Training length and minibatch size.
    n_posterior_samples
        Number of latent draws averaged for the point estimate.
    seed
        Seed of scvi-tools (weights, minibatches, latent draws) and of the predictive draw. Sets
        ``scvi.settings.seed``, i.e. the global torch / numpy / python seeds, as scvi-tools does.
    model
        An SCVI model returned by an earlier call (same genes and ``labels_key``): training is skipped.
    progress_bar
        Show the training progress bar.
    train_kwargs
        Extra keyword arguments for ``SCVI.train`` (e.g. ``{"accelerator": "cpu", "early_stopping": True}``).

    Returns
    -------
    :class:`SCVIImputation` ``(imputed, sample, model)``. Parameters are recorded in
    ``adata.uns["countsdiff"][key_added]`` and ``[sample_key_added]``.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> cds.pp.split_cells(adata, seed=0)
    >>> cds.pp.mask_mcar(adata, rate=0.5, valid_layer=None, subset=("countsdiff_split", "test"))
    >>> res = cds.baselines.impute_scvi(adata, ("countsdiff_split", "train"), max_epochs=5)  # doctest: +SKIP
    >>> res.imputed.shape  # doctest: +SKIP
    (700, 765)
    """
    import scvi
    from scvi.model import SCVI

    if gene_likelihood not in ("nb", "zinb"):
        raise ValueError(f"gene_likelihood must be 'nb' or 'zinb'; got {gene_likelihood!r}.")
    for name, value in {"n_posterior_samples": n_posterior_samples, "max_epochs": max_epochs}.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    check_writable(adata, sample_key_added, "layers")
    if sample_key_added in (key_added, layer, mask_layer, valid_layer):
        raise ValueError(
            f"sample_key_added={sample_key_added!r} must differ from key_added, layer, mask_layer and valid_layer."
        )
    if model is not None and not isinstance(model, SCVI):
        raise ValueError(f"model must be an scvi.model.SCVI returned by impute_scvi; got {type(model).__name__}.")

    inputs = load_inputs(adata, mask_layer, layer, valid_layer, key_added)
    rows = np.flatnonzero(inputs.fill.any(axis=1))
    q_input = inputs.observed_input[rows]
    lib_obs = q_input.sum(axis=1, dtype=np.float64)
    zero_lib = lib_obs == 0
    if zero_lib.any():
        warnings.warn(
            f"{int(zero_lib.sum())} cells to impute have no observed counts (all observed entries are 0 or all "
            "entries are held out); scVI cannot estimate their library, so their held-out entries are set to 0.",
            UserWarning,
            stacklevel=2,
        )
    run_rows, run_input, run_lib = rows[~zero_lib], q_input[~zero_lib], lib_obs[~zero_lib]
    q_lab = None
    if labels_key is not None:
        q_lab = query_labels(adata, labels_key).astype(object).to_numpy()[run_rows]
        if pd.isna(q_lab).any():
            raise ValueError(f"{int(pd.isna(q_lab).sum())} cells to impute have a missing {labels_key!r} label.")
        q_lab = q_lab.astype(str)

    scvi.settings.seed = seed
    trained = model is None
    if model is None:
        ref = load_reference(adata, inputs, reference, layer, mask_layer, valid_layer)
        n_masked_ref = int(ref.masked.sum())
        if n_masked_ref:
            warnings.warn(
                f"{n_masked_ref} held-out entries belong to reference cells; scVI cannot skip them, so they are set "
                "to 0 for training. Mask only non-training cells (pp.mask_mcar(..., subset=...)) to avoid this.",
                UserWarning,
                stacklevel=2,
            )
        train_ad = _private_anndata(np.where(ref.masked, 0.0, ref.counts), adata.var_names)
        if labels_key is not None:
            r_lab = reference_labels(ref, labels_key, isinstance(reference, ad.AnnData)).astype(object).to_numpy()
            if pd.isna(r_lab).any():
                raise ValueError(f"{int(pd.isna(r_lab).sum())} reference cells have a missing {labels_key!r} label.")
            train_ad.obs[_LABEL_COLUMN] = pd.Categorical(r_lab.astype(str))
            _check_labels_known(q_lab, set(r_lab.astype(str)))
        SCVI.setup_anndata(train_ad, categorical_covariate_keys=None if labels_key is None else [_LABEL_COLUMN])
        model = SCVI(train_ad, n_hidden=n_hidden, n_latent=n_latent, n_layers=n_layers, gene_likelihood=gene_likelihood)
        kwargs = {"max_epochs": int(max_epochs), "batch_size": batch_size, "enable_progress_bar": progress_bar}
        model.train(**{**kwargs, **(train_kwargs or {})})
        reference_desc = ref.description
    else:
        reference_desc = "pre-trained model"
    known = _check_model(model, adata.n_vars, labels_key)
    if q_lab is not None:
        _check_labels_known(q_lab, set(known))

    scvi.settings.seed = seed
    estimate = np.zeros(inputs.counts.shape, dtype=np.float64)
    draw = np.zeros(inputs.counts.shape, dtype=np.float64)
    if run_rows.size:
        est_run, draw_run = _posterior_estimates(
            model, run_input, run_lib, ~inputs.mask[run_rows], q_lab, n_posterior_samples, batch_size, seed
        )
        estimate[run_rows], draw[run_rows] = est_run, draw_run
    params = {
        "method": "scvi",
        "reference": reference_desc,
        "trained": trained,
        "labels_key": labels_key,
        "mask_layer": mask_layer,
        "layer": layer,
        "valid_layer": valid_layer,
        "n_latent": int(model.module.n_latent),
        "gene_likelihood": str(model.module.gene_likelihood),
        "max_epochs": int(max_epochs) if trained else None,
        "n_posterior_samples": int(n_posterior_samples),
        "seed": int(seed),
        "n_cells_no_observed_counts": int(zero_lib.sum()),
    }
    imputed = write_output(adata, inputs, estimate, key_added, {**params, "output": "posterior mean"})
    sample = write_output(adata, inputs, draw, sample_key_added, {**params, "output": "posterior predictive draw"})
    return SCVIImputation(imputed=imputed, sample=sample, model=model)


def _check_labels_known(query: np.ndarray, known: set[str]) -> None:
    unseen = sorted(set(query) - known)
    if unseen:
        raise ValueError(
            f"Labels {unseen[:10]} of cells to impute do not occur in the reference cells, so scVI has no covariate "
            "for them. Use labels_key=None or include such cells in the reference."
        )


def _private_anndata(counts: np.ndarray, var_names: pd.Index) -> ad.AnnData:
    """A fresh AnnData that scvi-tools may register and annotate without touching the user's objects."""
    obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(counts.shape[0])]))
    return ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=pd.DataFrame(index=var_names.copy()))


def _check_model(model: SCVI, n_vars: int, labels_key: str | None) -> list[str]:
    """Check a (possibly user-passed) model against the data; return its known label categories."""
    from scvi import REGISTRY_KEYS

    n_model_vars = int(model.summary_stats["n_vars"])
    if n_model_vars != n_vars:
        raise ValueError(f"The SCVI model was trained on {n_model_vars} genes but adata has {n_vars}.")
    state = model.adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY)
    mappings = dict(state.get("mappings", {})) if state else {}
    if labels_key is None:
        if mappings:
            raise ValueError("The SCVI model uses a label covariate; pass the labels_key it was trained with.")
        return []
    if _LABEL_COLUMN not in mappings:
        raise ValueError(
            "The SCVI model was trained without labels; pass labels_key=None, or model=None to train a new one."
        )
    return [str(v) for v in mappings[_LABEL_COLUMN]]


def _posterior_estimates(
    model: SCVI,
    query_input: np.ndarray,
    lib_obs: np.ndarray,
    observed: np.ndarray,
    labels: np.ndarray | None,
    n_samples: int,
    batch_size: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Library-corrected posterior mean and one predictive draw for query cells (see impute_scvi, steps 3-4)."""
    query = _private_anndata(query_input, model.adata.var_names)
    if labels is not None:
        query.obs[_LABEL_COLUMN] = pd.Categorical(labels)
    rng = np.random.default_rng(seed)
    n_cells, n_genes = query_input.shape
    chunk = max(1, 2**23 // (n_samples * n_genes))
    estimate = np.empty((n_cells, n_genes))
    draw = np.empty((n_cells, n_genes))
    for start in range(0, n_cells, chunk):
        idx = np.arange(start, min(n_cells, start + chunk))
        par = model.get_likelihood_parameters(
            adata=query, indices=idx, n_samples=n_samples, give_mean=False, batch_size=batch_size
        )
        mean = np.asarray(par["mean"], dtype=np.float64).reshape(n_samples, idx.size, n_genes)
        zi = par.get("dropout")
        zi = np.zeros_like(mean) if zi is None else np.asarray(zi, dtype=np.float64).reshape(mean.shape)
        theta = np.asarray(par["dispersions"], dtype=np.float64)
        theta = np.broadcast_to(theta.reshape(-1, idx.size, n_genes)[0], (idx.size, n_genes))
        expected = mean * (1.0 - zi)
        denom = (expected * observed[idx][None]).sum(axis=-1, keepdims=True)
        factor = np.where(denom > 0, lib_obs[idx][None, :, None] / np.maximum(denom, 1e-300), 0.0)
        estimate[idx] = (expected * factor).mean(axis=0)
        nb_mean = mean[0] * factor[0]
        gamma = rng.gamma(shape=theta, scale=nb_mean / theta)
        counts = rng.poisson(gamma).astype(np.float64)
        counts[rng.random(counts.shape) < zi[0]] = 0.0
        draw[idx] = counts
    return estimate, draw
