"""The values a map is drawn with: heads as ``[H, Q, K]``, the keys each row could see, scales, query heat maps.

>>> import numpy as np
>>> values, note = prepare_maps(np.full((4, 4), 0.25), scale="uniform", sinks=None)
>>> values[0].tolist()[0]                      # uniform attention is 1 on the 'uniform' scale
[1.0, 1.0, 1.0, 1.0]

Pure numpy: :mod:`getlocal.plot` draws these values, the numbers are made here.
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import _check
from .._errors import ArgumentError
from .inputs import as_array, count, grid_shape, image_positions, visible_until


#: The colour scales every map and overlay helper takes as ``scale=``.
SCALES = ("uniform", "log", "linear")

#: The one colour of each pattern label, in every figure panel (label map, score lines) and in the viewer.
LABEL_COLORS = {"diagonal": "#1f77b4", "stripe": "#2ca02c", "vertical": "#d62728", "block": "#ff7f0e",
                "mixed": "#c7c7c7"}

#: The 'uniform' scale's fixed range: ``1 / UNIFORM_RANGE`` to ``UNIFORM_RANGE`` times uniform, on a log scale.
#: Fixed, not stretched to each map's largest value, so that the 0.5-2x departures
#: of random weights stay pale on every figure and a learned pattern (a key at
#: 8x uniform, a head at 0) takes the full colour.
UNIFORM_RANGE = 8.0
#: How the colours grow away from white: ``|position from the centre| ** UNIFORM_GAMMA``;
#: above 1 the centre stays pale longer (2x uniform: about a third of the full colour).
UNIFORM_GAMMA = 1.5
#: The matplotlib name of the 'uniform' scale's colour map (:func:`uniform_colors`), registered by :mod:`getlocal.plot`.
UNIFORM_CMAP = "getlocal_uniform"
#: ColorBrewer's RdBu (11 classes), blue (less than uniform) to red (more); white is uniform.
_RDBU = ("#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7",
         "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f")


def uniform_colors(n: int = 256) -> np.ndarray:
    """``[n, 3]`` RGB in [0, 1]: the 'uniform' scale's colours, low to high, for the figures and the viewer alike.

    Entry ``i`` is the colour of ``x`` times uniform where
    ``log(x) / log(UNIFORM_RANGE)`` is ``2 i / (n - 1) - 1``.

    >>> c = uniform_colors(5)
    >>> [round(float(v), 3) for v in c[2]]            # the centre (1 x uniform): ColorBrewer's white
    [0.969, 0.969, 0.969]
    """
    stops = np.array([[int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)] for h in _RDBU])
    t = np.linspace(-1, 1, n)
    pos = 0.5 + np.sign(t) * np.abs(t) ** UNIFORM_GAMMA / 2  # where on RdBu each entry sits
    x = np.linspace(0, 1, len(stops))
    return np.stack([np.interp(pos, x, stops[:, c]) for c in range(3)], axis=-1)


def departure(values) -> dict:
    """How far a map on the 'uniform' scale (1 = uniform attention) is from uniform: the numbers a title states.

    Returns ``{"max": largest ratio, "min": smallest, "outside": share of the
    finite entries outside 0.8-1.25x, "n": how many entries}``; NaN (keys a
    row could not see) is left out.

    >>> d = departure([1.0, 1.0, 2.0, 0.5])
    >>> d["max"], d["min"], d["outside"]
    (2.0, 0.5, 0.5)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not v.size:
        return {"max": float("nan"), "min": float("nan"), "outside": float("nan"), "n": 0}
    outside = float(np.mean((v < 0.8) | (v > 1.25)))
    return {"max": float(v.max()), "min": float(v.min()), "outside": outside, "n": int(v.size)}


def departure_text(values) -> str:
    """:func:`departure` in words: ``"0.45-2.3x uniform, 17% of entries outside 0.8-1.25x"``."""
    d = departure(values)
    if not d["n"]:
        return "no visible entry"
    return f"{d['min']:.2g}-{d['max']:.2g}x uniform, {100 * d['outside']:.0f}% of entries outside 0.8-1.25x"


