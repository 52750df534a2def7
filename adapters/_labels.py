"""Labelling: captured calls in, ``AttentionMaps`` out (steps, phases, cameras, token layouts, padding).

A pure function of the entries and of what an adapter's ``Spec`` declares
about its model: which towers are vision, language or action-expert towers,
what its phases and added tokens are called (``Spec.steps``,
``Spec.expert_steps``) and how its prompt is laid out. Nothing here is
model-specific, and nothing touches a model, a library or get_local.
"""
import math
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from getlocal import GetLocalError, _check
from getlocal._convert import converter, is_tensor
from getlocal.maps import AttentionMap, AttentionMaps, Lazy, Segment, TokenLayout

from ._keep import Rows, blank_padding_queries

PromptLayout = Callable[[int, List["Entry"], int, Dict[str, Any]], TokenLayout]


class Entry:
    """One captured call, with its labels as they are worked out.

    ``cross``: a cross-attention call, whose keys are the prompt only and whose
    queries are the tokens right after it (SmolVLA's expert layers over the prefix).
    """

    __slots__ = ("index", "owner", "array", "tower", "layer", "path", "layout", "camera", "cross")

    def __init__(self, index, owner, array):
        self.index, self.owner, self.array = index, owner, array
        self.tower, self.layer, self.path, self.layout, self.camera = "", -1, "", None, None
        self.cross = False

    @property
    def batch(self) -> int:
        return int(self.array.shape[0])

    @property
    def queries(self) -> int:
        """The query rows of the call (a ``Rows`` entry holds some of them)."""
        return self.array.queries if isinstance(self.array, Rows) else int(self.array.shape[-2])

    @property
    def keys(self) -> int:
        return int(self.array.shape[-1])


def check_options(options: Dict[str, Any]) -> None:
    """The labelling options of ``collect()`` (``cameras``, ``state_tokens``), checked before anything runs."""
    cameras = options.get("cameras")
    if cameras is not None and (isinstance(cameras, str) or not isinstance(cameras, (list, tuple))
                                or not all(isinstance(c, str) and c for c in cameras)):
        raise _check.ArgumentTypeError(f"cameras must be a list of camera names (str); got {_check.show(cameras)}")
    if options.get("state_tokens") is not None:
        _check.integer("state_tokens", options["state_tokens"], low=0)


def label(entries: List[Entry], spec, options: Dict[str, Any]) -> AttentionMaps:
    """The labelled maps of ``entries`` (in call order, each with tower, layer, path and vision layout set).

    ``spec`` (a ``Spec``) gives the towers' roles, the names of phases and added
    tokens, and ``prompt_layout(length, vision entries, batch, options)``, the
    language model's prompt.
    """
    vision_towers, generate, denoise = spec.vision_towers, spec.steps, spec.expert_steps
    steps = _split_steps(vision_towers, entries)
    has_expert = any(e.tower in spec.expert_towers for e in entries)
    maps: List[AttentionMap] = []
    layouts: Dict[str, TokenLayout] = {}
    prompt: Optional[TokenLayout] = None  # the last prefill/prefix layout of the language model
    padding = None  # [batch, prompt keys] bool: the prompt positions that each item pads
    vision_seen: List[Entry] = []
    for number, step in enumerate(steps):
        vision = [e for e in step if e.tower in vision_towers]
        language = [e for e in step if e.tower not in vision_towers]
        if vision:
            vision_seen = vision
            _name_cameras(vision, language, options)
        phase = _phase(language, spec, has_expert)
        if language and phase in (generate.prompt, denoise.prompt):
            prompt = spec.prompt_layout(language[0].keys, vision_seen, language[0].batch, options)
            padding = prompt_padding(language)
            prompt = _mark_padding(prompt, padding)
        elif language and prompt is None:  # a decode/denoise step whose prompt was not captured
            first = language[0]
            prompt = TokenLayout([Segment("context", 0, first.keys - first.queries)])
        # a sliding-window layer's cache keeps only its window: its keys are the last ones of the step's sequence
        seen = {}
        for e in language:
            seen[e.tower] = max(seen.get(e.tower, 0), e.keys)
        for e in step:
            start, first = 0, e.keys - e.queries  # first: the key position of query row 0
            if e.tower in vision_towers:
                queries = keys = e.layout
            elif e.cross:  # the keys are the prompt; the queries come after it and are none of the keys
                names = denoise if phase == denoise.step else generate
                whole = _extend(prompt, e.keys + e.queries, names, options.get("state_tokens", 0) if names.state else 0)
                keys, queries, first = whole.window(0, e.keys), whole.window(e.keys, e.keys + e.queries), e.keys
            else:
                names = denoise if phase == denoise.step else generate
                total = seen[e.tower] if phase in (generate.step, denoise.step) else e.keys
                keys = _extend(prompt, total, names, options.get("state_tokens", 0) if names.state else 0)
                start = total - e.keys
                keys = keys.window(start, total) if start else keys
                queries = keys.window(e.keys - e.queries, e.keys)
            rows = None
            if isinstance(e.array, Rows):  # the capture kept some rows: say which
                rows = np.asarray(e.array.rows, dtype=np.int64) + first
                queries = queries.take(e.array.rows)
                rows = None if e.cross else rows  # key positions, and a cross call's queries are no keys
            pad = None if e.tower in vision_towers else _pad_for(padding, e.batch, e.keys, start)
            array = e.array if pad is None else _blank_padding_rows(e.array, pad, first, rows)
            maps.append(AttentionMap(array, e.tower, e.layer, e.path, number, phase, e.index,
                                     queries, keys, e.camera, pad, rows))
            if e.tower not in layouts or len(keys) > len(layouts[e.tower]):
                layouts[e.tower] = keys
    return AttentionMaps(maps, layouts)


