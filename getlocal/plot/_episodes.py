"""Recorded episodes: small multiples, image share over the steps, and an animated GIF."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.ticker import MaxNLocator

from .. import _check
from .._files import write_atomic
from ..patterns.episodes import episode_summary, episode_top
from ..recording import Recording
from ._explain import share_label
from ._pictures import as_picture, heat_pixels, overlay
from ._scales import NEUTRAL_CMAP, SCALE_LABELS, colorbar, norm_for


def _episode(run, layers=None):
    """:func:`getlocal.patterns.episodes.episode_summary` of a checked :class:`~getlocal.recording.Recording`."""
    if not issubclass(type(run), Recording):
        raise _check.ArgumentTypeError(f"run must be a Recording (getlocal.load of a recorded run); got {_check.show(run)}")
    return episode_summary(run, layers)


def _episode_picture(images, camera):
    names = list(images)
    if not names:
        return None
    if camera is not None and camera in images:
        return images[camera]
    return images["image"] if "image" in images else images[names[0]]


def _episode_options(pad_to_square, alpha=0.5, **numbers):
    if isinstance(pad_to_square, dict):
        for camera, pad in pad_to_square.items():
            _check.flag(f"pad_to_square[{camera!r}]", pad)
    else:
        _check.flag("pad_to_square", pad_to_square)
    _check.number("alpha", alpha, low=0, high=1)
    for name, value in numbers.items():
        _check.number(name, value, low=0, high=100, low_open=True)


def _pad_of(pad_to_square, camera):
    if isinstance(pad_to_square, dict):
        return bool(pad_to_square.get(camera, pad_to_square.get("image", False)))
    return bool(pad_to_square)


def episode_grid(run, *, layers=None, pad_to_square=False, max_steps: int = 10, alpha: float = 0.5,
                 panel_size: float = 1.6, explanation=False, **kwargs):
    """Small multiples: one row per camera, one column per step (at most ``max_steps``, evenly spaced).

    Each panel is the step's frame with the attention of the action (or
    generated) tokens to that camera's patches on top, the letterbox of
    ``pad_to_square`` undone (a bool, or ``{camera: bool}``). All panels share
    one colour scale, the ``'uniform'`` scale of the other figures (attention
    times the keys a row could see: 1, white, is uniform attention), on its
    fixed range (1/8x to 8x, ``display.UNIFORM_RANGE``). ``layers``: the layers to average (all when None).
    ``**kwargs`` go to each overlay's ``ax.imshow``. Returns the Figure.

    ``explanation=True`` draws instead what ``record(explain=...)`` stored
    (the name of one, when it stored a dict of them): each patch's share of
    the explained rows' mass divided by the even share (``grid(camera,
    relative=True)``), the colour bar's 1 (white, marked) being an even
    spread; each panel gives the camera's total share beside the even one.
    Steps without an explanation are left out (the title says how many).
    """
    _check.integer("max_steps", max_steps, low=1)
    _episode_options(pad_to_square, alpha, panel_size=panel_size)
    if explanation is not False:
        return _explanation_grid(run, explanation, pad_to_square, max_steps, alpha, panel_size, kwargs)
    data, kind = _episode(run, layers)
    picks = sorted(set(np.linspace(0, len(data) - 1, min(max_steps, len(data))).round().astype(int)))
    data = [data[i] for i in picks]
    cameras = list(dict.fromkeys(c for d in data for c in d["heats"]))
    # one scale for the whole episode, as on the other figures: 1 (uniform attention) is white
    top = episode_top(data)
    kwargs.setdefault("vmin", 1.0 / top)
    kwargs.setdefault("vmax", top)
    fig, axes = plt.subplots(len(cameras), len(data), figsize=(panel_size * len(data) + 1.2, panel_size * len(cameras) + 0.7),
                             squeeze=False)
    im = None
    for col, d in enumerate(data):
        images = d["source"].images
        for row, camera in enumerate(cameras):
            ax = axes[row, col]
            heat, picture = d["heats"].get(camera), _episode_picture(images, camera)
            if heat is None:
                ax.set_axis_off()
                continue
            if picture is None:
                im = ax.imshow(heat, cmap=kwargs.get("cmap", NEUTRAL_CMAP),
                               norm=LogNorm(kwargs["vmin"], kwargs["vmax"]))
                ax.set_xticks([]), ax.set_yticks([])
            else:
                im = overlay(ax, as_picture(picture), heat, pad_to_square=_pad_of(pad_to_square, camera), alpha=alpha,
                              cbar=False, **kwargs)
            if row == 0:
                ax.set_title(f"step {d['step']}", fontsize=8)
            if col == 0:
                ax.set_ylabel(camera or "image", fontsize=8)
    colorbar(fig, im, np.concatenate([h.ravel() for d in data for h in d["heats"].values()]), SCALE_LABELS["uniform"],
              None, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(f"{data[0]['tower']}: attention of the {kind} tokens to each camera, "
                 f"mean of {'all layers' if layers is None else 'layers ' + ', '.join(map(str, layers))}, heads and passes",
                 fontsize=9)
    return fig


def _stored_explanation(step, name):
    """The explanation ``name`` (True: the only one) of a recorded step, or None when it has none."""
    found = step.explanation
    if found is None:
        return None
    if isinstance(found, dict):
        if name is True and len(found) == 1:
            return next(iter(found.values()))
        if name is True or name not in found:
            raise _check.ArgumentError(
                f"step {step.step} holds the explanations {sorted(found)}; pick one: explanation={sorted(found)[0]!r}")
        return found[name]
    if name is not True:
        raise _check.ArgumentError(f"step {step.step} holds one explanation, not a dict of them; pass explanation=True")
    return found


def _explained_steps(run, name, max_steps):
    """``([{"step", "rank", "source", "explanation", "heats": {camera: grid x even}}], top of the log scale,
    how many steps hold one)``: each step's explanation is read once."""
    if not issubclass(type(run), Recording):
        raise _check.ArgumentTypeError(f"run must be a Recording (getlocal.load of a recorded run); got {_check.show(run)}")
    if name is not True and not isinstance(name, str):
        raise _check.ArgumentTypeError(f"explanation must be True or the name of a stored explanation (a str); got "
                                       f"{_check.show(name)}")
    found = [(step, _stored_explanation(step, name)) for step in run]
    found = [(step, e) for step, e in found if e is not None]
    if not found:
        errors = [s.explanation_error for s in run if s.explanation_error]
        why = f"; its first failure: {errors[0]}" if errors else ""
        raise _check.ArgumentError(f"this run holds no explanation ({len(run)} steps): record with "
                                   f"getlocal.record(path, explain=...){why}")
    explained = len(found)
    if max_steps is not None:
        picks = sorted(set(np.linspace(0, len(found) - 1, min(max_steps, len(found))).round().astype(int)))
        found = [found[i] for i in picks]
    data = []
    for step, e in found:
        if e.keys is None or not e.keys.find("image"):
            raise _check.ArgumentError(f"the explanation of step {step.step} has no image tokens to draw "
                                       f"({e!r}); explain maps whose keys hold a camera's patches")
        heats = {c: e.grid(c if len(e.keys.cameras) > 1 else None, relative=True) for c in e.keys.cameras}
        data.append({"step": step.step, "rank": step.rank, "source": step, "explanation": e, "heats": heats})
    finite = np.concatenate([h[np.isfinite(h) & (h > 0)] for d in data for h in d["heats"].values()] + [np.ones(1)])
    return data, max(2.0, float(finite.max()), 1.0 / float(finite.min())), explained


