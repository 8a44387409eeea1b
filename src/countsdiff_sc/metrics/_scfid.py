"""scFID: Frechet distance between scVI embeddings of two sets of cells (CountsDiff paper, App. D.3.3-D.3.4).

The paper embeds cells with the CELLxGENE census scVI model (Homo sapiens, 2024-02-12) and computes the Frechet
distance between the posterior-mean latents of the real profiles and of the profiles whose held-out entries were
replaced by the imputations (Rizvi et al., 2025; Heusel et al., 2017). That model cannot be downloaded here, so
:func:`scfid` accepts any trained :class:`scvi.model.SCVI` and otherwise trains a small SCVI on the real data
(:func:`fit_scfid_embedder`), cached per dataset. Values obtained with different embedders are not comparable: every
result says which embedder produced it (:class:`ScFIDResult`).

The in-memory cache of default embedders is bounded: it keeps the :data:`SCFID_CACHE_SIZE` most recently used models
(each an SCVI of a few MB that also holds its training AnnData) and forgets the least recently used one beyond.
Models saved in a ``cache_dir`` stay on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._utils import check_counts
from ._checks import as_matrix, check_int, check_nonnegative
from ._frechet import frechet_distance_from_embeddings

if TYPE_CHECKING:
    from scvi.model import SCVI

#: Most default embedders kept in memory at once (least recently used ones are forgotten first).
SCFID_CACHE_SIZE = 4

#: In-memory LRU cache of default embedders, keyed by a hash of the reference counts, gene names and training
#: settings; most recently used last.
_EMBEDDER_CACHE: OrderedDict[str, SCVI] = OrderedDict()


def _cache_get(key: str) -> SCVI | None:
    model = _EMBEDDER_CACHE.get(key)
    if model is not None:
        _EMBEDDER_CACHE.move_to_end(key)
    return model


def _cache_put(key: str, model: SCVI) -> None:
    _EMBEDDER_CACHE[key] = model
    _EMBEDDER_CACHE.move_to_end(key)
    while len(_EMBEDDER_CACHE) > SCFID_CACHE_SIZE:
        _EMBEDDER_CACHE.popitem(last=False)


@dataclass(frozen=True)
class ScFIDResult:
    """An scFID value together with the embedder that produced it.

    Attributes
    ----------
    value
        The Frechet distance between the two sets of embeddings.
    embedder
        Human-readable description of the embedding model (user-supplied or trained on the reference data, with its
        settings and the dataset hash of the cache).
    n_latent
        Dimension of the embeddings.
    n_real, n_other
        Number of cells embedded on each side.
    """

    value: float
    embedder: str
    n_latent: int
    n_real: int
    n_other: int

    def __float__(self) -> float:
        return float(self.value)


def clear_scfid_cache() -> None:
    """Forget every default scFID embedder cached in memory (models saved in a ``cache_dir`` are kept).

    Examples
    --------
    >>> clear_scfid_cache()
    """
    _EMBEDDER_CACHE.clear()


def _counts_and_names(data: Any, layer: str | None, name: str) -> tuple[sp.csr_matrix, pd.Index, pd.DataFrame | None]:
    mat = as_matrix(data, name, layer)
    csr = sp.csr_matrix(mat, dtype=np.float32)
    if isinstance(data, ad.AnnData):
        return csr, pd.Index(data.var_names.astype(str)), data.obs
    return csr, pd.Index([f"gene_{j}" for j in range(csr.shape[1])]), None


def _dataset_key(counts: sp.csr_matrix, var_names: pd.Index, settings: dict[str, Any]) -> str:
    canon = counts.copy()
    canon.sum_duplicates()
    canon.eliminate_zeros()
    canon.sort_indices()
    h = hashlib.sha256()
    h.update(np.asarray(canon.shape, dtype=np.int64).tobytes())
    for arr in (canon.indptr, canon.indices, canon.data):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update("\x00".join(var_names).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


@contextmanager
def _preserved_global_rng() -> Iterator[None]:
    """Restore the global python / numpy / torch random states on exit (scvi-tools draws from and reseeds them)."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()  # noqa: NPY002
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002 - restore the global state scvi-tools used
        torch.random.set_rng_state(torch_state)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Set scvi-tools' seed for training; the previous seed and the global random states are restored afterwards."""
    import scvi

    with _preserved_global_rng():
        old_seed = scvi.settings.seed
        scvi.settings.seed = seed
        try:
            yield
        finally:
            scvi.settings.seed = old_seed


