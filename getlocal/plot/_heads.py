"""The heads of a layer: one map (:func:`attention_map`) or all of them side by side (:func:`layer_heads`)."""
from __future__ import annotations

import math
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np

from .. import _check
from .._errors import ArgumentError
from ..patterns.display import nanmean, prepare_maps
from ..tokens import TokenLayout
from ._scales import colorbar, norm_for


_MARKED = {"cls": "#ff7f0e", "register": "#9467bd"}  # drawn as lines around their rows and columns


def _layout(layout, k: int):
    if layout is None:
        return None
    if not isinstance(layout, TokenLayout):
        raise _check.ArgumentTypeError(f"layout must be a TokenLayout (a map's .keys) or None; got {_check.show(layout)}")
    if len(layout) != k:
        raise ArgumentError(f"layout has {len(layout)} tokens but the map has {k} keys; pass the map's own .keys")
    return layout


def _token_ticks(layout, start: int, stop: int):
    """``(positions, labels, boundaries)`` for the tokens ``start..stop`` of ``layout``, short runs merged."""
    spans = []
    for s in layout.segments:
        lo, hi = max(s.start, start), min(s.stop, stop)
        if lo < hi:
            name = {"register": "reg"}.get(s.kind, s.kind) + (f" {s.camera}" if s.camera else "")
            spans.append([lo - start, hi - start, name])
    merged = []
    small = 0.06 * (stop - start)
    for span in spans:  # runs too short to hold their own label share one (cls + 4 registers: "cls+reg")
        if merged and span[1] - span[0] < small and merged[-1][1] - merged[-1][0] < small:
            merged[-1] = [merged[-1][0], span[1], merged[-1][2] + "+" + span[2]]
        else:
            merged.append(span)
    positions = [(lo + hi) / 2 - 0.5 for lo, hi, _ in merged]
    return positions, [name for _, _, name in merged], [hi - 0.5 for _, hi, _ in spans[:-1]], \
        [hi - lo for lo, hi, _ in merged]


_TICK_FONT = 7


def _fitting(ax, axis: str, positions, sizes, labels, n: int):
    """The labels that fit on the drawn axis without touching another; the others are left blank.

    The longest runs of tokens are labelled first. A label is ~0.62 em per
    character; the axis length comes from the Axes' place in the figure, less
    a fifth for a colour bar that may take room later.
    """
    box = ax.get_position()
    fig_w, fig_h = ax.figure.get_size_inches()
    length = 72 * 0.8 * (box.width * fig_w if axis == "x" else box.height * fig_h)  # points
    per_token = length / max(n, 1)
    out, taken = [""] * len(labels), []
    for i in sorted(range(len(labels)), key=lambda i: -sizes[i]):
        # "image wrist" may shrink to "wrist" (the camera) where the whole name does not fit
        tries = [labels[i]] + ([labels[i].split(" ", 1)[1]] if labels[i].startswith("image ") else [])
        for label in tries:
            need = 0.62 * _TICK_FONT * len(label) + 4
            lo, hi = (positions[i] + 0.5) * per_token - need / 2, (positions[i] + 0.5) * per_token + need / 2
            if all(hi <= a or lo >= b for a, b in taken):
                out[i] = label
                taken.append((lo, hi))
                break
    return out


def _token_axes(ax, layout, q: int, k: int, *, xlabels=True, ylabels=True):
    """Label the key axis (and the query axis: the last ``q`` of the keys) by token kind, and mark cls/registers."""
    for axis, (start, stop), show in (("x", (0, k), xlabels), ("y", (k - q, k), ylabels)):
        positions, labels, bounds, sizes = _token_ticks(layout, start, stop)
        labels = _fitting(ax, axis, positions, sizes, labels, stop - start)
        line = ax.axvline if axis == "x" else ax.axhline
        for b in bounds:
            line(b, color="white", linewidth=0.6, alpha=0.8)
        getattr(ax, f"set_{axis}ticks")(positions)
        getattr(ax, f"set_{axis}ticklabels")(labels if show else [], fontsize=_TICK_FONT,
                                           **({"rotation": 90, "va": "center"} if axis == "y" else {}))
        ax.tick_params(axis=axis, length=0)
        if show:  # which axis is which, once per row and column of panels
            getattr(ax, f"set_{axis}label")("keys" if axis == "x" else "queries", fontsize=_TICK_FONT, labelpad=1)
    for kind, colour in _MARKED.items():
        for s in layout.find(kind):
            ax.axvspan(s.start - 0.5, s.stop - 0.5, facecolor="none", edgecolor=colour, linewidth=0.8)
            lo, hi = max(s.start, k - q) - (k - q), min(s.stop, k) - (k - q)
            if lo < hi:
                ax.axhspan(lo - 0.5, hi - 0.5, facecolor="none", edgecolor=colour, linewidth=0.8)