def _explanation_grid(run, name, pad_to_square, max_steps, alpha, panel_size, kwargs):
    data, top, explained = _explained_steps(run, name, max_steps)
    shown = [(d["source"], d["explanation"]) for d in data]
    heats = [d["heats"] for d in data]
    cameras = list(dict.fromkeys(c for d in heats for c in d))
    kwargs.setdefault("vmax", top)
    kwargs.setdefault("vmin", 1.0 / top)
    first = _episode_picture(shown[0][0].images, cameras[0])
    aspect = 1.0 if first is None else min(1.5, max(0.3, as_picture(first).shape[0] / as_picture(first).shape[1]))
    fig, axes = plt.subplots(len(cameras), len(shown), squeeze=False, layout="constrained",
                             figsize=(panel_size * len(shown) + 1.6, (panel_size * aspect + 0.45) * len(cameras) + 0.7))
    im = None
    for col, ((step, e), heat) in enumerate(zip(shown, heats)):
        for row, camera in enumerate(cameras):
            ax = axes[row, col]
            if camera not in heat:
                ax.set_axis_off()
                continue
            picture = _episode_picture(step.images, camera)
            picture = np.zeros((*heat[camera].shape, 3)) if picture is None else as_picture(picture)
            im = overlay(ax, picture, heat[camera], scale="uniform", pad_to_square=_pad_of(pad_to_square, camera),
                         alpha=alpha, cbar=False, **dict(kwargs))
            one = camera if len(e.keys.cameras) > 1 else None
            patches = len(e.keys.indices("image", one))
            ax.set_xlabel(f"{e.share('image', one):.0%} of the rows (even: {patches * float(e.even[0].mean()):.0%})",
                          fontsize=7)
            if row == 0:
                ax.set_title(f"step {step.step}", fontsize=8)
            if col == 0:
                ax.set_ylabel(camera or "image", fontsize=8)
    bar = colorbar(fig, im, np.concatenate([h.ravel() for d in heats for h in d.values()]),
                   share_label(shown[0][1], 0), None, ax=axes.ravel().tolist(), shrink=0.9)
    bar.ax.axhline(1.0, color="black", linewidth=1.5)  # the even spread: the baseline every colour is read against
    e = shown[0][1]
    left_out = f"; {len(run) - explained} steps without one left out" if explained < len(run) else ""
    fig.suptitle(f"{e.method} of {e.tower}'s {len(e.rows)} explained row{'s' if len(e.rows) != 1 else ''}: each patch's share / an even spread's"
                 f"\n(below each panel: the camera's total share, and an even spread's){left_out}", fontsize=9)
    return fig


