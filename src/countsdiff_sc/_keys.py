"""Default AnnData keys written and read by countsdiff-sc, defined once (every writer also takes ``key_added=``).

The table of keys and their contents is in DESIGN / docs ("AnnData keys"); code refers to these names instead of
repeating the strings.
"""

from __future__ import annotations

__all__ = [
    "CLUSTERS",
    "CORRECTED",
    "DEMO_PREFIX",
    "DEPTH",
    "IMPUTED",
    "LIBRARY_CONDITION_UNS",
    "MASK",
    "METRICS",
    "PARAMS",
    "SAMPLES",
    "SPLIT",
    "VALID",
    "std_key",
]

#: ``layers``: bool, False where a zero is a suspected dropout (``pp.mark_dropouts``).
VALID = "countsdiff_valid"
#: ``layers``: bool, True where a value is held out / to be imputed (``pp.mask_mcar`` / ``pp.mask_mnar``).
MASK = "countsdiff_mask"
#: ``layers``: float32 point estimate of ``CountsDiffModel.impute``.
IMPUTED = "countsdiff_imputed"
#: ``obsm``: int32 draws of ``CountsDiffModel.impute`` (cells x draws x genes), when stored.
SAMPLES = "countsdiff_samples"
#: ``layers``: integer batch-corrected counts of ``CountsDiffModel.correct_batches``.
CORRECTED = "countsdiff_corrected"
#: ``obs`` of the cells ``CountsDiffModel.sample`` generates: the depth each was generated at.
DEPTH = "countsdiff_depth"
#: ``obs``: Leiden clusters of ``pp.mark_dropouts`` when no groups are given.
CLUSTERS = "countsdiff_leiden"
#: ``obs``: train / validation / test split of ``pp.split_cells``.
SPLIT = "countsdiff_split"
#: ``uns``: metric tables (dicts of column arrays).
METRICS = "countsdiff_metrics"
#: ``uns``: parameters of every operation that wrote into the object.
PARAMS = "countsdiff"
#: ``uns``: standardisation records of ``pp.library_condition``.
LIBRARY_CONDITION_UNS = "countsdiff_library_condition"
#: Prefix of the files the ``demo`` command writes.
DEMO_PREFIX = "countsdiff_demo"


def std_key(key_added: str) -> str:
    """The spread layer that goes with a point-estimate layer: ``key_added + "_std"``.

    Examples
    --------
    >>> std_key(IMPUTED)
    'countsdiff_imputed_std'
    """
    return f"{key_added}_std"