def _default_max_epochs(n_cells: int) -> int:
    return int(min(100, max(10, round(2e5 / max(n_cells, 1)))))


def fit_scfid_embedder(
    real: Any,
    *,
    layer: str | None = None,
    n_latent: int = 20,
    n_hidden: int = 128,
    n_layers: int = 1,
    max_epochs: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    accelerator: str = "auto",
    cache_dir: str | Path | None = None,
    progress_bar: bool = False,
) -> SCVI:
    """Train (or fetch from the cache) the default scFID embedder: a small :class:`scvi.model.SCVI` on the real data.

    The model is trained on all cells of ``real`` (raw counts, no batch key, gene likelihood ZINB, scvi-tools
    defaults otherwise) with ``train_size=1.0`` and scvi-tools' seed set to ``seed`` (global random states are
    restored afterwards), so the same data and settings give the same model on the same device. Models are cached
    in memory per dataset (a SHA-256 hash of the counts, gene names and these settings; the
    :data:`SCFID_CACHE_SIZE` most recently used ones) and, with ``cache_dir``, also saved there and reloaded by
    later sessions.

    Parameters
    ----------
    real
        Reference counts: AnnData (``layer`` or ``X``) or a cells x genes matrix of raw integer counts.
    layer
        Layer of ``real`` holding the counts (AnnData only).
    n_latent, n_hidden, n_layers
        SCVI architecture.
    max_epochs
        Training epochs; None uses ``min(100, max(10, round(2e5 / n_cells)))`` (about 2e5 cell passes).
    batch_size
        Minibatch size.
    seed
        Seed of the training.
    accelerator
        Lightning accelerator ("auto", "cpu", "gpu").
    cache_dir
        Optional directory where trained models are saved (one sub-directory per dataset hash) and looked up.
    progress_bar
        Show the training progress bar.

    Returns
    -------
    The trained SCVI model; its ``.scfid_description_`` attribute describes it.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> model = fit_scfid_embedder(adata, max_epochs=2)  # doctest: +SKIP
    """
    from scvi.model import SCVI

    counts, var_names, _ = _counts_and_names(real, layer, "real")
    check_counts(counts, "real" if layer is None else f"real.layers[{layer!r}]")
    if counts.shape[0] < 2 or counts.shape[1] < 1:
        raise ValueError(f"The scFID embedder needs at least 2 reference cells and 1 gene, got {counts.shape}.")
    if not var_names.is_unique:
        raise ValueError("real has duplicated gene names; genes are matched by name, so make them unique first "
                         "(adata.var_names_make_unique()).")
    n_latent = check_int(n_latent, "n_latent", 1)
    n_hidden = check_int(n_hidden, "n_hidden", 1)
    n_layers = check_int(n_layers, "n_layers", 1)
    batch_size = check_int(batch_size, "batch_size", 2)
    epochs = _default_max_epochs(counts.shape[0]) if max_epochs is None else check_int(max_epochs, "max_epochs", 1)
    settings = {
        "n_latent": n_latent,
        "n_hidden": n_hidden,
        "n_layers": n_layers,
        "max_epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
    }
    key = _dataset_key(counts, var_names, settings)
    cached = _cache_get(key)
    if cached is not None:
        return cached
    train_adata = ad.AnnData(X=counts, var=pd.DataFrame(index=var_names))
    save_dir = Path(cache_dir) / f"scfid_scvi_{key[:16]}" if cache_dir is not None else None
    with _seeded(seed):
        SCVI.setup_anndata(train_adata)
        if save_dir is not None and (save_dir / "model.pt").exists():
            model = SCVI.load(str(save_dir), adata=train_adata, accelerator=accelerator)
        else:
            model = SCVI(train_adata, n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers)
            model.train(
                max_epochs=epochs,
                batch_size=batch_size,
                train_size=1.0,
                accelerator=accelerator,
                enable_progress_bar=progress_bar,
                early_stopping=False,
            )
            if save_dir is not None:
                model.save(str(save_dir), overwrite=True, save_anndata=False)
    settings_text = ", ".join(f"{k}={v}" for k, v in settings.items())
    model.scfid_description_ = f"SCVI({settings_text}) trained on the reference data [dataset {key[:12]}]"
    _cache_put(key, model)
    return model


