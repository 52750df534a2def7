"""Draw attention maps: heads, patch grids, overlays on the image, patterns by depth.

Single-panel helpers take ``ax=`` (the current Axes when None) and return the
Axes; multi-panel helpers return the Figure. Maps are numpy or torch arrays of
any float dtype (bfloat16 included): ``[Q, K]``, ``[H, Q, K]`` or
``[1, H, Q, K]``. Images are numpy, torch (``HWC`` or ``CHW``) or PIL,
grayscale, RGB or RGBA. Nothing here calls ``plt.show()``.

>>> import numpy as np
>>> import matplotlib.pyplot as plt
>>> from getlocal import plot
>>> fig, ax = plt.subplots()
>>> ax = plot.attention_map(np.eye(8)[None], ax=ax)
>>> ax.get_xlabel()
'key'
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from . import _check
from ._files import write_atomic
from .maps import TokenLayout
from .patterns import LABELS, PatternTable, _as_array, _count, _grid, _image_positions

#: Colours of the pattern labels in :func:`label_map`.
LABEL_COLORS = {"diagonal": "#1f77b4", "stripe": "#2ca02c", "vertical": "#d62728", "block": "#ff7f0e",
                "mixed": "#c7c7c7"}


# --------------------------------------------------------------------------- input


def _maps(attn, name: str = "attn") -> np.ndarray:
    """``attn`` as a ``[H, Q, K]`` float array."""
    arr = _as_array(attn, name)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(
                f"{name} has a batch of {arr.shape[0]} maps (shape {tuple(arr.shape)}); "
                f"plot one item at a time, e.g. {name}[0]"
            )
        arr = arr[0]
    elif arr.ndim != 3:
        raise ValueError(f"{name} must be [Q, K], [H, Q, K] or [1, H, Q, K]; got shape {tuple(arr.shape)}")
    if 0 in arr.shape:
        raise ValueError(f"{name} is empty: shape {tuple(arr.shape)}")
    return arr


def _image(image, name: str = "image") -> np.ndarray:
    """An ``[H, W]`` or ``[H, W, C]`` array that ``imshow`` draws as the picture."""
    if _is_pil(image):
        if image.mode not in ("L", "RGB", "RGBA"):  # palette, 16-bit, CMYK...: as the eye sees them
            image = image.convert("RGBA" if "A" in image.mode or image.mode == "P" else "RGB")
        image = np.asarray(image)
    arr = _as_array(image, name) if not (isinstance(image, np.ndarray) and image.dtype == np.uint8) else image
    while arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW, as torch and torchvision hold images
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(
            f"{name} must be grayscale [H, W], RGB or RGBA [H, W, 3|4] (or [3|4, H, W]); got shape {tuple(arr.shape)}"
        )
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32, copy=False)
        top = float(arr.max()) if arr.size else 0.0
        if top > 1.0:  # a float picture in 0..255
            arr = np.clip(arr / 255.0, 0, 1)
        else:
            arr = np.clip(arr, 0, 1)
    return arr


def _is_pil(image) -> bool:
    try:
        return hasattr(image, "mode") and hasattr(image, "size") and not hasattr(image, "shape")
    except Exception:  # noqa: BLE001 - an object that breaks on a look is no picture; _as_array says so
        return False


def _show_image(ax, img, **kwargs):
    h, w = img.shape[:2]
    kwargs.setdefault("extent", (0, w, h, 0))
    if img.ndim == 2:
        kwargs.setdefault("cmap", "gray")
        kwargs.setdefault("vmin", 0)
        kwargs.setdefault("vmax", 255 if img.dtype == np.uint8 else 1)
    return ax.imshow(img, **kwargs)


def _cell(cell, grid, name="cell"):
    """``(row, col)`` of a cell given as ``(row, col)`` or as a flat index."""
    h, w = grid
    if isinstance(cell, (int, np.integer)):
        if not -h * w <= cell < h * w:
            raise ValueError(f"{name}={cell} is outside the {h} x {w} grid ({h * w} cells)")
        return divmod(int(cell) % (h * w), w)
    try:
        r, c = (int(v) for v in cell)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a flat cell index or a (row, col) pair; got {cell!r}") from None
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"{name}={cell!r} is outside the {h} x {w} grid; rows are 0..{h - 1}, columns 0..{w - 1}")
    return r, c


def _reduce(name, reduce):
    _check.choice(name, reduce, ("mean", "max"))
    return np.mean if reduce == "mean" else np.max


# --------------------------------------------------------------------------- colour scales

#: The colour scales every map and overlay helper takes as ``scale=``.
SCALES = ("uniform", "log", "linear")
_SCALE_HELP = ("scale='uniform' (attention x visible keys: 1 = uniform, log colours centred on it), "
               "'log' (raw weights, log colours) or 'linear' (raw weights from 0 to the maximum)")
_LABELS = {"uniform": "attention x visible keys (1 = uniform)", "log": "attention (log scale)",
           "linear": "attention"}
_NEUTRAL_CMAP = "RdBu_r"  # white at its centre: 1 (uniform) on the 'uniform' scale


def _nanmean(a, axis):
    """The mean over ``axis`` ignoring NaN (keys a row could not see); NaN where nothing is left, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis)


def _visible(maps: np.ndarray) -> np.ndarray:
    """``[Q, K]`` bool: which keys each query row could see.

    A map that is exactly zero above its diagonal (offset by ``K - Q`` for the
    decode rows of a longer sequence) is taken as causal: row ``i`` sees the
    keys up to its own position. Otherwise every row sees every key.
    """
    _, q, k = maps.shape
    if q > 1 and k >= q:
        upper = np.triu(np.ones((q, k), dtype=bool), k - q + 1)
        if upper.any() and not np.any(maps[:, upper]):
            return ~upper
    return np.ones((q, k), dtype=bool)


def _keys_index(value, k: int, name: str) -> np.ndarray:
    try:
        if value is None or isinstance(value, bool):
            raise TypeError
        picked = np.atleast_1d(np.arange(k)[value])
    except Exception:  # noqa: BLE001 - whatever numpy cannot index with is the same mistake
        raise ValueError(f"{name}={value!r} does not index the {k} keys of the map; give a key position, "
                         "a list of them or a slice") from None
    return picked