def episode_image_share(run, *, layers=None, ax=None, **kwargs):
    """How much more (or less) than uniform attention the action (or generated) tokens give the image, per layer over the steps.

    A heat map with the steps across and the layers down: the share of those
    tokens' attention that lands on image tokens divided by its baseline, the
    share of image tokens among the keys they see (what uniform attention
    gives), on the 'uniform' scale of every other figure (1, white, is no
    preference; the title gives the raw shares' range and the baseline).
    ``**kwargs`` go to ``ax.imshow``. Returns the Axes.
    """
    _check.axes("ax", ax)
    data, kind = _episode(run, layers)
    ax = ax if ax is not None else plt.gca()
    shown = sorted({layer for d in data for layer in d["share"]})
    share = np.array([[d["share"].get(layer, np.nan) for d in data] for layer in shown])
    base = np.array([[d["baseline"].get(layer, np.nan) for d in data] for layer in shown])
    with np.errstate(invalid="ignore", divide="ignore"):
        table = np.where(base > 0, share / np.where(base > 0, base, 1), np.nan)
    label = norm_for(table, "uniform", kwargs, NEUTRAL_CMAP)
    im = ax.imshow(table, aspect="auto", interpolation="nearest", **kwargs)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([str(layer) for layer in shown], fontsize=7)
    ax.set_ylabel(f"{data[0]['tower']} layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    ax.set_xticklabels([])
    ticks = [t for t in ax.get_xticks() if 0 <= t < len(data)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(data[int(t)]["step"]) for t in ticks], fontsize=7)
    ax.set_xlabel("recorded step")
    ax.set_title(f"{kind} tokens' attention on image tokens, x uniform\n(shares {np.nanmin(share):.2f}-"
                 f"{np.nanmax(share):.2f}; uniform attention gives {np.nanmin(base):.2f}-{np.nanmax(base):.2f})",
                 fontsize=9)
    colorbar(ax.figure, im, table, label.replace("(attention x visible keys)", "(share / share of image keys)"),
             None, ax=ax)
    return ax


