"""Shared parameter documentation, written once and filled into docstrings (the role scvi-tools gives docrep).

Each part of the package keeps its own dictionary of numpydoc entries (``metrics``: the true / imputed / mask block,
``pl``: ax / show / save / return_fig, ``model``: the sampler settings) and fills it with :func:`fill_doc`. A
docstring line that holds only ``%(name)s`` is replaced by the entry ``params[name]``, indented like the marker.
Placeholders ``%(key)s`` inside an entry are filled from the keyword arguments (e.g. the name of the function whose
figure ``save=True`` writes). Every other ``%`` sign is left alone, so docstrings need no escaping.

Examples
--------
>>> PARAMS = {"seed": "seed\\n    Random seed of %(what)s."}
>>> def f(seed=0):
...     '''Do it.
...
...     Parameters
...     ----------
...     %(seed)s
...     '''
>>> "Random seed of the draws." in fill_doc(f, PARAMS, what="the draws").__doc__
True
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping
from typing import TypeVar

__all__ = ["doc_filler", "fill_doc"]

F = TypeVar("F", bound=Callable)

_MARKER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s[ \t]*$", re.MULTILINE)


def fill_doc(obj: F, params: Mapping[str, str], **values: str) -> F:
    """Replace every line ``%(name)s`` of ``obj.__doc__`` by ``params[name]`` at that line's indentation.

    Parameters
    ----------
    obj
        Function or class whose docstring is filled in place.
    params
        The numpydoc entries by name (each a complete entry: the parameter line and its indented description).
    **values
        Text for ``%(key)s`` placeholders inside the inserted entries.

    Returns
    -------
    ``obj`` itself, with its docstring filled.

    Raises
    ------
    KeyError
        A marker names no entry of ``params`` (raised at import time, so a typo cannot reach a user), or an inserted
        entry keeps a placeholder that ``values`` does not fill.
    """
    doc = obj.__doc__
    if doc is None:
        return obj

    def entry(match: re.Match) -> str:
        name = match["name"]
        if name not in params:
            raise KeyError(f"The docstring of {getattr(obj, '__qualname__', obj)!r} asks for %({name})s, which is not "
                           f"one of the shared entries {sorted(params)}.")
        text = params[name]
        for key, value in values.items():
            text = text.replace(f"%({key})s", value)
        left = re.findall(r"%\((\w+)\)s", text)
        if left:
            raise KeyError(f"The shared entry {name!r} needs values for {sorted(set(left))} "
                           f"(filling the docstring of {getattr(obj, '__qualname__', obj)!r}).")
        return textwrap.indent(text, match["indent"])

    obj.__doc__ = _MARKER.sub(entry, doc)
    return obj


def doc_filler(params: Mapping[str, str], **values: str) -> Callable[[F], F]:
    """A decorator that fills docstrings from ``params`` (:func:`fill_doc` with the dictionary bound).

    ``values`` given here are used for every decorated object; ``%(__name__)s`` is always filled with the decorated
    object's own name.

    Parameters
    ----------
    params
        The numpydoc entries by name.
    **values
        Text for placeholders inside the entries, shared by every decorated object.

    Returns
    -------
    The decorator.

    Examples
    --------
    >>> fill = doc_filler({"save": "save\\n    File to write (True: ``%(__name__)s.png``)."})
    >>> @fill
    ... def plot():
    ...     '''Parameters
    ...     ----------
    ...     %(save)s
    ...     '''
    >>> "``plot.png``" in plot.__doc__
    True
    """

    def decorate(obj: F) -> F:
        return fill_doc(obj, params, __name__=getattr(obj, "__name__", ""), **values)

    return decorate
