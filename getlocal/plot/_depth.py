"""Patterns by depth: head labels, pattern scores, attention distance and image share against the layers."""
from __future__ import annotations

import warnings
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .. import _check
from .._errors import ArgumentError
from ..patterns import LABELS, KindShares, PatternTable
from ..patterns.display import LABEL_COLORS, SCORE_LABELS



def _table(table):
    return _check.instance("table", table, PatternTable, "a PatternTable (what patterns.summarize returns)")


def _depth_axis(ax, table):
    ax.set_xticks(range(len(table.layers)))
    ax.set_xticklabels([str(layer) for layer in table.layers], fontsize=7, rotation=90 if len(table.layers) > 16 else 0)
    ax.set_xlabel("layer")


def label_map(table, *, ax=None, legend_kws: Optional[dict] = None, **kwargs):
    """A layer x head map of the head labels of a :class:`~getlocal.patterns.PatternTable`.

    Layers run down, heads across; colours are :data:`LABEL_COLORS`.
    ``**kwargs`` go to ``ax.imshow``, ``legend_kws`` to ``ax.legend``. Returns the Axes.

    >>> import numpy as np
    >>> from getlocal.patterns import summarize
    >>> fig, ax = plt.subplots()
    >>> ax = label_map(summarize([np.eye(16)[None]]), ax=ax)
    >>> ax.images[0].get_array().tolist()
    [[0.0]]
    """
    _table(table), _check.axes("ax", ax), _check.options("legend_kws", legend_kws)
    codes = np.full(table.labels.shape, np.nan)
    for i, lab in enumerate(LABELS):
        codes[table.labels == lab] = i
    ax = plt.gca() if ax is None else ax
    kwargs.setdefault("cmap", ListedColormap([LABEL_COLORS[lab] for lab in LABELS]))
    kwargs.setdefault("vmin", -0.5)
    kwargs.setdefault("vmax", len(LABELS) - 0.5)
    kwargs.setdefault("interpolation", "nearest")
    kwargs.setdefault("aspect", "auto")
    ax.imshow(np.ma.masked_invalid(codes), **kwargs)
    ax.set_yticks(range(len(table.layers)))
    ax.set_yticklabels([str(layer) for layer in table.layers], fontsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # heads are whole numbers, also for 2 or 3 of them
    ax.set_ylabel("layer")
    ax.set_xlabel("head")
    handles = [Patch(color=LABEL_COLORS[lab], label=lab) for lab in LABELS]
    legend = {"loc": "upper left", "bbox_to_anchor": (1.01, 1), "fontsize": 8, "frameon": False}
    ax.legend(handles=handles, **{**legend, **(legend_kws or {})})
    return ax


_SCORE_NAMES = {
    "self_mass": "diagonal (self mass)",
    "neighbour_mass": "stripe (8-neighbour mass)",
    "top_key_mass": "vertical (top-2% key mass)",
}


def pattern_scores(
    table, *, scores=("self_mass", "neighbour_mass", "top_key_mass"), ax=None, scatter_kws: Optional[dict] = None, **kwargs
):
    """The diagonal, stripe and vertical scores against depth.

    One line per score (the mean over heads, ``**kwargs`` to ``ax.plot``) over
    faint dots for the single heads (``scatter_kws`` to ``ax.scatter``). A
    score that makes a label is drawn in that label's colour
    (:data:`LABEL_COLORS`, as in :func:`label_map` and the viewer).
    Returns the Axes.

    >>> import numpy as np
    >>> from getlocal.patterns import summarize
    >>> fig, ax = plt.subplots()
    >>> ax = pattern_scores(summarize([np.eye(16)[None]] * 3), ax=ax)
    >>> [float(y) for y in ax.lines[0].get_ydata()]
    [1.0, 1.0, 1.0]
    """
    _table(table), _check.axes("ax", ax), _check.options("scatter_kws", scatter_kws)
    if isinstance(scores, str) or not isinstance(scores, (list, tuple)) or not scores:
        raise _check.ArgumentTypeError(f"scores must be a list of score names such as ['self_mass']; got {_check.show(scores)}")
    for name in scores:
        _check.choice("scores", name, PatternTable.columns)
    ax = plt.gca() if ax is None else ax
    x = np.arange(len(table.layers))
    for name in scores:
        values = table[name]
        if np.all(np.isnan(values)):
            continue
        colour = {"color": LABEL_COLORS[SCORE_LABELS[name]]} if name in SCORE_LABELS else {}
        (line,) = ax.plot(x, np.nanmean(values, 1), marker="o", markersize=3, label=_SCORE_NAMES.get(name, name),
                          **{**colour, **kwargs})
        xs = np.repeat(x, values.shape[1])
        dots = {"s": 6, "alpha": 0.3, "color": line.get_color(), "linewidths": 0}
        ax.scatter(xs, values.ravel(), **{**dots, **(scatter_kws or {})})
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("score")
    _depth_axis(ax, table)
    ax.legend(fontsize=8, frameon=False)
    return ax


def attention_distance(table, *, pixels: bool = False, ax=None, **kwargs):
    """Mean attention distance of every head against depth, as dots (ViT paper, Fig. 7).

    ``pixels=True`` plots ``distance_px`` (needs ``patch_size`` in
    :func:`~getlocal.patterns.summarize`). ``**kwargs`` go to ``ax.scatter``.
    Returns the Axes.

    >>> import numpy as np
    >>> from getlocal.patterns import summarize
    >>> fig, ax = plt.subplots()
    >>> ax = attention_distance(summarize([np.full((4, 196, 196), 1 / 196)]), ax=ax)
    >>> round(float(ax.collections[0].get_offsets()[0, 1]), 3)
    7.281
    """
    _table(table), _check.flag("pixels", pixels), _check.axes("ax", ax)
    name = "distance_px" if pixels else "distance"
    values = table[name]
    if np.all(np.isnan(values)):
        raise ArgumentError(
            f"the table has no {name}: summarize() needs image_tokens/grid for distances"
            + (" and patch_size for pixels" if pixels else "")
        )
    ax = plt.gca() if ax is None else ax
    x = np.repeat(np.arange(len(table.layers)), values.shape[1])
    heads = np.tile(np.arange(values.shape[1]), len(table.layers))
    kwargs.setdefault("s", 12)
    kwargs.setdefault("c", heads)
    kwargs.setdefault("cmap", "tab20")
    ax.scatter(x, values.ravel(), **kwargs)
    ax.set_ylabel("mean attention distance (" + ("pixels" if pixels else "patches") + ")")
    top = float(np.nanmax(values))
    ax.set_ylim(0, top * 1.12 if top > 0 else 1)  # room above the highest dot: none is cut in half
    _depth_axis(ax, table)
    return ax


def image_share(shares, *, ax=None, legend_kws: Optional[dict] = None, **kwargs):
    """The share of attention that goes to the image tokens against depth, one line per query kind.

    ``shares`` is what ``AttentionMaps.kind_shares()`` returns for the maps
    of one tower and step (one row per layer, e.g.
    ``maps.select(tower='llm', phase='prefill').kind_shares()``): each line is
    the head mean of the share of a query kind's attention that goes to the
    image keys (every camera together), in ``[0, 1]``: FastV's reading (Chen
    et al., ECCV 2024). Beside each line, dashed and in the same colour, its
    baseline: what uniform attention over the keys each query sees would give
    (``KindShares.baseline``; the share of image tokens among those keys). A
    line on its baseline says nothing about the model; only the gap does.
    ``**kwargs`` go to ``ax.plot``, ``legend_kws`` to ``ax.legend``. Draws
    into the current Axes if ``ax`` is None; returns the Axes.

    >>> import numpy as np
    >>> from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout
    >>> lay = TokenLayout([Segment("image", 0, 3), Segment("text", 3, 4)])
    >>> m = [AttentionMap(np.full((1, 1, 4, 4), 0.25), "llm", i, "p", 0, "prefill", i, lay, lay) for i in range(2)]
    >>> fig, ax = plt.subplots()
    >>> ax = image_share(AttentionMaps(m).kind_shares(), ax=ax)
    >>> [float(y) for y in ax.lines[2].get_ydata()], [float(y) for y in ax.lines[3].get_ydata()]  # text, its baseline
    ([0.75, 0.75], [0.75, 0.75])
    """
    if not isinstance(shares, KindShares) or shares.rows is None:
        raise _check.ArgumentTypeError(
            f"shares must be what AttentionMaps.kind_shares() returns; got {_check.show(shares)}; "
            f"for one map, wrap it: AttentionMaps([m]).kind_shares()")
    _check.axes("ax", ax), _check.options("legend_kws", legend_kws)
    if not any(k == "image" or k.startswith("image:") for k in shares.key_kinds):
        raise _check.ArgumentError(
            f"these maps have no image keys (key kinds: {', '.join(shares.key_kinds)}); "
            f"plot a language-model tower of a VLA")
    ax = plt.gca() if ax is None else ax
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a head or kind missing from a layer: NaN
        x = np.arange(len(shares.rows))
        for qk in shares.query_kinds:
            line, = ax.plot(x, np.nanmean(shares.share(qk, "image"), -1), marker="o", markersize=3,
                            label=f"{qk} queries", **kwargs)
            ax.plot(x, np.nanmean(shares.baseline(qk, "image"), -1), linestyle="--", linewidth=1,
                    color=line.get_color(), label=f"{qk}: uniform over visible keys")
    ax.set_xticks(x)
    ax.set_xticklabels([str(r.get("layer", i)) for i, r in enumerate(shares.rows)], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of attention on image tokens\n(dashed: uniform attention)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(**{"fontsize": 8, "frameon": False, **(legend_kws or {})})
    return ax
