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
without the model. Nothing imports torch. ``Segment``, ``TokenLayout`` and
the vocabulary of token ``KINDS`` live in :mod:`getlocal.tokens` (with the
token-kind shares that ``kind_shares()`` returns) and are re-exported here;
``Lazy`` lives in ``getlocal._convert``.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _check
from ._convert import Lazy, converter

_to_numpy = converter("numpy")
from .tokens import KINDS, Segment, TokenLayout, kind_shares, stack_kind_shares  # noqa: F401 (KINDS, Segment: re-exported)


class _ArrayField:
    """``AttentionMap.array``: the stored value, a ``Lazy`` one computed (once) when first read and kept
    (``AttentionMap.compute()`` reads without keeping)."""

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
        return kind_shares(self.array, self.queries, self.keys, padding=self.padding)

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(m)``: the map's array as numpy (a tensor detached and on the CPU, half types as float32),
        so that every function taking an array takes the map itself (``patterns.kind_shares(m, ...)``)."""
        arr = np.asarray(_to_numpy(self.array))
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def compute(self):
        """The map's array for one read, kept by nobody but the caller.

        A map not computed yet (the adapters' ``mode='fast'``) is computed from
        its inputs, which the map goes on holding instead of the result. Read
        each map this way when going over many once (``explain.rollout`` does):
        memory then holds one map at a time, where ``.array`` keeps every map
        it computed (it is meant to be read again). A map already computed is
        given as it is, not copied.
        """
        value = self.__dict__.get("_array")  # absent where a subclass reads its array its own way (a loaded run's)
        return value.compute() if isinstance(value, Lazy) else self.array

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.__dict__["_array"].shape)  # a Lazy one knows its shape without computing

    def between(self, query: str, key: str, camera: Optional[str] = None):
        """The block of the map from query tokens of kind ``query`` to key tokens of kind ``key``.

        ``camera`` picks the image when ``key`` (or ``query``) is ``'image'`` and there are several.
        Returns ``array[..., query positions, :][..., key positions]``. A kind (or
        camera) that the map's layouts do not hold raises, naming those they hold:
        the block would be empty.
        """
        _check.choice("query", query, KINDS)
        _check.choice("key", key, KINDS)
        _check.text("camera", camera, optional=True)
        q = _held(self.queries, "queries", query, camera if query == "image" else None)
        k = _held(self.keys, "keys", key, camera if key == "image" else None)
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


def _held(layout: TokenLayout, axis: str, kind: str, camera: Optional[str]):
    """The positions of ``kind`` (of ``camera``) in ``layout``; if none, an error naming what it holds."""
    found = layout.indices(kind, camera)
    if len(found):
        return found
    kinds = ", ".join(repr(k) for k in dict.fromkeys(s.kind for s in layout.segments)) or "nothing"
    if camera is not None and layout.find(kind):
        cameras = ", ".join(repr(c) for c in dict.fromkeys(s.camera for s in layout.find(kind)) if c is not None)
        if not cameras:
            raise _check.ArgumentError(f"between(): this map's {axis} name no camera; leave camera={camera!r} out")
        raise _check.ArgumentError(f"between(): this map's {axis} hold no {kind!r} tokens of camera={camera!r}; "
                                   f"its cameras are {cameras}")
    raise _check.ArgumentError(f"between(): this map's {axis} hold no {kind!r} tokens; they hold {kinds} "
                               f"({axis}: {layout!r})")


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

        A tower or phase that these maps do not hold (a typo, or another model's name) raises,
        naming the ones they hold: the maps know their labels, the data layer knows no model.
        """
        wanted = {}
        for name, value in {"tower": tower, "layer": layer, "step": step, "phase": phase, "path": path}.items():
            if value is None:
                continue
            values = list(value) if isinstance(value, (list, tuple, set, frozenset, range)) else [value]
            known = {"tower": self.towers, "phase": [p for _, p in self.steps]}.get(name)
            for v in values:
                if known is not None and not known:
                    raise _check.ArgumentError(f"{name}={_check.show(v)}: these maps are empty, they have no {name}")
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
        rows = [{"tower": m.tower, "layer": m.layer, "step": m.step, "phase": m.phase} for m in self.maps]
        return stack_kind_shares([m.kind_shares() for m in self.maps], rows)

    def meta(self) -> Dict[str, Any]:
        """Every label of every map plus the layouts, JSON-ready (arrays left out, in the same order)."""
        return {"maps": [m.meta() for m in self.maps],
                "layouts": {k: v.to_dict() for k, v in self.layouts.items()}}

    def __repr__(self):
        counts = ", ".join(f"{t}: {len(self.select(tower=t))}" for t in self.towers)
        return f"AttentionMaps({len(self)} maps, {len(self.steps)} steps; {counts})"
