"""Explanations on captured maps: attention rollout, gradient rollout and Chefer relevance, per patch.

>>> import numpy as np
>>> from getlocal import explain
>>> from getlocal.maps import Segment, TokenLayout
>>> layout = TokenLayout([Segment('cls', 0, 1), Segment('image', 1, 5, grid=(2, 2))])
>>> uniform = [np.full((1, 2, 5, 5), 1 / 5)] * 3         # three layers, two heads, every row even
>>> r = explain.rollout(uniform, rows='cls', keys=layout)
>>> r.values.sum(-1).round(6).tolist()                    # [batch, rows]: every row is a share of 1
[[1.0]]
>>> r.grid().round(3).tolist()                            # the [CLS] row on the 2x2 patch grid
[[0.175, 0.175], [0.175, 0.175]]
>>> round(float(r.values[0, 0, 0]), 3), r.even.tolist()  # 0.5**3 stays on itself by the residual; even: 1/5
(0.3, [[0.2]])

One layer's map says where a head looked; these methods follow the mass
through the layers to ask which input tokens a row (a [CLS] token, the
position that predicts an action token) depends on.

**Attention rollout** (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow
in Transformers"). Each layer's heads are fused (``mean``, ``max`` or ``min``
over heads) into ``A``; the residual connection is modelled as
``A' = 0.5 A + 0.5 I`` and each row of ``A'`` rescaled to sum to 1; the layers
are chained from the first up, ``R = A'_L ... A'_2 A'_1``. Row ``i`` of ``R``
is a distribution over the input tokens. ``discard`` (as in the rollout
scripts that followed the paper) zeroes the lowest fraction of each fused row
before the residual term, never the diagonal.

**Gradient rollout**: the same chain, with each layer's fused map replaced by
``mean_h(clamp(dy/dA * A, min=0))``: the heads weighted by how the chosen
output ``y`` changes with their weights, negative contributions dropped.

**Relevance** (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers",
the self-attention rule that simplifies their CVPR 2021 "Transformer
Interpretability Beyond Attention Visualization"): ``R = I``, then for each
layer from the first up ``R = R + mean_h(clamp(dy/dA * A, min=0)) @ R``.

Every result is an :class:`Explanation`: the requested rows of ``R``, each
rescaled to shares of 1 over the keys kept (so rollout, gradient rollout and
relevance read in one unit: the share of the row's mass), keys listed in
``exclude=`` (attention sinks, padding) set to 0 before that rescaling and
named in ``Explanation.excluded``. ``grid(camera=)`` lays the image tokens
onto the patch grid; ``even`` is the share each key would get if the row
spread its mass evenly over the keys it can reach (the baseline to read a
share against).

Input: the maps of one pass over one sequence, every layer, every row: one
tower's encode or prefill pass (``maps.select(tower='vit', step=0)``), or maps
whose rows continue one sequence layer by layer, stacked into one square map
per layer: a prefill and its decode steps (``[L, L]``, ``[1, L + 1]``, ...:
the same as one pass over the prompt and the generated tokens), Pi0's prefix
and one denoise step (``maps.select(tower=['language', 'expert'], step=[0, k])``:
the action queries attend to the prefix keys of the same layer, so the two
towers chain as one transformer with a prefix mask). A list of square
``[B, H, N, N]`` arrays also works (``keys=`` gives their layout). Heads are
fused map by map, so the towers may have different head counts. Maps of the
adapters' ``mode='fast'`` work as they are: each is rebuilt from its softmax
inputs when its layer comes and let go, so the capture keeps only the inputs.

Gradients need the maps captured with ``convert='raw'`` in ``mode='eager'``
while autograd records (not under ``torch.no_grad()``), without the adapters'
selection keywords (their copies leave the graph; ``maps.select()``
afterwards). :func:`relevance` takes the scalar ``target`` the user picked
and calls ``torch.autograd.grad(target, maps)`` itself, so there is nothing
to ``retain_grad()``; the graph is freed by that call and nothing of the
model (tensor, graph) is kept in the result. Only numpy is imported here;
torch is used when a target is given, which means it is loaded.

A language model's rows reach the image tokens of its own sequence (the
projector's outputs): for OpenVLA these correspond one to one to the vision
towers' patches, so ``grid()`` is already per patch; :func:`compose` carries
them on through a vision tower's own rollout (an approximation where a
projector mixes towers or tokens: see there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _check
from ._arrays import as_attention
from ._errors import ArgumentError, ArgumentTypeError
from .maps import AttentionMap, AttentionMaps
from .tokens import KINDS, TokenLayout

HEAD_FUSIONS = ("mean", "max", "min")
METHODS = ("chefer", "rollout")


@dataclass
class Explanation:
    """Rows of a rollout or relevance matrix over the keys, as shares of 1, with their layout.

    ``values``: ``[batch, rows, keys]``, each row summing to 1 over the keys
    kept (excluded keys are 0). ``rows``: the key position of each row.
    ``keys``: the ``TokenLayout`` of the key axis (None for bare arrays).
    ``excluded``: the key positions taken out before the rows were rescaled.
    ``reach``: ``[batch, rows]``, how many kept keys each row can reach through
    the layers (all of them in a vision tower; up to itself in a causal model).
    ``last_layer``: the last layer's map, heads averaged, on the same rows,
    with the same exclusion and rescaling: what a single map would have said.
    ``method``, ``layers``, ``tower``, ``step``, ``phase``: where it came from.
    """

    values: np.ndarray
    rows: np.ndarray
    keys: Optional[TokenLayout]
    excluded: Tuple[int, ...]
    reach: np.ndarray
    last_layer: np.ndarray
    method: str
    layers: List[int] = field(default_factory=list)
    tower: Optional[str] = None
    step: Optional[int] = None
    phase: Optional[str] = None

    @property
    def even(self) -> np.ndarray:
        """``[batch, rows]``: ``1 / reach``, the share of each key if a row spread its mass evenly."""
        return 1.0 / np.maximum(self.reach, 1)

    def grid(self, camera: Optional[str] = None, *, item: int = 0, last_layer: bool = False,
             relative: bool = False) -> np.ndarray:
        """The rows' mean share on each image patch of ``camera``: ``(rows, cols)``, NaN where excluded.

        ``last_layer=True`` gives the same for :attr:`last_layer`; ``relative=True``
        each share divided by its row's even share (:attr:`even`) first, so 1 is
        an even spread, 2 twice that.
        """
        if self.keys is None:
            raise ArgumentError("grid(): this explanation has no key layout; pass keys=TokenLayout(...) "
                                "to rollout()/relevance(), or give them AttentionMaps, which carry it")
        item = _check.integer("item", item, low=0, high=self.values.shape[0] - 1)
        _check.flag("last_layer", last_layer), _check.flag("relative", relative)
        source = (self.last_layer if last_layer else self.values)[item]
        if relative:
            source = source / self.even[item][:, None]
        row = source.mean(axis=0)
        row = row.astype(np.float64, copy=True)
        row[list(self.excluded)] = np.nan
        return self.keys.to_grid(row, camera)

    def share(self, kind: str, camera: Optional[str] = None, *, item: int = 0, last_layer: bool = False) -> float:
        """The rows' mean share on every key of ``kind`` (``'image'``, ``'text'``, ...) together.

        ``last_layer=True``: the same for :attr:`last_layer`.
        """
        if self.keys is None:
            raise ArgumentError("share(): this explanation has no key layout; pass keys= to rollout()/relevance()")
        item = _check.integer("item", item, low=0, high=self.values.shape[0] - 1)
        _check.flag("last_layer", last_layer)
        source = self.last_layer if last_layer else self.values
        return float(source[item][:, self.keys.indices(kind, camera)].sum(-1).mean())

    def __repr__(self):
        where = f"{self.tower} step {self.step} {self.phase}, " if self.tower is not None else ""
        return (f"Explanation({self.method}, {where}{len(self.layers)} layers, {len(self.rows)} rows x "
                f"{self.values.shape[-1]} keys, excluded {list(self.excluded)})")


def rollout(maps, *, head_fusion: str = "mean", residual: bool = True, discard: float = 0.0, rows=None,
            exclude=None, keys: Optional[TokenLayout] = None) -> Explanation:
    """Attention rollout (Abnar & Zuidema, 2020) through the layers of one pass: ``R = A'_L ... A'_1``.

    ``maps``: ``AttentionMaps`` of one pass, put in layer order (one tower's
    encode or prefill; a prefill with its decode steps; Pi0's prefix with one
    denoise step: see the module doc), or a list of ``[B, H, N, N]`` /
    ``[H, N, N]`` arrays in layer order. ``head_fusion``: ``'mean'``, ``'max'`` or ``'min'`` over
    heads. ``residual``: ``A' = 0.5 A + 0.5 I`` (False: ``A`` alone); either
    way each row is rescaled to sum to 1. ``discard``: the fraction (0 to <1)
    of each fused row's smallest weights set to 0 before that, never the
    diagonal. ``rows``: the query rows to keep: None (all), a kind
    (``'cls'``, ``'generated'``, ``'text'``...), a position or a list of
    positions (negative from the end). ``exclude``: key kinds and/or positions
    (``'bos'``, ``['register', 0]``) set to 0 in the result before each row
    is rescaled to 1. ``keys``: the layout of bare arrays.

    The layers are read and multiplied in one at a time: besides the maps
    given, only one layer's maps (as float64) and the ``[B, N, N]`` running
    products live (12 layers of 4 x 256 x 256: a peak of 4 MB, where keeping
    every layer's float64 heads took 42 MB, measured in the tests). Maps are
    read with :meth:`AttentionMap.compute`, so a fast-mode map (its softmax
    inputs) is rebuilt in its turn and let go: the capture keeps holding the
    inputs, not the maps.

    >>> import numpy as np
    >>> rollout([np.eye(3)[None, None]] * 2).values[0].tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    _check.choice("head_fusion", head_fusion, HEAD_FUSIONS)
    _check.flag("residual", residual)
    discard = _check.number("discard", discard, low=0.0, high=1.0)
    if discard >= 1.0:
        raise ArgumentError(f"discard must be below 1 (a fraction of each row to drop); got {discard}")
    sources, plan, labels = _layers(maps, keys)
    chain = reach = last = None
    for number, group in enumerate(plan):  # layer by layer: only this layer's maps and the running products live
        attn = {i: as_attention(_array(sources[i]), f"maps[{i}]").astype(np.float64) for i in group}
        layer = _layer([_fuse(attn[i], head_fusion) for i in group])
        support = _layer([(attn[i] > 0).any(axis=1).astype(np.float64) for i in group])
        if chain is not None and layer.shape != chain.shape:
            raise ArgumentError(f"the layers' maps have shapes {sorted({layer.shape, chain.shape})}: one batch and one "
                                f"sequence, please")
        if number == len(plan) - 1:
            last = _layer([attn[i].mean(axis=1) for i in group])
        del attn
        chain = _chain([layer], residual, discard, chain)
        reach = _reach([support], reach)
    return _result(chain, reach, last, labels, rows, exclude, f"rollout ({head_fusion})")


def relevance(target, maps, *, method: str = "chefer", rows=None, exclude=None, residual: bool = True,
              discard: float = 0.0, keys: Optional[TokenLayout] = None) -> Explanation:
    """Gradient-weighted relevance of ``target`` on maps of one pass captured with ``convert='raw'``.

    ``target``: a scalar torch tensor computed from the forward pass that
    produced ``maps`` (a logit, an action token's log-probability, one action
    dimension). ``method='chefer'``: ``R = I``, then layer by layer
    ``R += mean_h(clamp(dy/dA * A, min=0)) @ R`` (Chefer et al., 2021).
    ``method='rollout'``: gradient rollout, the chain of :func:`rollout` with
    each layer's fused map ``mean_h(clamp(dy/dA * A, min=0))`` (``residual``
    and ``discard`` as there). ``rows``, ``exclude``, ``keys``: as in
    :func:`rollout`.

    ``maps`` may also be a dict ``{name: maps of one pass}`` (two towers, or a
    vision tower's maps of each camera): one gradient call serves them all and
    the result is ``{name: Explanation}``; ``rows`` and ``exclude`` may then
    be dicts by the same names too.

    The gradients come from ``torch.autograd.grad(target, [map arrays])``,
    which frees the graph; run the forward again for another target. Maps of
    layers the target does not depend on count as zero gradient. A map used
    by several later passes (Pi0's prefix, read by every denoise step) gets
    its total derivative, through all of them. The result holds numpy arrays
    only.
    """
    _check.choice("method", method, METHODS)
    _check.flag("residual", residual)
    discard = _check.number("discard", discard, low=0.0, high=1.0)
    if discard >= 1.0:
        raise ArgumentError(f"discard must be below 1 (a fraction of each row to drop); got {discard}")
    parts = maps if isinstance(maps, dict) else {None: maps}
    for name, value in (("rows", rows), ("exclude", exclude)):
        if isinstance(value, dict) and (not isinstance(maps, dict) or set(value) - set(maps)):
            raise ArgumentError(f"{name} is a dict with names {sorted(map(str, value))}; that needs maps as a dict "
                                f"holding those names (it holds {sorted(map(str, parts))})")
    if not parts:
        raise ArgumentError("maps is an empty dict; give {name: maps of one pass, ...}")
    flat, plans = [], {}
    for name, part in parts.items():
        sources, plan, labels = _layers(part, keys)
        plans[name] = (len(flat), len(sources), plan, labels)
        flat.extend(_array(x) for x in sources)
    del sources
    grads = _gradients(target, flat)  # one call for every part: the graph is freed once, afterwards
    attn = [as_attention(a.detach(), f"maps[{i}]").astype(np.float64) for i, a in enumerate(flat)]
    del flat  # the captured tensors stay the caller's; nothing here holds them past this point
    out = {}
    for name, (first, count, plan, labels) in plans.items():
        a, g = attn[first:first + count], grads[first:first + count]
        weighted = _assemble([np.clip(gi * ai, 0.0, None).mean(axis=1) for gi, ai in zip(g, a)], plan)
        if method == "rollout":
            chain, title = _chain(weighted, residual, discard), "gradient rollout"
        else:
            n = weighted[0].shape[-1]
            chain = np.broadcast_to(np.eye(n), weighted[0].shape).copy()
            for w in weighted:
                chain = chain + w @ chain
            title = "relevance (Chefer)"
        reach = _reach(_assemble([(x > 0).any(axis=1).astype(np.float64) for x in a], plan))
        last = _assemble([x.mean(axis=1) for x in a], plan[-1:])[0]
        out[name] = _result(chain, reach, last, labels, rows.get(name) if isinstance(rows, dict) else rows,
                            exclude.get(name) if isinstance(exclude, dict) else exclude, title)
    return out if isinstance(maps, dict) else out[None]


def compose(top: Explanation, bottom: Explanation, *, camera: Optional[str] = None) -> Explanation:
    """``top``'s rows carried through the tower below onto its input tokens: ``top`` on the image x ``bottom``.

    ``top``: an explanation over a sequence whose image tokens (of ``camera``)
    are made token by token from the lower tower's outputs, in order (OpenVLA:
    the projector turns vision patch ``i`` into the language model's image
    token ``i``). ``bottom``: that lower tower's explanation with a row for
    each of those outputs (``rows='image'``). The result's row ``r`` over the
    lower tower's keys is ``sum_i top[r, image_i] * bottom[i, :]``, rescaled
    to 1: the share of the row's *image* mass (its text or other tokens have
    no counterpart below and are left out). An approximation where the
    lower tower's outputs are mixed or pooled before they become tokens, and
    for a model with two vision towers side by side (OpenVLA's DINOv2 and
    SigLIP): compose with each, the weight the projector gives either is not
    known here. Select the lower tower's layers the projector reads
    (Prismatic reads the second-to-last block).

    >>> import numpy as np
    >>> from getlocal.maps import Segment, TokenLayout
    >>> llm = TokenLayout([Segment('bos', 0, 1), Segment('image', 1, 3, grid=(1, 2)), Segment('text', 3, 4)])
    >>> vis = TokenLayout([Segment('image', 0, 2, grid=(1, 2))])
    >>> swap = [np.array([[[[0.0, 1.0], [1.0, 0.0]]]])]                 # each patch reads the other
    >>> looks = [np.tile([0.1, 0.6, 0.1, 0.2], (1, 1, 4, 1))]          # every row: 6x more on image 0
    >>> top = rollout(looks, rows=-1, keys=llm, residual=False)
    >>> compose(top, rollout(swap, rows='image', keys=vis, residual=False)).grid().round(3).tolist()
    [[0.143, 0.857]]
    """
    for name, value in (("top", top), ("bottom", bottom)):
        _check.instance(name, value, Explanation, "what rollout() or relevance() returns")
        if value.keys is None:
            raise ArgumentError(f"{name} has no key layout; pass keys= to rollout()/relevance()")
    image = top.keys.indices("image", camera) if camera is not None else np.arange(top.keys.image().start,
                                                                                    top.keys.image().stop)
    below = bottom.keys.indices("image")
    if len(image) != len(below) or bottom.rows.tolist() != below.tolist():
        raise ArgumentError(
            f"bottom must have one row per image token of its tower, in order (rows='image': {len(below)} rows), "
            f"matching top's {len(image)} image tokens of camera={camera!r}; got rows {bottom.rows.tolist()[:8]}...")
    if top.values.shape[0] != bottom.values.shape[0]:
        raise ArgumentError(f"top has batch {top.values.shape[0]}, bottom {bottom.values.shape[0]}: one batch, please")
    carried = _rows_to_one(top.values[:, :, image] @ bottom.values)
    reach = np.broadcast_to(bottom.reach.max(axis=1, keepdims=True), carried.shape[:2]).copy()
    last = _rows_to_one(top.last_layer[:, :, image] @ bottom.last_layer)
    return Explanation(values=carried, rows=top.rows, keys=bottom.keys, excluded=bottom.excluded, reach=reach,
                       last_layer=last, method=f"{top.method} through {bottom.method}",
                       layers=bottom.layers + top.layers, tower=f"{top.tower}>{bottom.tower}", step=top.step,
                       phase=top.phase)


# -- the pieces -------------------------------------------------------------------


def _layers(maps, keys) -> Tuple[list, List[List[int]], Dict[str, Any]]:
    """The maps' arrays, the plan (per layer, in layer order: which maps give its rows, top to bottom), labels.

    Each layer's maps must lay out one square ``[N, N]`` map together: a map's
    queries are the last ``Q`` of its ``K`` keys, so a prefill ``[L, L]``
    followed by its decode steps ``[1, L + 1]``, ``[1, L + 2]``, ... or Pi0's
    prefix ``[P, P]`` followed by one denoise step ``[S, P + S]`` stack into the
    attention of one pass over the whole sequence (the keys a row cannot see
    are 0, as a causal or prefix mask leaves them).
    """
    if keys is not None:
        _check.instance("keys", keys, TokenLayout, "a TokenLayout (a map's .keys)")
    if isinstance(maps, AttentionMap):
        maps = [maps]
    if not isinstance(maps, (AttentionMaps, list, tuple)):
        raise ArgumentTypeError(
            f"maps must be AttentionMaps (one tower, one pass) or a list of [B, H, N, N] arrays; got {_check.show(maps)}")
    if not len(maps):
        raise ArgumentError("maps is empty: capture a forward pass first (and select one tower and step from it)")
    labelled = [isinstance(m, AttentionMap) for m in maps]
    if any(labelled) and not all(labelled):
        raise ArgumentTypeError("maps mixes AttentionMap objects and bare arrays; give one or the other")
    if not all(labelled):
        shapes = [tuple(getattr(a, "shape", np.shape(a))) for a in maps]
        for i, shape in enumerate(shapes):
            if len(shape) < 2 or shape[-1] != shape[-2] or shape[-2:] != shapes[0][-2:]:
                raise ArgumentError(f"maps[{i}] has shape {shape}, maps[0] {shapes[0]}: bare arrays must be square "
                                    f"[B, H, N, N] maps (every row) of one sequence")
        return list(maps), [[i] for i in range(len(maps))], {
            "keys": keys, "layers": list(range(len(maps))), "tower": None, "step": None, "phase": None}
    towers = list(dict.fromkeys(m.tower for m in maps))
    steps = list(dict.fromkeys(m.step for m in maps))
    cameras = sorted({m.camera for m in maps if m.camera is not None})
    by_layer: Dict[int, List[int]] = {}
    for i, m in enumerate(maps):
        if m.rows is not None:
            raise ArgumentError(
                f"{m!r} keeps some rows by index (queries=): rollout needs every row of every layer; capture "
                f"without queries=")
        by_layer.setdefault(m.layer, []).append(i)
    plan, size = [], None
    for layer in sorted(by_layer):
        group = sorted(by_layer[layer], key=lambda i: (maps[i].shape[-1], maps[i].call))
        covered = 0
        for i in group:
            q, k = maps[i].shape[-2:]
            if k - q != covered and covered == 0:
                raise ArgumentError(
                    f"at layer {layer}, {maps[i]!r} gives rows {k - q}:{k} only: rollout needs every row of every "
                    f"layer; add the passes before it (the prefill or prefix, and every step between), e.g. "
                    f"maps.select(tower={maps[i].tower!r}, step=list(range({maps[i].step + 1})))")
            if k - q != covered:
                hint = (f"; a vision tower run once per camera gives a map per camera: pass one camera's, "
                        f"[m for m in maps if m.camera == {cameras[0]!r}]") if len(cameras) > 1 else ""
                raise ArgumentError(
                    f"at layer {layer}, {maps[i]!r} gives rows {k - q}:{k} but the maps before it cover 0:{covered}: "
                    f"an explanation chains the layers of one pass over one sequence (a prefill and its decode "
                    f"steps, Pi0's prefix and one denoise step); these maps hold towers {towers} and steps "
                    f"{steps}: select them first, e.g. maps.select(tower={towers[0]!r}, step={steps[0]}){hint}")
            covered = k
        if size is not None and covered != size:
            raise ArgumentError(
                f"layer {layer}'s maps cover {covered} tokens, the layers before {size}: give every layer the same "
                f"steps (a step captured for some layers only, or a sliding-window cache, does not chain)")
        size = covered
        plan.append(group)
    last = maps[plan[-1][-1]]
    return list(maps), plan, {
        "keys": keys if keys is not None else last.keys, "layers": sorted(by_layer), "tower": "+".join(towers),
        "step": last.step, "phase": "+".join(dict.fromkeys(maps[i].phase for i in plan[-1]))}


def _array(source):
    """The array of a map (a fast-mode map computed here and kept by nobody else) or a bare array as it is."""
    return source.compute() if isinstance(source, AttentionMap) else source


def _layer(blocks: List[np.ndarray]) -> np.ndarray:
    """One layer's maps' ``[B, Q, K]`` rows stacked into one ``[B, N, N]`` map, the keys a row lacks at 0."""
    batch = {b.shape[0] for b in blocks}
    if len(batch) > 1:
        raise ArgumentError(f"the maps of one layer have batch sizes {sorted(batch)}; one batch, please")
    if len(blocks) == 1:
        return blocks[0]
    n = blocks[-1].shape[-1]
    layer = np.zeros((blocks[0].shape[0], n, n))
    for b in blocks:
        q, k = b.shape[-2:]
        layer[:, k - q:k, :k] = b
    return layer


def _assemble(parts: List[np.ndarray], plan: List[List[int]]) -> List[np.ndarray]:
    """Per layer, its maps stacked by :func:`_layer`; every layer the same shape."""
    out = [_layer([parts[i] for i in group]) for group in plan]
    if len({a.shape for a in out}) > 1:
        raise ArgumentError(f"the layers' maps have shapes {sorted({a.shape for a in out})}: one batch and one "
                            f"sequence, please")
    return out


def _fuse(a: np.ndarray, how: str) -> np.ndarray:
    return {"mean": np.mean, "max": np.max, "min": np.min}[how](a, axis=1)


def _chain(fused: List[np.ndarray], residual: bool, discard: float, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``A'_L ... A'_1`` over ``[B, N, N]`` fused maps, with the discard, the residual term and row rescaling.

    ``out``: the product of the layers before (None: start from the identity).
    """
    n = fused[0].shape[-1]
    eye = np.eye(n)
    out = np.broadcast_to(eye, fused[0].shape).copy() if out is None else out
    for a in fused:
        a = _discard(a, discard) if discard else a
        if residual:
            a = 0.5 * a + 0.5 * eye
        out = _rows_to_one(a) @ out
    return out


def _discard(a: np.ndarray, fraction: float) -> np.ndarray:
    """Each row's ``floor(fraction * (N - 1))`` smallest off-diagonal weights set to 0 (the diagonal always kept)."""
    n = a.shape[-1]
    drop = int(fraction * (n - 1))
    if drop == 0:
        return a
    off = a.copy()
    diagonal = np.arange(n)
    off[..., diagonal, diagonal] = np.inf  # never among the smallest
    lowest = np.argsort(off, axis=-1, kind="stable")[..., :drop]
    a = a.copy()
    np.put_along_axis(a, lowest, 0.0, axis=-1)
    return a


def _rows_to_one(a: np.ndarray) -> np.ndarray:
    total = a.sum(axis=-1, keepdims=True)
    return np.divide(a, total, out=np.zeros_like(a), where=total > 0)


def _reach(support: List[np.ndarray], before: Optional[np.ndarray] = None) -> np.ndarray:
    """``[B, N, N]`` bool: which keys each row can reach through the layers (``support``: ``[B, N, N]`` each).

    ``before``: what the layers before reach (None: each row itself).
    """
    n = support[0].shape[-1]
    eye = np.eye(n, dtype=bool)
    out = np.broadcast_to(eye, support[0].shape).astype(np.float64) if before is None else before.astype(np.float64)
    for a in support:
        out = (((a > 0) | eye).astype(np.float64) @ out > 0).astype(np.float64)
    return out > 0


def _positions(name: str, value, layout: Optional[TokenLayout], n: int) -> np.ndarray:
    """Positions from a kind, a position, or a list of both (negative positions from the end)."""
    items = list(value) if isinstance(value, (list, tuple, range, np.ndarray)) else [value]
    out = []
    for v in items:
        if isinstance(v, str):
            _check.choice(name, v, KINDS)
            if layout is None:
                raise ArgumentError(f"{name}={v!r} names a token kind, but these maps have no layout; pass keys= "
                                    f"or positions")
            found = layout.indices(v)
            if not found.size:
                have = sorted({s.kind for s in layout.segments})
                raise ArgumentError(f"{name}={v!r}: this sequence has no {v!r} tokens; it holds {have}")
            out.extend(found.tolist())
        else:
            p = _check.integer(name, v, low=-n, high=n - 1)
            out.append(p % n)
    return np.asarray(out, dtype=np.int64)


def _result(chain, reached, last, labels, rows, exclude, method) -> Explanation:
    """The Explanation of ``chain``'s chosen rows; ``reached``: ``[B, N, N]`` bool, ``last``: the last layer, heads
    averaged."""
    n = chain.shape[-1]
    layout = labels["keys"]
    if layout is not None and len(layout) != n:
        raise ArgumentError(f"keys lays out {len(layout)} tokens but the maps have {n}; pass the maps' own layout")
    picked = np.arange(n) if rows is None else _positions("rows", rows, layout, n)
    if not picked.size:
        raise ArgumentError("rows is empty; give a kind ('cls'), a position (-1) or a list of positions")
    dropped = np.zeros(0, dtype=np.int64) if exclude is None else _positions("exclude", exclude, layout, n)
    kept = np.ones(n, dtype=bool)
    kept[dropped] = False
    if not kept.any():
        raise ArgumentError("exclude removes every key; nothing would be left to share the rows' mass")

    def shares(matrix):
        out = matrix[:, picked, :] * kept
        return _rows_to_one(out)

    reach = (reached[:, picked, :] & kept).sum(-1)
    excluded = tuple(int(p) for p in np.unique(dropped))
    return Explanation(values=shares(chain), rows=picked, keys=layout, excluded=excluded,
                       reach=reach, last_layer=shares(last), method=method,
                       layers=labels["layers"], tower=labels["tower"], step=labels["step"], phase=labels["phase"])


def _gradients(target, arrays) -> List[np.ndarray]:
    """``d target / d map`` for every map, as numpy; the graph is freed by the one ``autograd.grad`` call."""
    import torch  # a target is a torch tensor, so torch is loaded already

    if not isinstance(target, torch.Tensor):
        raise ArgumentTypeError(f"target must be a scalar torch tensor from the forward pass; got {_check.show(target)}")
    if target.numel() != 1:
        raise ArgumentError(
            f"target has shape {tuple(target.shape)}; pick one number, e.g. logits[0, -1, token] or "
            f"log_probs[0, position, token]")
    if not target.requires_grad:
        raise ArgumentError("target does not require grad: run the forward with autograd on (not under "
                            "torch.no_grad() or inference_mode), capturing with convert='raw'")
    for i, a in enumerate(arrays):
        if not isinstance(a, torch.Tensor) or not a.requires_grad:
            what = type(a).__name__ if not isinstance(a, torch.Tensor) else "a tensor without grad"
            raise ArgumentError(
                f"maps[{i}] is {what}: gradients need the maps in the graph; capture with convert='raw' and "
                f"mode='eager' while autograd records, without towers=/layers=/queries=/heads=/dtype= (fast mode "
                f"and the selection keep copies outside the graph; select afterwards with maps.select())")
    grads = torch.autograd.grad(target.reshape(()), list(arrays), allow_unused=True)
    if all(g is None for g in grads):
        raise ArgumentError("target does not depend on any of these maps; pick a target computed after them "
                            "(the same forward pass)")
    out = [np.zeros(tuple(a.shape)) if g is None else g.detach().to("cpu", torch.float64).numpy()
           for a, g in zip(arrays, grads)]
    out = [g[None] if g.ndim == 3 else g for g in out]
    del grads
    return out