def _without(maps: np.ndarray, sinks, visible: np.ndarray):
    """Mask the ``sinks`` key columns and renormalise every row over the keys left."""
    cols = _keys_index(sinks, maps.shape[-1], "sinks")
    maps = maps.astype(np.float64, copy=True)
    maps[..., cols] = 0.0
    total = maps.sum(-1, keepdims=True)
    maps = np.divide(maps, total, out=np.full_like(maps, np.nan), where=total > 0)
    visible = visible.copy()
    visible[:, cols] = False
    return maps, visible, cols


def _scaled(maps: np.ndarray, scale: str, visible: np.ndarray) -> np.ndarray:
    """The values drawn on ``scale``: keys a row could not see are NaN (drawn grey) except on 'linear'."""
    if scale == "linear":
        return np.where(visible, maps, 0.0)
    out = np.where(visible, maps, np.nan)
    if scale == "uniform":
        out = out * visible.sum(-1, keepdims=True)
    return out


def _norm(values, scale: str, kwargs: dict, default_cmap: str):
    """Pop ``vmin``/``vmax`` from ``kwargs`` and set its ``norm`` and ``cmap`` for ``scale``; returns the bar label."""
    vmin, vmax = kwargs.pop("vmin", None), kwargs.pop("vmax", None)
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    top_seen = float(finite.max()) if finite.size else 1.0
    if scale == "uniform":
        top = float(vmax) if vmax is not None else max(2.0, top_seen)
        bottom = float(vmin) if vmin is not None else 1.0 / top
        kwargs.setdefault("norm", LogNorm(bottom, top, clip=False))
        kwargs.setdefault("cmap", _NEUTRAL_CMAP)
    elif scale == "log":
        top = float(vmax) if vmax is not None else (top_seen if top_seen > 0 else 1.0)
        positive = finite[finite > 0]
        bottom = float(vmin) if vmin is not None else max(float(positive.min()) if positive.size else top * 1e-4,
                                                           top * 1e-4)
        kwargs.setdefault("norm", LogNorm(bottom, max(top, bottom * 10), clip=False))
        kwargs.setdefault("cmap", default_cmap)
    else:
        kwargs.setdefault("norm", Normalize(0.0 if vmin is None else float(vmin),
                                            float(vmax) if vmax is not None else (top_seen if top_seen > 0 else 1.0)))
        kwargs.setdefault("cmap", default_cmap)
    cmap = plt.get_cmap(kwargs["cmap"]) if isinstance(kwargs["cmap"], str) else kwargs["cmap"]
    kwargs["cmap"] = cmap.with_extremes(bad="#d9d9d9")  # keys a query could not see, and masked sinks
    return _LABELS[scale]


def _extend(values, norm) -> str:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return "neither"
    low, high = finite.min() < norm.vmin, finite.max() > norm.vmax
    return "both" if low and high else "min" if low else "max" if high else "neither"


