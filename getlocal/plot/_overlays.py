"""Patch grids and attention laid over the picture: one query patch, chosen queries, several cameras."""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from .. import _check
from .._errors import ArgumentError
from ..patterns.display import SCALES, as_maps, grid_cell, grid_cells, is_int_pair, query_heatmap, query_patch
from ..patterns.inputs import grid_shape
from ._pictures import as_picture, overlay, show_image
from ._scales import SCALE_LABELS, colorbar, norm_for


def patch_grid(
    image, *, grid, cells=(), ax=None, color: str = "red", alpha: float = 0.5, line_kws: Optional[dict] = None, **kwargs
):
    """Draw the picture with its patch grid and fill the chosen cells.

    ``grid=(h, w)`` patches; ``cells`` is a cell or a list of cells, each a
    ``(row, col)`` pair or a flat index ``row * w + col``, filled with
    ``color`` at ``alpha``. ``line_kws`` styles the grid lines
    (``ax.axhline``/``axvline``); ``**kwargs`` go to ``ax.imshow`` of the
    picture. Returns the Axes.

    >>> import numpy as np
    >>> fig, ax = plt.subplots()
    >>> ax = patch_grid(np.zeros((28, 28)), grid=(2, 2), cells=[(0, 1)], ax=ax)
    >>> len(ax.patches)
    1
    """
    _check.axes("ax", ax), _check.text("color", color), _check.options("line_kws", line_kws)
    _check.number("alpha", alpha, low=0, high=1)
    img = as_picture(image)
    h, w = grid_shape(grid, grid_cells(grid), None)
    if isinstance(cells, (int, np.integer)) or (isinstance(cells, tuple) and is_int_pair(cells)):
        cells = [cells]
    if not isinstance(cells, (list, tuple, np.ndarray)):
        raise _check.ArgumentTypeError(
            f"cells must be a cell, a (row, col) pair or flat index, or a list of them; got {_check.show(cells)}")
    cells = [grid_cell(c, (h, w), "cells") for c in cells]
    ax = plt.gca() if ax is None else ax
    show_image(ax, img, **kwargs)
    H, W = img.shape[:2]
    line = {"color": "white", "linewidth": 0.5, "alpha": 0.7, **(line_kws or {})}
    for i in range(1, h):
        ax.axhline(i * H / h, **line)
    for j in range(1, w):
        ax.axvline(j * W / w, **line)
    for r, c in cells:
        box = Rectangle((c * W / w, r * H / h), W / w, H / h, facecolor=color, alpha=alpha, edgecolor=color, linewidth=1)
        ax.add_patch(box)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _figsize(figsize):
    if figsize is None:
        return
    if not isinstance(figsize, (list, tuple)) or len(figsize) != 2:
        raise _check.ArgumentTypeError(f"figsize must be a (width, height) pair in inches or None; got {_check.show(figsize)}")
    for v in figsize:
        _check.number("figsize", v, low=0, high=1000, low_open=True)