#: The score that makes each label (the line of :func:`getlocal.plot.pattern_scores` drawn in its colour).
SCORE_LABELS = {"self_mass": "diagonal", "diagonal_mass": "diagonal", "neighbour_mass": "stripe",
                "top_key_mass": "vertical", "block_score": "block"}


def as_maps(attn, name: str = "attn") -> np.ndarray:
    """``attn`` as a ``[H, Q, K]`` float array."""
    arr = as_array(attn, name)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ArgumentError(
                f"{name} has a batch of {arr.shape[0]} maps (shape {tuple(arr.shape)}); "
                f"plot one item at a time, e.g. {name}[0]"
            )
        arr = arr[0]
    elif arr.ndim != 3:
        raise ArgumentError(f"{name} must be [Q, K], [H, Q, K] or [1, H, Q, K]; got shape {tuple(arr.shape)}")
    if 0 in arr.shape:
        raise ArgumentError(f"{name} is empty: shape {tuple(arr.shape)}")
    return arr


def nanmean(a, axis):
    """The mean over ``axis`` ignoring NaN (keys a row could not see); NaN where nothing is left, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis)


def visible_mask(maps: np.ndarray) -> np.ndarray:
    """``[Q, K]`` bool: which keys each query row of a ``[H, Q, K]`` map could see, as the scores read it.

    :func:`~getlocal.tokens.visible_until`: a row sees the keys up to the later
    of its own position (``K - Q + i``) and the last key any head gives
    weight, so a causal map's upper triangle (exactly 0 in every head) is
    hidden and a bidirectional map shows everything. A row of zeros (a padding
    query) sees nothing.
    """
    until = visible_until(np.asarray(maps)[None])[0]
    return np.arange(maps.shape[-1])[None, :] <= until[:, None]


def keys_index(value, k: int, name: str) -> np.ndarray:
    try:
        if value is None or isinstance(value, bool):
            raise TypeError
        picked = np.atleast_1d(np.arange(k)[value])
    except Exception:  # noqa: BLE001 - whatever numpy cannot index with is the same mistake
        raise ArgumentError(f"{name}={value!r} does not index the {k} keys of the map; give a key position, "
                         "a list of them or a slice") from None
    return picked


def without_sinks(maps: np.ndarray, sinks, visible: np.ndarray):
    """Mask the ``sinks`` key columns and renormalise every row over the keys left."""
    cols = keys_index(sinks, maps.shape[-1], "sinks")
    maps = maps.astype(np.float64, copy=True)
    maps[..., cols] = 0.0
    total = maps.sum(-1, keepdims=True)
    maps = np.divide(maps, total, out=np.full_like(maps, np.nan), where=total > 0)
    visible = visible.copy()
    visible[:, cols] = False
    return maps, visible, cols


def scaled(maps: np.ndarray, scale: str, visible: np.ndarray) -> np.ndarray:
    """The values drawn on ``scale``: keys a row could not see are NaN (drawn grey) except on 'linear'."""
    if scale == "linear":
        return np.where(visible, maps, 0.0)
    out = np.where(visible, maps, np.nan)
    if scale == "uniform":
        out = out * visible.sum(-1, keepdims=True)
    return out


def prepare_maps(attn, *, scale, sinks, name="attn"):
    """``[H, Q, K]`` values on ``scale`` (sinks masked, rows renormalised), and the words that say so."""
    _check.choice("scale", scale, SCALES)
    maps = as_maps(attn, name)
    visible = visible_mask(maps)
    note = ""
    if sinks is not None:
        maps, visible, cols = without_sinks(maps, sinks, visible)
        shown = ", ".join(str(int(c)) for c in cols[:6]) + (", ..." if len(cols) > 6 else "")
        note = f"without sinks (keys {shown} masked, rows renormalised)"
    return scaled(maps, scale, visible), note


def reducer(name, reduce):
    _check.choice(name, reduce, ("mean", "max"))
    return np.mean if reduce == "mean" else np.max


def is_int_pair(value):
    return len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value)


def grid_cells(grid):
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ArgumentError(f"grid must be a pair (h, w) of positive ints; got {grid!r}") from None
    return h * w


def grid_cell(cell, grid, name="cell"):
    """``(row, col)`` of a cell given as ``(row, col)`` or as a flat index."""
    h, w = grid
    if isinstance(cell, (int, np.integer)):
        if not -h * w <= cell < h * w:
            raise ArgumentError(f"{name}={cell} is outside the {h} x {w} grid ({h * w} cells)")
        return divmod(int(cell) % (h * w), w)
    try:
        r, c = (int(v) for v in cell)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be a flat cell index or a (row, col) pair; got {cell!r}") from None
    if not (0 <= r < h and 0 <= c < w):
        raise ArgumentError(f"{name}={cell!r} is outside the {h} x {w} grid; rows are 0..{h - 1}, columns 0..{w - 1}")
    return r, c


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
    fn = reducer("reduce", reduce)
    _check.choice("scale", scale, SCALES)
    maps, _ = prepare_maps(attn, scale="uniform" if scale == "uniform" else "linear", sinks=None)
    nh, q, k = maps.shape
    positions = image_positions(image_tokens, k)
    hw = grid_shape(grid, count(positions), image_tokens)
    rows = np.arange(q)
    try:
        if queries is None or isinstance(queries, bool):
            raise TypeError
        picked = np.atleast_1d(rows[queries])
    except Exception:  # noqa: BLE001 - whatever numpy cannot index with is the same mistake
        raise ArgumentError(f"queries={queries!r} does not index the {q} query rows of the map") from None
    if picked.size == 0:
        raise ArgumentError(f"queries={queries!r} selects no query row of the {q} in the map")
    if heads is not None:
        try:
            if isinstance(heads, bool):
                raise TypeError
            maps = maps[np.atleast_1d(np.arange(nh)[heads])]
        except Exception:  # noqa: BLE001
            raise ArgumentError(f"heads={heads!r} does not index the {nh} heads of the map") from None
    per_head = nanmean(maps[:, picked, :][..., positions], 1)
    return fn(per_head, axis=0).reshape(hw)


def query_patch(attn, *, query, grid=None, image_tokens=None, head=None, scale: str = "uniform"):
    """The attention of one image query patch, as :func:`getlocal.plot.grid_to_grid` draws it.

    Returns ``((row, col), (h, w), heat, weights, shown)``: the query's cell and
    the grid, ``heat [h, w]`` its attention to the image patches on ``scale``,
    ``weights [K]`` its raw attention to every key and ``shown [K]`` the same on
    ``scale``; the mean over heads when ``head`` is None.

    >>> import numpy as np
    >>> cell, hw, heat, weights, shown = query_patch(np.full((5, 5), 0.2), query=3, image_tokens=slice(1, 5))
    >>> cell, hw, heat.tolist()
    ((1, 1), (2, 2), [[1.0, 1.0], [1.0, 1.0]])
    """
    raw = as_maps(attn)
    values, _ = prepare_maps(raw, scale=scale, sinks=None)
    q, k = raw.shape[-2:]
    positions = image_positions(image_tokens, k)
    n = count(positions)
    hw = grid_shape(grid, n, image_tokens)
    r, c = grid_cell(query, hw, "query")
    keys = np.arange(k)[positions]
    row = int(keys[r * hw[1] + c]) - (k - q)
    if row < 0:
        raise ArgumentError(
            f"query={query!r} is image token {keys[r * hw[1] + c]}, which is not among the {q} queries of this decode map"
        )
    if head is None:
        weights, shown = raw[:, row, :].mean(0), nanmean(values[:, row, :], 0)
    else:
        if not -raw.shape[0] <= head < raw.shape[0]:
            raise ArgumentError(f"head={head} but attn has {raw.shape[0]} heads")
        weights, shown = raw[head, row, :], values[head, row, :]
    return (r, c), hw, shown[keys].reshape(hw), weights, shown
