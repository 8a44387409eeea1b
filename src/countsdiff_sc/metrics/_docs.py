"""Parameter documentation shared by the metric functions, filled into their docstrings by
:func:`countsdiff_sc._docstrings.fill_doc`."""

from __future__ import annotations

from .._docstrings import doc_filler

PARAMS: dict[str, str] = {
    "true_imputed_mask": """\
true
    Ground-truth matrix ``(n_cells, n_genes)``: dense, sparse or an AnnData (its ``X``). Any finite real values.
imputed
    Imputed matrix of the same shape (an AnnData with the same gene names in another order is reordered by name).
mask
    Boolean matrix of the same shape, True at held-out entries; ``None`` evaluates every entry. Non-finite values
    of ``true`` or ``imputed`` at the evaluated entries are an error; elsewhere they are ignored.""",
    "two_samples": """\
x, y
    Samples ``(n_x, d)`` and ``(n_y, d)``: dense, sparse or AnnData (its ``X``; two AnnData objects are matched by
    gene name, another order is reordered). Every value must be finite.""",
    "real_generated": """\
real, generated
    AnnData (``layer`` / ``generated_layer`` or ``X``) or count matrices (finite, non-negative). Two AnnData objects
    are matched by gene name (another order is reordered; different gene sets are an error); matrices must have the
    same genes in the same order.
layer, generated_layer
    Layers holding the counts (AnnData only).""",
    "embedding_labels": """\
x
    Embedding ``(n_cells, n_dims)`` (finite values).
labels
    Labels ``(n_cells,)``, at least two distinct ones.""",
}

#: Decorator filling ``%(name)s`` lines of a metric docstring from :data:`PARAMS`.
fill_doc = doc_filler(PARAMS)
