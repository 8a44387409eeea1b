from __future__ import annotations

import matplotlib.pyplot as plt

from countsdiff_sc.pl import _common


def test_show_none_leaves_user_axes_alone_on_interactive_backend(monkeypatch):
    shown = []
    monkeypatch.setattr(_common, "_interactive_backend", lambda: True)
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    fig, ax = plt.subplots()
    out = _common.finish(fig, [ax], show=None, save=None, return_fig=False, name="x", user_ax=True)
    assert out is ax and shown == []  # the caller's figure: not shown
    out = _common.finish(fig, [ax], show=None, save=None, return_fig=False, name="x", user_ax=False)
    assert out is None and shown == [1]  # a figure the function made: shown
    plt.close(fig)