def describe_embedder(model: SCVI) -> str:
    """Description of an embedder: the one set by :func:`fit_scfid_embedder`, or a summary of a user model."""
    description = getattr(model, "scfid_description_", None)
    if description is not None:
        return str(description)
    n_vars = len(_model_var_names(model))
    return f"user-supplied {type(model).__name__}(n_latent={model.module.n_latent}, n_vars={n_vars})"


def _model_var_names(model: SCVI) -> pd.Index:
    names = model.get_var_names()
    if isinstance(names, dict):  # MuData models
        raise ValueError("scFID needs an AnnData-based scvi-tools model such as scvi.model.SCVI, not a MuData model.")
    return pd.Index(np.asarray(names).astype(str))


def embed_cells(
    model: SCVI,
    data: Any,
    *,
    layer: str | None = None,
    name: str = "data",
    batch_size: int | None = None,
) -> np.ndarray:
    """Posterior-mean latent representation (``get_latent_representation``) of cells under an SCVI embedder.

    The counts may be non-integer (e.g. averaged imputations): the encoder only sees ``log1p(x)``. An AnnData is
    matched to the model's genes by name (another order is reordered; missing or extra genes are an error); a matrix
    must hold the model's genes in its order. For a pre-trained model on other genes map the data first
    (``SCVI.prepare_query_anndata`` / ``SCVI.load_query_data``).

    Parameters
    ----------
    model
        Trained SCVI model.
    data
        AnnData (``layer`` or ``X``) or cells x genes matrix.
    layer
        Layer of ``data`` (AnnData only).
    name
        Name used in error messages.
    batch_size
        Minibatch size of the forward pass.

    Returns
    -------
    Array ``(n_cells, n_latent)``.
    """
    model_vars = _model_var_names(model)
    if isinstance(data, ad.AnnData):
        data_vars = pd.Index(data.var_names.astype(str))
        if data_vars.is_unique and not data_vars.equals(model_vars) and set(data_vars) == set(model_vars):
            data = data[:, np.asarray(model_vars)]  # the same genes in another order: matched by name
    counts, var_names, obs = _counts_and_names(data, layer, name)
    check_nonnegative(counts, name)
    if counts.shape[1] != len(model_vars):
        raise ValueError(
            f"{name} has {counts.shape[1]} genes but the scFID embedder was trained on {len(model_vars)}. Map the data "
            "to the embedder's genes first (for a pre-trained model: scvi.model.SCVI.prepare_query_anndata and "
            "SCVI.load_query_data), or let scfid train its default embedder on the reference data."
        )
    if isinstance(data, ad.AnnData) and not var_names.equals(model_vars):
        n_diff = int((var_names != model_vars).sum())
        missing = model_vars.difference(var_names, sort=False)
        raise ValueError(
            f"{n_diff} of the {len(model_vars)} gene names of {name} differ from the embedder's ({len(missing)} of the "
            f"embedder's genes are missing, e.g. {list(missing[:5])}). Subset the data to the embedder's var_names, "
            "or map it with scvi.model.SCVI.prepare_query_anndata / SCVI.load_query_data."
        )
    setup_args = model.registry.get("setup_args", {})
    tmp = ad.AnnData(
        X=counts,
        obs=obs.copy() if obs is not None else pd.DataFrame(index=[f"cell_{i}" for i in range(counts.shape[0])]),
        var=pd.DataFrame(index=model_vars),
    )
    if setup_args.get("layer") is not None:
        tmp.layers[setup_args["layer"]] = counts
    for key in ("batch_key", "labels_key"):
        column = setup_args.get(key)
        if column is not None and column not in tmp.obs.columns:
            raise KeyError(
                f"The scFID embedder was set up with {key}={column!r}, but {name} has no obs column {column!r}. Pass "
                "AnnData objects that carry it (or prepare them with SCVI.load_query_data)."
            )
    import scvi

    old_verbosity = scvi.settings.verbosity
    scvi.settings.verbosity = logging.WARNING  # silence "attempting to transfer AnnData setup" on every call
    try:
        with warnings.catch_warnings(), _preserved_global_rng():
            warnings.filterwarnings("ignore", message=".*unnormalized count data.*")
            return np.asarray(model.get_latent_representation(tmp, give_mean=True, batch_size=batch_size))
    finally:
        scvi.settings.verbosity = old_verbosity


