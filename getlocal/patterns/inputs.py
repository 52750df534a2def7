"""Input of the scores: image-token positions, grids and the other arguments, checked with the user's own words.

>>> image_positions((1, 197), 197), grid_shape(None, 196)
(slice(1, 197, None), (14, 14))

``as_array`` / ``as_attention`` (any captured value as a checked float array) live
in :mod:`getlocal._arrays`, shared with the token-kind shares of the data layer.
"""
from __future__ import annotations

import functools
import math
from typing import Tuple

import numpy as np

from .. import _arrays, _check
from .._errors import ArgumentError
from ..maps import AttentionMap, AttentionMaps
from ..tokens import visible_until  # noqa: F401 (re-exported: the scores read visibility from the map)

__all__ = ["as_array", "as_attention", "image_positions", "check_radius", "check_patch_size", "count", "grid_shape",
           "image_block", "distances", "visible_until", "visible_keys", "visible_queries",
           "head_mean"]


def as_array(value, name: str = "attn") -> np.ndarray:
    """:func:`getlocal._arrays.as_array`, and an :class:`~getlocal.maps.AttentionMap` gives its array."""
    return _arrays.as_array(_one_map(value, name), name)


def as_attention(attn, name: str = "attn") -> np.ndarray:
    """:func:`getlocal._arrays.as_attention` (a checked ``[B, H, Q, K]`` float array); an ``AttentionMap``: its array.

    >>> from getlocal.maps import AttentionMap, TokenLayout, Segment
    >>> lay = TokenLayout([Segment('image', 0, 4, grid=(2, 2))])
    >>> as_attention(AttentionMap(np.full((2, 4, 4), 0.25), 'vit', 0, 'b', 0, 'encode', 0, lay, lay)).shape
    (1, 2, 4, 4)
    """
    return _arrays.as_attention(_one_map(attn, name), name)


def _one_map(value, name: str):
    """The array of an ``AttentionMap``; a whole ``AttentionMaps`` is refused with the two ways to use it."""
    if isinstance(value, AttentionMap):
        return value.array
    if isinstance(value, AttentionMaps):
        raise ArgumentError(
            f"{name} is one map, but an AttentionMaps of {len(value)} maps was given; pass one of them "
            "(maps[0], or maps.select(...)[i]) or score them all with patterns.summarize(maps)")
    return value


def image_positions(image_tokens, k: int, name: str = "image_tokens"):
    """Key positions of the image tokens: a ``slice`` when contiguous, else an int array."""
    if image_tokens is None:
        return slice(0, k)
    if isinstance(image_tokens, tuple) and len(image_tokens) == 2 and all(
        isinstance(v, (int, np.integer)) for v in image_tokens
    ):
        image_tokens = slice(int(image_tokens[0]), int(image_tokens[1]))
    if isinstance(image_tokens, slice):
        start, stop, step = image_tokens.indices(k)
        if step == 1:
            if stop <= start:
                raise ArgumentError(f"{name}={image_tokens!r} selects no token of the {k} keys")
            return slice(start, stop)
        image_tokens = np.arange(start, stop, step)
    try:
        idx = np.asarray(image_tokens)
    except Exception:  # noqa: BLE001 - anything numpy cannot read is the same mistake
        idx = np.zeros(0, dtype=object)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ArgumentError(
            f"{name} must be a slice, a (start, stop) pair or a 1-D array of token positions; got {image_tokens!r}"
        )
    idx = np.where(idx < 0, idx + k, idx)
    if idx.min() < 0 or idx.max() >= k:
        raise ArgumentError(f"{name} has positions outside the {k} keys of the map: {image_tokens!r}")
    if np.unique(idx).size != idx.size:
        raise ArgumentError(f"{name} repeats token positions: {image_tokens!r}")
    if np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def check_radius(radius) -> int:
    return _check.integer("radius", radius, low=0, high=64)  # (2r+1)^2 offsets per head; 64 is past any grid


def check_patch_size(patch_size):
    return _check.number("patch_size", patch_size, low=0, high=_check.HUGE, low_open=True, optional=True)


def count(positions) -> int:
    return positions.stop - positions.start if isinstance(positions, slice) else positions.size


def grid_shape(grid, n: int, image_tokens=None) -> Tuple[int, int]:
    """The ``(h, w)`` grid of ``n`` image tokens, inferred when ``n`` is a square."""
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            hint = ""
            if image_tokens is None and math.isqrt(n - 1) ** 2 == n - 1:
                hint = f" (if token 0 is a class token, pass image_tokens=slice(1, {n}))"
            raise ArgumentError(
                f"grid=None but the {n} image tokens (image_tokens={image_tokens!r}) are not a square number, "
                f"so the grid cannot be inferred; pass grid=(h, w) with h * w == {n}{hint}"
            )
        return side, side
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ArgumentError(f"grid must be a pair (h, w) of positive ints; got {grid!r}") from None
    if h < 1 or w < 1:
        raise ArgumentError(f"grid must be a pair (h, w) of positive ints; got {grid!r}")
    if h * w != n:
        raise ArgumentError(
            f"grid={grid!r} has {h * w} cells but image_tokens selects {n} tokens; "
            f"pass a grid with h * w == {n} or fix image_tokens"
        )
    return h, w


def image_block(a: np.ndarray, image_tokens, grid):
    """The image-query x image-key block of a ``[B, H, Q, K]`` map.

    Returns ``(block, cells, (h, w))``: ``block[..., i, j]`` is the attention of
    the image query in grid cell ``cells[i]`` to the image key in cell ``j``.
    A decode map (``Q < K``) holds only the image queries that it contains.
    """
    q, k = a.shape[-2:]
    shift = k - q
    keys = image_positions(image_tokens, k)
    n = count(keys)
    hw = grid_shape(grid, n, image_tokens)
    if isinstance(keys, slice):
        first = min(max(keys.start, shift), keys.stop)
        cells = np.arange(first - keys.start, n)
        block = a[..., first - shift : max(keys.stop, first) - shift, keys]
    else:
        seen = keys >= shift
        cells = np.flatnonzero(seen)
        block = a[..., keys[seen][:, None] - shift, keys[None, :]]
    return block, cells, hw


@functools.lru_cache(maxsize=16)
def distances(h: int, w: int) -> np.ndarray:
    r, c = np.divmod(np.arange(h * w), w)
    d = np.hypot(r[:, None] - r[None, :], c[:, None] - c[None, :])
    d.setflags(write=False)
    return d


def visible_keys(until: np.ndarray) -> np.ndarray:
    """``[B, Q]``: how many keys each query row sees (``visible_until(a) + 1``)."""
    return until + 1


def visible_queries(until: np.ndarray, k: int) -> np.ndarray:
    """``[B, K]``: how many query rows see each key."""
    return (until[..., None] >= np.arange(k)).sum(-2)


def head_mean(x: np.ndarray) -> np.ndarray:
    """Per-head values from ``[B, H, ...]`` per-item values: the batch mean."""
    return x.mean(axis=0)
