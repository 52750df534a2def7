"""What both adapters share: undoable switches, eager attention, and turning the cache into labelled maps.

An adapter (openvla.py, paligemma.py) is a ``_Spec``: which functions hold the
attention and under which local name, how to make a module compute eager
attention, and how to name towers and token layouts. ``_Adapter`` does the
rest the same way for both: it registers the functions with ``get_local``,
switches the models it is given, finds or is told about, and undoes it all.
No bytecode work happens here; that is the engine's.
"""
import gc
import math
import re
import sys
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from getlocal import GetLocalError, _check, get_local
from getlocal._convert import MODES
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

_MISSING = object()


class _Undo:
    """Every change an adapter made, undone newest first.

    Objects are held weakly: a model deleted while the adapter is active needs no restoring.
    """

    def __init__(self):
        self._steps: List[Callable[[], None]] = []

    def set(self, obj, name: str, value) -> None:
        if name == "__class__" or not hasattr(obj, "__dict__"):
            old = getattr(obj, name)
        else:  # an attribute the object does not hold itself is deleted again, not copied from its class
            old = obj.__dict__.get(name, _MISSING)
        if old is value:
            return
        ref = _weak(obj)
        setattr(obj, name, value)

        def undo():
            target = ref()
            if target is None:
                return
            if old is _MISSING:
                target.__dict__.pop(name, None)
            else:
                setattr(target, name, old)
        self._steps.append(undo)

    def add(self, undo: Callable[[], None]) -> None:
        self._steps.append(undo)

    def run(self) -> None:
        while self._steps:
            self._steps.pop()()


def _weak(obj):
    try:
        return weakref.ref(obj)
    except TypeError:  # an object without weak-reference support is kept until deactivate
        return lambda: obj


class _Spec:
    """The model knowledge of one adapter; openvla.py and paligemma.py subclass it."""

    name = ""
    vision_towers: Tuple[str, ...] = ()
    config_types: Tuple[str, ...] = ()  # transformers model_type values switched to eager

    def targets(self) -> List[Tuple[Callable, str]]:
        """``[(function, local name), ...]`` to capture; imports the libraries."""
        raise NotImplementedError

    def global_switches(self, undo: _Undo) -> None:
        """Switches for models created later (timm's fused flag, ...)."""

    def prepare_module(self, module, undo: _Undo, built: bool) -> None:
        """Make one module compute the attention that the targets capture.

        ``built``: the module was built while the adapter was active (so its
        build-time switches already say "eager"; deactivate should turn them back).
        """

    def owns(self, owner) -> bool:
        """Whether a captured call's owner is one of our attention modules.

        Cache keys are names, and a key freed by one adapter's deactivate can be
        taken by another's function while the cache still holds the first one's maps.
        """
        return getattr(getattr(owner, "config", None), "model_type", None) in self.config_types

    def tower(self, owner, path: str, modules: Dict[str, Any]) -> str:
        raise NotImplementedError

    def vision_layout(self, owner, path: str, modules: Dict[str, Any], length: int) -> TokenLayout:
        return TokenLayout([Segment("image", 0, length, grid=_square(length))])

    def prompt_layout(self, length: int, vision: List["_Entry"], batch: int, options: Dict[str, Any]) -> TokenLayout:
        raise NotImplementedError


class _Entry:
    """One captured call, with its labels as they are worked out."""

    __slots__ = ("index", "owner", "array", "tower", "layer", "path", "layout", "camera")

    def __init__(self, index, owner, array):
        self.index, self.owner, self.array = index, owner, array
        self.tower, self.layer, self.path, self.layout, self.camera = "", -1, "", None, None

    @property
    def batch(self) -> int:
        return int(self.array.shape[0])

    @property
    def queries(self) -> int:
        return int(self.array.shape[-2])

    @property
    def keys(self) -> int:
        return int(self.array.shape[-1])