def episode_gif(run, path, *, layers=None, pad_to_square=False, height: int = 192, alpha: float = 0.5,
                duration: int = 200, cmap: str = NEUTRAL_CMAP, explanation=False) -> Path:
    """An animated GIF, one frame per recorded step: each camera's frame with the attention on top.

    The overlay is the attention of the action (or generated) tokens to that
    camera's patches, upsampled onto the frame with the letterbox of
    ``pad_to_square`` undone (as :func:`camera_attention`), on one colour scale
    for the whole episode: the ``'uniform'`` scale of the other figures
    (attention times the keys a row could see, log colours, 1 = uniform in
    white), on its fixed range (1/8x to 8x, the bar at the bottom).
    Each frame: a 30-pixel title band, then the cameras ``height`` pixels high,
    6 pixels apart from x=6, shown ``duration`` ms. Written with Pillow (no ffmpeg), through
    a temporary file. Returns the path.

    ``explanation=True`` (or a stored name, as in :func:`episode_grid`): each
    frame shows instead the step's stored explanation, x the even share
    (1, white, an even spread), on one log scale for the episode; steps
    without one are left out.
    """
    from PIL import Image, ImageDraw, ImageFont

    _check.integer("height", height, low=16, high=4096)
    _check.integer("duration", duration, low=1)
    _episode_options(pad_to_square, alpha)
    if not isinstance(path, (str, os.PathLike)) or "\0" in os.fspath(path) or not str(os.fspath(path)).lower().endswith(".gif"):
        raise _check.ArgumentTypeError(f"path must be a file name ending in .gif (str or Path); got {_check.show(path)}")
    if not isinstance(cmap, str) or cmap not in plt.colormaps():
        raise _check.ArgumentError(f"cmap={_check.show(cmap)} is not a matplotlib colour map; try 'jet' or 'viridis'")
    if explanation is not False:
        data, top, _ = _explained_steps(run, explanation, None)
        e = data[0]["explanation"]
        what, unit, vmax = f"{e.method} of {e.tower} -> image", "x even (white: 1)", top
    else:
        data, kind = _episode(run, layers)
        what, unit, vmax = f"{kind} tokens -> image", "x uniform (white: 1)", episode_top(data)
    cameras = list(dict.fromkeys(c for d in data for c in d["heats"]))
    vmin = 1.0 / vmax
    norm = LogNorm(vmin, vmax, clip=True)
    colormap = plt.get_cmap(cmap)
    font = ImageFont.load_default()
    frames = []
    for d in data:
        images = d["source"].images
        panels = []
        for camera in cameras:
            heat, picture = d["heats"].get(camera), _episode_picture(images, camera)
            pic = as_picture(picture) if picture is not None else np.zeros((height, height, 3))
            if pic.ndim == 2:
                pic = np.repeat(pic[..., None], 3, axis=2)
            pic = pic[..., :3].astype(np.float64) / (255.0 if pic.dtype == np.uint8 else 1.0)
            width = max(1, round(pic.shape[1] * height / pic.shape[0]))
            shown = np.asarray(Image.fromarray((np.clip(pic, 0, 1) * 255).astype(np.uint8)).resize(
                (width, height), Image.BILINEAR), dtype=np.float64) / 255
            if heat is not None:
                up = heat_pixels(np.asarray(heat, dtype=np.float64), (height, width), _pad_of(pad_to_square, camera))
                shown = (1 - alpha) * shown + alpha * colormap(norm(up))[..., :3]
            panels.append((camera, (shown * 255).round().astype(np.uint8)))
        gap, top, bottom = 6, 30, 26
        total = sum(p.shape[1] for _, p in panels) + gap * (len(panels) + 1)
        canvas = Image.new("RGB", (max(total, 260), top + height + bottom), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((gap, 2), f"step {d['step']} (rank {d['rank']}): {what}", fill="black", font=font)
        x = gap
        for camera, panel in panels:
            draw.text((x, 16), camera or "image", fill="black", font=font)
            canvas.paste(Image.fromarray(panel), (x, top))
            x += panel.shape[1] + gap
        bar_w = min(160, canvas.width - 90)
        bar = (colormap(np.linspace(0, 1, bar_w))[None, :, :3].repeat(8, axis=0) * 255).astype(np.uint8)
        bar_w = min(bar_w, canvas.width - 150)
        draw.text((gap, top + height + 2), f"{vmin:.3g}", fill="black", font=font)
        canvas.paste(Image.fromarray(bar[:, :bar_w]), (gap + 44, top + height + 4))
        draw.text((gap + 48 + bar_w, top + height + 2), f"{vmax:.3g} {unit}", fill="black", font=font)
        frames.append(canvas)
    path = Path(path)
    write_atomic(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                               duration=duration, loop=0, optimize=False))
    return path
