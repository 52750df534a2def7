"""Explore a capture in the browser: one self-contained HTML file, no server, no network.

>>> import numpy as np, tempfile
>>> from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout
>>> from getlocal.viewer import view
>>> layout = TokenLayout([Segment('cls', 0, 1), Segment('image', 1, 5, grid=(2, 2))])
>>> m = AttentionMap(np.full((1, 2, 5, 5), 0.2), tower='vit', layer=0, path='blocks.0.attn', step=0,
...                  phase='encode', call=0, queries=layout, keys=layout)
>>> page = view(AttentionMaps([m], {'vit': layout}), out=tempfile.mkdtemp() + '/vit.html')
>>> page.path.name, '<script' in page.html, 'http' in page.html.split('<body')[1]
('vit.html', True, False)

The page (``view(maps)`` in a notebook shows it inline) lets you pick the
tower, step, layer and head (or the mean / max over heads), click a patch of a
camera image or a token of the token strip and see that query's attention over
every camera image (a letterbox undone as in :func:`getlocal.plot.camera_attention`),
over the token strip and as a row of the ``[queries, keys]`` matrix; the
per-head pattern labels of :func:`getlocal.patterns.classify_heads` form a
clickable layer x head overview. Arrow keys step through layers and heads.

Quantisation: each row of each head (one query over all keys) is stored as
``bits``-bit integers between the row's minimum and maximum, so a value shown
differs from the captured one by at most ``(row max - row min) / (2 * (2**bits - 1))``:
1/510 < 0.002 for a softmax row with ``bits=8`` (the default; a ViT-S/16 capture,
12 x 6 x 197 x 197 values, makes a page of about 4 MB), 1/131070 with ``bits=16``
(twice the size). Means and maxima over heads are computed in the page from
those values and stay within the same bound. Non-finite values are shown as 0
and counted in the page.
"""
import base64
import html
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import patterns, saved
from ._convert import converter
from ._errors import GetLocalError
from ._viewer_page import data_json, render, render_episode  # noqa: F401 (data_json: re-exported as before)
from .maps import AttentionMaps
from .recording import Recording, is_run, read_run
from .patterns.display import LABEL_COLORS, UNIFORM_RANGE, uniform_colors
from .tokens import visible_until

#: The largest page :func:`view` writes, in MB (``max_mb=``): a browser tab slows down well before a few hundred
#: MB, and a DINOv2-with-registers capture of every layer and step makes one.
MAX_PAGE_MB = 100.0

_to_numpy = converter("numpy")

#: Token kinds that show attention over the picture: the rest of the sequence goes to the token strip.
_VISION_KINDS = {"cls", "register", "image"}


class View:
    """A rendered page: ``html`` (the whole self-contained document) and ``path`` (where it was written, or None).

    A notebook displays it inline (an ``<iframe srcdoc=...>``); ``save(path)`` writes it.
    """

    def __init__(self, html_text: str, path: Optional[Path] = None, height: int = 900):
        self.html = html_text
        self.path = path
        self.height = height

    def save(self, path) -> Path:
        """Write the page to ``path`` (a file name ending in .html) and return it."""
        target = Path(path)
        if target.is_dir():
            raise GetLocalError(f"cannot write the page to {target}: it is a directory; give a file name such as "
                                f"{target / 'view.html'}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(self.html, encoding="utf-8")
        except OSError as exc:
            raise GetLocalError(f"cannot write the page to {target} ({exc.strerror or exc}); choose another "
                                "file") from None
        self.path = target
        return target

    def _repr_html_(self) -> str:
        # srcdoc keeps the page's scripts and ids apart from the notebook's own
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;height:{self.height}px;'
                f'border:1px solid #8884" sandbox="allow-scripts"></iframe>')

    def __repr__(self):
        where = f" at {self.path}" if self.path else ""
        return f"View({len(self.html) / 2**20:.1f} MB page{where})"


