"""Block scores: attention kept inside each query's own segment of the sequence."""
from __future__ import annotations

import numpy as np

from .. import _check
from ..tokens import TokenLayout
from .inputs import as_attention, head_mean, visible_until


def segment_starts(segments, k: int, name: str = "segments") -> np.ndarray:
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


def block_score_of(a: np.ndarray, starts: np.ndarray, until: np.ndarray) -> np.ndarray:
    """``until [B, Q]``: the last key each query sees (:func:`~getlocal.patterns.inputs.visible_until`)."""
    q, k = a.shape[-2:]
    shift = k - q
    stops = np.append(starts[1:], k)
    total = np.zeros(a.shape[:2])
    used = np.zeros(a.shape[:1])
    rows = a.sum(-1)
    for start, stop in zip(starts, stops):
        first = max(start, shift)
        if first >= stop:
            continue
        block = a[..., first - shift : stop - shift, start:stop]  # [B, H, n_q, n]
        last = until[:, first - shift : stop - shift]             # [B, n_q]
        n_vis = np.clip(np.minimum(last + 1, stop) - start, 0, None)
        k_vis = last + 1
        ok = (n_vis >= 2) & (n_vis < k_vis)  # a query alone in its segment, or one that sees nothing past it: no block
        if not ok.any():
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            r = rows[..., first - shift : stop - shift]
            spread = (block.sum(-1) - block.max(-1)) / np.where(r > 0, r, 1)
            u = ((n_vis - 1) / np.where(k_vis > 0, k_vis, 1))[:, None, :]
            denom = np.where(ok, 1 - 1 / np.where(n_vis > 0, n_vis, 1), 1)[:, None, :] - u
            score = np.clip((spread - u) / np.where(ok[:, None, :], denom, 1), 0, 1)
        total += np.where(ok[:, None, :], score, 0).sum(-1)
        used += ok.sum(-1)
    if not used.any():
        return np.full(a.shape[1], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_item = np.where(used[:, None] > 0, total / np.where(used > 0, used, 1)[:, None], np.nan)
    return np.nanmean(per_item, axis=0) if np.isnan(per_item).any() else head_mean(per_item)


def block_score(attn, segments, *, causal: bool = False) -> np.ndarray:
    """How much each head keeps its attention inside the query's own segment, spread out.

    ``segments`` splits the keys: a :class:`~getlocal.maps.TokenLayout` of the
    keys (each segment is a block) or the positions where segments start
    (``[0, 12, 30]``). For each query with ``n`` visible keys in its own
    segment out of ``N`` visible keys (read from the map, as
    :func:`~getlocal.patterns.inputs.visible_until` says: the keys up to the
    query on a causal map; ``causal`` is kept for compatibility and changes
    nothing), take ``s = m - x``: its attention to its segment ``m`` less the
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
    _check.flag("causal", causal)
    a = as_attention(attn)
    return block_score_of(a, segment_starts(segments, a.shape[-1]), visible_until(a))
