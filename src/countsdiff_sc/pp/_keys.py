"""Guard against overwriting ``obs`` columns or layers that countsdiff-sc did not write."""

from __future__ import annotations

from typing import Literal

import anndata as ad

from .._utils import UNS_KEY

_WRITTEN_FIELDS = ("key_added", "cluster_key_added", "sample_key_added")


def check_writable(adata: ad.AnnData, key: str, where: Literal["layers", "obs"]) -> None:
    """Raise a ValueError if ``adata.layers[key]`` / ``adata.obs[key]`` exists and was not written by countsdiff-sc.

    A key counts as written by countsdiff-sc when ``adata.uns["countsdiff"]`` holds a record named ``key`` or a
    record whose ``key_added`` / ``cluster_key_added`` / ``sample_key_added`` is ``key``; re-running a function
    with the same ``key_added`` therefore replaces its earlier output, but a user's own layer or column is never
    replaced.
    """
    exists = key in adata.layers if where == "layers" else key in adata.obs.columns
    if not exists:
        return
    records = adata.uns.get(UNS_KEY, {})
    owned = set(records)
    for rec in records.values():
        if isinstance(rec, dict):
            owned.update(str(rec[f]) for f in _WRITTEN_FIELDS if f in rec)
    if key not in owned:
        raise ValueError(
            f"adata.{where}[{key!r}] already exists and was not written by countsdiff-sc; refusing to overwrite it. "
            f"Pass another key_added, or delete it first (del adata.{where}[{key!r}])."
        )