def view(maps_or_path, *, out=None, images: Optional[Dict[str, Any]] = None, tokens=None, pad_to_square=None,
         info: Optional[Dict[str, Any]] = None, bits: int = 8, batch: int = 0, title: Optional[str] = None,
         max_mb: float = MAX_PAGE_MB) -> View:
    """The interactive page of a capture, as a :class:`View`; written to ``out`` when given.

    ``maps_or_path``: ``AttentionMaps`` (an adapter's ``collect()``) or the
    directory of a saved capture (``getlocal.save`` / ``python -m getlocal demo``),
    whose images, info, ``info["tokens"]`` and ``info["pad_to_square"]`` are used.
    ``images``: ``{camera: HxW[xC] array}``, the pictures each camera's tokens
    came from (a single picture may be named ``"image"``). ``tokens``: the
    token strings, ``{tower: [str per position]}`` or ``{tower: {position: str}}``
    (e.g. from ``tokenizer.convert_ids_to_tokens``), shown in the token strip;
    positions without one show their index. ``pad_to_square``: True (or
    ``{camera: bool}``) when the model saw a letterboxed picture (openpi's
    ``resize_with_pad``): the heat map is then laid over the padded square and
    the padding cropped away. ``bits``: 8 or 16 per value (see the module
    docstring for the error bound). ``batch``: which batch item to show.

    Colours: by default the figures' 'uniform' scale, the same colours as the
    PNGs (:func:`getlocal.patterns.display.uniform_colors`: attention times the
    keys the query sees, white = uniform, fixed 1/8x-8x log range, so a sink
    at 1.0 saturates its own cell and flattens nothing else); keys a query
    cannot see (read from the map, :func:`getlocal.tokens.visible_until`) are
    grey on every scale; hovering over a camera image or the matrix shows the
    value under the pointer. The pattern labels take the figures' colours
    (``LABEL_COLORS``).

    ``max_mb``: the page's size is estimated before anything is encoded; above
    it (default ``MAX_PAGE_MB``, 100 MB) ``view`` refuses, naming the estimate
    and how to shrink it (``maps.select(tower=, step=, layer=)``).

    A recorded run (a :class:`~getlocal.recording.Recording`, or its
    directory) recorded with ``record(..., explain=...)`` gives the episode's
    page instead: a step slider (and the arrow keys), a choice among the
    stored explanations, and each camera's frame of that step under the
    explanation of batch item ``batch`` (``grid(camera, relative=True)`` on
    the same x-uniform colours: 1, white, is an even spread; excluded keys
    grey), with each camera's total share beside an even spread's. Steps
    without one say why (``Step.explanation_error``). ``max_mb`` is checked
    as the frames are encoded; ``bits`` and ``tokens`` do not apply.

    >>> import tempfile
    >>> view(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    getlocal._errors.GetLocalError: ... is not a getlocal capture: it has no capture.json; ...
    """
    run = maps_or_path if isinstance(maps_or_path, Recording) else (
        read_run(maps_or_path) if isinstance(maps_or_path, (str, Path)) and is_run(maps_or_path) else None)
    if run is not None:
        return _episode(run, out=out, pad_to_square=pad_to_square, info=info, batch=batch, title=title, max_mb=max_mb)
    maps, images, info = _source(maps_or_path, images, info)
    if bits not in (8, 16):
        raise GetLocalError(f"view(bits={bits!r}): give 8 (the default, about 1 byte per value) or 16")
    if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or not max_mb > 0:
        raise GetLocalError(f"view(max_mb={max_mb!r}): give the largest page to write, in MB (a positive number)")
    estimate = page_size(maps, bits=bits, images=images)
    if estimate > max_mb * 2**20:
        raise GetLocalError(
            f"this page would be about {estimate / 2**20:.0f} MB ({len(maps)} maps of {', '.join(maps.towers)}), "
            f"above max_mb={max_mb:g}: show fewer maps, e.g. view(maps.select(tower={maps.towers[0]!r}, "
            f"step={maps.steps[0][0]}, layer=[...]), images=...) (for a saved capture: getlocal.load(DIR).select(...)), "
            f"or raise max_mb")
    tokens = tokens if tokens is not None else info.get("tokens")
    pad_to_square = pad_to_square if pad_to_square is not None else info.get("pad_to_square", False)
    data = _page_data(maps, images, info, tokens, pad_to_square, bits, int(batch), title)
    page = View(render(data))
    if out is not None:
        page.save(out)
    return page


