"""Stripe scores: attention to the neighbours on the patch grid."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .. import _check
from .._errors import ArgumentError
from .inputs import as_array, as_attention, check_radius, count, head_mean, image_block, image_positions


def neighbour_sums(block, cells, hw, radius):
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
    radius = check_radius(radius)
    a = as_attention(attn)
    radius = int(radius)
    if radius < 0:
        raise ArgumentError(f"radius must be >= 0; got {radius}")
    block, cells, hw = image_block(a, image_tokens, grid)
    if cells.size == 0:
        return np.full((a.shape[1], 2 * radius + 1, 2 * radius + 1), np.nan)
    sums, counts = neighbour_sums(block, cells, hw, radius)
    with np.errstate(invalid="ignore", divide="ignore"):
        return head_mean(sums / np.where(counts, counts, np.nan))


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
    a = as_attention(attn)
    block, cells, hw = image_block(a, image_tokens, grid)
    return neighbour_mass_of(block, cells, hw)


def neighbour_mass_of(block, cells, hw):
    if cells.size == 0:
        return np.full(block.shape[1], np.nan)
    sums, _ = neighbour_sums(block, cells, hw, 1)
    sums[:, :, 1, 1] = 0
    return head_mean(sums.sum((-2, -1)) / cells.size)


def dominant_offsets(attn, *, image_tokens=None, grid=None, radius: int = 2, top: int = 4) -> List[List[Tuple[int, int]]]:
    """The grid offsets ``(dr, dc)`` each head favours, strongest first.

    An offset counts when its :func:`neighbour_map` value ``M[dr, dc]`` is more
    than twice the uniform level ``1 / N`` (``N`` image tokens); ``(0, 0)`` is
    left out (that is :func:`self_mass`). At most ``top`` offsets per head.

    >>> import numpy as np
    >>> dominant_offsets(np.eye(16, k=1)[None], grid=(4, 4))
    [[(0, 1)]]
    """
    radius = check_radius(radius)
    top = _check.integer("top", top, low=1)
    m = neighbour_map(attn, image_tokens=image_tokens, grid=grid, radius=radius)
    n = count(image_positions(image_tokens, as_array(attn).shape[-1]))
    return dominant_of(m, n, int(radius), int(top))


def dominant_of(m, n, radius, top):
    out = []
    for head in m:
        flat = np.where(np.isnan(head), -np.inf, head).ravel()
        flat[radius * (2 * radius + 2)] = -np.inf  # the centre (0, 0)
        order = np.argsort(-flat, kind="stable")[:top]
        side = 2 * radius + 1
        out.append([(int(i // side - radius), int(i % side - radius)) for i in order if flat[i] > 2.0 / n])
    return out
