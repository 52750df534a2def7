"""Figures to files: a readable path per figure, written atomically."""
from __future__ import annotations

import os
from pathlib import Path

from .. import _check
from .._errors import ArgumentError
from .._files import write_atomic


def figure_path(root, *, name: str, phase: str, layer, mode: str, ext: str = "jpg") -> Path:
    """Where :func:`save_figure` writes: ``{root}/{name}/{phase}_L{layer}_attn_vis_{mode}.{ext}``.

    >>> figure_path("out", name="openvla", phase="prefill", layer=3, mode="mean").as_posix()
    'out/openvla/prefill_L3_attn_vis_mean.jpg'
    """
    if not isinstance(root, (str, os.PathLike)):
        raise _check.ArgumentTypeError(f"root must be a folder path (str or Path); got {_check.show(root)}")
    _check.text("name", name), _check.text("phase", phase), _check.text("mode", mode), _check.text("ext", ext)
    if not isinstance(layer, str):
        _check.integer("layer", layer, low=None, high=None)
    parts = {"phase": phase, "layer": layer, "mode": mode, "ext": ext}
    for key, value in parts.items():
        text = str(value)
        if not text or os.sep in text or "/" in text:
            raise ArgumentError(f"{key}={value!r} must be a non-empty name without path separators")
    return Path(root) / str(name) / f"{phase}_L{layer}_attn_vis_{mode}.{ext}"


def save_figure(fig, root=".", *, name: str, phase: str, layer, mode: str, ext: str = "jpg", **kwargs) -> Path:
    """Save ``fig`` under a readable name (see :func:`figure_path`) and return the path.

    Folders are created as needed; ``**kwargs`` go to ``fig.savefig``
    (``dpi``, ``bbox_inches``...). The figure is left open.

    >>> import tempfile
    >>> import matplotlib.pyplot as plt
    >>> fig = plt.figure()
    >>> save_figure(fig, tempfile.mkdtemp(), name="vit", phase="prefill", layer=0, mode="max").name
    'prefill_L0_attn_vis_max.jpg'
    """
    if not hasattr(type(fig), "savefig"):
        raise _check.ArgumentTypeError(f"fig must be a matplotlib Figure; got {_check.show(fig)}")
    path = figure_path(root, name=name, phase=phase, layer=layer, mode=mode, ext=ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("bbox_inches", "tight")
    kwargs.setdefault("format", path.suffix[1:])  # a file object does not say which format
    # under a temporary name, then renamed: a Ctrl-C never leaves a truncated picture
    write_atomic(path, lambda f: fig.savefig(f, **kwargs))
    return path