def grid_to_grid(
    attn,
    image,
    *,
    query,
    grid=None,
    image_tokens=None,
    cls_token: Optional[int] = None,
    registers=None,
    head: Optional[int] = None,
    scale: str = "uniform",
    alpha: float = 0.6,
    cell_kws: Optional[dict] = None,
    figsize=None,
    **kwargs,
):
    """The attention of one query patch drawn over the picture; returns the Figure.

    Left: the picture with the query cell outlined by a thick black-and-white
    square (visible on dark and bright patches alike). Right: that patch's
    attention to every image patch, one block of colour per patch over the
    picture, on ``scale`` (see :func:`attention_map`; on the default
    'uniform' scale white is uniform attention); its title names the
    reduction (the mean over heads, or the head). With ``cls_token`` (the
    class token's position, usually 0) and ``registers`` (the register
    tokens' positions, a list) a middle panel shows the query's attention to
    each of them in its own cell, coloured on the overlay's scale and written
    in the overlay's unit (``1.3x`` on the 'uniform' scale, the weight
    otherwise). ``query`` is a ``(row, col)`` cell or a flat cell index;
    ``head`` picks a head (the mean over heads when None); ``image_tokens``
    and ``grid`` as in :mod:`getlocal.patterns`; ``cell_kws`` go to
    :func:`patch_grid`; ``**kwargs`` go to ``ax.imshow`` of the overlay.

    >>> import numpy as np
    >>> a = np.full((197, 197), 1 / 197)
    >>> fig = grid_to_grid(a, np.zeros((224, 224, 3)), query=(3, 4), image_tokens=slice(1, 197), cls_token=0)
    >>> [t.get_text() for t in fig.axes[1].texts]
    ['1x']
    """
    _check.integer("cls_token", cls_token, low=None, optional=True)
    _check.integer("head", head, low=None, optional=True)
    _check.number("alpha", alpha, low=0, high=1), _check.options("cell_kws", cell_kws)
    _figsize(figsize)
    if registers is not None and (isinstance(registers, (str, bytes)) or not isinstance(registers, (list, tuple, range))
                                  or not all(isinstance(v, (int, np.integer)) for v in registers)):
        raise _check.ArgumentTypeError(f"registers must be a list of key positions (ints) or None; got "
                                       f"{_check.show(registers)}")
    (r, c), hw, heat, weights, shown = query_patch(attn, query=query, grid=grid, image_tokens=image_tokens,
                                                   head=head, scale=scale)
    k = weights.shape[-1]
    img = as_picture(image)

    extra = ([("CLS", cls_token)] if cls_token is not None else []) + \
        [(f"reg {i}", int(p)) for i, p in enumerate(registers or [])]
    for name, pos in extra:
        if not -k <= pos < k:
            raise ArgumentError(f"{'cls_token' if name == 'CLS' else 'registers'} holds {pos}, outside the {k} keys "
                                f"of the map")
    ratios = [1, 0.3, 1.25] if extra else [1, 1.25]
    figsize = figsize or (3.2 * sum(ratios), 3.2)
    fig, axes = plt.subplots(1, len(ratios), figsize=figsize, gridspec_kw={"width_ratios": ratios})
    patch_grid(img, grid=hw, cells=[], ax=axes[0], **(cell_kws or {}))
    H, W = img.shape[:2]
    for colour, width in (("black", 4.0), ("white", 1.8)):  # a dark ring round a light one: seen on any patch
        axes[0].add_patch(Rectangle((c * W / hw[1], r * H / hw[0]), W / hw[1], H / hw[0], fill=False,
                                    edgecolor=colour, linewidth=width))
    axes[0].set_title(f"query patch ({r}, {c})", fontsize=9)
    im = overlay(axes[-1], img, heat, scale=scale, alpha=alpha, cbar=False, **kwargs)
    both = np.append(heat.ravel(), [shown[p] for _, p in extra]) if extra else heat
    colorbar(fig, im, both, SCALE_LABELS[scale], None, ax=axes[-1])
    how = "mean over heads" if head is None else f"head {head}"
    axes[-1].set_title(f"its attention to patches\n({how})", fontsize=9)
    if extra:
        cax = axes[1]
        # coloured on the overlay's scale (clipped at its ends), the number in the overlay's unit
        cax.imshow(np.array([[float(shown[p])] for _, p in extra]), cmap=im.get_cmap(), norm=im.norm, aspect="auto")
        for i, (name, pos) in enumerate(extra):
            value = float(shown[pos]) if scale == "uniform" else float(weights[pos])
            text = f"{value:.2g}x" if scale == "uniform" else f"{value:.3g}"
            cax.text(0, i, text, ha="center", va="center", fontsize=8, color="white",
                     bbox={"facecolor": "black", "alpha": 0.5, "linewidth": 0, "pad": 1})
        cax.set_yticks(range(len(extra)), [name for name, _ in extra], fontsize=7)
        cax.set_xticks([])
        cax.set_title("x uniform" if scale == "uniform" else "weight", fontsize=8)
    return fig


def image_attention(
    image,
    attn,
    *,
    image_tokens,
    queries,
    grid=None,
    reduce: str = "mean",
    heads=None,
    scale: str = "uniform",
    pad_to_square: bool = False,
    ax=None,
    alpha: float = 0.5,
    cbar: bool = True,
    cbar_kws: Optional[dict] = None,
    image_kws: Optional[dict] = None,
    **kwargs,
):
    """Overlay the attention of chosen queries (text, action tokens) on the picture.

    The heat map is :func:`query_heatmap`, one block of colour per patch over
    the picture, on ``scale`` (see :func:`attention_map`; on the default
    'uniform' scale white is uniform attention, so a map with nothing in it
    looks neutral). Pass ``pad_to_square=True`` when the model's preprocessing
    letterboxed the picture (scaled the longer side to the square and padded
    the shorter side symmetrically, like openpi's ``resize_with_pad``): the
    padded band is cropped so the heat map lines up with the original
    picture. Without it the heat map is stretched to the picture, which is
    right for a plain resize. ``**kwargs`` go to ``ax.imshow`` of the heat map
    (``cmap``, ``vmin``, ``vmax``), ``image_kws`` to that of the picture,
    ``cbar_kws`` to the colour bar. Returns the Axes.

    >>> import numpy as np
    >>> a = np.full((1, 20, 20), 0.05)
    >>> fig, ax = plt.subplots()
    >>> ax = image_attention(np.zeros((60, 90, 3)), a, image_tokens=slice(4, 20), queries=[18, 19],
    ...                      pad_to_square=True, ax=ax)
    >>> ax.images[-1].get_array().shape   # one value per patch of the 4 x 4 grid
    (4, 4)
    """
    _check.flag("pad_to_square", pad_to_square), _check.axes("ax", ax), _check.flag("cbar", cbar)
    _check.number("alpha", alpha, low=0, high=1)
    _check.options("cbar_kws", cbar_kws), _check.options("image_kws", image_kws)
    _check.choice("scale", scale, SCALES)
    heat = query_heatmap(attn, image_tokens=image_tokens, queries=queries, grid=grid, reduce=reduce, heads=heads,
                         scale=scale)
    ax = plt.gca() if ax is None else ax
    overlay(ax, as_picture(image), heat, scale=scale, pad_to_square=pad_to_square, alpha=alpha, cbar=cbar, cbar_kws=cbar_kws,
             image_kws=image_kws, **kwargs)
    return ax