def _colorbar(fig, im, values, label, cbar_kws, **defaults):
    kws = {"extend": _extend(values, im.norm), "label": label, **defaults, **(cbar_kws or {})}
    bar = fig.colorbar(im, **kws)
    if isinstance(im.norm, LogNorm):  # plain numbers at 1-2-5 steps, not 6 x 10^-1
        lo, hi = im.norm.vmin, im.norm.vmax
        steps = [m * 10.0**e for e in range(-12, 13) for m in (1, 2, 5)]
        ticks = [t for t in steps if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        while len(ticks) > 7:
            ticks = ticks[::2] if 1 not in ticks else [t for i, t in enumerate(ticks) if (i - ticks.index(1)) % 2 == 0]
        bar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
        bar.ax.minorticks_off()
    bar.ax.tick_params(labelsize=7)
    bar.ax.yaxis.label.set_size(8)
    return bar


# --------------------------------------------------------------------------- maps


_MARKED = {"cls": "#ff7f0e", "register": "#9467bd"}  # drawn as lines around their rows and columns


def _layout(layout, k: int):
    if layout is None:
        return None
    if not isinstance(layout, TokenLayout):
        raise _check.ArgumentTypeError(f"layout must be a TokenLayout (a map's .keys) or None; got {_check.show(layout)}")
    if len(layout) != k:
        raise ValueError(f"layout has {len(layout)} tokens but the map has {k} keys; pass the map's own .keys")
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
    return positions, [name for _, _, name in merged], [hi - 0.5 for _, hi, _ in spans[:-1]]


def _token_axes(ax, layout, q: int, k: int, *, xlabels=True, ylabels=True):
    """Label the key axis (and the query axis: the last ``q`` of the keys) by token kind, and mark cls/registers."""
    for axis, (start, stop), show in (("x", (0, k), xlabels), ("y", (k - q, k), ylabels)):
        positions, labels, bounds = _token_ticks(layout, start, stop)
        line = ax.axvline if axis == "x" else ax.axhline
        for b in bounds:
            line(b, color="white", linewidth=0.6, alpha=0.8)
        getattr(ax, f"set_{axis}ticks")(positions)
        getattr(ax, f"set_{axis}ticklabels")(labels if show else [], fontsize=7,
                                           **({"rotation": 90, "va": "center"} if axis == "y" else {}))
        ax.tick_params(axis=axis, length=0)
    for kind, colour in _MARKED.items():
        for s in layout.find(kind):
            ax.axvspan(s.start - 0.5, s.stop - 0.5, facecolor="none", edgecolor=colour, linewidth=0.8)
            lo, hi = max(s.start, k - q) - (k - q), min(s.stop, k) - (k - q)
            if lo < hi:
                ax.axhspan(lo - 0.5, hi - 0.5, facecolor="none", edgecolor=colour, linewidth=0.8)


def _prepare(attn, *, scale, sinks, name="attn"):
    """``[H, Q, K]`` values on ``scale`` (sinks masked, rows renormalised), and the words that say so."""
    _check.choice("scale", scale, SCALES)
    maps = _maps(attn, name)
    visible = _visible(maps)
    note = ""
    if sinks is not None:
        maps, visible, cols = _without(maps, sinks, visible)
        shown = ", ".join(str(int(c)) for c in cols[:6]) + (", ..." if len(cols) > 6 else "")
        note = f"without sinks (keys {shown} masked, rows renormalised)"
    return _scaled(maps, scale, visible), note


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
    values, note = _prepare(attn, scale=scale, sinks=sinks)
    layout = _layout(layout, values.shape[-1])
    if head is None:
        m = _nanmean(values, 0)
    else:
        if not -values.shape[0] <= head < values.shape[0]:
            raise ValueError(f"head={head} but attn has {values.shape[0]} heads")
        m = values[head]
    ax = plt.gca() if ax is None else ax
    kwargs.setdefault("interpolation", "nearest")
    label = _norm(m, scale, kwargs, "viridis")
    im = ax.imshow(np.ma.masked_invalid(m), **kwargs)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if layout is not None:
        _token_axes(ax, layout, m.shape[0], m.shape[1])
    if cbar:
        _colorbar(ax.figure, im, m, label + (f"\n{note}" if note else ""), cbar_kws, ax=ax)
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
    values, note = _prepare(attn, scale=scale, sinks=sinks)
    layout = _layout(layout, values.shape[-1])
    mean = _nanmean(values, 0)
    panels = list(values) + ([mean] if average else [])
    titles = [f"head {i}" for i in range(len(values))] + (["mean"] if average else [])
    ncols = min(len(panels), 4) if ncols is None else int(ncols)
    nrows = math.ceil(len(panels) / ncols)
    figsize = (panel_size * ncols + (1.2 if cbar else 0), panel_size * nrows + 0.3)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    label = _norm(np.stack(panels), scale, kwargs, "viridis")
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
        _colorbar(fig, im, np.stack(panels), label + (f"\n{note}" if note else ""), cbar_kws,
                  ax=axes.ravel().tolist(), shrink=0.8)
    return fig


# --------------------------------------------------------------------------- patch grids


def patch_grid(
    image, *, grid, cells=(), ax=None, color: str = "red", alpha: float = 0.5, line_kws: Optional[dict] = None, **kwargs
):
    """Draw the picture with its patch grid and fill the chosen cells.

    ``grid=(h, w)`` patches; ``cells`` is a cell or a list of cells, each a
    ``(row, col)`` pair or a flat index ``row * w + col``, filled with
    ``color`` at ``alpha``. ``line_kws`` styles the grid lines
    (``ax.axhline``/``axvline``); ``**kwargs`` go to ``ax.imshow`` of the
    picture. Returns the Axes.

    >>> import numpy as np
    >>> fig, ax = plt.subplots()
    >>> ax = patch_grid(np.zeros((28, 28)), grid=(2, 2), cells=[(0, 1)], ax=ax)
    >>> len(ax.patches)
    1
    """
    _check.axes("ax", ax), _check.text("color", color), _check.options("line_kws", line_kws)
    _check.number("alpha", alpha, low=0, high=1)
    img = _image(image)
    h, w = _grid(grid, _grid_cells(grid), None)
    if isinstance(cells, (int, np.integer)) or (isinstance(cells, tuple) and _is_int_pair(cells)):
        cells = [cells]
    if not isinstance(cells, (list, tuple, np.ndarray)):
        raise _check.ArgumentTypeError(
            f"cells must be a cell, a (row, col) pair or flat index, or a list of them; got {_check.show(cells)}")
    cells = [_cell(c, (h, w), "cells") for c in cells]
    ax = plt.gca() if ax is None else ax
    _show_image(ax, img, **kwargs)
    H, W = img.shape[:2]
    line = {"color": "white", "linewidth": 0.5, "alpha": 0.7, **(line_kws or {})}
    for i in range(1, h):
        ax.axhline(i * H / h, **line)
    for j in range(1, w):
        ax.axvline(j * W / w, **line)
    for r, c in cells:
        box = Rectangle((c * W / w, r * H / h), W / w, H / h, facecolor=color, alpha=alpha, edgecolor=color, linewidth=1)
        ax.add_patch(box)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _table(table):
    return _check.instance("table", table, PatternTable, "a PatternTable (what patterns.summarize returns)")


def _figsize(figsize):
    if figsize is None:
        return
    if not isinstance(figsize, (list, tuple)) or len(figsize) != 2:
        raise _check.ArgumentTypeError(f"figsize must be a (width, height) pair in inches or None; got {_check.show(figsize)}")
    for v in figsize:
        _check.number("figsize", v, low=0, high=1000, low_open=True)


def _is_int_pair(value):
    return len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value)


def _grid_cells(grid):
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be a pair (h, w) of positive ints; got {grid!r}") from None
    return h * w


def _heat_extent(size, pad_to_square: bool):
    """Where the heat map's grid lies over a picture of ``size`` ``(H, W)``, undoing a letterbox.

    With ``pad_to_square`` the model saw the picture scaled so its longer side
    filled a square and the shorter side padded symmetrically (openpi's
    ``resize_with_pad``): the grid covers that square, centred on the
    picture, and the Axes limits crop the padded band away.
    """
    h, w = size
    if not pad_to_square:
        return (0, w, h, 0)
    side = max(h, w)
    top, left = (side - h) / 2, (side - w) / 2
    return (-left, side - left, side - top, -top)


def _heat_pixels(heat: np.ndarray, size, pad_to_square: bool) -> np.ndarray:
    """One value per pixel of a picture of ``size`` ``(H, W)``: each patch's value over its whole
    block (no smoothing, as :func:`_overlay` draws it), the letterbox undone as in :func:`_heat_extent`."""
    h, w = size
    x0, x1, y1, y0 = _heat_extent(size, pad_to_square)
    rows = np.clip(((np.arange(h) + 0.5 - y0) / (y1 - y0) * heat.shape[0]).astype(int), 0, heat.shape[0] - 1)
    cols = np.clip(((np.arange(w) + 0.5 - x0) / (x1 - x0) * heat.shape[1]).astype(int), 0, heat.shape[1] - 1)
    return heat[rows[:, None], cols[None, :]]


def _overlay(ax, img, heat, *, scale="uniform", pad_to_square=False, alpha=0.5, cbar=True, cbar_kws=None,
             image_kws=None, **kwargs):
    """The picture, and over it one block of colour per patch (no smoothing: one value per patch, as the model saw)."""
    H, W = img.shape[:2]
    _show_image(ax, img, **(image_kws or {}))
    label = _norm(heat, scale, kwargs, "jet")
    im = ax.imshow(np.ma.masked_invalid(heat), alpha=alpha, extent=_heat_extent((H, W), pad_to_square),
                   interpolation="nearest", **kwargs)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if cbar:
        _colorbar(ax.figure, im, heat, label, cbar_kws, ax=ax)
    return im


