"""Measure the attention patterns people usually judge by eye.

Four patterns recur in vision transformers and language models (Kovaleva et
al., EMNLP 2019, "Revealing the Dark Secrets of BERT"; Clark et al., 2019,
"What Does BERT Look At?"): every query attends to the token at one fixed
offset (a *diagonal*: itself at offset 0, the previous token at -1, the next
at +1), to its spatial neighbours (*stripes*: on a flattened ``h x w`` patch
grid the neighbours sit at offsets ``+-1``, ``+-w`` and ``+-w+-1``), every
query attends to the same few keys (*vertical* lines: attention sinks,
[CLS]/[SEP]/BOS, register or high-norm tokens), or queries spread over their
own segment (*block*). This module scores each head for each pattern, adds the
mean attention distance and the normalised entropy, labels the head, and
gathers a model's layers into one :class:`PatternTable`. :func:`kind_shares`
tells how much attention each kind of token (image, text, action, ...) gives
each other kind.

Maps are ``[H, Q, K]`` or ``[B, H, Q, K]`` arrays (numpy or torch, any float
dtype, bfloat16 included); a ``[B, ...]`` map is scored per batch item and the
per-head scores are averaged over the batch. ``Q < K`` is a decode map: query
``i`` sits at key position ``K - Q + i``. Only numpy is imported here.

>>> import numpy as np
>>> from getlocal import patterns
>>> attn = np.eye(196)[None]                       # one head attending to itself
>>> patterns.classify_heads(attn, grid=(14, 14))
['diagonal']
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _check
from ._convert import converter
from .maps import TokenLayout

#: A head is labelled after its largest pattern score when that score reaches
#: these values; otherwise it is ``"mixed"``. 0.5 means "the pattern holds the
#: majority of the attention mass": a choice of this library, not of a paper.
DIAGONAL_THRESHOLD = 0.5
STRIPE_THRESHOLD = 0.5
VERTICAL_THRESHOLD = 0.5
BLOCK_THRESHOLD = 0.5
#: A key is a sink when the mean attention it receives exceeds this
#: (the epsilon = 0.3 of Gu et al., ICLR 2025, "When Attention Sink Emerges in
#: Language Models", Sec. 3).
SINK_THRESHOLD = 0.3
#: The "top keys" of the vertical score are this fraction of all keys: about
#: the share of high-norm outlier tokens that Darcet et al., ICLR 2024
#: ("Vision Transformers Need Registers", Sec. 2) find in large ViTs.
TOP_KEY_FRACTION = 0.02

#: ``"mixed"`` is what Kovaleva et al. (2019) call *heterogeneous*. A ``"diagonal"``
#: head has an ``offset`` (0: itself, -1: the previous token, ...).
LABELS = ("diagonal", "stripe", "vertical", "block", "mixed")
_to_numpy = converter("numpy")
_NEIGHBOURS_8 = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))


# --------------------------------------------------------------------------- input


def _as_array(value, name: str = "attn") -> np.ndarray:
    """A float numpy array from numpy, torch (any dtype, any device) or array-likes."""
    value = _to_numpy(value)  # what get_local stores by default: detached, CPU, bf16/f16 as float32
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - depends on the foreign object
        raise ValueError(f"{name} must be an array (numpy or torch); got {type(value).__name__}") from exc
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif not np.issubdtype(arr.dtype, np.floating):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise ValueError(f"{name} must hold numbers; got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return arr


def _attention(attn, name: str = "attn") -> np.ndarray:
    """``attn`` as a checked ``[B, H, Q, K]`` float array."""
    arr = _as_array(attn, name)
    if arr.ndim == 3:
        arr = arr[None]
    elif arr.ndim != 4:
        raise ValueError(
            f"{name} must be [H, Q, K] or [B, H, Q, K]; got shape {tuple(arr.shape)}; "
            f"add a head axis with attn[None] for a single [Q, K] map"
        )
    q, k = arr.shape[-2:]
    if 0 in arr.shape:
        raise ValueError(f"{name} is empty: shape {tuple(arr.shape)}")
    if q > k:
        raise ValueError(
            f"{name} has more queries (Q={q}) than keys (K={k}); maps are [..., Q, K] with "
            f"query i at key position K - Q + i; transpose the last two axes if they are swapped"
        )
    lowest = arr.min()
    if not np.isfinite(lowest) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or inf; pass attention probabilities (after softmax)")
    if lowest < 0:
        raise ValueError(
            f"{name} must be non-negative attention probabilities; got a minimum of {float(lowest):.4g}; "
            f"pass the map after softmax, not the scores (logits)"
        )
    return arr


def _image_positions(image_tokens, k: int, name: str = "image_tokens"):
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
                raise ValueError(f"{name}={image_tokens!r} selects no token of the {k} keys")
            return slice(start, stop)
        image_tokens = np.arange(start, stop, step)
    try:
        idx = np.asarray(image_tokens)
    except Exception:  # noqa: BLE001 - anything numpy cannot read is the same mistake
        idx = np.zeros(0, dtype=object)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(
            f"{name} must be a slice, a (start, stop) pair or a 1-D array of token positions; got {image_tokens!r}"
        )
    idx = np.where(idx < 0, idx + k, idx)
    if idx.min() < 0 or idx.max() >= k:
        raise ValueError(f"{name} has positions outside the {k} keys of the map: {image_tokens!r}")
    if np.unique(idx).size != idx.size:
        raise ValueError(f"{name} repeats token positions: {image_tokens!r}")
    if np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _radius(radius) -> int:
    return _check.integer("radius", radius, low=0, high=64)  # (2r+1)^2 offsets per head; 64 is past any grid


def _patch_size(patch_size):
    return _check.number("patch_size", patch_size, low=0, high=_check.HUGE, low_open=True, optional=True)


def _count(positions) -> int:
    return positions.stop - positions.start if isinstance(positions, slice) else positions.size


def _grid(grid, n: int, image_tokens=None) -> Tuple[int, int]:
    """The ``(h, w)`` grid of ``n`` image tokens, inferred when ``n`` is a square."""
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            hint = ""
            if image_tokens is None and math.isqrt(n - 1) ** 2 == n - 1:
                hint = f" (if token 0 is a class token, pass image_tokens=slice(1, {n}))"
            raise ValueError(
                f"grid=None but the {n} image tokens (image_tokens={image_tokens!r}) are not a square number, "
                f"so the grid cannot be inferred; pass grid=(h, w) with h * w == {n}{hint}"
            )
        return side, side
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be a pair (h, w) of positive ints; got {grid!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"grid must be a pair (h, w) of positive ints; got {grid!r}")
    if h * w != n:
        raise ValueError(
            f"grid={grid!r} has {h * w} cells but image_tokens selects {n} tokens; "
            f"pass a grid with h * w == {n} or fix image_tokens"
        )
    return h, w


def _image_block(a: np.ndarray, image_tokens, grid):
    """The image-query x image-key block of a ``[B, H, Q, K]`` map.

    Returns ``(block, cells, (h, w))``: ``block[..., i, j]`` is the attention of
    the image query in grid cell ``cells[i]`` to the image key in cell ``j``.
    A decode map (``Q < K``) holds only the image queries that it contains.
    """
    q, k = a.shape[-2:]
    shift = k - q
    keys = _image_positions(image_tokens, k)
    n = _count(keys)
    hw = _grid(grid, n, image_tokens)
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
def _distances(h: int, w: int) -> np.ndarray:
    r, c = np.divmod(np.arange(h * w), w)
    d = np.hypot(r[:, None] - r[None, :], c[:, None] - c[None, :])
    d.setflags(write=False)
    return d


def _visible_keys(q: int, k: int, causal: bool) -> np.ndarray:
    """How many keys each query row can see."""
    if not causal:
        return np.full(q, k)
    return np.arange(k - q + 1, k + 1)


def _visible_queries(q: int, k: int, causal: bool) -> np.ndarray:
    """How many query rows can see each key."""
    if not causal:
        return np.full(k, q)
    return q - np.clip(np.arange(k) - (k - q), 0, None)


def _head_mean(x: np.ndarray) -> np.ndarray:
    """Per-head values from ``[B, H, ...]`` per-item values: the batch mean."""
    return x.mean(axis=0)


# --------------------------------------------------------------------------- diagonal


def self_mass(attn) -> np.ndarray:
    """Attention each head keeps on the query itself: ``mean_q A[q, K - Q + q]``.

    Returns ``[H]``; 1 for an identity map, ``1/K`` for uniform attention.
    For a decode map (``Q < K``) query ``q`` sits at key position ``K - Q + q``.
    Source: the diagonal of early ViT layers described in the write-up of the
    Visualizer tool (luo3300612) that this library grew from; this is its
    mass.

    >>> import numpy as np
    >>> self_mass(np.eye(4)[None]).tolist()
    [1.0]
    """
    a = _attention(attn)
    q, k = a.shape[-2:]
    return _head_mean(np.diagonal(a, offset=k - q, axis1=-2, axis2=-1).mean(-1))


def offset_profile(attn, *, max_offset: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The 1-D offset profile ``S(d) = mean_q A[q, K - Q + q + d]``.

    The mean runs over the queries whose key ``K - Q + q + d`` exists, so the
    ends of the profile are not diluted by missing pairs. ``S(0)`` is
    :func:`self_mass`; stripes on a flattened ``h x w`` grid show up at
    ``d = +-1, +-w, +-w+-1`` (the "several diagonals" of the Visualizer
    write-up). Returns ``(offsets, S)`` with ``S`` of shape
    ``[H, len(offsets)]``; offsets run from ``-max_offset`` to ``max_offset``
    (all of ``-(K-1) .. Q-1`` when ``max_offset`` is None), NaN where no pair exists.

    >>> import numpy as np
    >>> d, s = offset_profile(np.eye(3, k=1)[None], max_offset=1)
    >>> d.tolist(), s[0].tolist()
    ([-1, 0, 1], [0.0, 0.0, 1.0])
    """
    a = _attention(attn)
    q, k = a.shape[-2:]
    if max_offset is None:
        offsets = np.arange(-(k - 1), q)
    else:
        max_offset = _check.integer("max_offset", max_offset, low=0)
        offsets = np.arange(-int(max_offset), int(max_offset) + 1)
    out = np.full((a.shape[1], offsets.size), np.nan)
    for j, d in enumerate(offsets):
        diag = np.diagonal(a, offset=k - q + int(d), axis1=-2, axis2=-1)
        if diag.shape[-1]:
            out[:, j] = _head_mean(diag.mean(-1))
    return offsets, out