class _Adapter:
    """activate / deactivate / collect for one ``_Spec``."""

    def __init__(self, spec: _Spec):
        self.spec = spec
        self.active = False
        self._undo = _Undo()
        self._added: List[Callable] = []  # functions we registered (and so remove again)
        self._keys: Dict[str, str] = {}  # cache key -> captured local name
        self._roots: "weakref.WeakSet" = weakref.WeakSet()  # models we were given or saw being built
        self._checked: "weakref.WeakSet" = weakref.WeakSet()  # roots whose outermost holder is known (and in here)
        self._prepared: "weakref.WeakSet" = weakref.WeakSet()
        self._wants_live = False  # activated without a model: switch every model at its first call
        self.used = False  # activated at least once: collect() has something to look at

    # -- switching -------------------------------------------------------

    def activate(self, model=None, convert="numpy", max_calls=None, max_bytes=None) -> None:
        global _STARTED_CAPTURE
        _model(model)
        if not callable(convert):
            _check.choice("convert", convert, MODES)
        _check.integer("max_calls", max_calls, low=1, high=None, optional=True)
        _check.integer("max_bytes", max_bytes, low=1, high=None, optional=True)
        if not self.active:
            known = set(get_local.functions().values())
            for func, local in self.spec.targets():
                inner = getattr(func, "__func__", func)
                if inner not in known:
                    self._added.append(inner)
                get_local(local)(inner)
                self._keys[get_local.key_of(inner)] = local
            self.spec.global_switches(self._undo)
            self._watch_new_models()
            if not any(a.active for a in _ADAPTERS):
                _STARTED_CAPTURE = not get_local.is_active()
            self.active = self.used = True
        if model is not None:
            self._roots.add(model)
            self.prepare(model)
        else:
            self._wants_live = True
            self._prepare_live_modules()
        get_local.activate(convert, max_calls=max_calls, max_bytes=max_bytes)

    def deactivate(self) -> None:
        if not self.active:
            return
        self._undo.run()
        for func in self._added:
            try:
                get_local.remove(func)
            except GetLocalError:  # the user removed it already
                pass
        self._added.clear()
        self.active = False
        self._wants_live = False
        self._unwatch_new_models()
        self._unwatch_live_modules()
        if _STARTED_CAPTURE and not any(a.active for a in _ADAPTERS):
            get_local.deactivate()  # the last adapter turns off what the first turned on
        self._prepared = weakref.WeakSet()

    def prepare(self, model, built: bool = False) -> None:
        for module in model.modules():
            if module not in self._prepared:
                self.spec.prepare_module(module, self._undo, built)
                self._prepared.add(module)

    def _prepare_live_modules(self) -> None:
        """Switch the models that already exist, each at its first call.

        Nothing lists the models of a process except the whole heap, which is slow
        and holds objects that break on any probe (a dead ``weakref.proxy`` left by
        torch.compile). A global forward pre-hook sees each model as it is called,
        before any of its modules runs: the outermost module called is switched
        whole, so the mask is built for eager attention too.
        """
        global _LIVE_HOOK
        torch = sys.modules.get("torch")
        if torch is None or _LIVE_HOOK is not None:
            return
        _LIVE_HOOK = torch.nn.modules.module.register_module_forward_pre_hook(_prepare_on_call)

    @staticmethod
    def _unwatch_live_modules() -> None:
        global _LIVE_HOOK
        if _LIVE_HOOK is not None and not any(a.active and a._wants_live for a in _ADAPTERS):
            _LIVE_HOOK.remove()
            _LIVE_HOOK = None

    def _watch_new_models(self) -> None:
        """Switch models built from now on (``from_pretrained`` included) as their ``post_init`` ends.

        Every transformers model calls ``PreTrainedModel.post_init()`` at the end of
        its ``__init__``: the modules exist then, and the weights are loaded later
        into the same modules. One wrapper serves every active adapter, so that
        adapters can be deactivated in any order.
        """
        global _ORIGINAL_POST_INIT
        pretrained = _pretrained_class()
        if pretrained is None or _ORIGINAL_POST_INIT is not None:
            return
        original = _ORIGINAL_POST_INIT = pretrained.__dict__["post_init"]

        def post_init(model, *args, **kwargs):
            result = original(model, *args, **kwargs)
            for adapter in _ADAPTERS:
                if adapter.active:
                    adapter._roots.add(model)
                    adapter.prepare(model, built=True)
            return result

        post_init.__wrapped__ = original
        pretrained.post_init = post_init

    @staticmethod
    def _unwatch_new_models() -> None:
        global _ORIGINAL_POST_INIT
        if _ORIGINAL_POST_INIT is not None and not any(a.active for a in _ADAPTERS):
            _pretrained_class().post_init = _ORIGINAL_POST_INIT
            _ORIGINAL_POST_INIT = None

    # -- labelling ---------------------------------------------------------

    def collect(self, model=None, **options) -> AttentionMaps:
        _model(model)
        cameras = options.get("cameras")
        if cameras is not None and (isinstance(cameras, str) or not isinstance(cameras, (list, tuple))
                                    or not all(isinstance(c, str) and c for c in cameras)):
            raise _check.ArgumentTypeError(f"cameras must be a list of camera names (str); got {_check._show(cameras)}")
        if "state_tokens" in options:
            _check.integer("state_tokens", options["state_tokens"], low=0)
        if not self.used:
            name = self.spec.name
            raise GetLocalError(
                f"{name}.collect(): the {name} adapter was never activated, so nothing was captured; "
                f"call {name}.activate() (or {name}.activate(model)) before running the model")
        entries = self._entries()
        if not entries:
            return AttentionMaps()
        names = self._names(model, [e.owner for e in entries])
        if model is not None:  # other models' maps of the same classes (another timm ViT) stay out
            entries = [e for e in entries if id(e.owner) in names]
        for e in entries:
            e.path, modules = names.get(id(e.owner), ("", {}))
            if not e.path:
                e.path = f"<{type(e.owner).__name__}>"
            e.layer = _layer_of(e.owner, e.path)
            e.tower = self.spec.tower(e.owner, e.path, modules)
            if e.tower in self.spec.vision_towers:
                e.layout = self.spec.vision_layout(e.owner, e.path, modules, e.keys)
        return _label(self.spec, entries, options)

    def _entries(self) -> List[_Entry]:
        cache, calls, owns = get_local.cache, get_local.calls, self.spec.owns
        out = []
        for key, local in self._keys.items():
            for value, call in zip(cache.get(key, ()), calls.get(key, ())):
                if isinstance(value, dict):  # the user captures more locals of the same function
                    value = value.get(local)
                owner = call.owner
                if owner is None or getattr(value, "ndim", 0) != 4 or not owns(owner):
                    continue
                out.append(_Entry(call.index, owner, value))
        out.sort(key=lambda e: e.index)
        return out

    def _names(self, model, owners) -> Dict[int, Tuple[str, Dict[str, Any]]]:
        """``{id(module): (path, {path: module} of its root)}`` for every owner we can place.

        Paths are taken from ``model`` if given; otherwise from the outermost
        module holding the models we were given or saw being built (openpi wraps
        its PaliGemma and expert in a plain ``nn.Module``), found once per model.
        """
        names: Dict[int, Tuple[str, Dict[str, Any]]] = {}

        def add(root):
            modules = dict(root.named_modules())
            for path, module in modules.items():
                old = names.get(id(module))
                if old is None or len(path) > len(old[0]):  # the outermost root names it in full
                    names[id(module)] = (path, modules)

        if model is not None:
            add(model)
            return names
        unsure = [root for root in self._roots if root not in self._checked]
        for root in self._checked:
            add(root)
        lost = [owner for owner in owners if id(owner) not in names]
        if unsure or lost:
            for root in _roots_of(unsure + lost) + unsure:
                self._checked.add(root)
                self._roots.add(root)
                add(root)
        return names