def grid_to_grid(
    attn,
    image,
    *,
    query,
    grid=None,
    image_tokens=None,
    cls_token: Optional[int] = None,
    head: Optional[int] = None,
    scale: str = "uniform",
    alpha: float = 0.6,
    cell_kws: Optional[dict] = None,
    figsize=None,
    **kwargs,
):
    """The attention of one query patch drawn over the picture; returns the Figure.

    Left: the picture with the query cell filled red. Right: that patch's
    attention to every image patch, one block of colour per patch over the
    picture, on ``scale`` (see :func:`attention_map`; on the default
    'uniform' scale white is uniform attention). With ``cls_token`` (the
    class token's position, usually 0) a middle panel shows the weight the
    query gives the class token in its own cell, coloured on the overlay's
    scale and written out as its real value.
    ``query`` is a ``(row, col)`` cell or a flat cell index; ``head`` picks a
    head (the mean over heads when None); ``image_tokens`` and ``grid`` as in
    :mod:`getlocal.patterns`; ``cell_kws`` go to :func:`patch_grid`;
    ``**kwargs`` go to ``ax.imshow`` of the overlay.

    >>> import numpy as np
    >>> a = np.full((197, 197), 1 / 197)
    >>> fig = grid_to_grid(a, np.zeros((224, 224, 3)), query=(3, 4), image_tokens=slice(1, 197), cls_token=0)
    >>> [t.get_text() for t in fig.axes[1].texts]
    ['0.00508']
    """
    _check.integer("cls_token", cls_token, low=None, optional=True)
    _check.integer("head", head, low=None, optional=True)
    _check.number("alpha", alpha, low=0, high=1), _check.options("cell_kws", cell_kws)
    _figsize(figsize)
    raw = _maps(attn)
    values, _ = _prepare(raw, scale=scale, sinks=None)
    q, k = raw.shape[-2:]
    positions = _image_positions(image_tokens, k)
    n = _count(positions)
    hw = _grid(grid, n, image_tokens)
    r, c = _cell(query, hw, "query")
    keys = np.arange(k)[positions]
    row = int(keys[r * hw[1] + c]) - (k - q)
    if row < 0:
        raise ValueError(
            f"query={query!r} is image token {keys[r * hw[1] + c]}, which is not among the {q} queries of this decode map"
        )
    if head is None:
        weights, shown = raw[:, row, :].mean(0), _nanmean(values[:, row, :], 0)
    else:
        if not -raw.shape[0] <= head < raw.shape[0]:
            raise ValueError(f"head={head} but attn has {raw.shape[0]} heads")
        weights, shown = raw[head, row, :], values[head, row, :]
    heat = shown[keys].reshape(hw)
    img = _image(image)

    with_cls = cls_token is not None
    if with_cls and not -k <= cls_token < k:
        raise ValueError(f"cls_token={cls_token} is outside the {k} keys of the map")
    ratios = [1, 0.25, 1.25] if with_cls else [1, 1.25]
    figsize = figsize or (3.2 * sum(ratios), 3.2)
    fig, axes = plt.subplots(1, len(ratios), figsize=figsize, gridspec_kw={"width_ratios": ratios})
    patch_grid(img, grid=hw, cells=[(r, c)], ax=axes[0], **(cell_kws or {}))
    axes[0].set_title(f"query patch ({r}, {c})", fontsize=9)
    im = _overlay(axes[-1], img, heat, scale=scale, alpha=alpha, cbar=False, **kwargs)
    both = np.append(heat.ravel(), shown[cls_token]) if with_cls else heat
    _colorbar(fig, im, both, _LABELS[scale], None, ax=axes[-1])
    axes[-1].set_title("attention to patches", fontsize=9)
    if with_cls:
        value = float(weights[cls_token])
        cax = axes[1]
        # coloured on the overlay's scale (clipped at its ends), the number is exact
        cax.imshow([[float(shown[cls_token])]], cmap=im.get_cmap(), norm=im.norm)
        cax.text(0, 0, f"{value:.3g}", ha="center", va="center", fontsize=9, color="white",
                 bbox={"facecolor": "black", "alpha": 0.5, "linewidth": 0, "pad": 1})
        cax.set_title("CLS", fontsize=9)
        cax.set_xticks([])
        cax.set_yticks([])
    return fig


# --------------------------------------------------------------------------- VLA overlays


def query_heatmap(attn, *, image_tokens, queries, grid=None, reduce: str = "mean", heads=None,
                  scale: str = "linear") -> np.ndarray:
    """The attention from chosen query tokens to the image tokens, as an ``[h, w]`` grid.

    Rows ``queries`` of the map (an int, a slice or a list of query indices;
    for a prefill map these are token positions, for a decode map the rows of
    the new tokens) are averaged, then the heads (``heads`` picks some, all
    when None) are reduced by ``reduce`` (``'mean'`` or ``'max'``). The image
    tokens' weights are laid out on ``grid`` (inferred when square). With
    ``scale='uniform'`` each row's weights are first multiplied by the number
    of keys that row could see (1 = uniform attention; see
    :func:`attention_map`); 'linear' and 'log' give the weights themselves.

    >>> import numpy as np
    >>> a = np.zeros((2, 10, 10)); a[:, 9, 1 + 2] = 1
    >>> query_heatmap(a, image_tokens=slice(1, 5), queries=9, grid=(2, 2)).tolist()
    [[0.0, 0.0], [1.0, 0.0]]
    """
    fn = _reduce("reduce", reduce)
    _check.choice("scale", scale, SCALES)
    maps, _ = _prepare(attn, scale="uniform" if scale == "uniform" else "linear", sinks=None)
    nh, q, k = maps.shape
    positions = _image_positions(image_tokens, k)
    hw = _grid(grid, _count(positions), image_tokens)
    rows = np.arange(q)
    try:
        if queries is None or isinstance(queries, bool):
            raise TypeError
        picked = np.atleast_1d(rows[queries])
    except Exception:  # noqa: BLE001 - whatever numpy cannot index with is the same mistake
        raise ValueError(f"queries={queries!r} does not index the {q} query rows of the map") from None
    if picked.size == 0:
        raise ValueError(f"queries={queries!r} selects no query row of the {q} in the map")
    if heads is not None:
        try:
            if isinstance(heads, bool):
                raise TypeError
            maps = maps[np.atleast_1d(np.arange(nh)[heads])]
        except Exception:  # noqa: BLE001
            raise ValueError(f"heads={heads!r} does not index the {nh} heads of the map") from None
    per_head = _nanmean(maps[:, picked, :][..., positions], 1)
    return fn(per_head, axis=0).reshape(hw)