def _diagonal_lengths(q: int, k: int, offsets: np.ndarray) -> np.ndarray:
    """How many queries have a key at each 1-D offset (query ``i`` sits at ``K - Q + i``)."""
    lo = np.maximum(0, q - k - offsets)
    hi = np.minimum(q, q - offsets)
    return np.maximum(hi - lo, 0)


def _offset_scores(a: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(offsets, S)``: the searched 1-D offsets, ``0, -1, 1, -2, 2, ...``, and ``S [H, n]``.

    An offset ``d != 0`` is searched when at least ``max(2, ceil(Q / 2))``
    queries have a key at ``d``: a mean over one or two queries at the far end
    of the map would call a sink a diagonal.
    """
    q, k = a.shape[-2:]
    offsets = np.arange(-(k - 1), q)
    lengths = _diagonal_lengths(q, k, offsets)
    keep = (offsets == 0) | (lengths >= max(2, math.ceil(q / 2)))
    offsets = offsets[keep]
    offsets = offsets[np.lexsort((offsets, np.abs(offsets)))]  # 0, -1, 1, -2, 2, ...: ties go to the nearest
    out = np.empty((a.shape[1], offsets.size))
    for j, d in enumerate(offsets):
        out[:, j] = _head_mean(np.diagonal(a, offset=k - q + int(d), axis1=-2, axis2=-1).mean(-1))
    return offsets, out


def diagonal_offset(attn) -> Tuple[np.ndarray, np.ndarray]:
    """The 1-D diagonal of each head: ``(offset [H], score [H])``.

    ``score = max_d S(d)`` with ``S`` the :func:`offset_profile`, taken over the
    offsets that at least half the queries (and at least two) have; ``offset``
    is the ``d`` that reaches it (the nearest to 0 on ties, the previous token
    before the next). ``S(0)`` is :func:`self_mass`. A previous-token head
    (every query on the token before it: Clark et al., 2019, Sec. 3) has
    offset -1 and score 1, also on a causal map (query 0, which has no
    previous token, is not counted) and on a decode map (``Q < K``); a
    next-token head +1; a head on itself 0. Uniform attention scores ``1/K``
    (about ``ln K / K`` on a causal map).

    >>> import numpy as np
    >>> offset, score = diagonal_offset(np.eye(5, k=-1)[None])   # each token on the one before
    >>> offset.tolist(), score.tolist()
    ([-1], [1.0])
    """
    a = _attention(attn)
    offsets, prof = _offset_scores(a)
    best = prof.argmax(-1)
    return offsets[best], prof[np.arange(prof.shape[0]), best]


# --------------------------------------------------------------------------- stripes


def _neighbour_sums(block, cells, hw, radius):
    """Per-offset sums and pair counts of ``block`` over the in-grid neighbours."""
    h, w = hw
    r, c = np.divmod(cells, w)
    sums = np.zeros(block.shape[:2] + (2 * radius + 1, 2 * radius + 1))
    counts = np.zeros((2 * radius + 1, 2 * radius + 1), dtype=np.int64)
    rows = np.arange(cells.size)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            rr, cc = r + dr, c + dc
            # never wrap across row ends: a neighbour off the grid does not exist
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            if not ok.any():
                continue
            picked = block[..., rows[ok], rr[ok] * w + cc[ok]]
            sums[:, :, dr + radius, dc + radius] = picked.sum(-1)
            counts[dr + radius, dc + radius] = ok.sum()
    return sums, counts


def neighbour_map(attn, *, image_tokens=None, grid=None, radius: int = 2) -> np.ndarray:
    """Query-centred mean map ``M[dr, dc] = mean_q A[q, cell(q) + (dr, dc)]``.

    For each head, the attention an image patch gives to the patch ``dr`` rows
    and ``dc`` columns away, averaged over the image queries whose neighbour is
    inside the grid (neighbours never wrap across row ends). Returns
    ``[H, 2r+1, 2r+1]`` with ``M[:, radius, radius]`` the self term; NaN where
    no query has that neighbour. ``image_tokens`` picks the image tokens
    (``slice(1, 197)``, ``(1, 197)`` or an index array; all keys when None);
    ``grid=(h, w)`` is inferred when their number is a perfect square.

    >>> import numpy as np
    >>> m = neighbour_map(np.eye(16, k=1)[None], grid=(4, 4), radius=1)
    >>> float(m[0, 1, 2])          # every query that has a right neighbour looks at it
    1.0
    """
    radius = _radius(radius)
    a = _attention(attn)
    radius = int(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0; got {radius}")
    block, cells, hw = _image_block(a, image_tokens, grid)
    if cells.size == 0:
        return np.full((a.shape[1], 2 * radius + 1, 2 * radius + 1), np.nan)
    sums, counts = _neighbour_sums(block, cells, hw, radius)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _head_mean(sums / np.where(counts, counts, np.nan))


def neighbour_mass(attn, *, image_tokens=None, grid=None) -> np.ndarray:
    """Attention each image query gives its 8 grid neighbours, mean over queries.

    ``mean_q sum_{k in N8(q)} A[q, k]`` with ``N8(q)`` the in-grid cells at
    ``(dr, dc)`` in ``{-1, 0, 1}^2 \\ {(0, 0)}`` (edge and corner patches have
    fewer). It is the stripe score: 1 for a head that attends only to its
    4- or 8-neighbours, ``8/N`` or less for uniform attention over ``N``
    patches. Source: the neighbour stripes of middle ViT layers in the
    Visualizer write-up, measured on the 2-D grid so that row ends do not
    count as neighbours. Returns ``[H]`` (NaN when the map has no image query).

    >>> import numpy as np
    >>> neighbour_mass(np.eye(16, k=1)[None], grid=(4, 4)).tolist()
    [0.75]
    """
    a = _attention(attn)
    block, cells, hw = _image_block(a, image_tokens, grid)
    return _neighbour_mass(block, cells, hw)


def _neighbour_mass(block, cells, hw):
    if cells.size == 0:
        return np.full(block.shape[1], np.nan)
    sums, _ = _neighbour_sums(block, cells, hw, 1)
    sums[:, :, 1, 1] = 0
    return _head_mean(sums.sum((-2, -1)) / cells.size)


def dominant_offsets(attn, *, image_tokens=None, grid=None, radius: int = 2, top: int = 4) -> List[List[Tuple[int, int]]]:
    """The grid offsets ``(dr, dc)`` each head favours, strongest first.

    An offset counts when its :func:`neighbour_map` value ``M[dr, dc]`` is more
    than twice the uniform level ``1 / N`` (``N`` image tokens); ``(0, 0)`` is
    left out (that is :func:`self_mass`). At most ``top`` offsets per head.

    >>> import numpy as np
    >>> dominant_offsets(np.eye(16, k=1)[None], grid=(4, 4))
    [[(0, 1)]]
    """
    radius = _radius(radius)
    top = _check.integer("top", top, low=1)
    m = neighbour_map(attn, image_tokens=image_tokens, grid=grid, radius=radius)
    n = _count(_image_positions(image_tokens, _as_array(attn).shape[-1]))
    return _dominant(m, n, int(radius), int(top))


def _dominant(m, n, radius, top):
    out = []
    for head in m:
        flat = np.where(np.isnan(head), -np.inf, head).ravel()
        flat[radius * (2 * radius + 2)] = -np.inf  # the centre (0, 0)
        order = np.argsort(-flat, kind="stable")[:top]
        side = 2 * radius + 1
        out.append([(int(i // side - radius), int(i % side - radius)) for i in order if flat[i] > 2.0 / n])
    return out


# --------------------------------------------------------------------------- vertical lines


def received_attention(attn, *, causal: bool = False) -> np.ndarray:
    """Mean attention each key receives from the queries that can see it.

    ``r[k] = sum_q A[q, k] / #{q : q sees k}``; with ``causal=True`` query
    ``q`` sees keys up to ``K - Q + q``, so early keys are not favoured for
    being visible to more queries. Returns ``[H, K]``.

    >>> import numpy as np
    >>> a = np.zeros((1, 3, 3)); a[0, :, 0] = 1
    >>> received_attention(a).tolist()
    [[1.0, 0.0, 0.0]]
    """
    causal = _check.flag("causal", causal)
    a = _attention(attn)
    q, k = a.shape[-2:]
    return _head_mean(a.sum(-2) / _visible_queries(q, k, causal))


def top_key_mass(attn, *, fraction: float = TOP_KEY_FRACTION, causal: bool = False) -> np.ndarray:
    """Attention mass held by the top ``fraction`` of keys (the vertical score).

    The top keys are the ``max(1, ceil(fraction * K))`` keys with the largest
    :func:`received_attention`; the score is ``mean_q sum_{k in top} A[q, k]``.
    It is 1 when every query attends to the same column, ``ceil(0.02 K) / K``
    for uniform attention. With ``causal=True`` the mean runs over the queries
    that can see the first top key, so a sink at position ``p`` (a [SEP], a
    full stop, a BOS after padding) scores 1 although the ``p`` queries before
    it cannot attend to it; uniform causal attention scores about ``ln K / K``. ``fraction`` defaults to 2 %, the share of
    high-norm tokens reported by Darcet et al., ICLR 2024. Returns ``[H]``.

    >>> import numpy as np
    >>> a = np.zeros((1, 5, 5)); a[0, :, 3] = 1
    >>> top_key_mass(a).tolist()
    [1.0]
    """
    fraction = _check.number("fraction", fraction, low=0, high=1, low_open=True)
    causal = _check.flag("causal", causal)
    a = _attention(attn)
    return _top_key_mass(a, a.sum(-2), fraction, causal)


def _top_key_mass(a, colsum, fraction, causal):
    q, k = a.shape[-2:]
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")
    n_top = max(1, math.ceil(fraction * k))
    received = colsum / _visible_queries(q, k, causal)
    top = np.argpartition(received, k - n_top, axis=-1)[..., k - n_top :]
    mass = np.take_along_axis(colsum, top, -1).sum(-1)
    if not causal:
        return _head_mean(mass / q)
    # only the queries that can see a top key count: a sink at position p is
    # invisible to the p queries before it under a causal mask
    seeing = _visible_queries(q, k, causal)[top.min(-1)]
    return _head_mean(mass / seeing)


def sink_keys(attn, *, threshold: float = SINK_THRESHOLD, causal: bool = False) -> List[np.ndarray]:
    """Key positions whose :func:`received_attention` exceeds ``threshold``, per head.

    The default 0.3 is the sink criterion of Gu et al., ICLR 2025 ("When
    Attention Sink Emerges in Language Models"). Returns one int array per head.

    >>> import numpy as np
    >>> a = np.full((1, 4, 4), 0.1); a[0, :, 0] = 0.7
    >>> [s.tolist() for s in sink_keys(a)]
    [[0]]
    """
    threshold = _check.number("threshold", threshold)
    causal = _check.flag("causal", causal)
    r = received_attention(attn, causal=causal)
    return [np.flatnonzero(row > threshold) for row in r]


# --------------------------------------------------------------------------- blocks


def _segment_starts(segments, k: int, name: str = "segments") -> np.ndarray:
    """Segment start positions over ``k`` keys, from a TokenLayout or boundaries."""
    if isinstance(segments, TokenLayout):  # the layout of the keys
        if len(segments) != k:
            raise _check.ArgumentError(
                f"{name} is a TokenLayout of {len(segments)} tokens but the map has {k} keys; "
                f"pass the layout of the keys (AttentionMap.keys)")
        starts = [s.start for s in segments.segments]
    else:
        try:
            starts = [int(v) for v in segments]
            ok = all(float(v) == int(v) for v in segments)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise _check.ArgumentTypeError(
                f"{name} must be a TokenLayout or a list of the positions where segments start "
                f"(e.g. [0, 1, 197]); got {_check.show(segments)}")
    starts = np.unique(np.asarray([0] + starts, dtype=np.int64))
    if starts.min() < 0 or starts.max() >= k:
        raise _check.ArgumentError(
            f"{name} has segment starts outside the {k} keys of the map: {_check.show(segments)}")
    return starts


def _block_score(a: np.ndarray, starts: np.ndarray, causal: bool) -> np.ndarray:
    q, k = a.shape[-2:]
    shift = k - q
    stops = np.append(starts[1:], k)
    total = np.zeros(a.shape[:2])
    used = 0
    rows = a.sum(-1)
    for start, stop in zip(starts, stops):
        first = max(start, shift)
        if first >= stop:
            continue
        pos = np.arange(first, stop)                             # key positions of these queries
        block = a[..., first - shift : stop - shift, start:stop]  # [B, H, n_q, n]
        if causal:
            block = np.where(np.arange(start, stop)[None, :] <= pos[:, None], block, 0)
            n_vis = pos - start + 1
            k_vis = pos + 1
        else:
            n_vis = np.full(pos.size, stop - start)
            k_vis = np.full(pos.size, k)
        ok = (n_vis >= 2) & (n_vis < k_vis)  # a query alone in its segment, or a segment of every key: no block
        if not ok.any():
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            r = rows[..., first - shift : stop - shift]
            spread = (block.sum(-1) - block.max(-1)) / np.where(r > 0, r, 1)
            u = (n_vis - 1) / k_vis
            score = np.clip((spread - u) / np.where(ok, 1 - 1 / n_vis - u, 1), 0, 1)
        total += score[..., ok].sum(-1)
        used += int(ok.sum())
    if not used:
        return np.full(a.shape[1], np.nan)
    return _head_mean(total / used)


def block_score(attn, segments, *, causal: bool = False) -> np.ndarray:
    """How much each head keeps its attention inside the query's own segment, spread out.

    ``segments`` splits the keys: a :class:`~getlocal.maps.TokenLayout` of the
    keys (each segment is a block) or the positions where segments start
    (``[0, 12, 30]``). For each query with ``n`` visible keys in its own
    segment out of ``N`` visible keys (``causal=True``: the keys up to the
    query), take ``s = m - x``: its attention to its segment ``m`` less the
    largest single key of it ``x``, so that a diagonal (of any offset) or a
    sink inside the segment does not count; uniform attention gives
    ``u = (n - 1) / N`` and a pure block (uniform over the segment)
    ``1 - 1/n``. The score is ``(s - u) / (1 - 1/n - u)`` clipped to
    ``[0, 1]``, averaged over the queries with ``2 <= n < N``. Reference
    values: 1 for a pure block head, 0 for uniform attention and for any
    one-hot head (diagonal, previous-token, sink). The pattern is the "block"
    of Kovaleva et al., EMNLP 2019 (Fig. 1). Returns ``[H]`` (NaN when no
    query qualifies).

    >>> import numpy as np
    >>> a = np.zeros((1, 6, 6)); a[0, :3, :3] = 1 / 3; a[0, 3:, 3:] = 1 / 3
    >>> block_score(a, [0, 3]).tolist()
    [1.0]
    """
    causal = _check.flag("causal", causal)
    a = _attention(attn)
    return _block_score(a, _segment_starts(segments, a.shape[-1]), causal)


# --------------------------------------------------------------------------- entropy and dependence


def _row_entropy(a):
    """Entropy (nats) of each row after normalising it to sum 1; and the row sums."""
    s = a.sum(-1)
    xlogx = np.zeros_like(a)
    np.log(a, out=xlogx, where=a > 0)
    xlogx *= a
    safe = np.where(s > 0, s, 1)
    ent = np.log(safe) - xlogx.sum(-1) / safe
    return np.clip(ent, 0, None), s


def _nmi(a, ent, s):
    """Normalised mutual information between query and key, per ``[B, H]``."""
    q = a.shape[-2]
    inv = 1.0 / np.where(s > 0, s, 1)
    # the key marginal of the row-normalised map with uniform queries, without
    # materialising the normalised map
    pk = np.einsum("bhqk,bhq->bhk", a, inv.astype(a.dtype, copy=False)) / q
    pk_log = np.zeros_like(pk)
    np.log(pk, out=pk_log, where=pk > 0)
    h_k = -(pk * pk_log).sum(-1)
    mi = np.clip(h_k - ent.mean(-1), 0, None)
    denom = np.sqrt(np.log(q) * h_k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, np.minimum(mi / np.where(denom > 0, denom, 1), 1.0), 0.0)


def query_key_nmi(attn) -> np.ndarray:
    """Normalised mutual information between query and key (query dependence).

    Read the map as a joint distribution ``p(q, k) = A'[q, k] / Q`` (``A'``
    row-normalised, queries uniform): ``I = H(K) - mean_q H(A'[q])`` and
    ``NMI = I / sqrt(H(Q) H(K))`` with ``H(Q) = ln Q`` (the geometric-mean
    normalisation of Strehl & Ghosh, JMLR 2002); 0 when either entropy is 0.
    0 means the same key distribution for every query (a vertical head),
    1 means each query has its own key (an identity map). Returns ``[H]``.

    >>> import numpy as np
    >>> query_key_nmi(np.eye(8)[None]).tolist()
    [1.0]
    """
    a = _attention(attn)
    ent, s = _row_entropy(a)
    return _head_mean(_nmi(a, ent, s))


# --------------------------------------------------------------------------- spread


def mean_attention_distance(attn, *, image_tokens=None, grid=None, patch_size: Optional[float] = None) -> np.ndarray:
    """Mean attention distance on the patch grid (Dosovitskiy et al., ICLR 2021, Fig. 7).

    ``mean_q sum_k A'[q, k] ||cell(q) - cell(k)||`` over the image queries and
    keys, with ``A'`` the image block renormalised per query (so a class token
    or text tokens do not shrink it) and distances between patch centres in
    patches; multiplied by ``patch_size`` when given, it is in pixels as in the
    ViT paper. 0 for an identity map, 1 for a head on its 4-neighbours, 7.281
    for uniform attention on 14 x 14 patches (8.326 on 16 x 16). Returns ``[H]``.

    >>> import numpy as np
    >>> round(float(mean_attention_distance(np.full((1, 196, 196), 1 / 196))[0]), 3)
    7.281
    """
    patch_size = _patch_size(patch_size)
    a = _attention(attn)
    block, cells, hw = _image_block(a, image_tokens, grid)
    dist = _distance(block, cells, hw)
    return dist * patch_size if patch_size is not None else dist


def _distance(block, cells, hw):
    if cells.size == 0:
        return np.full(block.shape[1], np.nan)
    d = _distances(*hw)[cells]
    weighted = np.einsum("bhqk,qk->bhq", block, d.astype(block.dtype, copy=False))
    s = block.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_query = np.where(s > 0, weighted / np.where(s > 0, s, 1), np.nan)
    return _head_mean(np.nanmean(per_query, -1)) if np.isnan(per_query).any() else _head_mean(per_query.mean(-1))


def attention_entropy(attn, *, causal: bool = False, normalize: bool = True) -> np.ndarray:
    """Mean entropy of the query rows, normalised by the log of the visible keys.

    ``mean_q H(A'[q]) / ln n(q)`` with ``H(p) = -sum p ln p`` (nats), ``A'`` the
    row-normalised map and ``n(q)`` the keys query ``q`` can see (``K``, or
    ``K - Q + q + 1`` with ``causal=True``); queries that see a single key
    have no choice and are left out (NaN if no query sees two keys).
    1 is uniform attention over the visible keys, 0 one-hot. Dividing by
    ``ln n(q)`` (the largest entropy possible for that query) is what makes
    rows of a causal map, which see different numbers of keys, comparable. ``normalize=False`` gives the mean
    entropy in nats (``ln 196`` for uniform attention over 196 keys). Returns ``[H]``.

    >>> import numpy as np
    >>> attention_entropy(np.full((1, 4, 4), 0.25)).tolist()
    [1.0]
    """
    normalize = _check.flag("normalize", normalize)
    causal = _check.flag("causal", causal)
    a = _attention(attn)
    ent, _ = _row_entropy(a)
    return _entropy(ent, a.shape[-2], a.shape[-1], causal, normalize)


def _entropy(ent, q, k, causal, normalize):
    if not normalize:
        return _head_mean(ent.mean(-1))
    log_n = np.log(_visible_keys(q, k, causal).astype(np.float64))
    seen = log_n > 0
    if not seen.any():
        return np.full(ent.shape[1], np.nan)
    # a query that sees a single key has no choice to measure: left out
    return _head_mean((ent[..., seen] / log_n[seen]).mean(-1))


# --------------------------------------------------------------------------- labels


def _label(diag, offset, stripe, vert, block, width) -> str:
    """The label of one head from its scores (see :func:`classify_heads` for the rule)."""
    # candidates in priority order: on equal margins the earlier one wins
    cands = [("diagonal", diag, DIAGONAL_THRESHOLD)] if offset == 0 else []
    cands += [("stripe", stripe, STRIPE_THRESHOLD)]
    if offset != 0:
        # a grid-neighbour offset is a stripe unless the head also follows it where the
        # grid has no such neighbour (across row ends, outside the image): then S(d) > nbr8
        cands += [("diagonal", diag, DIAGONAL_THRESHOLD)]
    cands += [("vertical", vert, VERTICAL_THRESHOLD), ("block", block, BLOCK_THRESHOLD)]
    cands = [c for c in cands if not np.isnan(c[1])]
    best = max(cands, key=lambda c: c[1] - c[2])
    return best[0] if best[1] >= best[2] else "mixed"


def _kept_positions(exclude, nb: int, k: int):
    """``[B, K]`` bool of the positions to keep, or None when nothing is excluded."""
    if exclude is None:
        return None
    arr = None
    if not isinstance(exclude, (slice, tuple)):
        try:
            arr = _as_array(exclude, "exclude") if not isinstance(exclude, (list, range)) else np.asarray(exclude)
        except ValueError:
            arr = None
    if arr is not None and arr.dtype != object and arr.ndim in (1, 2) and arr.shape[-1] == k and (
            arr.dtype == bool or arr.ndim == 2 or (arr.size and set(np.unique(arr)) <= {0, 1} and arr.size == k > 2)):
        # a mask: [K] or [B, K], True (or 1) where the position is left out
        mask = np.asarray(exclude).astype(bool) if arr.dtype != bool else arr
        if mask.ndim == 2 and mask.shape[0] not in (1, nb):
            raise _check.ArgumentError(
                f"exclude is a [{mask.shape[0]}, {k}] mask but the map has {nb} batch items; "
                f"pass one row per item or a single [K] mask")
        drop = np.broadcast_to(mask.reshape(-1, k), (nb, k))
    else:
        if isinstance(exclude, (list, range)) and len(exclude) == 0:
            return None
        pos = _image_positions(exclude, k, "exclude")
        drop = np.zeros((nb, k), dtype=bool)
        drop[:, pos] = True
    if not drop.any():
        return None
    keep = ~drop
    if (keep.sum(-1) == 0).any():
        raise _check.ArgumentError(f"exclude leaves out all {k} keys of a batch item; nothing would be scored")
    return keep


def _compress(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """One item's map without the left-out rows and keys, rows renormalised to their old sums."""
    q, k = a.shape[-2:]
    rows = keep[k - q :]
    if not rows.any():
        return a[..., :0, :][..., keep]
    out = a[..., rows, :][..., keep]
    before = a[..., rows, :].sum(-1, keepdims=True)
    after = out.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(after > 0, out * (before / np.where(after > 0, after, 1)), out)


def _renumber(positions, keep: np.ndarray, name: str):
    """Positions of the full sequence as positions among the kept tokens (None stays None)."""
    if positions is None:
        return None
    k = keep.size
    if name == "segments":
        before = np.cumsum(keep) - keep  # kept tokens in front of each position
        starts = before[_segment_starts(positions, k, name)]
        return np.unique(np.append(starts[starts < keep.sum()], 0))
    pos = _image_positions(positions, k, name)
    idx = np.arange(pos.start, pos.stop) if isinstance(pos, slice) else pos
    if not keep[idx].all():
        raise _check.ArgumentError(
            f"exclude leaves out {int((~keep[idx]).sum())} of the {idx.size} image tokens ({name}); "
            f"exclude padding only, or pass image_tokens without the excluded positions")
    return (np.cumsum(keep) - 1)[idx]


def head_scores(
    attn,
    *,
    image_tokens=None,
    grid=None,
    causal: bool = False,
    patch_size: Optional[float] = None,
    radius: int = 2,
    segments=None,
    exclude=None,
) -> Dict[str, Any]:
    """Every score of every head of one layer, computed in one pass.

    Returns a dict of per-head values: ``self_mass``, ``diagonal_mass`` and
    ``offset`` (:func:`diagonal_offset`), ``neighbour_mass``,
    ``top_key_mass``, ``block_score`` (:func:`block_score`; NaN without
    ``segments``), ``nmi``, ``distance`` (patches), ``distance_px``,
    ``entropy`` (nats), ``entropy_norm`` (arrays ``[H]``); ``sinks`` and
    ``offsets`` (lists per head: sink keys, dominant grid offsets); ``label``
    (list of str, see :func:`classify_heads`). Grid scores are computed when
    ``image_tokens`` or ``grid`` is given or when ``K`` is a perfect square,
    and are NaN otherwise. ``segments``: a TokenLayout of the keys or segment
    start positions, for the block score.

    ``exclude`` leaves tokens out of every score, as if the sequence never had
    them: padding (``AttentionMap.padding``, ``layout.indices("padding")``).
    It takes key positions (a slice, ``(start, stop)``, an int array), a
    ``[K]`` bool mask or a ``[B, K]`` bool mask with one row per batch item
    (True = left out). The rows of left-out queries are dropped, the left-out
    keys removed and each remaining row rescaled to its former sum, so a
    padded map scores exactly as the same map without its padding (positions
    in ``image_tokens``, ``segments`` and the returned ``sinks`` are those of
    the full sequence). Items with different masks are scored one by one and
    their scores averaged, as for a batch; their ``offset`` is NaN where the
    items disagree.

    >>> import numpy as np
    >>> s = head_scores(np.eye(196)[None])
    >>> s["label"], float(s["self_mass"][0]), float(s["distance"][0])
    (['diagonal'], 1.0, 0.0)
    """
    causal, patch_size, radius = _check.flag("causal", causal), _patch_size(patch_size), _radius(radius)
    a = _attention(attn)
    return _scores_excluding(a, image_tokens, grid, bool(causal), patch_size, int(radius), segments, exclude)


def _wants_grid(k, image_tokens, grid):
    return image_tokens is not None or grid is not None or math.isqrt(k) ** 2 == k


def _scores_excluding(a, image_tokens, grid, causal, patch_size, radius, segments, exclude):
    nb, nh, q, k = a.shape
    keep = _kept_positions(exclude, nb, k)
    if keep is None:
        starts = None if segments is None else _segment_starts(segments, k)
        return _scores(a, image_tokens, grid, causal, patch_size, radius, starts)
    # image_tokens=None keeps meaning "every (kept) token": the grid is that of the kept tokens
    groups: Dict[bytes, List[int]] = {}
    for b in range(nb):
        groups.setdefault(keep[b].tobytes(), []).append(b)
    parts, weights = [], []
    for items in groups.values():
        kb = keep[items[0]]
        sub = _compress(a[items], kb)
        if sub.shape[-2] == 0:
            continue
        img = _renumber(image_tokens, kb, "image_tokens")
        seg = _renumber(segments, kb, "segments")
        try:
            out = _scores(sub, img, grid, causal, patch_size, radius, seg)
        except ValueError as exc:  # e.g. a grid that no longer fits the kept tokens
            raise _check.ArgumentError(f"with exclude={_check.show(exclude)}: {exc}") from None
        full = np.flatnonzero(kb)
        out["sinks"] = [full[s] for s in out["sinks"]]
        parts.append(out)
        weights.append(len(items))
    if not parts:
        raise _check.ArgumentError("exclude leaves out every query of the map; nothing would be scored")
    if len(parts) == 1:
        return parts[0]
    w = np.asarray(weights, dtype=np.float64) / sum(weights)
    merged: Dict[str, Any] = {}
    for name in _FLOAT_COLUMNS:
        vals = np.stack([p[name] for p in parts])
        with np.errstate(invalid="ignore"):
            merged[name] = np.where(np.isnan(vals).all(0), np.nan, np.nansum(vals * w[:, None], 0))
    offs = np.stack([p["offset"] for p in parts])
    merged["offset"] = np.where((offs == offs[0]).all(0), offs[0], np.nan)
    merged["sinks"] = [np.unique(np.concatenate([p["sinks"][h] for p in parts])) for h in range(nh)]
    merged["offsets"] = parts[0]["offsets"]
    merged["label"] = _labels(merged, grid)
    return merged


def _labels(out, hw) -> List[str]:
    width = hw[1] if hw else None
    return [_label(*v, width) for v in zip(out["diagonal_mass"], out["offset"], out["neighbour_mass"],
                                           out["top_key_mass"], out["block_score"])]


def _scores(a, image_tokens, grid, causal, patch_size, radius, starts=None):
    nb, nh, q, k = a.shape
    diag = _head_mean(np.diagonal(a, offset=k - q, axis1=-2, axis2=-1).mean(-1))
    offsets, prof = _offset_scores(a)
    best = prof.argmax(-1)
    colsum = a.sum(-2)
    received = _head_mean(colsum / _visible_queries(q, k, causal))
    top = _top_key_mass(a, colsum, TOP_KEY_FRACTION, causal)
    ent, s = _row_entropy(a)
    nmi = _head_mean(_nmi(a, ent, s))
    out = {
        "self_mass": diag,
        "diagonal_mass": prof[np.arange(nh), best],
        "offset": offsets[best].astype(np.float64),
        "neighbour_mass": np.full(nh, np.nan),
        "top_key_mass": top,
        "block_score": np.full(nh, np.nan) if starts is None else _block_score(a, starts, causal),
        "nmi": nmi,
        "distance": np.full(nh, np.nan),
        "distance_px": np.full(nh, np.nan),
        "entropy": _entropy(ent, q, k, causal, False),
        "entropy_norm": _entropy(ent, q, k, causal, True),
        "sinks": [np.flatnonzero(r > SINK_THRESHOLD) for r in received],
        "offsets": [[] for _ in range(nh)],
    }
    hw = None
    if _wants_grid(k, image_tokens, grid):
        block, cells, hw = _image_block(a, image_tokens, grid)
        if cells.size:
            sums, counts = _neighbour_sums(block, cells, hw, radius)
            with np.errstate(invalid="ignore", divide="ignore"):
                m = _head_mean(sums / np.where(counts, counts, np.nan))
            ring = sums[:, :, radius - 1 : radius + 2, radius - 1 : radius + 2].sum((-2, -1)) - sums[:, :, radius, radius]
            out["neighbour_mass"] = _head_mean(ring / cells.size) if radius >= 1 else _neighbour_mass(block, cells, hw)
            out["offsets"] = _dominant(m, hw[0] * hw[1], radius, 4)
            out["distance"] = _distance(block, cells, hw)
            if patch_size is not None:
                out["distance_px"] = out["distance"] * patch_size
    out["label"] = _labels(out, hw)
    return out


def classify_heads(attn, *, image_tokens=None, grid=None, causal: bool = False, segments=None,
                   exclude=None) -> List[str]:
    """One label per head: ``"diagonal"``, ``"stripe"``, ``"vertical"``, ``"block"`` or ``"mixed"``.

    The scores are :func:`diagonal_offset` (diagonal: the head's 1-D
    diagonal at its best offset, 0 for itself, -1 for the previous token;
    ``head_scores(...)["offset"]`` says which), :func:`neighbour_mass`
    (stripe; only with a grid, see :func:`head_scores`), :func:`top_key_mass`
    (vertical) and :func:`block_score` (block; only with ``segments``). A head
    takes the label whose score exceeds its threshold by the most, provided it
    reaches it: ``DIAGONAL_THRESHOLD``, ``STRIPE_THRESHOLD``,
    ``VERTICAL_THRESHOLD`` and ``BLOCK_THRESHOLD`` are all 0.5, i.e. the
    pattern holds the majority of the attention (a choice of this library, not
    of a paper). Otherwise the head is ``"mixed"`` (Kovaleva et al.'s
    *heterogeneous*). On equal scores the order is diagonal at offset 0,
    stripe, diagonal at another offset, vertical, block. So on an image grid a
    head on its left neighbour is a stripe, and it is a diagonal of offset -1
    only when its 1-D score is strictly larger than its neighbour mass: when
    it also takes the previous token across row ends (where the grid has no
    left neighbour) or outside the image, as a language model's
    previous-token head does.

    >>> import numpy as np
    >>> a = np.zeros((1, 196, 196)); a[0, :, 0] = 1
    >>> classify_heads(a)
    ['vertical']
    """
    causal = _check.flag("causal", causal)
    return head_scores(attn, image_tokens=image_tokens, grid=grid, causal=causal, segments=segments,
                       exclude=exclude)["label"]


# --------------------------------------------------------------------------- per-layer table

_FLOAT_COLUMNS = ("self_mass", "neighbour_mass", "top_key_mass", "nmi", "distance", "distance_px", "entropy",
                  "entropy_norm", "diagonal_mass", "offset", "block_score")


def _plain_key(key):
    if isinstance(key, (bool, np.bool_)):
        return bool(key)
    if isinstance(key, (int, np.integer)):
        return int(key)
    if isinstance(key, (float, np.floating, str)):
        return key if isinstance(key, str) else float(key)
    if isinstance(key, tuple):
        return [_plain_key(v) for v in key]
    return str(key)


def _plain_float(x):
    x = float(x)
    return None if math.isnan(x) else x


class PatternTable:
    """Per-head pattern scores of a model's layers (what :func:`summarize` returns).

    ``table[name]`` is a ``[layers, max heads]`` float array of one score
    (NaN where a layer has fewer heads; ``table["offset"]`` holds the 1-D
    diagonal offset of each head, whole numbers); ``table.labels`` the matching array of
    labels; ``table.sinks[i][h]`` and ``table.offsets[i][h]`` the sink keys and
    dominant grid offsets of head ``h`` of the ``i``-th layer; ``table.layers``
    the layer names in order. ``print(table)`` shows one line per layer;
    ``to_records()`` gives plain, JSON-serialisable dicts. ``print(table)``
    writes the label counts, mean scores, the offsets of the diagonal heads
    (``offset``: ``0,-1`` = some heads on themselves, some on the previous
    token) and the sink keys.

    >>> import numpy as np
    >>> t = summarize([np.eye(196)[None]] * 2)
    >>> t.labels.tolist()
    [['diagonal'], ['diagonal']]
    """

    columns = _FLOAT_COLUMNS

    def __init__(self, layers: Sequence, scores: Sequence[Dict[str, Any]], options: Dict[str, Any]):
        self.layers = list(layers)
        self.num_heads = [len(s["label"]) for s in scores]
        self.options = dict(options)
        width = max(self.num_heads) if self.num_heads else 0
        self._data = {}
        for name in _FLOAT_COLUMNS:
            arr = np.full((len(scores), width), np.nan)
            for i, s in enumerate(scores):
                arr[i, : len(s[name])] = s[name]
            self._data[name] = arr
        self.labels = np.full((len(scores), width), "", dtype=object)
        for i, s in enumerate(scores):
            self.labels[i, : len(s["label"])] = s["label"]
        self.sinks = [[[int(v) for v in keys] for keys in s["sinks"]] for s in scores]
        self.offsets = [[[tuple(o) for o in offs] for offs in s["offsets"]] for s in scores]

    def __getitem__(self, name: str) -> np.ndarray:
        if name == "label":
            return self.labels
        if name not in self._data:
            raise KeyError(f"{name!r} is not a score; the scores are {', '.join(_FLOAT_COLUMNS)} and 'label'")
        return self._data[name]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        heads = sorted(set(self.num_heads))
        h = heads[0] if len(heads) == 1 else heads or 0
        return f"PatternTable({len(self)} layers x {h} heads, grid={self.options.get('grid')})"

    def to_records(self, level: str = "head") -> List[Dict[str, Any]]:
        """Plain dicts, one per head (``level="head"``) or per layer (``"layer"``).

        Head records hold every score, the label and ``offset`` (the 1-D
        diagonal offset: 0 itself, -1 the previous token). Layer records hold
        the label counts, the head means of the scores, the union of the sink
        keys and, as ``offset``, the sorted offsets of the layer's diagonal heads. NaN becomes None so ``json.dumps`` writes
        strict JSON.

        >>> import numpy as np
        >>> summarize([np.eye(4)[None]]).to_records()[0]["label"]
        'diagonal'
        """
        _check.choice("level", level, ("head", "layer"))
        out = []
        for i, layer in enumerate(self.layers):
            n = self.num_heads[i]
            if level == "head":
                for h in range(n):
                    rec = {"layer": _plain_key(layer), "head": h, "label": self.labels[i, h]}
                    rec.update({c: _plain_float(self._data[c][i, h]) for c in _FLOAT_COLUMNS})
                    rec["sinks"] = list(self.sinks[i][h])
                    rec["offsets"] = [list(o) for o in self.offsets[i][h]]
                    out.append(rec)
            else:
                rec = {"layer": _plain_key(layer), "heads": n}
                labels = list(self.labels[i, :n])
                rec.update({lab: labels.count(lab) for lab in LABELS})
                for c in _FLOAT_COLUMNS:
                    row = self._data[c][i, :n]
                    rec[c] = None if np.all(np.isnan(row)) else _plain_float(np.nanmean(row))
                rec["sinks"] = sorted({k for keys in self.sinks[i] for k in keys})
                offs = self._data["offset"][i, :n][self.labels[i, :n] == "diagonal"]
                rec["offset"] = sorted({int(o) for o in offs if not np.isnan(o)})  # of the diagonal heads
                out.append(rec)
        return out

    def __str__(self) -> str:
        head = ("layer", "heads", "diag", "stripe", "vert", "block", "mixed")
        head += ("self", "nbr8", "top2%", "nmi", "dist", "H/lnN", "offset", "sinks")
        rows = []
        for rec in self.to_records("layer"):
            sinks = rec["sinks"]
            shown = ",".join(str(k) for k in sinks[:4]) + (",..." if len(sinks) > 4 else "")
            layer = rec["layer"]
            rows.append(
                (
                    str(tuple(layer) if isinstance(layer, list) else layer),
                    str(rec["heads"]),
                    *(str(rec[lab]) for lab in LABELS),
                    *("-" if rec[c] is None else f"{rec[c]:.3f}" for c in _FLOAT_COLUMNS[:4]),
                    "-" if rec["distance"] is None else f"{rec['distance']:.2f}",
                    "-" if rec["entropy_norm"] is None else f"{rec['entropy_norm']:.3f}",
                    ",".join(f"{o:+d}" if o else "0" for o in rec["offset"]) or "-",
                    shown or "-",
                )
            )
        widths = [max(len(r[j]) for r in [head] + rows) for j in range(len(head))]
        lines = ["  ".join(c.rjust(wd) for c, wd in zip(r, widths)) for r in [head] + rows]
        return "\n".join(lines)


def summarize(
    layers,
    *,
    image_tokens=None,
    grid=None,
    causal: bool = False,
    patch_size: Optional[float] = None,
    radius: int = 2,
    segments=None,
    exclude=None,
) -> PatternTable:
    """Score every head of every layer and return one :class:`PatternTable`.

    ``layers`` is a sequence of layer maps (a list such as
    ``get_local.cache['Attention.forward']``; layer names are 0, 1, ...) or a
    dict ``{layer name: map}``; each map is ``[H, Q, K]`` or ``[B, H, Q, K]``.
    The keyword arguments are those of :func:`head_scores` and apply to all
    layers; ``causal=True`` for decoder (language-model) maps, ``segments=``
    (a TokenLayout of the keys) for the block score, ``exclude=`` to leave
    padding out (``exclude=m.padding`` for an :class:`~getlocal.maps.AttentionMap`).

    >>> import numpy as np
    >>> maps = [np.full((6, 197, 197), 1 / 197) for _ in range(12)]
    >>> t = summarize(maps, image_tokens=slice(1, 197), patch_size=16)
    >>> round(float(t["distance_px"][0, 0]), 1)
    116.5
    """
    causal, patch_size, radius = _check.flag("causal", causal), _patch_size(patch_size), _radius(radius)
    if isinstance(layers, dict):
        names, maps = list(layers), list(layers.values())
    elif isinstance(layers, (list, tuple)):
        names, maps = list(range(len(layers))), list(layers)
    else:
        shape = layers.shape if hasattr(type(layers), "shape") else None  # the type: any object may be passed
        raise ValueError(
            f"layers must be a list of layer maps or a dict {{layer: map}}; got {type(layers).__name__}"
            + (f" of shape {tuple(shape)}" if shape is not None else "")
            + "; pass [attn] for one layer, or list(maps) for a stacked [L, H, Q, K] array"
        )
    scores = []
    options = {"image_tokens": image_tokens, "grid": grid, "causal": bool(causal), "patch_size": patch_size,
               "segments": segments is not None, "exclude": exclude is not None}
    for name, m in zip(names, maps):
        a = _attention(m, name=f"layers[{name!r}]")
        k = a.shape[-1]
        if options["grid"] is None and _wants_grid(k, image_tokens, grid):
            options["grid"] = _grid(None, _count(_image_positions(image_tokens, k)), image_tokens)
        scores.append(_scores_excluding(a, image_tokens, grid, bool(causal), patch_size, int(radius), segments, exclude))
    return PatternTable(names, scores, options)



# --------------------------------------------------------------------------- token kinds


class KindShares:
    """Shares of each query kind's attention that go to each key kind.

    ``values[..., i, j]`` is the mean over the queries of kind
    ``query_kinds[i]`` of the fraction of their attention that goes to the keys
    of kind ``key_kinds[j]``; the last axis sums to 1 for a softmax map. Image
    kinds are per camera (``"image:wrist"``; ``"image"`` when a sequence holds
    one image). From :func:`kind_shares` ``values`` is ``[heads, query kinds,
    key kinds]``; from ``AttentionMaps.kind_shares()`` it is ``[maps, heads,
    query kinds, key kinds]`` and ``rows`` labels the maps (tower, layer,
    step, phase), NaN where a map lacks a kind or a head.

    >>> import numpy as np
    >>> from getlocal.maps import Segment, TokenLayout
    >>> layout = TokenLayout([Segment("image", 0, 2), Segment("text", 2, 4)])
    >>> s = kind_shares(np.full((1, 4, 4), 0.25), layout, layout)
    >>> s.key_kinds, s.share("text", "image").tolist()
    (('image', 'text'), [0.5])
    """

    def __init__(self, values: np.ndarray, query_kinds: Sequence[str], key_kinds: Sequence[str],
                 rows: Optional[Sequence[Dict[str, Any]]] = None):
        self.values = values
        self.query_kinds = tuple(query_kinds)
        self.key_kinds = tuple(key_kinds)
        self.rows = list(rows) if rows is not None else None

    def share(self, query: str, key: str) -> np.ndarray:
        """``values[..., query, key]``; ``key="image"`` sums every camera."""
        _check.text("query", query), _check.text("key", key)
        if query not in self.query_kinds:
            raise _check.ArgumentError(f"query={query!r} is not a query kind here; they are {', '.join(self.query_kinds)}")
        cols = [j for j, kk in enumerate(self.key_kinds) if kk == key or (key == "image" and kk.startswith("image:"))]
        if not cols:
            raise _check.ArgumentError(f"key={key!r} is not a key kind here; they are {', '.join(self.key_kinds)}")
        with np.errstate(invalid="ignore"):
            v = self.values[..., self.query_kinds.index(query), :][..., cols]
            return np.where(np.isnan(v).all(-1), np.nan, np.nansum(v, -1))

    def to_records(self) -> List[Dict[str, Any]]:
        """Plain dicts (head means), one per row and query kind: ``{..., "query": kind, key kind: share}``."""
        vals = self.values if self.rows is not None else self.values[None]
        rows = self.rows if self.rows is not None else [{}]
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a kind missing from a map: NaN, said in the docstring
            mean = np.nanmean(vals, axis=1)  # over heads
        for r, row in enumerate(rows):
            for i, qk in enumerate(self.query_kinds):
                if np.isnan(mean[r, i]).all():
                    continue
                rec = dict(row, query=qk)
                rec.update({kk: _plain_float(mean[r, i, j]) for j, kk in enumerate(self.key_kinds)})
                out.append(rec)
        return out

    def __repr__(self):
        return (f"KindShares({tuple(self.values.shape)}: queries {', '.join(self.query_kinds)}; "
                f"keys {', '.join(self.key_kinds)})")


def _kind_names(layout) -> List[str]:
    """The kind of each position of a TokenLayout, images per camera."""
    several = len([s for s in layout.segments if s.kind == "image"]) > 1
    names = []
    for seg in layout.segments:
        name = seg.kind
        if seg.kind == "image" and several:
            name = f"image:{seg.camera}"
        names += [name] * len(seg)
    return names


def kind_shares(attn, queries, keys, *, padding=None) -> KindShares:
    """The share of each query kind's attention that goes to each key kind, per head.

    ``queries`` and ``keys`` are the :class:`~getlocal.maps.TokenLayout` of the
    map's last two axes (``AttentionMap.queries`` / ``.keys``). For query
    kind ``G`` and key kind ``C``: ``mean_{q in G} sum_{k in C} A[q, k] /
    sum_k A[q, k]`` over the queries of every batch item. ``padding``: a
    ``[K]`` or ``[B, K]`` bool mask (``AttentionMap.padding``) of the padded
    positions; they count as kind ``"padding"`` for queries and keys, so the
    attention spreading onto padding shows up in the ``"padding"`` column.
    Reference values: uniform attention over ``K`` keys gives each key kind
    its token count over ``K``; with rows summing to 1 the key shares of a
    query kind sum to 1. FastV (Chen et al., ECCV 2024, Fig. 2) reads this
    table for the image column: how little attention text tokens give the
    image after the first layers. Returns :class:`KindShares` with ``values
    [heads, query kinds, key kinds]`` (batch mean).

    >>> import numpy as np
    >>> from getlocal.maps import Segment, TokenLayout
    >>> layout = TokenLayout([Segment("bos", 0, 1), Segment("text", 1, 4)])
    >>> a = np.zeros((1, 4, 4)); a[0, :, 0] = 1            # every token on BOS
    >>> kind_shares(a, layout, layout).share("text", "bos").tolist()
    [1.0]
    """
    a = _attention(attn)
    nb, nh, q, k = a.shape
    if not isinstance(queries, TokenLayout) or not isinstance(keys, TokenLayout):
        raise _check.ArgumentTypeError(
            f"queries and keys must be TokenLayouts (AttentionMap.queries, AttentionMap.keys); "
            f"got {type(queries).__name__} and {type(keys).__name__}")
    if len(queries) != q or len(keys) != k:
        raise _check.ArgumentError(
            f"the layouts cover {len(queries)} queries and {len(keys)} keys but the map is [..., {q}, {k}]; "
            f"pass the layouts of this map (AttentionMap.queries, AttentionMap.keys)")
    qn = np.array(_kind_names(queries), dtype=object)
    kn = np.array(_kind_names(keys), dtype=object)
    qn = np.broadcast_to(qn, (nb, q)).copy()
    kn = np.broadcast_to(kn, (nb, k)).copy()
    if padding is not None:
        pad = np.asarray(_as_array(padding, "padding")).astype(bool)
        if pad.ndim not in (1, 2) or pad.shape[-1] != k or (pad.ndim == 2 and pad.shape[0] not in (1, nb)):
            raise _check.ArgumentError(
                f"padding must be a [K] or [B, K] bool mask with K = {k}, B = {nb}; got shape {tuple(pad.shape)}")
        pad = np.broadcast_to(pad.reshape(-1, k), (nb, k))
        kn[pad] = "padding"
        qn[pad[:, k - q :]] = "padding"
    qkinds = list(dict.fromkeys(qn.ravel()))
    kkinds = list(dict.fromkeys(kn.ravel()))
    rows = a.sum(-1, keepdims=True)
    norm = np.where(rows > 0, a / np.where(rows > 0, rows, 1), 0)  # [B, H, Q, K]
    per_key = np.zeros((nb, nh, q, len(kkinds)))
    for j, kk in enumerate(kkinds):
        cols = (kn == kk)  # [B, K]
        per_key[..., j] = np.einsum("bhqk,bk->bhq", norm, cols.astype(norm.dtype))
    values = np.full((nh, len(qkinds), len(kkinds)), np.nan)
    live = rows[..., 0] > 0  # [B, H, Q]
    for i, qk in enumerate(qkinds):
        sel = (qn == qk)[:, None, :] & live  # [B, H, Q]
        count = sel.sum((0, 2))
        total = np.einsum("bhqj,bhq->hj", per_key, sel.astype(per_key.dtype))
        with np.errstate(invalid="ignore", divide="ignore"):
            values[:, i, :] = np.where(count[:, None] > 0, total / np.where(count > 0, count, 1)[:, None], np.nan)
    return KindShares(values, qkinds, kkinds)

__all__ = [
    "PatternTable",
    "summarize",
    "KindShares",
    "kind_shares",
    "head_scores",
    "classify_heads",
    "self_mass",
    "offset_profile",
    "diagonal_offset",
    "block_score",
    "neighbour_map",
    "neighbour_mass",
    "dominant_offsets",
    "received_attention",
    "top_key_mass",
    "sink_keys",
    "query_key_nmi",
    "mean_attention_distance",
    "attention_entropy",
    "LABELS",
    "DIAGONAL_THRESHOLD",
    "STRIPE_THRESHOLD",
    "VERTICAL_THRESHOLD",
    "BLOCK_THRESHOLD",
    "SINK_THRESHOLD",
    "TOP_KEY_FRACTION",
]