def _per_camera(value, n, name):
    if isinstance(value, (list, tuple)) and not (name == "grids" and is_int_pair(value)):
        if len(value) != n:
            raise ArgumentError(f"{name} has {len(value)} entries for {n} cameras; give one per camera")
        return list(value)
    return [value] * n


def camera_attention(
    images: Sequence,
    attn,
    *,
    image_tokens: Sequence,
    queries,
    grids=None,
    reduce: str = "mean",
    heads=None,
    pad_to_square=False,
    scale: str = "uniform",
    per_head: bool = False,
    titles: Optional[Sequence[str]] = None,
    alpha: float = 0.5,
    panel_size: float = 3.2,
    **kwargs,
):
    """Several cameras side by side, each with its attention overlay; returns the Figure.

    ``images`` and ``image_tokens`` hold one entry per camera (e.g. exterior
    and wrist views, each with its own token range); ``grids`` and
    ``pad_to_square`` are one value for all or one per camera. All panels
    share one colour scale (``scale`` as in :func:`image_attention`). With ``per_head=True`` the result is a list of
    Figures, one per head (of ``heads``, all when None). Other arguments as in
    :func:`image_attention`; ``**kwargs`` go to each overlay's ``ax.imshow``.

    >>> import numpy as np
    >>> a = np.full((2, 40, 40), 0.025)
    >>> fig = camera_attention([np.zeros((48, 64)), np.zeros((32, 32))], a,
    ...                        image_tokens=[slice(0, 16), slice(16, 32)], queries=-1)
    >>> len([ax for ax in fig.axes if ax.images])
    2
    """
    if not isinstance(images, (list, tuple)):
        raise _check.ArgumentTypeError(f"images must be a list with one picture per camera; got {_check.show(images)}")
    for pad in pad_to_square if isinstance(pad_to_square, (list, tuple)) else [pad_to_square]:
        _check.flag("pad_to_square", pad)
    if titles is not None and (not isinstance(titles, (list, tuple)) or not all(isinstance(t, str) for t in titles)
                               or len(titles) != len(images)):
        raise _check.ArgumentTypeError(f"titles must be a list of {len(images)} str, one per camera of images; got {_check.show(titles)}")
    if grids is not None and not isinstance(grids, (list, tuple)):
        raise _check.ArgumentTypeError(f"grids must be None, one (h, w) pair, or a list of them; got {_check.show(grids)}")
    _check.flag("per_head", per_head), _check.number("alpha", alpha, low=0, high=1)
    _check.number("panel_size", panel_size, low=0, high=100, low_open=True), _check.choice("scale", scale, SCALES)
    images = list(images)
    n = len(images)
    if n == 0:
        raise ArgumentError("images is empty; give one picture per camera")
    if not isinstance(image_tokens, (list, tuple)) or len(image_tokens) != n or is_int_pair(image_tokens):
        raise ArgumentError(
            f"image_tokens must be a list with one slice or index array per camera ({n} cameras); got {image_tokens!r}"
        )
    grids = _per_camera(grids, n, "grids")
    pads = _per_camera(pad_to_square, n, "pad_to_square")
    titles = list(titles) if titles is not None else [f"camera {i}" for i in range(n)]
    if per_head:
        nh = as_maps(attn).shape[0]
        chosen = np.atleast_1d(np.arange(nh)[heads]) if heads is not None else np.arange(nh)
        return [
            camera_attention(images, attn, image_tokens=image_tokens, queries=queries, grids=grids, reduce=reduce,
                             heads=[int(h)], pad_to_square=pads, scale=scale, titles=[f"{t}, head {int(h)}" for t in titles],
                             alpha=alpha, panel_size=panel_size, **kwargs)
            for h in chosen
        ]
    heats = [
        query_heatmap(attn, image_tokens=t, queries=queries, grid=g, reduce=reduce, heads=heads, scale=scale)
        for t, g in zip(image_tokens, grids)
    ]
    every = np.concatenate([h.ravel() for h in heats])
    label = norm_for(every, scale, kwargs, "jet")  # one norm and colour map for all panels
    pictures = [as_picture(im, f"images[{i}]") for i, im in enumerate(images)]
    ratios = [p.shape[1] / p.shape[0] for p in pictures]
    figsize = (panel_size * sum(ratios) + 0.8, panel_size)
    fig, axes = plt.subplots(1, n, figsize=figsize, squeeze=False, gridspec_kw={"width_ratios": ratios})
    im = None
    for ax, pic, heat, pad, title in zip(axes[0], pictures, heats, pads, titles):
        im = overlay(ax, pic, heat, scale=scale, pad_to_square=bool(pad), alpha=alpha, cbar=False, **kwargs)
        ax.set_title(title, fontsize=9)
    colorbar(fig, im, every, label, None, ax=axes[0].tolist(), shrink=0.8)
    return fig
