"""The adapter object: activate / deactivate / collect / capture, the same for every adapter.

An adapter module (vit.py, openvla.py, paligemma.py) is a ``Spec``: its name,
its vision towers, its attention sources (see ``_libraries``), how to name a
tower and how to lay out its tokens. ``register(spec)`` gives it an ``Adapter``,
which registers the sources' functions with ``get_local``, switches the models
it is given, sees being built (a ``post_init`` patch) or sees called (a global
forward pre-hook), undoes it all, and hands the captured calls to ``_labels``.
No bytecode work happens here; that is the engine's.
"""
import contextlib
import gc
import sys
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from getlocal import GetLocalError, _check, get_local
from getlocal._convert import MODES, converter
from getlocal.maps import AttentionMaps, TokenLayout

from ._labels import Entry, PromptLayout, check_options, image_layout, label, layer_of
from ._libraries import pretrained_class
from ._undo import Undo


class Spec:
    """The model knowledge of one adapter, as data.

    ``sources``: the attention it captures (``_libraries.TimmAttention``, ...);
    ``tower(owner, path, modules)``: the tower of a captured call;
    ``vision_layout(path, modules, length)``: the tokens of a vision call;
    ``prompt_layout(length, vision entries, batch, options)``: the language model's prompt.
    """

    def __init__(self, name: str, *, vision_towers: Sequence[str], sources: Sequence[Any],
                 tower: Callable[[Any, str, Dict[str, Any]], str],
                 vision_layout: Callable[[str, Dict[str, Any], int], TokenLayout] = image_layout,
                 prompt_layout: Optional[PromptLayout] = None):
        self.name, self.vision_towers, self.sources = name, tuple(vision_towers), tuple(sources)
        self.tower, self.vision_layout, self.prompt_layout = tower, vision_layout, prompt_layout

    def owns(self, owner) -> bool:
        """Whether a captured call's owner is one of our attention modules.

        Cache keys are names, and a key freed by one adapter's deactivate can be
        taken by another's function while the cache still holds the first one's maps.
        """
        return any(source.owns(owner) for source in self.sources)