def _model(model) -> None:
    """``model`` is None or a torch module (probed through type(): the argument may be anything)."""
    if model is None:
        return
    torch = sys.modules.get("torch")
    if torch is None or not issubclass(type(model), torch.nn.Module):
        raise _check.ArgumentTypeError(
            f"model must be a torch.nn.Module (the model, or torch.compile(model)) or None; got {_check._show(model)}")


_ADAPTERS: List[_Adapter] = []
_LIVE_HOOK = None  # the handle of the global forward pre-hook while an adapter waits for live models
_ORIGINAL_POST_INIT = None  # PreTrainedModel.post_init while an adapter has it wrapped
_STARTED_CAPTURE = False  # whether the first adapter to activate turned get_local on


def _prepare_on_call(module, args) -> None:
    """The global forward pre-hook: switch a model not yet seen before it runs."""
    if _compiling():  # inside a graph being traced; the OptimizedModule around it was switched in eager
        return
    for adapter in _ADAPTERS:
        if adapter.active and adapter._wants_live and module not in adapter._prepared:
            adapter.prepare(module)
            adapter._roots.add(module)


def _compiling() -> bool:
    compiler = getattr(sys.modules.get("torch"), "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


def _adapter(spec: _Spec) -> _Adapter:
    adapter = _Adapter(spec)
    _ADAPTERS.append(adapter)
    return adapter


# -- labelling: steps, phases, layouts ----------------------------------------


def _label(spec: _Spec, entries: List[_Entry], options: Dict[str, Any]) -> AttentionMaps:
    steps = _split_steps(spec, entries)
    has_expert = any(e.tower == "expert" for e in entries)
    maps: List[AttentionMap] = []
    layouts: Dict[str, TokenLayout] = {}
    prompt: Optional[TokenLayout] = None  # the last prefill/prefix layout of the language model
    padding = None  # [batch, prompt keys] bool: the prompt positions that each item pads
    vision_seen: List[_Entry] = []
    for number, step in enumerate(steps):
        vision = [e for e in step if e.tower in spec.vision_towers]
        language = [e for e in step if e.tower not in spec.vision_towers]
        if vision:
            vision_seen = vision
            _name_cameras(vision, language, options)
        phase = _phase(language, has_expert)
        if language and phase in ("prefill", "prefix"):
            prompt = spec.prompt_layout(language[0].keys, vision_seen, language[0].batch, options)
            padding = _padding(language)
            prompt = _mark_padding(prompt, padding)
        elif language and prompt is None:  # a decode/denoise step whose prompt was not captured
            first = language[0]
            prompt = TokenLayout([Segment("context", 0, first.keys - first.queries)])
        for e in step:
            if e.tower in spec.vision_towers:
                queries = keys = e.layout
            else:
                denoise = phase == "denoise"
                keys = _extend(prompt, e.keys, "action" if denoise else "generated",
                               options.get("state_tokens", 0) if denoise else 0)
                queries = keys.window(e.keys - e.queries, e.keys)
            pad = None if e.tower in spec.vision_towers else _pad_for(padding, e.batch, e.keys)
            maps.append(AttentionMap(e.array, e.tower, e.layer, e.path, number, phase, e.index,
                                     queries, keys, e.camera, pad))
            if e.tower not in layouts or len(keys) > len(layouts[e.tower]):
                layouts[e.tower] = keys
    return AttentionMaps(maps, layouts)


def _padding(language: List[_Entry]):
    """``[batch, keys]`` bool: the prompt positions that the attention mask hid, or None.

    An additive mask (``finfo.min`` or ``-inf``) makes a key's weight exactly 0
    after the softmax, which unmasked logits never reach in float32 (a gap of
    over 100 would be needed). So a position is padding in an item when, in
    every layer and head of the prefill, every query that sees it gives it
    exactly 0. Query rows whose keys are all masked (a left-padded query: the
    softmax of equal values is uniform) are left out of that test.
    """
    import numpy as np

    from getlocal._convert import converter

    to_numpy = converter("numpy")
    zero = None
    for e in language:
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


def _pad_for(padding, batch: int, keys: int):
    """The prompt padding of a map with ``keys`` keys (later keys are generated: never padding)."""
    import numpy as np

    if padding is None or padding.shape[0] != batch:
        return None
    out = np.zeros((batch, keys), dtype=bool)
    n = min(keys, padding.shape[1])
    out[:, :n] = padding[:, :n]
    return out if out.any() else None


def _split_steps(spec: _Spec, entries: List[_Entry]) -> List[List[_Entry]]:
    """Cut the calls into forward passes of the whole model.

    A pass is: the vision calls, then one run of language-model layers. A new pass
    starts at a vision call that follows language calls, and at a language call
    whose layer is not above the last language layer of the current pass (layer 0
    again: the next ``generate`` step or denoising step).
    """
    steps: List[List[_Entry]] = []
    current: List[_Entry] = []
    last_layer: Dict[str, int] = {}
    for e in entries:
        is_vision = e.tower in spec.vision_towers
        language_seen = any(t not in spec.vision_towers for t in last_layer)
        if current and language_seen and (is_vision or e.layer <= max(
                v for t, v in last_layer.items() if t not in spec.vision_towers)):
            steps.append(current)
            current, last_layer = [], {}
        current.append(e)
        last_layer[e.tower] = e.layer
    if current:
        steps.append(current)
    return steps


def _phase(language: List[_Entry], has_expert: bool) -> str:
    if not language:
        return "encode"
    if any(e.tower == "expert" for e in language):
        return "denoise"
    if all(e.queries == e.keys for e in language):
        return "prefix" if has_expert else "prefill"
    return "decode"


def _extend(prompt: TokenLayout, length: int, kind: str, state_tokens: int) -> TokenLayout:
    """The prompt layout, cut or extended to ``length`` keys with generated/state/action tokens."""
    if length <= len(prompt):
        return prompt.window(0, length)
    segments = list(prompt.segments)
    start = len(prompt)
    if state_tokens:
        segments.append(Segment("state", start, min(start + state_tokens, length)))
        start = segments[-1].stop
    segments.append(Segment(kind, start, length))
    return TokenLayout(segments)


def _name_cameras(vision: List[_Entry], language: List[_Entry], options) -> None:
    """Label the vision calls of a step with their camera when each call saw one camera only."""
    if not language:
        return
    batch = language[0].batch
    passes: List[List[_Entry]] = []
    for e in vision:
        if not passes or e.layer <= passes[-1][-1].layer or e.tower != passes[-1][-1].tower:
            passes.append([])
        passes[-1].append(e)
    towers = {e.tower for e in vision}
    per_tower = [p for p in passes if p[0].tower == sorted(towers)[0]]
    if len(per_tower) > 1 and all(p[0].batch == batch for p in per_tower):
        names = _camera_names(len(per_tower), options)
        tower_passes: Dict[str, int] = {}
        for p in passes:
            i = tower_passes.get(p[0].tower, 0)
            tower_passes[p[0].tower] = i + 1
            for e in p:
                e.camera = names[i] if i < len(names) else None


def _camera_names(n: int, options) -> List[str]:
    cameras = options.get("cameras")
    if cameras is None:
        return [f"image{i}" for i in range(n)]
    cameras = list(cameras)
    if len(cameras) != n:
        raise GetLocalError(
            f"collect(cameras={cameras!r}) names {len(cameras)} cameras but each sequence holds {n} images")
    return cameras


def _image_count(vision: List[_Entry], batch: int) -> Tuple[int, int]:
    """``(images per sequence, tokens per image)`` from the first vision layer's calls of a step."""
    if not vision:
        return 0, 0
    tower = vision[0].tower
    first = min(e.layer for e in vision if e.tower == tower)
    calls = [e for e in vision if e.tower == tower and e.layer == first]
    images = sum(e.batch for e in calls)
    return max(images // max(batch, 1), 1), len(calls[0].layout.find("image")[0])


def _square(n: int) -> Optional[Tuple[int, int]]:
    side = int(math.isqrt(n))
    return (side, side) if side * side == n else (1, n)


# -- module names --------------------------------------------------------------


_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def _layer_of(owner, path: str) -> int:
    found = _LAYER.findall(path)
    if found:
        return int(found[-1])
    index = getattr(owner, "layer_idx", None)
    return int(index) if isinstance(index, int) else -1


def _parent(path: str, modules: Dict[str, Any], has: str):
    """The nearest enclosing module (by name) that has attribute ``has``."""
    parts = path.split(".")
    for i in range(len(parts) - 1, -1, -1):
        module = modules.get(".".join(parts[:i]))
        if module is not None and hasattr(module, has):
            return module
    return None


def _roots_of(modules) -> list:
    """The outermost modules holding ``modules``, found by one pass over the garbage collector's objects.

    Slow on a big process (it looks at every object), so collect() does it only
    for models it was neither given nor saw being built. Each object is probed
    through ``type()`` only: ``isinstance`` reads ``__class__``, which raises on a
    dead ``weakref.proxy`` and runs arbitrary code on other objects.
    """
    module_type = sys.modules["torch"].nn.Module
    parent: Dict[int, Any] = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), module_type):
            for child in obj._modules.values():
                if child is not None:
                    parent[id(child)] = obj
    roots = {}
    for module in modules:
        while id(module) in parent:
            module = parent[id(module)]
        roots[id(module)] = module
    return list(roots.values())


