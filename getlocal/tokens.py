"""Token layouts and token-kind shares: which positions are what, and how much attention each kind gives each kind.

>>> import numpy as np
>>> from getlocal.tokens import Segment, TokenLayout, kind_shares
>>> layout = TokenLayout([Segment('bos', 0, 1), Segment('image', 1, 5, grid=(2, 2)), Segment('text', 5, 7)])
>>> layout.indices('image').tolist()
[1, 2, 3, 4]
>>> kind_shares(np.full((1, 7, 7), 1 / 7), layout, layout).share('text', 'image').round(3).tolist()
[0.571]

The data layer's vocabulary of token kinds (``KINDS``, model-agnostic: the
adapters say which kinds their sequences hold) and the one computation that
needs nothing but an array and two layouts. :mod:`getlocal.maps` and
:mod:`getlocal.patterns` re-export these names. Only numpy is imported here.
"""
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _check
from ._arrays import as_array, as_attention, plain_float
from ._errors import GetLocalError


#: Token kinds that the adapters write. ``image`` segments carry a ``grid``
#: (and a ``camera`` when a sequence holds several images). ``padding``: positions
#: that the attention mask hides from every query (padded prompts).
KINDS = ("cls", "register", "image", "bos", "text", "generated", "state", "action", "context", "padding")


@dataclass(frozen=True)
class Segment:
    """Positions ``[start, stop)`` of one run of tokens of one ``kind``."""

    kind: str
    start: int
    stop: int
    camera: Optional[str] = None
    grid: Optional[Tuple[int, int]] = None

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    def to_dict(self) -> Dict[str, Any]:
        out = {"kind": self.kind, "start": self.start, "stop": self.stop}
        if self.camera is not None:
            out["camera"] = self.camera
        if self.grid is not None:
            out["grid"] = list(self.grid)
        return out


