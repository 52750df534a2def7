"""Episode summaries: per recorded step, where the action (or generated) tokens look in each camera.

The numbers behind :func:`getlocal.plot.episode_grid`, :func:`~getlocal.plot.episode_image_share` and
:func:`~getlocal.plot.episode_gif`: heat maps on the 'uniform' scale and the image share per layer.
"""
from __future__ import annotations

import numpy as np

from .. import _check
from .._errors import GetLocalError
from ..maps import AttentionMaps
from .display import UNIFORM_RANGE, query_heatmap, visible_mask


def episode_summary(run, layers=None):
    """Per recorded step: the action/generated tokens' attention to each camera, and the image share per layer.

    A step's "action maps" are those whose queries hold ``action`` tokens (Pi0's
    expert) or, when none does, ``generated`` tokens (OpenVLA's decode passes).
    Heat maps average the query rows, heads, layers and passes; the share is the
    fraction of those rows' attention that lands on image tokens, per layer, and
    its baseline the share of image tokens among the keys those rows see (what
    uniform attention would give).
    ``run`` is a :class:`~getlocal.recording.Recording` (any iterable of steps with ``.maps``, ``.step``,
    ``.rank`` and a ``.path`` will do: only the maps are read here).
    """
    if layers is not None:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple, range, set)) \
                or not all(type(n) is int for n in layers):
            raise _check.ArgumentTypeError(f"layers must be None or a list of layer numbers (int); got {_check.show(layers)}")
        if not len(layers):
            raise _check.ArgumentError("layers is empty; give the layer numbers to average, or None for all")
    out = []
    kinds = set()
    for step in run:
        maps = step.maps
        if not isinstance(maps, AttentionMaps):
            raise _check.ArgumentError(f"step {step.step} of {run.path} holds a raw cache; episode figures need the "
                                       "labelled maps of an adapter: record with collect=lambda: adapter.collect(model)")
        kind = "action" if any(m.queries.find("action") for m in maps) else "generated"
        chosen = [m for m in maps if m.queries.find(kind) and m.keys.find("image")
                  and (layers is None or m.layer in layers)]
        if not chosen:
            continue
        kinds.add(kind)
        heats, share, baseline = {}, {}, {}
        for m in chosen:
            arr = np.asarray(m.array, dtype=np.float32)[0]  # the first sample of the batch
            rows = m.queries.indices(kind)
            # on the 'uniform' scale of the other figures: each weight times the keys its row could see
            vis = visible_mask(arr)
            ratio = arr * vis.sum(-1, keepdims=True)
            for camera in m.keys.cameras:
                heat = query_heatmap(ratio, image_tokens=m.keys.image(camera), queries=rows, grid=m.keys.grid(camera))
                heats.setdefault(camera, []).append(heat)
            on_image = arr[:, rows][..., m.keys.indices("image")].sum(-1).mean()
            share.setdefault(m.layer, []).append(float(on_image))
            seen = vis[rows]
            uniform = seen[:, m.keys.indices("image")].sum(-1) / np.maximum(seen.sum(-1), 1)
            baseline.setdefault(m.layer, []).append(float(uniform.mean()))
        out.append({"step": step.step, "rank": step.rank, "source": step, "tower": chosen[0].tower,
                    "heats": {c: np.mean(h, axis=0) for c, h in heats.items()},
                    "share": {layer: float(np.mean(v)) for layer, v in share.items()},
                    "baseline": {layer: float(np.mean(v)) for layer, v in baseline.items()}})
    if not out and layers is not None:
        present = sorted({m.layer for step in run for m in step.maps})
        raise _check.ArgumentError(f"layers={_check.show(layers)} matches no recorded layer; the run has layers {present}")
    if not out:
        raise GetLocalError(f"{getattr(run, 'path', 'the run')}: no step holds maps from action or generated tokens to "
                            "image tokens; record a VLA's language/expert tower (select= kept other towers only?)")
    return out, ("action" if "action" in kinds else "generated")


def episode_top(data) -> float:
    """The top of an episode's 'uniform' colour scale: ``UNIFORM_RANGE``, as on every other figure.

    Fixed rather than the episode's largest ratio, so that a random policy's
    0.5-2x stays pale and the same colour means the same ratio in every figure.
    """
    return UNIFORM_RANGE
