"""Diagonal scores: how much each head attends at one fixed 1-D offset (itself, the previous token, ...)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from .. import _check
from .inputs import as_attention, head_mean


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
    a = as_attention(attn)
    q, k = a.shape[-2:]
    return head_mean(np.diagonal(a, offset=k - q, axis1=-2, axis2=-1).mean(-1))


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
    a = as_attention(attn)
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
            out[:, j] = head_mean(diag.mean(-1))
    return offsets, out


def _diagonal_lengths(q: int, k: int, offsets: np.ndarray) -> np.ndarray:
    """How many queries have a key at each 1-D offset (query ``i`` sits at ``K - Q + i``)."""
    lo = np.maximum(0, q - k - offsets)
    hi = np.minimum(q, q - offsets)
    return np.maximum(hi - lo, 0)


def offset_scores(a: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
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
        out[:, j] = head_mean(np.diagonal(a, offset=k - q + int(d), axis1=-2, axis2=-1).mean(-1))
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
    a = as_attention(attn)
    offsets, prof = offset_scores(a)
    best = prof.argmax(-1)
    return offsets[best], prof[np.arange(prof.shape[0]), best]