@dataclass(frozen=True)
class TokenLayout:
    """Which positions of a sequence are image patches, class/register tokens, text, ...

    Segments are ordered and contiguous from position 0; ``len(layout)`` is the
    sequence length. Use ``image()`` / ``indices()`` to index an attention
    axis and ``to_grid()`` to put per-patch values back onto the image grid.
    """

    segments: Tuple[Segment, ...]

    def __init__(self, segments: Sequence[Segment]):
        segments = tuple(s for s in segments if len(s) > 0)
        position = 0
        for s in segments:
            if s.start != position:
                raise GetLocalError(
                    f"TokenLayout segments must be contiguous from 0; {s} starts at {s.start}, expected {position}")
            position = s.stop
        object.__setattr__(self, "segments", segments)

    def __len__(self) -> int:
        return self.segments[-1].stop if self.segments else 0

    @property
    def cameras(self) -> Tuple[Optional[str], ...]:
        """The camera of each image segment, in order."""
        return tuple(s.camera for s in self.segments if s.kind == "image")

    def find(self, kind: Optional[str] = None, camera: Optional[str] = None) -> List[Segment]:
        """The segments of ``kind`` (any kind if None), of ``camera`` if given."""
        _check.choice("kind", kind, KINDS, optional=True)
        _check.text("camera", camera, optional=True)
        return [s for s in self.segments if (kind is None or s.kind == kind) and (camera is None or s.camera == camera)]

    def indices(self, kind: str, camera: Optional[str] = None) -> np.ndarray:
        """Positions of every token of ``kind`` (e.g. ``'text'``), as an index array."""
        _check.choice("kind", kind, KINDS)
        found = self.find(kind, camera)
        if not found:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(s.start, s.stop) for s in found])

    def image(self, camera: Optional[str] = None) -> slice:
        """The slice of the image patches (of ``camera`` when the sequence has several images)."""
        return self._image_segment(camera).slice

    def grid(self, camera: Optional[str] = None) -> Tuple[int, int]:
        """``(rows, cols)`` of the image patches."""
        return self._image_segment(camera).grid

    def to_grid(self, values, camera: Optional[str] = None):
        """Reshape the last axis onto the image grid: ``(..., n_patches)`` -> ``(..., rows, cols)``.

        The last axis may also be the whole sequence; the image tokens are then taken out first.
        """
        seg = self._image_segment(camera)
        if isinstance(values, (list, tuple)):
            values = np.asarray(values)
        if not hasattr(type(values), "shape") or not hasattr(type(values), "reshape") or len(values.shape) == 0:
            raise _check.ArgumentTypeError(
                f"to_grid(values={_check.show(values)}): values must be an array whose last axis holds "
                f"the {len(seg)} image tokens (or the whole sequence of {len(self)})")
        n = values.shape[-1]
        if n == len(self) and n != len(seg):
            values = values[..., seg.slice]
        elif n != len(seg):
            raise GetLocalError(
                f"to_grid: the last axis of values has {n} entries; give the {len(seg)} image tokens of "
                f"{seg.camera or 'the image'} (layout.image()) or the whole sequence of {len(self)}"
            )
        return values.reshape(values.shape[:-1] + tuple(seg.grid))

    def window(self, start: int, stop: int) -> "TokenLayout":
        """The layout of positions ``[start, stop)``, renumbered from 0 (e.g. the queries of a decode step)."""
        start = _check.integer("start", start, low=0, high=None)
        stop = _check.integer("stop", stop, low=0, high=None)
        if stop < start:
            raise _check.ArgumentError(f"window(start={start}, stop={stop}): stop must not be before start")
        out = []
        for s in self.segments:
            a, b = max(s.start, start), min(s.stop, stop)
            if a < b:
                grid = s.grid if (a, b) == (s.start, s.stop) else None
                out.append(Segment(s.kind, a - start, b - start, s.camera, grid))
        return TokenLayout(out)

    def take(self, positions) -> "TokenLayout":
        """The layout of the positions listed, in that order, renumbered from 0 (the rows a capture kept).

        Consecutive positions of one segment stay one segment; a segment keeps
        its grid only when all of it is taken, in order.
        """
        if isinstance(positions, np.ndarray) and positions.ndim == 1:
            positions = positions.tolist()
        if not isinstance(positions, (list, tuple, range)):
            raise _check.ArgumentTypeError(f"positions must be a list of token positions; got {_check.show(positions)}")
        runs: List[list] = []  # [segment, first position, count]
        for p in positions:
            p = _check.integer("positions[i]", p, low=0, high=len(self) - 1)
            s = next(s for s in self.segments if s.start <= p < s.stop)
            if runs and runs[-1][0] is s and runs[-1][1] + runs[-1][2] == p:
                runs[-1][2] += 1
            else:
                runs.append([s, p, 1])
        out, start = [], 0
        for s, first, n in runs:
            whole = first == s.start and n == len(s)
            out.append(Segment(s.kind, start, start + n, s.camera, s.grid if whole else None))
            start += n
        return TokenLayout(out)

    def to_dict(self) -> Dict[str, Any]:
        return {"segments": [s.to_dict() for s in self.segments]}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TokenLayout":
        try:
            segments = [Segment(d["kind"], d["start"], d["stop"], d.get("camera"),
                                tuple(d["grid"]) if d.get("grid") is not None else None)
                        for d in data["segments"]]
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise _check.ArgumentError(
                f"data must be what TokenLayout.to_dict() returns, {{'segments': [{{'kind', 'start', 'stop', ...}}]}}; "
                f"got {_check.show(data)} ({type(exc).__name__}: {exc})") from None
        return cls(segments)

    def __repr__(self):
        parts = []
        for s in self.segments:
            extra = f" {s.camera}" if s.camera else ""
            extra += f" {s.grid[0]}x{s.grid[1]}" if s.grid else ""
            parts.append(f"{s.kind}{extra} {s.start}:{s.stop}")
        return f"TokenLayout({', '.join(parts)})"

    def _image_segment(self, camera):
        _check.text("camera", camera, optional=True)
        found = self.find("image", camera)
        if len(found) == 1:
            return found[0]
        if not found:
            have = ", ".join(repr(c) for c in self.cameras) or "none"
            raise GetLocalError(f"this sequence has no image tokens for camera={camera!r} (cameras: {have})")
        raise GetLocalError(
            f"this sequence has {len(found)} images; say which: camera= one of "
            f"{', '.join(repr(c) for c in self.cameras)}"
        )




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

    ``uniform`` has the shape of ``values`` and holds the baseline: what
    uniform attention over the keys each query sees would give (the share of
    that query's visible keys of each kind, averaged over the same queries).
    A share is a finding only as far as it departs from it: 0.93 of the
    attention on image tokens means nothing when 0.93 of the keys are image
    tokens. ``baseline()`` reads it as ``share()`` reads ``values``.

    >>> import numpy as np
    >>> from getlocal.tokens import Segment, TokenLayout
    >>> layout = TokenLayout([Segment("image", 0, 2), Segment("text", 2, 4)])
    >>> s = kind_shares(np.full((1, 4, 4), 0.25), layout, layout)
    >>> s.key_kinds, s.share("text", "image").tolist(), s.baseline("text", "image").tolist()
    (('image', 'text'), [0.5], [0.5])
    """

    def __init__(self, values: np.ndarray, query_kinds: Sequence[str], key_kinds: Sequence[str],
                 rows: Optional[Sequence[Dict[str, Any]]] = None, uniform: Optional[np.ndarray] = None):
        self.values = values
        self.uniform = np.full_like(values, np.nan, dtype=np.float64) if uniform is None else uniform
        self.query_kinds = tuple(query_kinds)
        self.key_kinds = tuple(key_kinds)
        self.rows = list(rows) if rows is not None else None

    def share(self, query: str, key: str) -> np.ndarray:
        """``values[..., query, key]``; ``key="image"`` sums every camera."""
        return self._read(self.values, query, key)

    def baseline(self, query: str, key: str) -> np.ndarray:
        """What :meth:`share` would be under uniform attention over each query's visible keys (``uniform``)."""
        return self._read(self.uniform, query, key)

    def _read(self, table, query, key):
        _check.text("query", query), _check.text("key", key)
        if query not in self.query_kinds:
            raise _check.ArgumentError(f"query={query!r} is not a query kind here; they are {', '.join(self.query_kinds)}")
        cols = [j for j, kk in enumerate(self.key_kinds) if kk == key or (key == "image" and kk.startswith("image:"))]
        if not cols:
            raise _check.ArgumentError(f"key={key!r} is not a key kind here; they are {', '.join(self.key_kinds)}")
        with np.errstate(invalid="ignore"):
            v = table[..., self.query_kinds.index(query), :][..., cols]
            return np.where(np.isnan(v).all(-1), np.nan, np.nansum(v, -1))

    def to_records(self) -> List[Dict[str, Any]]:
        """Plain dicts (head means), one per row and query kind: ``{..., "query": kind, key kind: share}``.

        Each key kind also has its baseline under ``"<kind> uniform"`` (see ``uniform``).
        """
        vals = self.values if self.rows is not None else self.values[None]
        base = self.uniform if self.rows is not None else self.uniform[None]
        rows = self.rows if self.rows is not None else [{}]
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a kind missing from a map: NaN, said in the docstring
            mean = np.nanmean(vals, axis=1)  # over heads
            base_mean = np.nanmean(base, axis=1)
        for r, row in enumerate(rows):
            for i, qk in enumerate(self.query_kinds):
                if np.isnan(mean[r, i]).all():
                    continue
                rec = dict(row, query=qk)
                rec.update({kk: plain_float(mean[r, i, j]) for j, kk in enumerate(self.key_kinds)})
                rec.update({f"{kk} uniform": plain_float(base_mean[r, i, j]) for j, kk in enumerate(self.key_kinds)})
                out.append(rec)
        return out

    def __repr__(self):
        return (f"KindShares({tuple(self.values.shape)}: queries {', '.join(self.query_kinds)}; "
                f"keys {', '.join(self.key_kinds)})")


def visible_until(a: np.ndarray) -> np.ndarray:
    """``[B, Q]``: the last key position each query row of a ``[B, H, Q, K]`` map can see, read from the map.

    A mask (causal, padding, a prefix-LM's) leaves exactly 0 in every head
    where softmax met ``-inf``; a key that a query can see gets a positive
    weight in some head (underflow to exactly 0 in every head needs a logit
    gap above ~100 in float32). So query ``q`` (at key position ``K - Q + q``)
    sees the keys up to the later of its own position and the last key that
    any head of its row gives weight: a causal row sees its past, a
    bidirectional row every key, a prefix-LM's prefix row the prefix. A row
    that is 0 everywhere (a padding query) sees nothing: -1. A block mask that
    hides earlier segments is not told apart from a row that ignores them, so
    entropies there are divided by more keys than the row sees (never above 1).
    Nothing is assumed from the tower: the map says it.

    >>> import numpy as np
    >>> visible_until(np.tril(np.ones((1, 1, 3, 3)))).tolist(), visible_until(np.ones((1, 1, 3, 3))).tolist()
    ([[0, 1, 2]], [[2, 2, 2]])
    """
    q, k = a.shape[-2:]
    nz = (a != 0).any(axis=1)                            # [B, Q, K]
    last = k - 1 - nz[..., ::-1].argmax(-1)
    own = np.arange(k - q, k)
    return np.where(nz.any(-1), np.maximum(last, own), -1)


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
    The baseline (``KindShares.uniform``, ``.baseline()``) is what uniform
    attention over the keys each query sees would give: per query, the share
    of its visible keys of each kind (visibility read from the map, see
    :func:`visible_until`; padding keys are never visible), averaged over the
    queries as the share is. With rows summing to 1 the key shares of a query
    kind sum to 1, and so do the baselines. FastV (Chen et al., ECCV 2024, Fig. 2) reads this
    table for the image column: how little attention text tokens give the
    image after the first layers. Returns :class:`KindShares` with ``values
    [heads, query kinds, key kinds]`` (batch mean).

    >>> import numpy as np
    >>> from getlocal.tokens import Segment, TokenLayout
    >>> layout = TokenLayout([Segment("bos", 0, 1), Segment("text", 1, 4)])
    >>> a = np.zeros((1, 4, 4)); a[0, :, 0] = 1            # every token on BOS
    >>> s = kind_shares(a, layout, layout)
    >>> s.share("text", "bos").tolist(), s.baseline("text", "bos").round(3).tolist()  # causal-looking: 1/2, 1/3, 1/4
    ([1.0], [0.361])
    """
    a = as_attention(attn)
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
        pad = np.asarray(as_array(padding, "padding")).astype(bool)
        if pad.ndim not in (1, 2) or pad.shape[-1] != k or (pad.ndim == 2 and pad.shape[0] not in (1, nb)):
            raise _check.ArgumentError(
                f"padding must be a [K] or [B, K] bool mask with K = {k}, B = {nb}; got shape {tuple(pad.shape)}")
        pad = np.broadcast_to(pad.reshape(-1, k), (nb, k))
        # a query row is the key position k - q + i only where the two layouts agree there: a cross-attention
        # map's queries (SmolVLA's actions over the prefix) follow its keys and are none of them
        same = np.array([x.split(":")[0] == y.split(":")[0] for x, y in zip(qn[0], kn[0][k - q:])], dtype=bool) \
            if q <= k else np.zeros(q, dtype=bool)
        kn[pad] = "padding"
        qn[pad[:, k - q :] & same] = "padding"
    vis = np.arange(k) <= visible_until(a)[..., None]   # [B, Q, K]
    if padding is not None:
        vis &= ~pad[:, None, :]
    qkinds = list(dict.fromkeys(qn.ravel()))
    kkinds = list(dict.fromkeys(kn.ravel()))
    rows = a.sum(-1, keepdims=True)
    norm = np.where(rows > 0, a / np.where(rows > 0, rows, 1), 0)  # [B, H, Q, K]
    per_key = np.zeros((nb, nh, q, len(kkinds)))
    n_vis = np.maximum(vis.sum(-1), 1)                   # [B, Q]
    per_key_uniform = np.zeros((nb, q, len(kkinds)))
    for j, kk in enumerate(kkinds):
        cols = (kn == kk)  # [B, K]
        per_key[..., j] = np.einsum("bhqk,bk->bhq", norm, cols.astype(norm.dtype))
        per_key_uniform[..., j] = (vis & cols[:, None, :]).sum(-1) / n_vis
    values = np.full((nh, len(qkinds), len(kkinds)), np.nan)
    uniform = np.full_like(values, np.nan)
    live = rows[..., 0] > 0  # [B, H, Q]
    for i, qk in enumerate(qkinds):
        sel = (qn == qk)[:, None, :] & live  # [B, H, Q]
        count = sel.sum((0, 2))
        total = np.einsum("bhqj,bhq->hj", per_key, sel.astype(per_key.dtype))
        total_uniform = np.einsum("bqj,bhq->hj", per_key_uniform, sel.astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            n = np.where(count > 0, count, 1)[:, None]
            values[:, i, :] = np.where(count[:, None] > 0, total / n, np.nan)
            uniform[:, i, :] = np.where(count[:, None] > 0, total_uniform / n, np.nan)
    return KindShares(values, qkinds, kkinds, uniform=uniform)


def stack_kind_shares(parts: Sequence[KindShares], rows: Sequence[Dict[str, Any]]) -> KindShares:
    """Several maps' :class:`KindShares` as one: ``values [maps, heads, query kinds, key kinds]``.

    Kinds are the union over the parts, NaN where a part lacks one (or has fewer heads);
    ``rows[i]`` labels part ``i``.
    """
    qk = list(dict.fromkeys(k for p in parts for k in p.query_kinds))
    kk = list(dict.fromkeys(k for p in parts for k in p.key_kinds))
    heads = max((p.values.shape[0] for p in parts), default=0)
    values = np.full((len(parts), heads, len(qk), len(kk)), np.nan)
    uniform = np.full_like(values, np.nan)
    for n, p in enumerate(parts):
        qi = [qk.index(k) for k in p.query_kinds]
        ki = [kk.index(k) for k in p.key_kinds]
        values[n, : p.values.shape[0]][np.ix_(range(p.values.shape[0]), qi, ki)] = p.values
        uniform[n, : p.values.shape[0]][np.ix_(range(p.values.shape[0]), qi, ki)] = p.uniform
    return KindShares(values, qk, kk, rows, uniform=uniform)