def prompt_padding(language: List[Entry]):
    """``[batch, keys]`` bool: the prompt positions that the attention mask hid, or None.

    An additive mask (``finfo.min`` or ``-inf``) makes a key's weight exactly 0
    after the softmax, which unmasked logits never reach in float32 (a gap of
    over 100 would be needed). So a position is padding in an item when, in
    every layer and head of the prefill, every query that sees it gives it
    exactly 0. Query rows whose keys are all masked (a left-padded query: the
    softmax of equal values is uniform; 0 where fast mode already blanked it)
    are left out of that test.
    """
    to_numpy = converter("numpy")
    zero = None
    for e in language:
        if isinstance(e.array, Lazy):  # mode='fast' read the padding off the mask at capture time
            if e.queries != e.keys:
                return None
            z = getattr(e.array, "padding", None)
            z = np.zeros((e.batch, e.keys), dtype=bool) if z is None else z
            zero = z if zero is None else (zero & z) if zero.shape == z.shape else None
            if zero is None:
                return None
            continue
        a = np.asarray(to_numpy(e.array))
        if a.ndim != 4 or a.shape[-2] != a.shape[-1]:
            return None
        a = a.astype(np.float32, copy=False)
        hidden = (a.max(-1, keepdims=True) == a.min(-1, keepdims=True))  # fully masked rows: uniform
        z = ((a == 0) | hidden).all(axis=(1, 2))  # [B, K]
        zero = z if zero is None else (zero & z) if zero.shape == z.shape else None
        if zero is None:
            return None
    if zero is None or not zero.any():
        return None
    # under a causal mask the last key is seen only by the last query, so a zero
    # column there is the mask too; a real token is always seen by itself
    return zero


def _mark_padding(prompt: TokenLayout, padding) -> TokenLayout:
    """``prompt`` with the positions that every item pads made ``padding`` segments."""
    if padding is None or len(prompt) != padding.shape[-1]:
        return prompt
    common = padding.all(0)
    if not common.any():
        return prompt
    segments = []
    for s in prompt.segments:
        start = s.start
        for pos in range(s.start, s.stop + 1):
            if pos == s.stop or pos > start and common[pos] != common[pos - 1]:
                if pos > start:
                    kind = "padding" if common[start] else s.kind
                    whole = (start, pos) == (s.start, s.stop)
                    segments.append(Segment(kind, start, pos, s.camera if kind == s.kind else None,
                                            s.grid if whole and kind == s.kind else None))
                start = pos
    return TokenLayout(segments)


def _blank_padding_rows(array, pad, first: int, rows):
    """``array`` with the rows of its padding queries set to exactly 0 (``_keep.blank_padding_queries``).

    Eager's softmax gives a query whose every key is masked 1/K over every key,
    future ones included; torch's sdpa kernel gives it 0, and so does every
    labelled map, in both modes (``mode='fast'`` blanks them as it computes
    them: a pending ``Rebuild`` is left alone here). The captured value is
    copied first (it may be a view of the model's tensor); ``get_local.cache``
    keeps what eager computed. A tensor in the autograd graph
    (``convert='raw'`` while autograd records) is left as computed:
    ``torch.autograd.grad`` on the maps needs the tensors the model used.
    ``first``: the key position of query row 0; ``rows``: the positions of the
    rows a capture kept by index, or None.
    """
    value = array.value if isinstance(array, Rows) else array
    if not (isinstance(value, np.ndarray) or is_tensor(value)) or getattr(value, "requires_grad", False):
        return array  # a pending Rebuild, a Skipped call, a user's convert= result, a map in the graph
    positions = np.arange(first, first + int(value.shape[-2])) if rows is None else rows
    blanked = blank_padding_queries(value, pad, positions)
    if blanked is value:
        return array
    return Rows(blanked, array.rows, array.queries, array.padding) if isinstance(array, Rows) else blanked