def image_attention(
    image,
    attn,
    *,
    image_tokens,
    queries,
    grid=None,
    reduce: str = "mean",
    heads=None,
    scale: str = "uniform",
    pad_to_square: bool = False,
    ax=None,
    alpha: float = 0.5,
    cbar: bool = True,
    cbar_kws: Optional[dict] = None,
    image_kws: Optional[dict] = None,
    **kwargs,
):
    """Overlay the attention of chosen queries (text, action tokens) on the picture.

    The heat map is :func:`query_heatmap`, one block of colour per patch over
    the picture, on ``scale`` (see :func:`attention_map`; on the default
    'uniform' scale white is uniform attention, so a map with nothing in it
    looks neutral). Pass ``pad_to_square=True`` when the model's preprocessing
    letterboxed the picture (scaled the longer side to the square and padded
    the shorter side symmetrically, like openpi's ``resize_with_pad``): the
    padded band is cropped so the heat map lines up with the original
    picture. Without it the heat map is stretched to the picture, which is
    right for a plain resize. ``**kwargs`` go to ``ax.imshow`` of the heat map
    (``cmap``, ``vmin``, ``vmax``), ``image_kws`` to that of the picture,
    ``cbar_kws`` to the colour bar. Returns the Axes.

    >>> import numpy as np
    >>> a = np.full((1, 20, 20), 0.05)
    >>> fig, ax = plt.subplots()
    >>> ax = image_attention(np.zeros((60, 90, 3)), a, image_tokens=slice(4, 20), queries=[18, 19],
    ...                      pad_to_square=True, ax=ax)
    >>> ax.images[-1].get_array().shape   # one value per patch of the 4 x 4 grid
    (4, 4)
    """
    _check.flag("pad_to_square", pad_to_square), _check.axes("ax", ax), _check.flag("cbar", cbar)
    _check.number("alpha", alpha, low=0, high=1)
    _check.options("cbar_kws", cbar_kws), _check.options("image_kws", image_kws)
    _check.choice("scale", scale, SCALES)
    heat = query_heatmap(attn, image_tokens=image_tokens, queries=queries, grid=grid, reduce=reduce, heads=heads,
                         scale=scale)
    ax = plt.gca() if ax is None else ax
    _overlay(ax, _image(image), heat, scale=scale, pad_to_square=pad_to_square, alpha=alpha, cbar=cbar, cbar_kws=cbar_kws,
             image_kws=image_kws, **kwargs)
    return ax


def _per_camera(value, n, name):
    if isinstance(value, (list, tuple)) and not (name == "grids" and _is_int_pair(value)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} cameras; give one per camera")
        return list(value)
    return [value] * n


def camera_attention(
    images: Sequence,
    attn,
    *,
    image_tokens: Sequence,
    queries,
    grids=None,
    reduce: str = "mean",
    heads=None,
    pad_to_square=False,
    scale: str = "uniform",
    per_head: bool = False,
    titles: Optional[Sequence[str]] = None,
    alpha: float = 0.5,
    panel_size: float = 3.2,
    **kwargs,
):
    """Several cameras side by side, each with its attention overlay; returns the Figure.

    ``images`` and ``image_tokens`` hold one entry per camera (e.g. exterior
    and wrist views, each with its own token range); ``grids`` and
    ``pad_to_square`` are one value for all or one per camera. All panels
    share one colour scale (``scale`` as in :func:`image_attention`). With ``per_head=True`` the result is a list of
    Figures, one per head (of ``heads``, all when None). Other arguments as in
    :func:`image_attention`; ``**kwargs`` go to each overlay's ``ax.imshow``.

    >>> import numpy as np
    >>> a = np.full((2, 40, 40), 0.025)
    >>> fig = camera_attention([np.zeros((48, 64)), np.zeros((32, 32))], a,
    ...                        image_tokens=[slice(0, 16), slice(16, 32)], queries=-1)
    >>> len([ax for ax in fig.axes if ax.images])
    2
    """
    if not isinstance(images, (list, tuple)):
        raise _check.ArgumentTypeError(f"images must be a list with one picture per camera; got {_check.show(images)}")
    for pad in pad_to_square if isinstance(pad_to_square, (list, tuple)) else [pad_to_square]:
        _check.flag("pad_to_square", pad)
    if titles is not None and (not isinstance(titles, (list, tuple)) or not all(isinstance(t, str) for t in titles)
                               or len(titles) != len(images)):
        raise _check.ArgumentTypeError(f"titles must be a list of {len(images)} str, one per camera of images; got {_check.show(titles)}")
    if grids is not None and not isinstance(grids, (list, tuple)):
        raise _check.ArgumentTypeError(f"grids must be None, one (h, w) pair, or a list of them; got {_check.show(grids)}")
    _check.flag("per_head", per_head), _check.number("alpha", alpha, low=0, high=1)
    _check.number("panel_size", panel_size, low=0, high=100, low_open=True), _check.choice("scale", scale, SCALES)
    images = list(images)
    n = len(images)
    if n == 0:
        raise ValueError("images is empty; give one picture per camera")
    if not isinstance(image_tokens, (list, tuple)) or len(image_tokens) != n or _is_int_pair(image_tokens):
        raise ValueError(
            f"image_tokens must be a list with one slice or index array per camera ({n} cameras); got {image_tokens!r}"
        )
    grids = _per_camera(grids, n, "grids")
    pads = _per_camera(pad_to_square, n, "pad_to_square")
    titles = list(titles) if titles is not None else [f"camera {i}" for i in range(n)]
    if per_head:
        nh = _maps(attn).shape[0]
        chosen = np.atleast_1d(np.arange(nh)[heads]) if heads is not None else np.arange(nh)
        return [
            camera_attention(images, attn, image_tokens=image_tokens, queries=queries, grids=grids, reduce=reduce,
                             heads=[int(h)], pad_to_square=pads, scale=scale, titles=[f"{t}, head {int(h)}" for t in titles],
                             alpha=alpha, panel_size=panel_size, **kwargs)
            for h in chosen
        ]
    heats = [
        query_heatmap(attn, image_tokens=t, queries=queries, grid=g, reduce=reduce, heads=heads, scale=scale)
        for t, g in zip(image_tokens, grids)
    ]
    every = np.concatenate([h.ravel() for h in heats])
    label = _norm(every, scale, kwargs, "jet")  # one norm and colour map for all panels
    pictures = [_image(im, f"images[{i}]") for i, im in enumerate(images)]
    ratios = [p.shape[1] / p.shape[0] for p in pictures]
    figsize = (panel_size * sum(ratios) + 0.8, panel_size)
    fig, axes = plt.subplots(1, n, figsize=figsize, squeeze=False, gridspec_kw={"width_ratios": ratios})
    im = None
    for ax, pic, heat, pad, title in zip(axes[0], pictures, heats, pads, titles):
        im = _overlay(ax, pic, heat, scale=scale, pad_to_square=bool(pad), alpha=alpha, cbar=False, **kwargs)
        ax.set_title(title, fontsize=9)
    _colorbar(fig, im, every, label, None, ax=axes[0].tolist(), shrink=0.8)
    return fig


