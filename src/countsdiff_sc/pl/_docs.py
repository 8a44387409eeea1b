"""Parameter documentation shared by the plotting functions, filled into their docstrings by
:func:`countsdiff_sc._docstrings.fill_doc` (``%(__name__)s`` is the decorated function's name)."""

from __future__ import annotations

from .._docstrings import doc_filler

PARAMS: dict[str, str] = {
    "ax": """\
ax
    Axes to draw into; None creates a figure.""",
    "show_save": """\
show
    Call ``plt.show()``; None shows only with an interactive backend and when ``ax`` is None.
save
    File to write the figure to (True: ``%(__name__)s.png``; a name without suffix gets ``.png``).
return_fig
    Return the Figure instead of the Axes.""",
}

#: Decorator filling ``%(name)s`` lines of a plot docstring from :data:`PARAMS`.
fill_doc = doc_filler(PARAMS)