def _pad_for(padding, batch: int, keys: int, start: int = 0):
    """The prompt padding of a map whose ``keys`` keys start at ``start`` (later keys are generated: never padding)."""
    if padding is None or padding.shape[0] != batch:
        return None
    out = np.zeros((batch, keys), dtype=bool)
    part = padding[:, start:start + keys]
    out[:, :part.shape[1]] = part
    return out if out.any() else None


def _split_steps(vision_towers, entries: List[Entry]) -> List[List[Entry]]:
    """Cut the calls into forward passes of the whole model.

    A pass is: the vision calls, then one run of language-model layers. A new pass
    starts at a vision call that follows language calls, and at a language call
    whose layer is not above the last language layer of the current pass (layer 0
    again: the next ``generate`` step or denoising step).
    """
    steps: List[List[Entry]] = []
    current: List[Entry] = []
    last_layer: Dict[str, int] = {}
    for e in entries:
        is_vision = e.tower in vision_towers
        language_seen = any(t not in vision_towers for t in last_layer)
        if current and language_seen and (is_vision or e.layer <= max(
                v for t, v in last_layer.items() if t not in vision_towers)):
            steps.append(current)
            current, last_layer = [], {}
        current.append(e)
        last_layer[e.tower] = e.layer
    if current:
        steps.append(current)
    return steps


def _phase(language: List[Entry], spec, has_expert: bool) -> str:
    """A step's phase: vision only, the action expert's step, a pass over the whole prompt, or a step after it."""
    if not language:
        return spec.encode
    if any(e.tower in spec.expert_towers for e in language):
        return spec.expert_steps.step
    if all(e.queries == e.keys for e in language):
        return spec.expert_steps.prompt if has_expert else spec.steps.prompt
    return spec.steps.step


def _extend(prompt: TokenLayout, length: int, names, state_tokens: int) -> TokenLayout:
    """The prompt layout, cut or extended to ``length`` keys with the tokens a step adds (``names``: ``Steps``)."""
    if length <= len(prompt):
        return prompt.window(0, length)
    segments = list(prompt.segments)
    start = len(prompt)
    if state_tokens:
        segments.append(Segment(names.state, start, min(start + state_tokens, length)))
        start = segments[-1].stop
    segments.append(Segment(names.added, start, length))
    return TokenLayout(segments)


def _name_cameras(vision: List[Entry], language: List[Entry], options) -> None:
    """Label the vision calls of a step with their camera when each call saw one camera only."""
    if not language:
        return
    batch = language[0].batch
    passes: List[List[Entry]] = []
    for e in vision:
        if not passes or e.layer <= passes[-1][-1].layer or e.tower != passes[-1][-1].tower:
            passes.append([])
        passes[-1].append(e)
    towers = {e.tower for e in vision}
    per_tower = [p for p in passes if p[0].tower == sorted(towers)[0]]
    if len(per_tower) > 1 and all(p[0].batch == batch for p in per_tower):
        names = camera_names(len(per_tower), options)
        tower_passes: Dict[str, int] = {}
        for p in passes:
            i = tower_passes.get(p[0].tower, 0)
            tower_passes[p[0].tower] = i + 1
            for e in p:
                e.camera = names[i] if i < len(names) else None


def camera_names(n: int, options) -> List[str]:
    cameras = options.get("cameras")
    if cameras is None:
        return [f"image{i}" for i in range(n)]
    cameras = list(cameras)
    if len(cameras) != n:
        raise GetLocalError(
            f"collect(cameras={cameras!r}) names {len(cameras)} cameras but each sequence holds {n} images")
    return cameras


def image_count(vision: List[Entry], batch: int) -> Tuple[int, int]:
    """``(images per sequence, tokens per image)`` from the first vision layer's calls of a step."""
    if not vision:
        return 0, 0
    tower = vision[0].tower
    first = min(e.layer for e in vision if e.tower == tower)
    calls = [e for e in vision if e.tower == tower and e.layer == first]
    images = sum(e.batch for e in calls)
    return max(images // max(batch, 1), 1), len(calls[0].layout.find("image")[0])


def square(n: int) -> Optional[Tuple[int, int]]:
    side = int(math.isqrt(n))
    return (side, side) if side * side == n else (1, n)


def image_layout(path: str, modules: Dict[str, Any], length: int) -> TokenLayout:
    """A vision tower without class or register tokens: ``[image]`` on the squarest grid."""
    return TokenLayout([Segment("image", 0, length, grid=square(length))])


_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_of(owner, path: str) -> int:
    found = _LAYER.findall(path)
    if found:
        return int(found[-1])
    index = getattr(owner, "layer_idx", None)
    return int(index) if isinstance(index, int) else -1


def parent(path: str, modules: Dict[str, Any], has: str):
    """The nearest enclosing module (by name) that has attribute ``has``."""
    parts = path.split(".")
    for i in range(len(parts) - 1, -1, -1):
        module = modules.get(".".join(parts[:i]))
        if module is not None and hasattr(module, has):
            return module
    return None