class Adapter:
    """activate / deactivate / collect / capture for one ``Spec``."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.active = False
        self._undo = Undo()
        self._added: List[Callable] = []  # functions we registered (and so remove again)
        self._keys: Dict[str, str] = {}  # cache key -> captured local name
        self._roots: "weakref.WeakSet" = weakref.WeakSet()  # models we were given or saw being built
        self._checked: "weakref.WeakSet" = weakref.WeakSet()  # roots whose outermost holder is known (and in here)
        self._prepared: "weakref.WeakSet" = weakref.WeakSet()
        self._wants_live = False  # activated without a model: switch every model at its first call
        self.used = False  # activated at least once: collect() has something to look at
        self.mode: Tuple[str, Optional[str], Optional[str]] = ("eager", None, None)  # (mode, queries, heads)

    # -- switching -------------------------------------------------------

    def activate(self, model=None, convert="numpy", max_calls=None, max_bytes=None,
                 mode="eager", queries=None, heads=None) -> None:
        global _STARTED_CAPTURE
        _check_activation(model, convert, max_calls, max_bytes, mode, queries, heads)
        wanted, was_active = (mode, queries, heads), self.active
        if self.active and wanted != self.mode:
            name = self.spec.name
            raise GetLocalError(
                f"{name} is active with mode={self.mode[0]!r}, queries={self.mode[1]!r}, heads={self.mode[2]!r}; "
                f"call {name}.deactivate() before activating it with mode={mode!r}, queries={queries!r}, heads={heads!r}")
        if not self.active:
            self.mode = wanted
            try:
                self._instrument(convert)
            except BaseException:
                self.active = True
                self.deactivate()
                raise
            self._watch_new_models()
            if not any(a.active for a in _ADAPTERS):
                _STARTED_CAPTURE = not get_local.is_active()
            self.active = self.used = True
        if model is not None:
            self._roots.add(model)
            try:
                self.prepare(model)
            except GetLocalError:  # mode='fast' refused a kernel: nothing stays changed
                if not was_active:
                    self.deactivate()
                raise
        else:
            self._wants_live = True
            self._prepare_live_modules()
        get_local.activate(convert, max_calls=max_calls, max_bytes=max_bytes)

    def _sources(self) -> list:
        """The sources of the mode: in mode='fast', those that can keep the model's kernel (transformers)."""
        if self.mode[0] == "fast":
            return [s for s in self.spec.sources if hasattr(s, "fast_targets")]
        return list(self.spec.sources)

    def _instrument(self, convert) -> None:
        known = set(get_local.functions().values())
        if self.mode[0] == "fast":
            from . import _fast

            to_host = not callable(convert) and convert in ("numpy", "cpu")
            fast = _fast.Fast(converter(convert), to_host, self.mode[1], self.mode[2], numpy=convert == "numpy")
            targets = [t for source in self._sources() for t in source.fast_targets(fast)]
        else:
            targets = [(func, (local,), None) for source in self.spec.sources for func, local in source.targets()]
        for func, names, keep in targets:
            inner = getattr(func, "__func__", func)
            if inner in known and keep is not None:
                raise GetLocalError(
                    f"{self.spec.name}.activate(mode='fast'): {inner.__qualname__} is already captured by get_local "
                    "(another adapter in mode='fast', or your own decoration); deactivate that adapter or "
                    "get_local.remove() it first")
            if inner not in known:
                self._added.append(inner)
            get_local(*names, keep=keep)(inner)
            self._keys[get_local.key_of(inner)] = names[0]
        for source in self._sources():
            if self.mode[0] == "eager":
                source.switch_globally(self._undo)

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
        fast = self.mode[0] == "fast"
        for path, module in model.named_modules():
            if module not in self._prepared:
                for source in self._sources():
                    if fast:  # nothing is switched: the kernel is only checked
                        source.check_fast(module, path)
                    else:
                        source.prepare(module, self._undo, built)
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
        pretrained = pretrained_class()
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
            pretrained_class().post_init = _ORIGINAL_POST_INIT
            _ORIGINAL_POST_INIT = None

    # -- labelling ---------------------------------------------------------

    def collect(self, model=None, **options) -> AttentionMaps:
        check_model(model)
        check_options(options)
        if not self.used:
            name = self.spec.name
            raise GetLocalError(
                f"{name}.collect(): the {name} adapter was never activated, so nothing was captured; "
                f"call {name}.activate() (or {name}.activate(model)) before running the model")
        return self._collect(model, options)

    def capture(self, model=None, convert="numpy", max_calls=None, max_bytes=None,
                mode="eager", queries=None, heads=None, **options):
        """A context manager: activated for the block, yielding ``AttentionMaps`` filled when the block ends.

        Arguments are checked here, before anything changes. Only calls made in
        the block are labelled. An adapter that was active before the block
        stays active (under its own ``convert``, ``max_calls``, ``max_bytes``; a
        ``model`` given is switched until ``deactivate()``); otherwise it is
        deactivated on exit, error or not.
        """
        _check_activation(model, convert, max_calls, max_bytes, mode, queries, heads)
        check_options(options)
        if self.active and (mode, queries, heads) != self.mode:
            raise GetLocalError(
                f"{self.spec.name}.capture(mode={mode!r}, queries={queries!r}, heads={heads!r}): the adapter is "
                f"already active with mode={self.mode[0]!r}, queries={self.mode[1]!r}, heads={self.mode[2]!r}; "
                f"call {self.spec.name}.deactivate() first")
        return self._capture(model, (convert, max_calls, max_bytes, mode, queries, heads), options)

    @contextlib.contextmanager
    def _capture(self, model, activation, options):
        was_active = self.active
        if not was_active:
            self.activate(model, *activation)
        elif model is not None:
            self._roots.add(model)
            self.prepare(model)
        since = max((c.index for calls in get_local.calls.values() for c in calls), default=-1)
        maps = AttentionMaps()
        try:
            yield maps
            found = self._collect(model, options, since)
            maps.maps, maps.layouts = found.maps, found.layouts
        finally:
            if not was_active:
                self.deactivate()

    def _collect(self, model, options, since: int = -1) -> AttentionMaps:
        """The labelled maps of the calls after call index ``since``."""
        entries = self._entries(since)
        if not entries:
            return AttentionMaps()
        names = self._names(model, [e.owner for e in entries])
        if model is not None:  # other models' maps of the same classes (another timm ViT) stay out
            entries = [e for e in entries if id(e.owner) in names]
        for e in entries:
            e.path, modules = names.get(id(e.owner), ("", {}))
            if not e.path:
                e.path = f"<{type(e.owner).__name__}>"
            e.layer = layer_of(e.owner, e.path)
            e.tower = self.spec.tower(e.owner, e.path, modules)
            if e.tower in self.spec.vision_towers:
                e.layout = self.spec.vision_layout(e.path, modules, e.keys)
        maps = label(entries, self.spec.vision_towers, self.spec.prompt_layout, options)
        if self.mode[1] is not None:  # mode='fast' with queries=: the calls it left out were kept for their labels only
            phase = {"generated": "decode", "action": "denoise"}[self.mode[1]]
            from ._fast import Skipped

            maps.maps = [m for m in maps.maps if m.phase == phase and not isinstance(m.__dict__["_array"], Skipped)]
        return maps

    def _entries(self, since: int) -> List[Entry]:
        cache, calls, owns = get_local.cache, get_local.calls, self.spec.owns
        out = []
        for key, local in self._keys.items():
            for value, call in zip(cache.get(key, ()), calls.get(key, ())):
                if isinstance(value, dict):  # the user captures more locals of the same function
                    value = value.get(local)
                owner = call.owner
                if call.index <= since or owner is None or getattr(value, "ndim", 0) != 4 or not owns(owner):
                    continue
                out.append(Entry(call.index, owner, value))
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


def check_model(model) -> None:
    """``model`` is None or a torch module (probed through type(): the argument may be anything)."""
    if model is None:
        return
    torch = sys.modules.get("torch")
    if torch is None or not issubclass(type(model), torch.nn.Module):
        raise _check.ArgumentTypeError(
            f"model must be a torch.nn.Module (the model, or torch.compile(model)) or None; got {_check._show(model)}")


def _check_activation(model, convert, max_calls, max_bytes, mode="eager", queries=None, heads=None) -> None:
    check_model(model)
    _check.choice("mode", mode, ("eager", "fast"))
    _check.choice("queries", queries, ("generated", "action"), optional=True)
    _check.choice("heads", heads, ("mean", "max"), optional=True)
    if mode == "eager" and (queries is not None or heads is not None):
        raise _check.ArgumentError(
            f"queries={queries!r}, heads={heads!r} select at capture time, which mode='fast' does; "
            "give mode='fast' too (mode='eager' keeps every map whole)")
    if not callable(convert):
        _check.choice("convert", convert, MODES)
    _check.integer("max_calls", max_calls, low=1, high=None, optional=True)
    _check.integer("max_bytes", max_bytes, low=1, high=None, optional=True)


def register(spec: Spec) -> Adapter:
    """The adapter of ``spec``, known to the ``post_init`` patch and the live-model hook."""
    adapter = Adapter(spec)
    _ADAPTERS.append(adapter)
    return adapter


_ADAPTERS: List[Adapter] = []
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

