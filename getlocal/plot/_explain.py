"""Explanations over the camera picture: rollout or relevance per patch, beside the last layer's raw attention."""
from __future__ import annotations

from typing import Optional

import matplotlib.pyplot as plt
import numpy as np

from .. import _check
from ..explain import Explanation
from ._pictures import as_picture, overlay
from ._scales import colorbar


def share_label(result: Explanation, item: int) -> str:
    """The colour bar's label: the unit (share x keys reached) and what 1 means."""
    reach = np.unique(result.reach[item])
    if reach.size == 1:
        return f"share of the row's mass x {int(reach[0])}\n(1 = even over the {int(reach[0])} keys it reaches)"
    return "share of the row's mass x keys it reaches\n(1 = an even spread)"


def _check_common(result, item, camera, pad_to_square, alpha):
    _check.instance("result", result, Explanation, "what getlocal.explain.rollout() or relevance() returns")
    _check.integer("item", item, low=0, high=result.values.shape[0] - 1)
    _check.text("camera", camera, optional=True)
    _check.flag("pad_to_square", pad_to_square)
    _check.number("alpha", alpha, low=0, high=1)


def _picture(image):
    img = as_picture(image)
    if 0 in img.shape[:2]:
        raise _check.ArgumentError(f"image is empty: shape {img.shape}; give the camera's picture")
    return img


def relevance_overlay(result: Explanation, image, *, camera: Optional[str] = None, item: int = 0,
                      last_layer: bool = False, ax=None, pad_to_square: bool = False, alpha: float = 0.5,
                      cbar: bool = True, cbar_kws: Optional[dict] = None, **kwargs):
    """One explanation drawn over the picture of ``camera``, one block of colour per patch; returns the Axes.

    ``result``: what :func:`getlocal.explain.rollout` or
    :func:`~getlocal.explain.relevance` returns (its rows averaged; batch
    ``item``). Each patch shows its share of the row's mass divided by the
    share an even spread would give (``result.grid(relative=True)``): white is
    even, red more, blue less, on a log scale; excluded patches are grey.
    ``last_layer=True`` draws the last layer's own map on the same rows
    instead. ``pad_to_square`` undoes a letterbox resize as in
    :func:`getlocal.plot.image_attention`. ``cbar_kws`` go to the colour bar,
    ``**kwargs`` to the overlay's ``ax.imshow`` (``vmin``/``vmax`` included).

    >>> import numpy as np, matplotlib.pyplot as plt
    >>> from getlocal import explain
    >>> from getlocal.maps import Segment, TokenLayout
    >>> keys = TokenLayout([Segment('cls', 0, 1), Segment('image', 1, 5, grid=(2, 2))])
    >>> r = explain.rollout([np.full((1, 1, 5, 5), 0.2)], rows='cls', keys=keys, residual=False)
    >>> fig, ax = plt.subplots()
    >>> ax = relevance_overlay(r, np.zeros((28, 28)), ax=ax)
    >>> ax.images[-1].get_array().round(3).tolist()          # an even spread: 1 everywhere
    [[1.0, 1.0], [1.0, 1.0]]
    """
    _check_common(result, item, camera, pad_to_square, alpha)
    _check.axes("ax", ax), _check.flag("cbar", cbar), _check.options("cbar_kws", cbar_kws)
    heat = result.grid(camera, item=item, last_layer=last_layer, relative=True)
    img = _picture(image)
    ax = plt.gca() if ax is None else ax
    overlay(ax, img, heat, scale="uniform", pad_to_square=pad_to_square, alpha=alpha, cbar=cbar,
            cbar_kws={"label": share_label(result, item), **(cbar_kws or {})}, **kwargs)
    return ax


def relevance_figure(result: Explanation, image, *, camera: Optional[str] = None, item: int = 0,
                     pad_to_square: bool = False, alpha: float = 0.5, panel_size: float = 3.2, **kwargs):
    """The last layer's raw attention beside the explanation, on one colour scale; returns the Figure.

    Both panels show the same rows of ``result`` over the picture of
    ``camera`` as in :func:`relevance_overlay`: left the last layer's map,
    heads averaged (what one map says), right the rollout or relevance
    through every layer. Each title gives the share of the row on that
    camera's image and what an even spread would give it. ``**kwargs`` go to both overlays'
    ``ax.imshow``.

    >>> import numpy as np
    >>> from getlocal import explain
    >>> from getlocal.maps import Segment, TokenLayout
    >>> keys = TokenLayout([Segment('cls', 0, 1), Segment('image', 1, 5, grid=(2, 2))])
    >>> fig = relevance_figure(explain.rollout([np.full((1, 1, 5, 5), 0.2)], rows='cls', keys=keys),
    ...                        np.zeros((28, 28)))
    >>> [ax.get_title().split(':')[0] for ax in fig.axes[:2]]
    ['last layer (heads averaged)', 'rollout (mean), 1 layers']
    """
    _check_common(result, item, camera, pad_to_square, alpha)
    _check.number("panel_size", panel_size, low=0, high=100, low_open=True)
    if result.keys is None:
        raise _check.ArgumentError("result has no key layout; pass keys= to rollout()/relevance()")
    heats = [result.grid(camera, item=item, last_layer=last, relative=True) for last in (True, False)]
    finite = np.concatenate([h[np.isfinite(h)] for h in heats])
    top = max(2.0, float(finite.max()) if finite.size else 2.0, 1.0 / float(finite.min()) if finite.size and
              finite.min() > 0 else 2.0)
    kwargs.setdefault("vmax", top)
    kwargs.setdefault("vmin", 1.0 / top)
    img = _picture(image)
    fig, axes = plt.subplots(1, 2, figsize=(2.5 * panel_size, 1.15 * panel_size), layout="constrained")
    patches = len(result.keys.indices("image", camera))
    even = patches * float(result.even[item].mean())
    names = ["last layer (heads averaged)", f"{result.method}, {len(result.layers)} layers"]
    for ax, last, name in zip(axes, (True, False), names):
        im = overlay(ax, img, heats[int(not last)], scale="uniform", pad_to_square=pad_to_square, alpha=alpha,
                     cbar=False, **dict(kwargs))
        share = result.share("image", camera, item=item, last_layer=last)
        what = f"{camera} image" if camera else "image"
        ax.set_title(f"{name}:\n{what} {share:.0%} of the row (even: {even:.0%})", fontsize=9)
    colorbar(fig, im, np.concatenate([h.ravel() for h in heats]), share_label(result, item), None, ax=list(axes))
    return fig