def scfid(
    real: Any,
    other: Any,
    embedder: SCVI | None = None,
    *,
    layer: str | None = None,
    other_layer: str | None = None,
    n_latent: int = 20,
    max_epochs: int | None = None,
    seed: int = 0,
    accelerator: str = "auto",
    cache_dir: str | Path | None = None,
) -> ScFIDResult:
    """scFID between real cells and other (imputed or generated) cells (CountsDiff paper, App. D.3.4).

    Both sets are embedded with the posterior mean of an scVI encoder (``get_latent_representation``) and the
    Frechet distance between Gaussians fitted to the two sets of embeddings is returned
    (:func:`frechet_distance_from_embeddings`). For imputation, ``other`` is the real matrix with its held-out
    entries replaced by the imputations (see :func:`evaluate_imputation`).

    Parameters
    ----------
    real
        Real counts: AnnData (``layer`` or ``X``) or a cells x genes matrix.
    other
        Cells to compare (same genes; may be non-integer): AnnData (``other_layer`` or ``X``) or a matrix.
    embedder
        A trained :class:`scvi.model.SCVI`, e.g. a CELLxGENE census model the user loaded. Its genes must match the
        data's: map the data first with ``SCVI.prepare_query_anndata`` / ``SCVI.load_query_data``. None trains
        (once per dataset, then cached) a small SCVI on ``real`` with :func:`fit_scfid_embedder`.
    layer, other_layer
        Layers holding the counts of ``real`` and ``other`` (AnnData only).
    n_latent, max_epochs, seed, accelerator, cache_dir
        Settings of the default embedder (see :func:`fit_scfid_embedder`); ignored when ``embedder`` is given.

    Returns
    -------
    :class:`ScFIDResult` (``float(result)`` is the value, ``result.embedder`` names the embedder).

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> res = scfid(adata, adata, max_epochs=2)  # doctest: +SKIP
    >>> res.value, res.embedder  # doctest: +SKIP
    """
    if embedder is None:
        embedder = fit_scfid_embedder(
            real,
            layer=layer,
            n_latent=n_latent,
            max_epochs=max_epochs,
            seed=seed,
            accelerator=accelerator,
            cache_dir=cache_dir,
        )
    z_real = embed_cells(embedder, real, layer=layer, name="real")
    z_other = embed_cells(embedder, other, layer=other_layer, name="other")
    return ScFIDResult(
        value=frechet_distance_from_embeddings(z_real, z_other),
        embedder=describe_embedder(embedder),
        n_latent=int(z_real.shape[1]),
        n_real=int(z_real.shape[0]),
        n_other=int(z_other.shape[0]),
    )
