"""Spread: normalised entropy, query-key mutual information and mean attention distance."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _check
from .inputs import as_attention, check_patch_size, distances, head_mean, image_block, visible_keys, visible_until


def row_entropy(a):
    """Entropy (nats) of each row after normalising it to sum 1; and the row sums."""
    s = a.sum(-1)
    xlogx = np.zeros_like(a)
    np.log(a, out=xlogx, where=a > 0)
    xlogx *= a
    safe = np.where(s > 0, s, 1)
    ent = np.log(safe) - xlogx.sum(-1) / safe
    return np.clip(ent, 0, None), s


def nmi_of(a, ent, s):
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
    a = as_attention(attn)
    ent, s = row_entropy(a)
    return head_mean(nmi_of(a, ent, s))


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
    patch_size = check_patch_size(patch_size)
    a = as_attention(attn)
    block, cells, hw = image_block(a, image_tokens, grid)
    dist = distance_of(block, cells, hw)
    return dist * patch_size if patch_size is not None else dist


def distance_of(block, cells, hw):
    if cells.size == 0:
        return np.full(block.shape[1], np.nan)
    d = distances(*hw)[cells]
    weighted = np.einsum("bhqk,qk->bhq", block, d.astype(block.dtype, copy=False))
    s = block.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_query = np.where(s > 0, weighted / np.where(s > 0, s, 1), np.nan)
    return head_mean(np.nanmean(per_query, -1)) if np.isnan(per_query).any() else head_mean(per_query.mean(-1))


def attention_entropy(attn, *, causal: bool = False, normalize: bool = True) -> np.ndarray:
    """Mean entropy of the query rows, normalised by the log of the keys each row sees.

    ``mean_q H(A'[q]) / ln n(q)`` with ``H(p) = -sum p ln p`` (nats), ``A'`` the
    row-normalised map and ``n(q)`` the keys query ``q`` sees, read from the
    map (:func:`~getlocal.patterns.inputs.visible_until`: a causal row sees its
    past, a bidirectional row every key), so the result is never above 1
    whatever the mask. Queries that see a single key have no choice and are
    left out, as are rows of zeros (padding queries); NaN if no query sees two
    keys. 1 is uniform attention over the visible keys, 0 one-hot.
    ``causal`` is accepted for compatibility and changes nothing: the map's
    exact zeros say which keys each row sees. ``normalize=False`` gives the
    mean entropy in nats (``ln 196`` for uniform attention over 196 keys).
    Returns ``[H]``.

    >>> import numpy as np
    >>> attention_entropy(np.full((1, 4, 4), 0.25)).tolist()
    [1.0]
    >>> attention_entropy((np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None])[None]).tolist()  # causal, uniform
    [1.0]
    """
    normalize = _check.flag("normalize", normalize)
    _check.flag("causal", causal)
    a = as_attention(attn)
    ent, _ = row_entropy(a)
    return entropy_of(ent, visible_until(a), normalize)


def entropy_of(ent, until, normalize):
    """Per-head mean row entropy (``ent [B, H, Q]``) over the rows that see two keys or more."""
    n = visible_keys(until)                              # [B, Q]
    seen = n >= (2 if normalize else 1)
    if not seen.any():
        return np.full(ent.shape[1], np.nan)
    vals = ent / np.log(np.where(seen, n, 2))[:, None, :] if normalize else ent
    # a query that sees a single key has no choice to measure, a padding row nothing: left out
    per_item = (vals * seen[:, None, :]).sum(-1)
    counts = seen.sum(-1)[:, None]                      # [B, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_item = np.where(counts > 0, per_item / np.where(counts > 0, counts, 1), np.nan)
    return np.nanmean(per_item, axis=0) if np.isnan(per_item).any() else head_mean(per_item)