def page_size(maps: AttentionMaps, *, bits: int = 8, images: Optional[Dict[str, Any]] = None) -> int:
    """The page's size in bytes, estimated from the maps' shapes alone (nothing is encoded): what ``max_mb`` checks.

    Each value takes ``bits / 8`` bytes and each row 8 more (its minimum and
    step), times 4/3 for base64; a picture at most its raw RGB bytes.

    >>> import numpy as np
    >>> from getlocal.maps import AttentionMap, Segment, TokenLayout
    >>> lay = TokenLayout([Segment('image', 0, 4, grid=(2, 2))])
    >>> page_size(AttentionMaps([AttentionMap(np.zeros((1, 2, 4, 4)), 'vit', 0, 'a', 0, 'encode', 0, lay, lay)]))
    40170
    """
    total = 40_000  # the page's own HTML, CSS and script
    for m in maps:
        _, heads, q, k = m.shape
        total += (heads * q * (k * bits // 8 + 8) + q * 8) * 4 // 3
    for picture in (images or {}).values():
        total += int(np.asarray(picture).size) * 4 // 3
    return total


# --------------------------------------------------------------------------- input


def _source(maps_or_path, images, info):
    if isinstance(maps_or_path, AttentionMaps):
        maps, found_images, found_info = maps_or_path, {}, {}
    elif isinstance(maps_or_path, (str, Path)):
        found = saved.read(maps_or_path)
        if not isinstance(found.data, AttentionMaps):
            raise GetLocalError(f"{maps_or_path} holds a raw cache (get_local.cache); the viewer shows labelled "
                                "maps: save the AttentionMaps of an adapter's collect() instead")
        maps, found_images, found_info = found.data, found.images, found.info
    else:
        raise GetLocalError(f"view() takes AttentionMaps (an adapter's collect()) or the directory of a saved "
                            f"capture; got {type(maps_or_path).__name__}")
    if not len(maps):
        raise GetLocalError(f"{_name(maps_or_path)} holds no attention maps; nothing to show: capture a forward pass "
                            "(an adapter's activate() before it, collect() after it)")
    return maps, dict(images if images is not None else found_images), dict(info if info is not None else found_info)


def _name(maps_or_path) -> str:
    return str(maps_or_path) if isinstance(maps_or_path, (str, Path)) else "the AttentionMaps given"


def _token_strings(tokens, towers: Sequence[str]) -> Dict[str, Dict[str, str]]:
    if not tokens:
        return {}
    if not isinstance(tokens, dict):
        raise GetLocalError("view(tokens=...) takes {tower: [str per position]} or {tower: {position: str}}; "
                            f"got a {type(tokens).__name__}")
    out = {}
    for tower, strings in tokens.items():
        if tower not in towers:
            raise GetLocalError(f"view(tokens=...) names tower {tower!r}; the capture's towers are "
                                f"{', '.join(map(repr, towers))}")
        pairs = strings.items() if isinstance(strings, dict) else enumerate(strings)
        out[tower] = {str(int(p)): str(s) for p, s in pairs if s is not None}
    return out


# --------------------------------------------------------------------------- what the page gets


def _page_data(maps: AttentionMaps, images, info, tokens, pad_to_square, bits, batch, title) -> Dict[str, Any]:
    variants: Dict[tuple, List[Any]] = {}
    entries = []
    for i, m in enumerate(maps):
        arr = np.asarray(_to_numpy(m.array))  # torch tensors too (convert='cpu' / 'device'), bfloat16 included
        if arr.ndim != 4:
            raise GetLocalError(f"maps[{i}] ({m.tower} layer {m.layer}) has shape {list(arr.shape)}; "
                                "the viewer shows [batch, heads, queries, keys] maps")
        if not 0 <= batch < arr.shape[0]:
            raise GetLocalError(f"view(batch={batch}): maps[{i}] ({m.tower} layer {m.layer}) has a batch of "
                                f"{arr.shape[0]}; give batch= between 0 and {arr.shape[0] - 1}")
        same = variants.setdefault((m.tower, m.step, m.layer), [])
        same.append(i)
        a = arr[batch]
        blob, scales, bad = _quantise(a, bits)
        entries.append({
            "tower": m.tower, "layer": m.layer, "step": m.step, "phase": m.phase, "path": m.path,
            "camera": m.camera, "variant": m.camera or "",
            "heads": int(a.shape[0]), "q": int(a.shape[1]), "k": int(a.shape[2]),
            "queries": [s.to_dict() for s in m.queries.segments], "keys": [s.to_dict() for s in m.keys.segments],
            "labels": _labels(m, a), "data": blob, "scales": scales, "nonfinite": bad,
            # the last key each query row sees, read from the map itself (as the scores and the PNGs read it)
            "until": visible_until(np.asarray(a, dtype=np.float32)[None])[0].tolist(),
        })
    for indices in variants.values():  # the first of several calls only learns it has siblings afterwards
        named = len({maps[i].camera for i in indices}) == len(indices) and None not in {maps[i].camera for i in indices}
        if len(indices) > 1:
            for n, i in enumerate(indices):
                entries[i]["variant"] = maps[i].camera if named else f"call {n + 1}"
    cameras = _cameras(maps)
    return {
        "title": title or str(info.get("model") or "getlocal capture"),
        "info": {k: str(info[k]) for k in ("weights", "image", "preprocessing") if info.get(k)},
        "bits": bits, "batch": batch, "batches": int(maps[0].shape[0]),
        "maps": entries,
        "tokens": _token_strings(tokens, maps.towers),
        "images": _pictures(cameras, images, pad_to_square),
        # the PNGs' colour language: one table of colours (as matplotlib turns it into bytes), one range, the
        # same label colours
        "uniform": {"colors": (255 * uniform_colors(256)).astype(np.uint8).tolist(), "range": UNIFORM_RANGE},
        "label_colors": LABEL_COLORS,
    }


def _episode(run: Recording, *, out, pad_to_square, info, batch, title, max_mb) -> View:
    """The page of a recorded run's explanations (see :func:`view`)."""
    if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or not max_mb > 0:
        raise GetLocalError(f"view(max_mb={max_mb!r}): give the largest page to write, in MB (a positive number)")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 0:
        raise GetLocalError(f"view(batch={batch!r}): give the batch item to show, an int from 0")
    if info is None:
        info = next((part.get("info") or {} for part in run.parts.values()), {})
    pad = pad_to_square if pad_to_square is not None else info.get("pad_to_square", False)
    steps, pictures, size = [], [], 40_000
    for step in run:
        found = step.explanation
        parts = found if isinstance(found, dict) else ({} if found is None else {"": found})
        explained = {name: _explained(e, int(batch), step.step) for name, e in parts.items()}
        cameras = list(dict.fromkeys(c for e in explained.values() for c in e["cameras"]))
        refs = {}
        for key, picture in _pictures([c or None for c in cameras], dict(step.images), pad).items():
            size += len(picture["src"])
            if size > max_mb * 2**20:
                raise GetLocalError(
                    f"this page passes max_mb={max_mb:g} at step {step.step} (of {len(run)} steps), mostly its "
                    f"frames: show fewer steps, e.g. view(run.select(step=range({run[0].step}, {step.step}))), or "
                    f"raise max_mb")
            refs[key] = len(pictures)
            pictures.append(picture)
        steps.append({"step": step.step, "rank": step.rank, "error": step.explanation_error, "explained": explained,
                      "pictures": refs})
    if not any(s["explained"] for s in steps):
        errors = [s["error"] for s in steps if s["error"]]
        raise GetLocalError(
            f"{run.path} holds no explanation in its {len(run)} steps"
            + (f" (the first failure: {errors[0]})" if errors else "")
            + ": record with getlocal.record(path, explain=...); for a step's maps, view(run[i].maps, images=run[i].images)")
    data = {"title": title or str(info.get("model") or f"getlocal episode {Path(run.path).name}"),
            "info": {k: str(info[k]) for k in ("model", "task", "weights") if info.get(k)},
            "steps": steps, "pictures": pictures,
            "uniform": {"colors": (255 * uniform_colors(256)).astype(np.uint8).tolist(), "range": UNIFORM_RANGE}}
    page = View(render_episode(data))
    if out is not None:
        page.save(out)
    return page


def _explained(e, item: int, number: int) -> Dict[str, Any]:
    """One explanation as the episode page draws it: per camera its grid, relative and as shares, and its totals."""
    if item >= e.values.shape[0]:
        raise GetLocalError(f"view(batch={item}): the explanation of step {number} has a batch of "
                            f"{e.values.shape[0]}; give batch= between 0 and {e.values.shape[0] - 1}")
    cameras = {}
    several = e.keys is not None and len(e.keys.cameras) > 1
    for camera in (e.keys.cameras if e.keys is not None else ()):
        one = camera if several else None
        relative, share = e.grid(one, item=item, relative=True), e.grid(one, item=item)
        patches = len(e.keys.indices("image", one))
        cameras[camera or ""] = {
            "grid": list(relative.shape), "relative": _listed(relative), "share": _listed(share),
            "total": e.share("image", one, item=item), "even": patches * float(e.even[item].mean())}
    return {"method": e.method, "tower": e.tower, "layers": [int(x) for x in e.layers], "rows": len(e.rows),
            "excluded": [int(x) for x in e.excluded], "cameras": cameras}


def _listed(grid: np.ndarray) -> List[Optional[float]]:
    return [float(x) if np.isfinite(x) else None for x in grid.ravel()]


def _quantise(a: np.ndarray, bits: int):
    """``a`` ``[H, Q, K]`` as base64 integers between each row's min and max, plus base64 float32 (min, step) per row."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    bad = int(a.size - finite.sum())
    if bad:
        a = np.where(finite, a, 0.0)
    levels = 2 ** bits - 1
    lo = a.min(axis=-1, keepdims=True)
    step = (a.max(axis=-1, keepdims=True) - lo) / levels
    step32 = step.astype(np.float32)
    lo32 = lo.astype(np.float32)
    safe = np.where(step32 > 0, step32, 1).astype(np.float64)
    q = np.clip(np.rint((a - lo32) / safe), 0, levels).astype("<u1" if bits == 8 else "<u2")
    scales = np.concatenate([lo32, step32], axis=-1).astype("<f4")
    return _b64(q), _b64(scales), bad


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def _labels(m, a: np.ndarray) -> Optional[List[str]]:
    """The per-head pattern labels of a square (prompt) map, as :func:`getlocal.plot.label_map` shows them."""
    if a.shape[-2] != a.shape[-1]:
        return None  # a decode map's one query row is no pattern
    images = m.keys.find("image")
    grid = {"image_tokens": images[0].slice, "grid": images[0].grid} if images and images[0].grid else {}
    try:
        return patterns.classify_heads(a, **grid)  # which keys each row sees: read from the map
    except (GetLocalError, ValueError):
        return None


def _cameras(maps: AttentionMaps) -> List[Optional[str]]:
    seen: Dict[Optional[str], None] = {}
    for m in maps:
        for s in m.keys.find("image"):
            seen.setdefault(s.camera if s.camera is not None else m.camera)
    return list(seen)


def _pictures(cameras, images, pad_to_square) -> Dict[str, Any]:
    """``{camera or "": {src, w, h, pad}}`` for every camera that has a picture."""
    out = {}
    for camera in cameras:
        picture = images.get(camera) if camera is not None else None
        if picture is None and (camera is None or len(images) == 1):
            picture = images.get("image", next(iter(images.values()), None))
        if picture is None:
            continue
        pad = (pad_to_square.get(camera if camera is not None else "image", False) if isinstance(pad_to_square, dict)
               else bool(pad_to_square))
        rgb = _rgb8(picture, camera)
        out[camera or ""] = {"src": "data:image/png;base64," + _b64_bytes(_png(rgb)),
                             "w": int(rgb.shape[1]), "h": int(rgb.shape[0]), "pad": bool(pad)}
    return out


def _rgb8(picture, camera) -> np.ndarray:
    arr = np.asarray(picture)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW, as torch holds images
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise GetLocalError(f"the picture of camera {camera or 'image'!r} has shape {list(arr.shape)}; give "
                            "[H, W], [H, W, 3] or [H, W, 4]")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        arr = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def _png(rgb: np.ndarray) -> bytes:
    """A PNG file of an ``[H, W, 3]`` uint8 array (no Pillow needed)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _b64_bytes(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


__all__ = ["view", "View", "page_size", "MAX_PAGE_MB"]
