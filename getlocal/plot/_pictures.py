"""Pictures: any image as an array ``imshow`` draws, and heat maps laid over it one block per patch."""
from __future__ import annotations

import numpy as np

from .._errors import ArgumentError
from ..patterns.inputs import as_array
from ._scales import colorbar, norm_for


def as_picture(image, name: str = "image") -> np.ndarray:
    """An ``[H, W]`` or ``[H, W, C]`` array that ``imshow`` draws as the picture."""
    if _is_pil(image):
        if image.mode not in ("L", "RGB", "RGBA"):  # palette, 16-bit, CMYK...: as the eye sees them
            image = image.convert("RGBA" if "A" in image.mode or image.mode == "P" else "RGB")
        image = np.asarray(image)
    arr = as_array(image, name) if not (isinstance(image, np.ndarray) and image.dtype == np.uint8) else image
    while arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW, as torch and torchvision hold images
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ArgumentError(
            f"{name} must be grayscale [H, W], RGB or RGBA [H, W, 3|4] (or [3|4, H, W]); got shape {tuple(arr.shape)}"
        )
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32, copy=False)
        top = float(arr.max()) if arr.size else 0.0
        if top > 1.0:  # a float picture in 0..255
            arr = np.clip(arr / 255.0, 0, 1)
        else:
            arr = np.clip(arr, 0, 1)
    return arr


def _is_pil(image) -> bool:
    try:
        return hasattr(image, "mode") and hasattr(image, "size") and not hasattr(image, "shape")
    except Exception:  # noqa: BLE001 - an object that breaks on a look is no picture; as_array says so
        return False


def show_image(ax, img, **kwargs):
    h, w = img.shape[:2]
    kwargs.setdefault("extent", (0, w, h, 0))
    if img.ndim == 2:
        kwargs.setdefault("cmap", "gray")
        kwargs.setdefault("vmin", 0)
        kwargs.setdefault("vmax", 255 if img.dtype == np.uint8 else 1)
    return ax.imshow(img, **kwargs)


def heat_extent(size, pad_to_square: bool):
    """Where the heat map's grid lies over a picture of ``size`` ``(H, W)``, undoing a letterbox.

    With ``pad_to_square`` the model saw the picture scaled so its longer side
    filled a square and the shorter side padded symmetrically (openpi's
    ``resize_with_pad``): the grid covers that square, centred on the
    picture, and the Axes limits crop the padded band away.
    """
    h, w = size
    if not pad_to_square:
        return (0, w, h, 0)
    side = max(h, w)
    top, left = (side - h) / 2, (side - w) / 2
    return (-left, side - left, side - top, -top)


def heat_pixels(heat: np.ndarray, size, pad_to_square: bool) -> np.ndarray:
    """One value per pixel of a picture of ``size`` ``(H, W)``: each patch's value over its whole
    block (no smoothing, as :func:`overlay` draws it), the letterbox undone as in :func:`heat_extent`."""
    h, w = size
    x0, x1, y1, y0 = heat_extent(size, pad_to_square)
    rows = np.clip(((np.arange(h) + 0.5 - y0) / (y1 - y0) * heat.shape[0]).astype(int), 0, heat.shape[0] - 1)
    cols = np.clip(((np.arange(w) + 0.5 - x0) / (x1 - x0) * heat.shape[1]).astype(int), 0, heat.shape[1] - 1)
    return heat[rows[:, None], cols[None, :]]


def overlay(ax, img, heat, *, scale="uniform", pad_to_square=False, alpha=0.5, cbar=True, cbar_kws=None,
             image_kws=None, **kwargs):
    """The picture, and over it one block of colour per patch (no smoothing: one value per patch, as the model saw)."""
    H, W = img.shape[:2]
    show_image(ax, img, **(image_kws or {}))
    label = norm_for(heat, scale, kwargs, "jet")
    im = ax.imshow(np.ma.masked_invalid(heat), alpha=alpha, extent=heat_extent((H, W), pad_to_square),
                   interpolation="nearest", **kwargs)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if cbar:
        colorbar(ax.figure, im, heat, label, cbar_kws, ax=ax)
    return im
