"""Every score of a head in one pass, and its label (diagonal, stripe, vertical, block or mixed)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np

from .. import _check
from ._blocks import block_score_of, segment_starts
from ._diagonal import offset_scores
from .inputs import (as_array, as_attention, check_patch_size, check_radius, head_mean, image_block,
                      image_positions, visible_queries, visible_until)
from ._spread import distance_of, entropy_of, nmi_of, row_entropy
from ._stripes import dominant_of, neighbour_mass_of, neighbour_sums
from ._vertical import SINK_THRESHOLD, TOP_KEY_FRACTION, received_of, top_key_mass_of

#: A head is labelled after its largest pattern score when that score reaches
#: these values; otherwise it is ``"mixed"``. 0.5 means "the pattern holds the
#: majority of the attention mass": a choice of this library, not of a paper.
DIAGONAL_THRESHOLD = 0.5
STRIPE_THRESHOLD = 0.5
VERTICAL_THRESHOLD = 0.5
BLOCK_THRESHOLD = 0.5
#: ``"mixed"`` is what Kovaleva et al. (2019) call *heterogeneous*. A ``"diagonal"``
#: head has an ``offset`` (0: itself, -1: the previous token, ...).
LABELS = ("diagonal", "stripe", "vertical", "block", "mixed")
#: The per-head float scores, in the order of :class:`~getlocal.patterns.PatternTable` columns.
FLOAT_COLUMNS = ("self_mass", "neighbour_mass", "top_key_mass", "nmi", "distance", "distance_px", "entropy",
                  "entropy_norm", "diagonal_mass", "offset", "block_score")

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
            arr = as_array(exclude, "exclude") if not isinstance(exclude, (list, range)) else np.asarray(exclude)
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
        pos = image_positions(exclude, k, "exclude")
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
        starts = before[segment_starts(positions, k, name)]
        return np.unique(np.append(starts[starts < keep.sum()], 0))
    pos = image_positions(positions, k, name)
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

    Which keys each query sees is read from the map, never assumed
    (:func:`~getlocal.patterns.inputs.visible_until`: the exact zeros a mask
    leaves in every head); ``causal`` is kept for compatibility and changes
    nothing, so a bidirectional prefix scored with ``causal=True`` is still
    read as bidirectional and ``entropy_norm`` is never above 1.

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
    causal, patch_size, radius = _check.flag("causal", causal), check_patch_size(patch_size), check_radius(radius)
    a = as_attention(attn)
    return scores_excluding(a, image_tokens, grid, bool(causal), patch_size, int(radius), segments, exclude)


def wants_grid(k, image_tokens, grid):
    return image_tokens is not None or grid is not None or math.isqrt(k) ** 2 == k


def scores_excluding(a, image_tokens, grid, causal, patch_size, radius, segments, exclude):
    nb, nh, q, k = a.shape
    keep = _kept_positions(exclude, nb, k)
    if keep is None:
        starts = None if segments is None else segment_starts(segments, k)
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
    for name in FLOAT_COLUMNS:
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
    diag = head_mean(np.diagonal(a, offset=k - q, axis1=-2, axis2=-1).mean(-1))
    offsets, prof = offset_scores(a)
    best = prof.argmax(-1)
    colsum = a.sum(-2)
    # which keys each query sees is read from the map, never from `causal` (see visible_until)
    until = visible_until(a)
    seeing = visible_queries(until, k)
    received = head_mean(received_of(colsum, seeing))
    top = top_key_mass_of(a, colsum, TOP_KEY_FRACTION, seeing)
    ent, s = row_entropy(a)
    nmi = head_mean(nmi_of(a, ent, s))
    out = {
        "self_mass": diag,
        "diagonal_mass": prof[np.arange(nh), best],
        "offset": offsets[best].astype(np.float64),
        "neighbour_mass": np.full(nh, np.nan),
        "top_key_mass": top,
        "block_score": np.full(nh, np.nan) if starts is None else block_score_of(a, starts, until),
        "nmi": nmi,
        "distance": np.full(nh, np.nan),
        "distance_px": np.full(nh, np.nan),
        "entropy": entropy_of(ent, until, False),
        "entropy_norm": entropy_of(ent, until, True),
        "sinks": [np.flatnonzero(r > SINK_THRESHOLD) for r in received],
        "offsets": [[] for _ in range(nh)],
    }
    hw = None
    if wants_grid(k, image_tokens, grid):
        block, cells, hw = image_block(a, image_tokens, grid)
        if cells.size:
            sums, counts = neighbour_sums(block, cells, hw, radius)
            with np.errstate(invalid="ignore", divide="ignore"):
                m = head_mean(sums / np.where(counts, counts, np.nan))
            ring = sums[:, :, radius - 1 : radius + 2, radius - 1 : radius + 2].sum((-2, -1)) - sums[:, :, radius, radius]
            out["neighbour_mass"] = head_mean(ring / cells.size) if radius >= 1 else neighbour_mass_of(block, cells, hw)
            out["offsets"] = dominant_of(m, hw[0] * hw[1], radius, 4)
            out["distance"] = distance_of(block, cells, hw)
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
