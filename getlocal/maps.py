"""Labelled attention maps and token layouts: what the adapters return.

>>> import numpy as np
>>> from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout
>>> prompt = TokenLayout([Segment('bos', 0, 1), Segment('image', 1, 5, grid=(2, 2)), Segment('text', 5, 7)])
>>> m = AttentionMap(np.full((1, 2, 7, 7), 1 / 7), tower='llm', layer=0, path='model.layers.0.self_attn',
...                  step=0, phase='prefill', call=0, queries=prompt, keys=prompt)
>>> m.between('text', 'image').shape              # [batch, heads, text queries, image keys]
(1, 2, 2, 4)
>>> m.keys.to_grid(m.between('text', 'image').mean(axis=(0, 1, 2))).shape
(2, 2)
>>> AttentionMaps([m]).select(tower='llm', phase='prefill')[0].layer
0

Everything here is plain data: arrays (numpy, or torch tensors when capture
ran with ``convert='cpu'``/``'device'``) and labels that ``meta()`` /
``to_dict()`` turn into JSON-ready dicts, so results can be saved and loaded
without the model. Nothing imports torch.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _check
from ._convert import Lazy
from ._errors import GetLocalError

#: Token kinds that the adapters write. ``image`` segments carry a ``grid``
#: (and a ``camera`` when a sequence holds several images). ``padding``: positions
#: that the attention mask hides from every query (padded prompts).
KINDS = ("cls", "register", "image", "bos", "text", "generated", "state", "action", "context", "padding")
#: Towers and phases that the adapters write; ``select`` rejects other names as typos.
TOWERS = ("dinov2", "siglip", "llm", "vision", "language", "expert", "vit")
PHASES = ("encode", "prefill", "decode", "prefix", "denoise")


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


class _ArrayField:
    """``AttentionMap.array``: the stored value, a ``Lazy`` one computed (once) when first read."""

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__["_array"]
        if isinstance(value, Lazy):
            value = obj.__dict__["_array"] = value.materialize()
        return value

    def __set__(self, obj, value):
        obj.__dict__["_array"] = value


@dataclass
class AttentionMap:
    """One post-softmax attention map ``[batch, heads, queries, keys]`` and where it came from.

    ``tower``: which network (``'dinov2'``, ``'siglip'``, ``'llm'`` for OpenVLA;
    ``'vision'``, ``'language'``, ``'expert'`` for PaliGemma / Pi0). ``layer``:
    the layer index in that tower; ``path``: the attention module's name in
    ``model.named_modules()``. ``step``: which forward pass of the whole model
    (0, 1, ...) and ``phase`` its kind (``'prefill'``, ``'decode'``,
    ``'prefix'``, ``'denoise'``, ``'encode'``). ``call``: the global call
    index (``getlocal.Call.index``), which orders all maps. ``queries`` /
    ``keys``: the token layouts of the two last axes. ``padding``: None, or a
    ``[batch, keys]`` bool array, True where a key position is padding in that
    batch item; items of one batch can pad different positions, while ``keys``
    marks as ``'padding'`` only the positions that every item pads. ``rows``:
    None when the queries are the last ``Q`` key positions (every map but
    those of a capture that kept some rows by index, ``queries=[0]``); else the
    key position of each query row, and the pattern scores, which assume the
    last ``Q``, do not apply to the map.
    """

    array: Any
    tower: str
    layer: int
    path: str
    step: int
    phase: str
    call: int
    queries: TokenLayout
    keys: TokenLayout
    camera: Optional[str] = None  # set when a whole vision call saw one camera only
    padding: Optional[Any] = None  # [batch, keys] bool, True where that item pads
    rows: Optional[Any] = None  # [Q] int: the key position of each query row, when a capture kept only some

    def kind_shares(self):
        """The share of each query kind's attention going to each key kind, per head.

        :func:`getlocal.patterns.kind_shares` on this map, its layouts and its
        padding: ``values [heads, query kinds, key kinds]``.
        """
        from .patterns import kind_shares

        return kind_shares(self.array, self.queries, self.keys, padding=self.padding)

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.__dict__["_array"].shape)  # a Lazy one knows its shape without computing

    def between(self, query: str, key: str, camera: Optional[str] = None):
        """The block of the map from query tokens of kind ``query`` to key tokens of kind ``key``.

        ``camera`` picks the image when ``key`` (or ``query``) is ``'image'`` and there are several.
        Returns ``array[..., query positions, :][..., key positions]``.
        """
        _check.choice("query", query, KINDS)
        _check.choice("key", key, KINDS)
        _check.text("camera", camera, optional=True)
        q = self.queries.indices(query, camera if query == "image" else None)
        k = self.keys.indices(key, camera if key == "image" else None)
        return self.array[..., q, :][..., k]

    def meta(self) -> Dict[str, Any]:
        """Every label, JSON-ready (the array is left out; ``padding`` as the padded positions of each item)."""
        return {
            "tower": self.tower, "layer": self.layer, "path": self.path, "step": self.step,
            "phase": self.phase, "call": self.call, "shape": list(self.shape), "camera": self.camera,
            "queries": self.queries.to_dict(), "keys": self.keys.to_dict(),
            "padding": None if self.padding is None else [
                np.flatnonzero(np.asarray(row)).tolist() for row in self.padding],
            "rows": None if self.rows is None else [int(r) for r in self.rows],
        }

    def __repr__(self):
        return (f"AttentionMap({self.tower} layer {self.layer}, step {self.step} {self.phase}, "
                f"shape {self.shape}, path {self.path!r})")


AttentionMap.array = _ArrayField()  # set after @dataclass: its __init__ assigns through it


@dataclass
class AttentionMaps(Sequence):
    """The maps of one capture, in call order, with ``select()`` to filter them.

    ``layouts``: ``{tower: TokenLayout}`` of each tower's full sequence (for the
    language model: prompt plus every generated/action token seen).
    """

    maps: List[AttentionMap] = field(default_factory=list)
    layouts: Dict[str, TokenLayout] = field(default_factory=dict)

    def __getitem__(self, i):
        return self.maps[i]

    def __len__(self) -> int:
        return len(self.maps)

    def __iter__(self) -> Iterator[AttentionMap]:
        return iter(self.maps)

    def select(self, *, tower: Optional[Union[str, Sequence[str]]] = None, layer=None, step=None,
               phase=None, path=None) -> "AttentionMaps":
        """The maps whose labels match; each argument is a value or a list of accepted values.

        A tower or phase that no adapter writes (a typo) raises, naming the valid ones.
        """
        wanted = {}
        for name, value in {"tower": tower, "layer": layer, "step": step, "phase": phase, "path": path}.items():
            if value is None:
                continue
            values = list(value) if isinstance(value, (list, tuple, set, frozenset, range)) else [value]
            known = {"tower": TOWERS + tuple(self.towers), "phase": PHASES}.get(name)
            for v in values:
                if known is not None:
                    _check.choice(name, v, dict.fromkeys(known))
                elif name == "path":
                    _check.text(name, v)
                else:
                    _check.integer(name, v, high=None)
            wanted[name] = set(values)
        maps = [m for m in self.maps if all(getattr(m, k) in v for k, v in wanted.items())]
        return AttentionMaps(maps, self.layouts)

    @property
    def towers(self) -> List[str]:
        return list(dict.fromkeys(m.tower for m in self.maps))

    @property
    def steps(self) -> List[Tuple[int, str]]:
        """``[(step, phase), ...]`` in order."""
        return list(dict.fromkeys((m.step, m.phase) for m in self.maps))

    def kind_shares(self):
        """:meth:`AttentionMap.kind_shares` of every map, stacked: ``values [maps, heads, query kinds, key kinds]``.

        ``rows[i]`` labels map ``i`` (``tower``, ``layer``, ``step``, ``phase``);
        kinds are the union over the maps, NaN where a map lacks one (or has
        fewer heads). Select first, e.g. ``maps.select(tower='llm',
        phase='prefill').kind_shares()`` for one row per layer.
        """
        from .patterns import KindShares

        parts = [m.kind_shares() for m in self.maps]
        qk = list(dict.fromkeys(k for p in parts for k in p.query_kinds))
        kk = list(dict.fromkeys(k for p in parts for k in p.key_kinds))
        heads = max((p.values.shape[0] for p in parts), default=0)
        values = np.full((len(parts), heads, len(qk), len(kk)), np.nan)
        for n, p in enumerate(parts):
            qi = [qk.index(k) for k in p.query_kinds]
            ki = [kk.index(k) for k in p.key_kinds]
            values[n, : p.values.shape[0]][np.ix_(range(p.values.shape[0]), qi, ki)] = p.values
        rows = [{"tower": m.tower, "layer": m.layer, "step": m.step, "phase": m.phase} for m in self.maps]
        return KindShares(values, qk, kk, rows)

    def meta(self) -> Dict[str, Any]:
        """Every label of every map plus the layouts, JSON-ready (arrays left out, in the same order)."""
        return {"maps": [m.meta() for m in self.maps],
                "layouts": {k: v.to_dict() for k, v in self.layouts.items()}}

    def __repr__(self):
        counts = ", ".join(f"{t}: {len(self.select(tower=t))}" for t in self.towers)
        return f"AttentionMaps({len(self)} maps, {len(self.steps)} steps; {counts})"
