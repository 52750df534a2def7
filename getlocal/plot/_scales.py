"""Colour scales: the norm and colour map of each ``scale=``, and colour bars that read as plain numbers."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap, LogNorm, Normalize

from ..patterns.display import UNIFORM_CMAP, UNIFORM_RANGE, uniform_colors

SCALE_LABELS = {"uniform": "x uniform (attention x visible keys)", "log": "attention (log scale)",
           "linear": "attention"}


#: White at its centre, 1 (uniform) on the 'uniform' scale, pale up to about 2x; the viewer draws the same colours.
#: Registered with matplotlib under this name, so ``cmap="getlocal_uniform"`` works anywhere.
NEUTRAL_CMAP = UNIFORM_CMAP
if NEUTRAL_CMAP not in matplotlib.colormaps:
    matplotlib.colormaps.register(ListedColormap(uniform_colors(256), name=NEUTRAL_CMAP))


def norm_for(values, scale: str, kwargs: dict, default_cmap: str):
    """Pop ``vmin``/``vmax`` from ``kwargs`` and set its ``norm`` and ``cmap`` for ``scale``; returns the bar label."""
    vmin, vmax = kwargs.pop("vmin", None), kwargs.pop("vmax", None)
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    top_seen = float(finite.max()) if finite.size else 1.0
    if scale == "uniform":
        # a fixed range: the same colour means the same ratio on every figure, and noise stays pale
        top = float(vmax) if vmax is not None else UNIFORM_RANGE
        bottom = float(vmin) if vmin is not None else 1.0 / top
        kwargs.setdefault("norm", LogNorm(bottom, top, clip=False))
        kwargs.setdefault("cmap", NEUTRAL_CMAP)
    elif scale == "log":
        top = float(vmax) if vmax is not None else (top_seen if top_seen > 0 else 1.0)
        positive = finite[finite > 0]
        bottom = float(vmin) if vmin is not None else max(float(positive.min()) if positive.size else top * 1e-4,
                                                           top * 1e-4)
        kwargs.setdefault("norm", LogNorm(bottom, max(top, bottom * 10), clip=False))
        kwargs.setdefault("cmap", default_cmap)
    else:
        kwargs.setdefault("norm", Normalize(0.0 if vmin is None else float(vmin),
                                            float(vmax) if vmax is not None else (top_seen if top_seen > 0 else 1.0)))
        kwargs.setdefault("cmap", default_cmap)
    cmap = plt.get_cmap(kwargs["cmap"]) if isinstance(kwargs["cmap"], str) else kwargs["cmap"]
    kwargs["cmap"] = cmap.with_extremes(bad="#d9d9d9")  # keys a query could not see, and masked sinks
    return SCALE_LABELS[scale]


def _extend(values, norm) -> str:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return "neither"
    low, high = finite.min() < norm.vmin, finite.max() > norm.vmax
    return "both" if low and high else "min" if low else "max" if high else "neither"


def colorbar(fig, im, values, label, cbar_kws, **defaults):
    kws = {"extend": _extend(values, im.norm), "label": label, **defaults, **(cbar_kws or {})}
    bar = fig.colorbar(im, **kws)
    if isinstance(im.norm, LogNorm):  # plain numbers at 1-2-5 steps, not 6 x 10^-1
        lo, hi = im.norm.vmin, im.norm.vmax
        steps = [m * 10.0**e for e in range(-12, 13) for m in (1, 2, 5)]
        ticks = [t for t in steps if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        while len(ticks) > 7:
            ticks = ticks[::2] if 1 not in ticks else [t for i, t in enumerate(ticks) if (i - ticks.index(1)) % 2 == 0]
        bar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
        bar.ax.minorticks_off()
    bar.ax.tick_params(labelsize=7)
    bar.ax.yaxis.label.set_size(8)
    return bar