# -- transformers and timm helpers -------------------------------------------


def _pretrained_class():
    modeling_utils = sys.modules.get("transformers.modeling_utils")
    return getattr(modeling_utils, "PreTrainedModel", None)


def _set_eager(config, model_types: Sequence[str], undo: _Undo, seen=None) -> None:
    """Switch ``config`` and every config nested in it whose model_type is ours to eager attention.

    transformers reads ``config._attn_implementation`` at call time from 4.48 on
    (attention function and mask); ``_attn_implementation_internal`` is where
    every version from 4.36 keeps it, and setting it directly skips the checks
    that would reject a switch on models that cannot do it dynamically.
    """
    seen = set() if seen is None else seen
    if id(config) in seen:
        return
    seen.add(id(config))
    if getattr(config, "model_type", None) in model_types and hasattr(config, "_attn_implementation_internal"):
        if config._attn_implementation_internal != "eager":
            undo.set(config, "_attn_implementation_internal", "eager")
    config_type = type(config).__mro__[-2]  # PretrainedConfig, whatever the version calls it
    for value in list(vars(config).values()):
        if isinstance(value, config_type):
            _set_eager(value, model_types, undo, seen)


def _module_config(module):
    config = getattr(module, "config", None)
    return config if config is not None and hasattr(config, "_attn_implementation_internal") else None


