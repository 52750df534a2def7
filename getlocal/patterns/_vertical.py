"""Vertical-line scores: keys that every query attends to (sinks)."""
from __future__ import annotations

import math
from typing import List

import numpy as np

from .. import _check
from .._errors import ArgumentError
from .inputs import as_attention, head_mean, visible_queries, visible_until

#: A key is a sink when the mean attention it receives exceeds this
#: (the epsilon = 0.3 of Gu et al., ICLR 2025, "When Attention Sink Emerges in
#: Language Models", Sec. 3).
SINK_THRESHOLD = 0.3
#: The "top keys" of the vertical score are this fraction of all keys: about
#: the share of high-norm outlier tokens that Darcet et al., ICLR 2024
#: ("Vision Transformers Need Registers", Sec. 2) find in large ViTs.
TOP_KEY_FRACTION = 0.02


def received_attention(attn, *, causal: bool = False) -> np.ndarray:
    """Mean attention each key receives from the queries that can see it.

    ``r[k] = sum_q A[q, k] / #{q : q sees k}``, which keys a query sees read
    from the map (:func:`~getlocal.patterns.inputs.visible_until`): on a causal
    map query ``q`` sees keys up to ``K - Q + q``, so early keys are not
    favoured for being visible to more queries; a bidirectional map is read as
    such whatever ``causal`` says (kept for compatibility; it changes nothing).
    Returns ``[H, K]``.

    >>> import numpy as np
    >>> a = np.zeros((1, 3, 3)); a[0, :, 0] = 1
    >>> received_attention(a).tolist()
    [[1.0, 0.0, 0.0]]
    """
    causal = _check.flag("causal", causal)
    a = as_attention(attn)
    return head_mean(received_of(a.sum(-2), visible_queries(visible_until(a), a.shape[-1])))


def received_of(colsum, seeing):
    """``colsum [B, H, K]`` over the queries that see each key (``seeing [B, K]``); 0 for a key nobody sees."""
    seeing = seeing[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seeing > 0, colsum / np.where(seeing > 0, seeing, 1), 0.0)


def top_key_mass(attn, *, fraction: float = TOP_KEY_FRACTION, causal: bool = False) -> np.ndarray:
    """Attention mass held by the top ``fraction`` of keys (the vertical score).

    The top keys are the ``max(1, ceil(fraction * K))`` keys with the largest
    :func:`received_attention`; the score is ``mean_q sum_{k in top} A[q, k]``.
    It is 1 when every query attends to the same column, ``ceil(0.02 K) / K``
    for uniform attention. The mean runs over the queries that can see the
    first top key (read from the map, see :func:`received_attention`), so on a
    causal map a sink at position ``p`` (a [SEP], a full stop, a BOS after
    padding) scores 1 although the ``p`` queries before it cannot attend to
    it; uniform causal attention scores about ``ln K / K``. ``fraction`` defaults to 2 %, the share of
    high-norm tokens reported by Darcet et al., ICLR 2024. Returns ``[H]``.

    >>> import numpy as np
    >>> a = np.zeros((1, 5, 5)); a[0, :, 3] = 1
    >>> top_key_mass(a).tolist()
    [1.0]
    """
    fraction = _check.number("fraction", fraction, low=0, high=1, low_open=True)
    causal = _check.flag("causal", causal)
    a = as_attention(attn)
    return top_key_mass_of(a, a.sum(-2), fraction, visible_queries(visible_until(a), a.shape[-1]))


def top_key_mass_of(a, colsum, fraction, seeing):
    """``seeing [B, K]``: how many queries see each key (:func:`~getlocal.patterns.inputs.visible_queries`)."""
    k = a.shape[-1]
    if not 0 < fraction <= 1:
        raise ArgumentError(f"fraction must be in (0, 1]; got {fraction!r}")
    n_top = max(1, math.ceil(fraction * k))
    received = received_of(colsum, seeing)
    top = np.argpartition(received, k - n_top, axis=-1)[..., k - n_top :]
    mass = np.take_along_axis(colsum, top, -1).sum(-1)
    # only the queries that can see a top key count: a sink at position p is
    # invisible to the p queries before it under a causal mask
    first = np.take_along_axis(np.broadcast_to(seeing[:, None, :], colsum.shape), top.min(-1)[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return head_mean(np.where(first > 0, mass / np.where(first > 0, first, 1), 0.0))


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