def attention_map(
    attn, *, head: Optional[int] = None, scale: str = "uniform", sinks=None, layout=None, ax=None, cbar: bool = True,
    cbar_kws: Optional[dict] = None, **kwargs
):
    """Draw one head's ``[Q, K]`` map with a colour bar.

    ``attn`` is ``[Q, K]``, or ``[H, Q, K]`` / ``[1, H, Q, K]`` with ``head``
    picking the head (the mean over heads when None). ``scale`` is one of
    :data:`SCALES`: ``'uniform'`` (the default) draws each weight times the
    number of keys its query could see, so 1 is uniform attention and is
    white, more is red, less is blue, on a log scale; ``'log'`` the raw
    weights on a log scale; ``'linear'`` the raw weights from 0 to the
    largest. A map exactly zero above its diagonal is causal: the keys a
    query cannot see are grey (on 'uniform' and 'log'). ``sinks`` (key
    positions: an int, a list or a slice) masks those key columns and
    renormalises every row over the other keys, and the colour bar says so:
    the view of a language model without its attention sinks. ``layout``
    (the map's ``.keys`` TokenLayout) labels both axes by token kind and
    frames the cls/register rows and columns. Draws into ``ax`` (the
    current Axes if None) and returns it; ``**kwargs`` go to ``ax.imshow``
    (``vmin``/``vmax`` bound the chosen scale), ``cbar_kws`` to
    ``fig.colorbar``.

    >>> import numpy as np
    >>> fig, ax = plt.subplots()
    >>> ax = attention_map(np.full((4, 4), 0.25), ax=ax)
    >>> float(ax.images[0].norm(ax.images[0].get_array())[0, 0])   # uniform: the centre of the colours
    0.5
    """
    _check.integer("head", head, low=None, optional=True)
    _check.axes("ax", ax), _check.flag("cbar", cbar), _check.options("cbar_kws", cbar_kws)
    values, note = prepare_maps(attn, scale=scale, sinks=sinks)
    layout = _layout(layout, values.shape[-1])
    if head is None:
        m = nanmean(values, 0)
    else:
        if not -values.shape[0] <= head < values.shape[0]:
            raise ArgumentError(f"head={head} but attn has {values.shape[0]} heads")
        m = values[head]
    ax = plt.gca() if ax is None else ax
    kwargs.setdefault("interpolation", "nearest")
    label = norm_for(m, scale, kwargs, "viridis")
    im = ax.imshow(np.ma.masked_invalid(m), **kwargs)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if layout is not None:
        _token_axes(ax, layout, m.shape[0], m.shape[1])
    if cbar:
        colorbar(ax.figure, im, m, label + (f"\n{note}" if note else ""), cbar_kws, ax=ax)
    return ax


def layer_heads(
    attn, *, scale: str = "uniform", sinks=None, layout=None, ncols: Optional[int] = None, average: bool = True,
    cbar: bool = True, panel_size: float = 2.6, cbar_kws: Optional[dict] = None, **kwargs
):
    """Draw every head of a layer in a grid, plus their mean; returns the Figure.

    Works for any number of heads (one head gives a single row). All panels
    share one colour scale and one colour bar so heads can be compared;
    ``scale``, ``sinks`` and ``layout`` as in :func:`attention_map` (the
    default 'uniform' scale makes a uniform head white). ``ncols`` defaults
    to at most 4 panels a row; ``panel_size`` is each panel's side in
    inches; ``**kwargs`` go to each ``ax.imshow``, ``cbar_kws`` to the
    colour bar.

    >>> import numpy as np
    >>> fig = layer_heads(np.random.default_rng(0).random((3, 5, 5)))
    >>> len([a for a in fig.axes if a.images])
    4
    """
    _check.integer("ncols", ncols, low=1, high=256, optional=True)
    _check.flag("average", average), _check.flag("cbar", cbar), _check.options("cbar_kws", cbar_kws)
    _check.number("panel_size", panel_size, low=0, high=100, low_open=True)
    values, note = prepare_maps(attn, scale=scale, sinks=sinks)
    layout = _layout(layout, values.shape[-1])
    mean = nanmean(values, 0)
    panels = list(values) + ([mean] if average else [])
    titles = [f"head {i}" for i in range(len(values))] + (["mean"] if average else [])
    ncols = min(len(panels), 4) if ncols is None else int(ncols)
    nrows = math.ceil(len(panels) / ncols)
    figsize = (panel_size * ncols + (1.2 if cbar else 0), panel_size * nrows + 0.3)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    label = norm_for(np.stack(panels), scale, kwargs, "viridis")
    kwargs.setdefault("interpolation", "nearest")
    im = None
    for i, (ax, panel, title) in enumerate(zip(axes.flat, panels, titles)):
        im = ax.imshow(np.ma.masked_invalid(panel), **kwargs)
        ax.set_title(title, fontsize=9)
        if layout is not None:
            _token_axes(ax, layout, panel.shape[0], panel.shape[1], xlabels=i >= len(panels) - ncols,
                        ylabels=i % ncols == 0)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    if cbar:
        colorbar(fig, im, np.stack(panels), label + (f"\n{note}" if note else ""), cbar_kws,
                  ax=axes.ravel().tolist(), shrink=0.8)
    return fig