# --------------------------------------------------------------------------- patterns by depth


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
    faint dots for the single heads (``scatter_kws`` to ``ax.scatter``).
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
        (line,) = ax.plot(x, np.nanmean(values, 1), marker="o", markersize=3, label=_SCORE_NAMES.get(name, name), **kwargs)
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
        raise ValueError(
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


# --------------------------------------------------------------------------- files


def figure_path(root, *, name: str, phase: str, layer, mode: str, ext: str = "jpg") -> Path:
    """Where :func:`save_figure` writes: ``{root}/{name}/{phase}_L{layer}_attn_vis_{mode}.{ext}``.

    >>> figure_path("out", name="openvla", phase="prefill", layer=3, mode="mean").as_posix()
    'out/openvla/prefill_L3_attn_vis_mean.jpg'
    """
    if not isinstance(root, (str, os.PathLike)):
        raise _check.ArgumentTypeError(f"root must be a folder path (str or Path); got {_check.show(root)}")
    _check.text("name", name), _check.text("phase", phase), _check.text("mode", mode), _check.text("ext", ext)
    if not isinstance(layer, str):
        _check.integer("layer", layer, low=None, high=None)
    parts = {"phase": phase, "layer": layer, "mode": mode, "ext": ext}
    for key, value in parts.items():
        text = str(value)
        if not text or os.sep in text or "/" in text:
            raise ValueError(f"{key}={value!r} must be a non-empty name without path separators")
    return Path(root) / str(name) / f"{phase}_L{layer}_attn_vis_{mode}.{ext}"


def save_figure(fig, root=".", *, name: str, phase: str, layer, mode: str, ext: str = "jpg", **kwargs) -> Path:
    """Save ``fig`` under a readable name (see :func:`figure_path`) and return the path.

    Folders are created as needed; ``**kwargs`` go to ``fig.savefig``
    (``dpi``, ``bbox_inches``...). The figure is left open.

    >>> import tempfile
    >>> fig = plt.figure()
    >>> save_figure(fig, tempfile.mkdtemp(), name="vit", phase="prefill", layer=0, mode="max").name
    'prefill_L0_attn_vis_max.jpg'
    """
    if not hasattr(type(fig), "savefig"):
        raise _check.ArgumentTypeError(f"fig must be a matplotlib Figure; got {_check.show(fig)}")
    path = figure_path(root, name=name, phase=phase, layer=layer, mode=mode, ext=ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("bbox_inches", "tight")
    kwargs.setdefault("format", path.suffix[1:])  # a file object does not say which format
    # under a temporary name, then renamed: a Ctrl-C never leaves a truncated picture
    write_atomic(path, lambda f: fig.savefig(f, **kwargs))
    return path





def image_share(shares, *, ax=None, legend_kws: Optional[dict] = None, **kwargs):
    """The share of attention that goes to the image tokens against depth, one line per query kind.

    ``shares`` is what ``AttentionMaps.kind_shares()`` returns for the maps
    of one tower and step (one row per layer, e.g.
    ``maps.select(tower='llm', phase='prefill').kind_shares()``): each line is
    the head mean of the share of a query kind's attention that goes to the
    image keys (every camera together), in ``[0, 1]``: FastV's reading (Chen
    et al., ECCV 2024). ``**kwargs`` go to ``ax.plot``, ``legend_kws`` to
    ``ax.legend``. Draws into the current Axes if ``ax`` is None; returns the Axes.

    >>> import numpy as np
    >>> from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout
    >>> lay = TokenLayout([Segment("image", 0, 3), Segment("text", 3, 4)])
    >>> m = [AttentionMap(np.full((1, 1, 4, 4), 0.25), "llm", i, "p", 0, "prefill", i, lay, lay) for i in range(2)]
    >>> fig, ax = plt.subplots()
    >>> ax = image_share(AttentionMaps(m).kind_shares(), ax=ax)
    >>> [float(y) for y in ax.lines[1].get_ydata()]
    [0.75, 0.75]
    """
    import warnings

    from .patterns import KindShares

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
            ax.plot(x, np.nanmean(shares.share(qk, "image"), -1), marker="o", markersize=3, label=f"{qk} queries", **kwargs)
    ax.set_xticks(x)
    ax.set_xticklabels([str(r.get("layer", i)) for i, r in enumerate(shares.rows)], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of attention on image tokens")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(**{"fontsize": 8, "frameon": False, **(legend_kws or {})})
    return ax

__all__ = [
    "attention_map",
    "layer_heads",
    "patch_grid",
    "grid_to_grid",
    "query_heatmap",
    "image_attention",
    "camera_attention",
    "label_map",
    "SCALES",
    "pattern_scores",
    "attention_distance",
    "figure_path",
    "save_figure",
    "LABEL_COLORS",
    "image_share",
]


# --------------------------------------------------------------------------- recorded episodes


def _episode(run, layers=None):
    """Per recorded step: the action/generated tokens' attention to each camera, and the image share per layer.

    A step's "action maps" are those whose queries hold ``action`` tokens (Pi0's
    expert) or, when none does, ``generated`` tokens (OpenVLA's decode passes).
    Heat maps average the query rows, heads, layers and passes; the share is the
    fraction of those rows' attention that lands on image tokens, per layer.
    """
    from ._errors import GetLocalError
    from .maps import AttentionMaps
    from .recording import Recording

    if not issubclass(type(run), Recording):
        raise _check.ArgumentTypeError(f"run must be a Recording (getlocal.load of a recorded run); got {_check.show(run)}")
    if layers is not None:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple, range, set)) \
                or not all(type(n) is int for n in layers):
            raise _check.ArgumentTypeError(f"layers must be None or a list of layer numbers (int); got {_check.show(layers)}")
        if not len(layers):
            raise _check.ArgumentError("layers is empty; give the layer numbers to average, or None for all")
    out = []
    kinds = set()
    for step in run:
        maps = step.maps
        if not isinstance(maps, AttentionMaps):
            raise _check.ArgumentError(f"step {step.step} of {run.path} holds a raw cache; episode figures need the "
                                       "labelled maps of an adapter: record with collect=lambda: adapter.collect(model)")
        kind = "action" if any(m.queries.find("action") for m in maps) else "generated"
        chosen = [m for m in maps if m.queries.find(kind) and m.keys.find("image")
                  and (layers is None or m.layer in layers)]
        if not chosen:
            continue
        kinds.add(kind)
        heats, share = {}, {}
        for m in chosen:
            arr = np.asarray(m.array, dtype=np.float32)[0]  # the first sample of the batch
            rows = m.queries.indices(kind)
            # on the 'uniform' scale of the other figures: each weight times the keys its row could see
            ratio = arr * _visible(arr).sum(-1, keepdims=True)
            for camera in m.keys.cameras:
                heat = query_heatmap(ratio, image_tokens=m.keys.image(camera), queries=rows, grid=m.keys.grid(camera))
                heats.setdefault(camera, []).append(heat)
            on_image = arr[:, rows][..., m.keys.indices("image")].sum(-1).mean()
            share.setdefault(m.layer, []).append(float(on_image))
        out.append({"step": step.step, "rank": step.rank, "source": step, "tower": chosen[0].tower,
                    "heats": {c: np.mean(h, axis=0) for c, h in heats.items()},
                    "share": {layer: float(np.mean(v)) for layer, v in share.items()}})
    if not out and layers is not None:
        present = sorted({m.layer for step in run for m in step.maps})
        raise _check.ArgumentError(f"layers={_check.show(layers)} matches no recorded layer; the run has layers {present}")
    if not out:
        raise GetLocalError(f"{getattr(run, 'path', 'the run')}: no step holds maps from action or generated tokens to "
                            "image tokens; record a VLA's language/expert tower (select= kept other towers only?)")
    return out, ("action" if "action" in kinds else "generated")


def _episode_top(data) -> float:
    """The top of an episode's 'uniform' colour scale: its largest ratio to uniform, at least 2."""
    return max([2.0] + [float(np.nanmax(h)) for d in data for h in d["heats"].values() if np.isfinite(h).any()])


def _episode_picture(images, camera):
    names = list(images)
    if not names:
        return None
    if camera is not None and camera in images:
        return images[camera]
    return images["image"] if "image" in images else images[names[0]]


def _episode_options(pad_to_square, alpha=0.5, **numbers):
    if isinstance(pad_to_square, dict):
        for camera, pad in pad_to_square.items():
            _check.flag(f"pad_to_square[{camera!r}]", pad)
    else:
        _check.flag("pad_to_square", pad_to_square)
    _check.number("alpha", alpha, low=0, high=1)
    for name, value in numbers.items():
        _check.number(name, value, low=0, high=100, low_open=True)


def _pad_of(pad_to_square, camera):
    if isinstance(pad_to_square, dict):
        return bool(pad_to_square.get(camera, pad_to_square.get("image", False)))
    return bool(pad_to_square)


def episode_grid(run, *, layers=None, pad_to_square=False, max_steps: int = 10, alpha: float = 0.5,
                 panel_size: float = 1.6, **kwargs):
    """Small multiples: one row per camera, one column per step (at most ``max_steps``, evenly spaced).

    Each panel is the step's frame with the attention of the action (or
    generated) tokens to that camera's patches on top, the letterbox of
    ``pad_to_square`` undone (a bool, or ``{camera: bool}``). All panels share
    one colour scale, the ``'uniform'`` scale of the other figures (attention
    times the keys a row could see: 1, white, is uniform attention), up to the
    episode's largest value (at least 2). ``layers``: the layers to average (all when None).
    ``**kwargs`` go to each overlay's ``ax.imshow``. Returns the Figure.
    """
    _check.integer("max_steps", max_steps, low=1)
    _episode_options(pad_to_square, alpha, panel_size=panel_size)
    data, kind = _episode(run, layers)
    picks = sorted(set(np.linspace(0, len(data) - 1, min(max_steps, len(data))).round().astype(int)))
    data = [data[i] for i in picks]
    cameras = list(dict.fromkeys(c for d in data for c in d["heats"]))
    # one scale for the whole episode, as on the other figures: 1 (uniform attention) is white
    top = _episode_top(data)
    kwargs.setdefault("vmin", 1.0 / top)
    kwargs.setdefault("vmax", top)
    fig, axes = plt.subplots(len(cameras), len(data), figsize=(panel_size * len(data) + 1.2, panel_size * len(cameras) + 0.7),
                             squeeze=False)
    im = None
    for col, d in enumerate(data):
        images = d["source"].images
        for row, camera in enumerate(cameras):
            ax = axes[row, col]
            heat, picture = d["heats"].get(camera), _episode_picture(images, camera)
            if heat is None:
                ax.set_axis_off()
                continue
            if picture is None:
                im = ax.imshow(heat, cmap=kwargs.get("cmap", _NEUTRAL_CMAP),
                               norm=LogNorm(kwargs["vmin"], kwargs["vmax"]))
                ax.set_xticks([]), ax.set_yticks([])
            else:
                im = _overlay(ax, _image(picture), heat, pad_to_square=_pad_of(pad_to_square, camera), alpha=alpha,
                              cbar=False, **kwargs)
            if row == 0:
                ax.set_title(f"step {d['step']}", fontsize=8)
            if col == 0:
                ax.set_ylabel(camera or "image", fontsize=8)
    _colorbar(fig, im, np.concatenate([h.ravel() for d in data for h in d["heats"].values()]), _LABELS["uniform"],
              None, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(f"{data[0]['tower']}: attention of the {kind} tokens to each camera, "
                 f"mean of {'all layers' if layers is None else 'layers ' + ', '.join(map(str, layers))}, heads and passes",
                 fontsize=9)
    return fig


def episode_image_share(run, *, layers=None, ax=None, **kwargs):
    """The share of the action (or generated) tokens' attention that goes to image tokens, per layer over the steps.

    A heat map with the steps across and the layers down, on a fixed 0..1
    scale; ``**kwargs`` go to ``ax.imshow``. Returns the Axes.
    """
    _check.axes("ax", ax)
    data, kind = _episode(run, layers)
    ax = ax if ax is not None else plt.gca()
    shown = sorted({layer for d in data for layer in d["share"]})
    table = np.array([[d["share"].get(layer, np.nan) for d in data] for layer in shown])
    kwargs.setdefault("cmap", "viridis")
    kwargs.setdefault("vmin", 0.0)
    kwargs.setdefault("vmax", 1.0)
    im = ax.imshow(table, aspect="auto", interpolation="nearest", **kwargs)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([str(layer) for layer in shown], fontsize=7)
    ax.set_ylabel(f"{data[0]['tower']} layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    ax.set_xticklabels([])
    ticks = [t for t in ax.get_xticks() if 0 <= t < len(data)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(data[int(t)]["step"]) for t in ticks], fontsize=7)
    ax.set_xlabel("recorded step")
    ax.set_title(f"share of the {kind} tokens' attention on image tokens", fontsize=9)
    ax.figure.colorbar(im, ax=ax, label="share (0 to 1)")
    return ax


def episode_gif(run, path, *, layers=None, pad_to_square=False, height: int = 192, alpha: float = 0.5,
                duration: int = 200, cmap: str = _NEUTRAL_CMAP) -> Path:
    """An animated GIF, one frame per recorded step: each camera's frame with the attention on top.

    The overlay is the attention of the action (or generated) tokens to that
    camera's patches, upsampled onto the frame with the letterbox of
    ``pad_to_square`` undone (as :func:`camera_attention`), on one colour scale
    for the whole episode: the ``'uniform'`` scale of the other figures
    (attention times the keys a row could see, log colours, 1 = uniform in
    white), up to the episode's largest value, at least 2 (the bar at the bottom).
    Each frame: a 30-pixel title band, then the cameras ``height`` pixels high,
    6 pixels apart from x=6, shown ``duration`` ms. Written with Pillow (no ffmpeg), through
    a temporary file. Returns the path.
    """
    from PIL import Image, ImageDraw, ImageFont

    _check.integer("height", height, low=16, high=4096)
    _check.integer("duration", duration, low=1)
    _episode_options(pad_to_square, alpha)
    if not isinstance(path, (str, os.PathLike)) or "\0" in os.fspath(path) or not str(os.fspath(path)).lower().endswith(".gif"):
        raise _check.ArgumentTypeError(f"path must be a file name ending in .gif (str or Path); got {_check.show(path)}")
    if not isinstance(cmap, str) or cmap not in plt.colormaps():
        raise _check.ArgumentError(f"cmap={_check.show(cmap)} is not a matplotlib colour map; try 'jet' or 'viridis'")
    data, kind = _episode(run, layers)
    cameras = list(dict.fromkeys(c for d in data for c in d["heats"]))
    vmax = _episode_top(data)
    vmin = 1.0 / vmax
    norm = LogNorm(vmin, vmax, clip=True)
    colormap = plt.get_cmap(cmap)
    font = ImageFont.load_default()
    frames = []
    for d in data:
        images = d["source"].images
        panels = []
        for camera in cameras:
            heat, picture = d["heats"].get(camera), _episode_picture(images, camera)
            pic = _image(picture) if picture is not None else np.zeros((height, height, 3))
            if pic.ndim == 2:
                pic = np.repeat(pic[..., None], 3, axis=2)
            pic = pic[..., :3].astype(np.float64) / (255.0 if pic.dtype == np.uint8 else 1.0)
            width = max(1, round(pic.shape[1] * height / pic.shape[0]))
            shown = np.asarray(Image.fromarray((np.clip(pic, 0, 1) * 255).astype(np.uint8)).resize(
                (width, height), Image.BILINEAR), dtype=np.float64) / 255
            if heat is not None:
                up = _heat_pixels(np.asarray(heat, dtype=np.float64), (height, width), _pad_of(pad_to_square, camera))
                shown = (1 - alpha) * shown + alpha * colormap(norm(up))[..., :3]
            panels.append((camera, (shown * 255).round().astype(np.uint8)))
        gap, top, bottom = 6, 30, 26
        total = sum(p.shape[1] for _, p in panels) + gap * (len(panels) + 1)
        canvas = Image.new("RGB", (max(total, 260), top + height + bottom), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((gap, 2), f"step {d['step']} (rank {d['rank']}): {kind} tokens -> image", fill="black", font=font)
        x = gap
        for camera, panel in panels:
            draw.text((x, 16), camera or "image", fill="black", font=font)
            canvas.paste(Image.fromarray(panel), (x, top))
            x += panel.shape[1] + gap
        bar_w = min(160, canvas.width - 90)
        bar = (colormap(np.linspace(0, 1, bar_w))[None, :, :3].repeat(8, axis=0) * 255).astype(np.uint8)
        bar_w = min(bar_w, canvas.width - 150)
        draw.text((gap, top + height + 2), f"{vmin:.3g}", fill="black", font=font)
        canvas.paste(Image.fromarray(bar[:, :bar_w]), (gap + 44, top + height + 4))
        draw.text((gap + 48 + bar_w, top + height + 2), f"{vmax:.3g} x uniform (white: 1)", fill="black", font=font)
        frames.append(canvas)
    path = Path(path)
    write_atomic(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                               duration=duration, loop=0, optimize=False))
    return path


__all__ += ["episode_grid", "episode_image_share", "episode_gif"]
