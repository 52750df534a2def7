"""The pattern table: every head of every layer scored (:func:`summarize`) and shown."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import _check
from .._arrays import plain_float
from .._errors import ArgumentError
from ..maps import AttentionMap, AttentionMaps
from ._heads import FLOAT_COLUMNS, LABELS, scores_excluding, wants_grid
from .inputs import as_attention, check_patch_size, check_radius, count, grid_shape, image_positions


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

    columns = FLOAT_COLUMNS

    def __init__(self, layers: Sequence, scores: Sequence[Dict[str, Any]], options: Dict[str, Any]):
        self.layers = list(layers)
        self.num_heads = [len(s["label"]) for s in scores]
        self.options = dict(options)
        width = max(self.num_heads) if self.num_heads else 0
        self._data = {}
        for name in FLOAT_COLUMNS:
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
            raise KeyError(f"{name!r} is not a score; the scores are {', '.join(FLOAT_COLUMNS)} and 'label'")
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
                    rec.update({c: plain_float(self._data[c][i, h]) for c in FLOAT_COLUMNS})
                    rec["sinks"] = list(self.sinks[i][h])
                    rec["offsets"] = [list(o) for o in self.offsets[i][h]]
                    out.append(rec)
            else:
                rec = {"layer": _plain_key(layer), "heads": n}
                labels = list(self.labels[i, :n])
                rec.update({lab: labels.count(lab) for lab in LABELS})
                for c in FLOAT_COLUMNS:
                    row = self._data[c][i, :n]
                    rec[c] = None if np.all(np.isnan(row)) else plain_float(np.nanmean(row))
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
                    *("-" if rec[c] is None else f"{rec[c]:.3f}" for c in FLOAT_COLUMNS[:4]),
                    "-" if rec["distance"] is None else f"{rec['distance']:.2f}",
                    "-" if rec["entropy_norm"] is None else f"{rec['entropy_norm']:.3f}",
                    ",".join(f"{o:+d}" if o else "0" for o in rec["offset"]) or "-",
                    shown or "-",
                )
            )
        widths = [max(len(r[j]) for r in [head] + rows) for j in range(len(head))]
        lines = ["  ".join(c.rjust(wd) for c, wd in zip(r, widths)) for r in [head] + rows]
        return "\n".join(lines)


def _how_to_list(layers) -> str:
    """The way from what was given to a list of layers, written so that it works."""
    shape = getattr(layers, "shape", None) if hasattr(type(layers), "shape") else None  # any object may come
    if shape is not None:
        shape = tuple(shape)
        if len(shape) == 3:
            return f" of shape {shape}; pass [attn] for one layer"
        if len(shape) == 4:
            return f" of shape {shape}; pass [attn] for one [B, H, Q, K] layer, or list(attn) if axis 0 is the layers"
        if len(shape) == 5:
            return f" of shape {shape}; pass list(attn) for a stacked [L, B, H, Q, K] array (one layer each)"
        return f" of shape {shape}; pass [attn] for one [H, Q, K] / [B, H, Q, K] layer"
    if hasattr(type(layers), "__iter__") and not isinstance(layers, (str, bytes)):
        return "; pass list(layers)"
    return "; pass [attn] for one layer"


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
    ``get_local.cache['Attention.forward']``, or an adapter's ``AttentionMaps``:
    one layer per map, in order; layer names are 0, 1, ...), one
    ``AttentionMap``, or a dict ``{layer name: map}``; each map is ``[H, Q, K]``
    or ``[B, H, Q, K]``. Only the arrays are read: select one step and tower
    first (``maps.select(tower='vit', step=0)``) and give their token positions
    (``image_tokens=maps[0].keys.image()``).
    The keyword arguments are those of :func:`head_scores` and apply to all
    layers; which keys each query sees is read from each map (``causal=`` is
    accepted and changes nothing, see :func:`head_scores`), ``segments=``
    (a TokenLayout of the keys) for the block score, ``exclude=`` to leave
    padding out (``exclude=m.padding`` for an :class:`~getlocal.maps.AttentionMap`).

    >>> import numpy as np
    >>> maps = [np.full((6, 197, 197), 1 / 197) for _ in range(12)]
    >>> t = summarize(maps, image_tokens=slice(1, 197), patch_size=16)
    >>> round(float(t["distance_px"][0, 0]), 1)
    116.5
    """
    causal, patch_size, radius = _check.flag("causal", causal), check_patch_size(patch_size), check_radius(radius)
    if isinstance(layers, AttentionMap):
        layers = [layers]
    if isinstance(layers, dict):
        names, maps = list(layers), list(layers.values())
    elif isinstance(layers, (list, tuple, AttentionMaps)):
        names, maps = list(range(len(layers))), list(layers)
    else:
        raise ArgumentError(
            f"layers must be a list of layer maps, an AttentionMaps or a dict {{layer: map}}; got "
            f"{type(layers).__name__}{_how_to_list(layers)}")
    scores = []
    options = {"image_tokens": image_tokens, "grid": grid, "causal": bool(causal), "patch_size": patch_size,
               "segments": segments is not None, "exclude": exclude is not None}
    for name, m in zip(names, maps):
        a = as_attention(m, name=f"layers[{name!r}]")
        k = a.shape[-1]
        if options["grid"] is None and wants_grid(k, image_tokens, grid):
            options["grid"] = grid_shape(None, count(image_positions(image_tokens, k)), image_tokens)
        scores.append(scores_excluding(a, image_tokens, grid, bool(causal), patch_size, int(radius), segments, exclude))
    return PatternTable(names, scores, options)