def _timm_unfuse_global(undo: _Undo) -> bool:
    """timm models built from now on take the non-fused path that materialises ``attn``.

    Saved and restored through the module global because ``set_fused_attn`` has
    no getter for the 'experimental' level (2). Returns whether blocks were fused before.
    """
    config = sys.modules.get("timm.layers.config")
    fused = bool(getattr(config, "_USE_FUSED_ATTN", 0))
    if fused:
        undo.set(config, "_USE_FUSED_ATTN", 0)
    return fused


def _timm_attention_classes() -> List[type]:
    """timm's ViT attention class: timm.layers.attention (1.0) or timm.models.vision_transformer (0.9)."""
    import timm.models.vision_transformer  # noqa: F401  (imports timm.layers too)

    found = []
    for name in ("timm.layers.attention", "timm.models.vision_transformer"):
        cls = getattr(sys.modules.get(name), "Attention", None)
        if cls is not None and cls not in found:
            found.append(cls)
    return found


def _timm_prepare(spec, module, undo: _Undo, built: bool) -> None:
    """Put one timm attention block on the path that builds ``attn`` (and say how to undo it)."""
    if getattr(module, "fused_attn", False):
        undo.set(module, "fused_attn", False)
    elif built and spec.timm_was_fused:  # built while our global switch said "not fused": give it what timm would have
        undo.add(lambda ref=weakref.ref(module): ref() is not None and setattr(ref(), "fused_attn", True))


def _timm_layout(path: str, modules: Dict[str, Any], length: int) -> TokenLayout:
    """``[cls, registers, image grid]`` of the timm ViT that holds the block at ``path``."""
    vit = _parent(path, modules, "patch_embed")
    cls = int(getattr(vit, "cls_token", None) is not None) if vit is not None else 0
    registers = int(getattr(vit, "num_reg_tokens", 0) or 0) if vit is not None else 0
    patches = length - cls - registers
    grid = tuple(getattr(getattr(vit, "patch_embed", None), "grid_size", None) or ())
    if len(grid) != 2 or grid[0] * grid[1] != patches:  # another input size (dynamic_img_size), or no model at hand
        grid = _square(patches)
    return TokenLayout([Segment("cls", 0, cls), Segment("register", cls, cls + registers),
                        Segment("image", cls + registers, length, grid=grid)])
