"""The adapter object: activate / deactivate / collect / capture / is_active, the same for every adapter.

An adapter module (vit.py, openvla.py, paligemma.py) declares a ``Spec``
(``_spec``) and binds the methods of the ``Adapter`` that ``register(spec)``
returns as its public functions. The adapter registers the sources' functions
with ``get_local``, switches the models it is given, sees being built (a
``post_init`` patch) or sees called (a global forward pre-hook), undoes it all,
and hands the captured calls to ``_labels``. No bytecode work happens here;
that is the engine's.
"""
import contextlib
import gc
import sys
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from getlocal import GetLocalError, _check, get_local
from getlocal._convert import converter
from getlocal.maps import AttentionMaps

from ._choice import DEFAULT_CHOICE, check_activation, check_choice, check_model, show_choice
from ._keep import Keep, Skipped, layer_picked
from ._labels import Entry, check_options, label, layer_of
from ._spec import Spec
from ._undo import Undo
from .sources.transformers import pretrained_class


class Adapter:
    """activate / deactivate / collect / capture / is_active for one ``Spec``: what an adapter module exports.

    ``vit.activate`` is ``Adapter.activate`` bound to the ViT adapter; what
    each adapter captures, its towers and its layouts are in its module's doc.
    """

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
        self.choice: Dict[str, Any] = dict(DEFAULT_CHOICE)  # mode and selection of the activation in force
        self._places: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> (tower, layer)
        self._layer_counts: Dict[str, int] = {}
        self._placed_whole = True  # False while some places were read off a model as it was being built

    @property
    def mode(self) -> str:
        return self.choice["mode"]

    # -- switching -------------------------------------------------------

    def activate(self, model=None, *, convert="numpy", max_calls: Optional[int] = None,
                 max_bytes: Optional[int] = None, mode: str = "eager", queries=None, heads=None, towers=None,
                 layers=None, dtype=None) -> None:
        """Capture every attention map of the adapter's models from now on.

        Call it before the model is loaded (models built later are switched as
        they are built: timm ViTs are built non-fused, transformers models are
        switched as their ``post_init`` ends), or after: ``model`` is switched
        if given, otherwise every model is switched at its first call
        (``torch.compile(model)`` included). ``convert``, ``max_calls`` and
        ``max_bytes`` go to ``get_local.activate``.

        ``mode='fast'``: nothing is switched, the model keeps its attention
        kernels (timm's fused path, the language model's kernel) and each map is
        rebuilt exactly from the kernel's softmax inputs; ``model``, if given,
        is only checked. ``queries`` (row indices of every call, e.g. ``0``: a
        ViT's class token; ``'generated'``/``'action'``: the new rows of each
        decode or denoise step), ``heads`` (``'mean'``/``'max'`` or head
        indices), ``towers`` (of those the adapter writes), ``layers`` and
        ``dtype`` select before anything is kept, in either mode: see
        :mod:`getlocal.adapters` and the README, "Two capture modes".
        """
        global _STARTED_CAPTURE
        choice = self._check_choice(dict(mode=mode, queries=queries, heads=heads, towers=towers, layers=layers,
                                         dtype=dtype), convert)
        check_activation(model, convert, max_calls, max_bytes)
        was_active = self.active
        if self.active and choice != self.choice:
            name = self.spec.name
            raise GetLocalError(
                f"{name} is active with {show_choice(self.choice)}; call {name}.deactivate() before "
                f"activating it with {show_choice(choice)}")
        if not self.active:
            self.choice = choice
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
            try:
                self._check_model(model)
                self._roots.add(model)
                self.prepare(model)
            except GetLocalError:  # not our model, or mode='fast' refused a kernel: nothing stays changed
                if not was_active:
                    self.deactivate()
                raise
        else:
            self._wants_live = True
            self._prepare_live_modules()
        get_local.activate(convert, max_calls=max_calls, max_bytes=max_bytes)

    def _check_choice(self, choice: Dict[str, Any], convert) -> Dict[str, Any]:
        return check_choice(choice, convert, self.spec.towers)

    def is_active(self) -> bool:
        """Whether the adapter is activated (and not deactivated since)."""
        return self.active

    def _selects(self) -> bool:
        return any(self.choice[k] is not None for k in ("queries", "heads", "towers", "layers", "dtype"))

    def _sources(self) -> list:
        """The sources of the mode: in mode='fast', those that can keep the model's kernel."""
        if self.mode == "fast":
            return [s for s in self.spec.sources if hasattr(s, "fast_targets")]
        return list(self.spec.sources)

    def _instrument(self, convert) -> None:
        known = set(get_local.functions().values())
        keeper = None
        if self.mode == "fast" or self._selects():
            c = self.choice
            to_host = not callable(convert) and convert in ("numpy", "cpu")
            keeper = Keep(converter(convert), to_host, c["queries"], c["heads"], numpy=convert == "numpy",
                                towers=c["towers"], layers=c["layers"], dtype=c["dtype"], place=self._place)
        if self.mode == "fast":
            targets = [t for source in self._sources() for t in source.fast_targets(keeper)]
        else:  # the eager weights, whole, or selected as they are captured
            targets = [(func, (local,), keeper and keeper.keep_eager)
                       for source in self.spec.sources for func, local in source.targets()]
        for func, names, keep in targets:
            inner = getattr(func, "__func__", func)
            if inner in known and keep is not None:
                raise GetLocalError(
                    f"{self.spec.name}.activate({show_choice(self.choice)}): {inner.__qualname__} is already "
                    "captured by get_local (another adapter with mode='fast' or a selection, or your own "
                    "decoration); deactivate that adapter or get_local.remove() it first")
            if inner not in known:
                self._added.append(inner)
            get_local(*names, keep=keep)(inner)
            self._keys[get_local.key_of(inner)] = names[0]
        for source in self._sources():
            if self.mode == "eager":
                source.switch_globally(self._undo)

    def deactivate(self) -> None:
        """Undo everything ``activate`` changed (the cache is kept for ``collect``)."""
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

    def _check_model(self, model) -> None:
        """Refuse a model that holds none of the attention the adapter captures, or that the spec refuses.

        Without this, such a model runs uncaptured and ``collect()`` is silently
        empty (or labelled as another model). The sources know their targets
        once ``_instrument`` has run, so this comes after it.
        """
        owned = {path: m for path, m in model.named_modules() if self.spec.owns(m)}
        name, what = self.spec.name, type(model).__name__
        if not owned:
            looked = ", or ".join(filter(None, (_looked_for(source) for source in self.spec.sources))) or "nothing"
            raise GetLocalError(
                f"{name}.activate(model): {what} holds none of the attention {name} captures; it looked for "
                f"{looked}. Give the model itself (or its attention's parent), or the adapter of this model "
                "(getlocal.adapters.vit for timm ViTs, openvla for OpenVLA, paligemma for PaliGemma / Pi0)")
        why = self.spec.refuses(owned)
        if why:
            raise GetLocalError(f"{name}.activate(model): {what}: {why}")

    def prepare(self, model, built: bool = False, whole: bool = True) -> None:
        """Switch (or, in mode='fast', check) the modules of ``model`` not yet seen, and place them for a selection.

        ``built``: ``model`` is being built (its ``post_init``); ``whole``: False for a module
        first seen called, which may be a part of a model (a layer, a vision tower).
        """
        fast = self.mode == "fast"
        placing = self.choice["towers"] is not None or self.choice["layers"] is not None
        fresh = []
        for path, module in model.named_modules():
            if module not in self._prepared:
                for source in self._sources():
                    if fast:  # nothing is switched: the kernel is only checked
                        source.check_fast(module, path)
                    else:
                        source.prepare(module, self._undo, built)
                fresh.append(module)
                self._prepared.add(module)
        if placing and self._place_modules(model, [m for m in fresh if m not in self._places]) and (
                built or not whole):
            # a part seen alone (Pi0's expert is built before the module that holds it beside its
            # PaliGemma) is placed again from the whole model at the first captured call
            self._placed_whole = False

    def _place_modules(self, model, modules) -> int:
        """Place ``modules`` (those of ``model`` the sources own) by tower and layer, as ``model`` holds them."""
        every = dict(model.named_modules())
        wanted = {id(m) for m in modules}
        placed = 0
        for path, module in every.items():
            tower = self.spec.tower(module, path, every) if id(module) in wanted and self.spec.owns(module) else None
            if tower is not None:  # None: one module computes several layers; collect() places its calls
                self._places[module] = (tower, layer_of(module, path))
                placed += 1
        counts: Dict[str, int] = {}
        for tower, layer in list(self._places.values()):
            counts[tower] = max(counts.get(tower, 0), layer + 1)
        self._layer_counts = counts
        return placed

    def _place(self, owner) -> Optional[Tuple[str, int, int]]:
        """``(tower, layer, layers in that tower)`` of an attention module of a model we prepared, or None."""
        if not self._placed_whole:
            self._placed_whole = True
            for root in _roots_of([owner]):  # once: the model around the parts built alone exists now
                self._roots.add(root)
                self._place_modules(root, list(root.modules()))
        place = self._places.get(owner)
        return None if place is None else (place[0], place[1], self._layer_counts.get(place[0], 0))

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

    def collect(self, model=None, *, cameras: Optional[Sequence[str]] = None,
                state_tokens: Optional[int] = None) -> AttentionMaps:
        """The captured maps, labelled: tower, layer, module path, step (forward pass), phase and token layouts.

        A ViT gives one ``'encode'`` step per forward pass. ``generate()`` gives
        one ``'prefill'`` step (vision towers plus the prompt, square
        ``[B, H, L, L]`` maps) and one ``'decode'`` step per further token
        (``[B, H, 1, L+t]``); Pi0 gives a ``'prefix'`` step (vision plus the
        language model over [images, BOS, text]) and then one ``'denoise'``
        step per flow-matching step (the expert's suffix queries over prefix +
        suffix keys). ``model`` names the modules (``blocks.3.attn``); without
        it, the models passed to ``activate`` or built while it was on are
        used (and otherwise found from the attention modules, which is slow).

        ``cameras`` and ``state_tokens``, for adapters that take them
        (paligemma): ``cameras`` names the images of each sequence in order
        (default: LeRobot's image keys, ``observation.images.top``, ..., for a
        LeRobot policy, else ``image0``, ``image1``, ...); ``state_tokens``: how
        many suffix tokens come before the action tokens (Pi0: 1, the state
        token; Pi0.5: 0; default: what the model's structure says, else 0).
        """
        check_model(model)
        options = self._options("collect", cameras, state_tokens)
        check_options(options)
        if not self.used:
            name = self.spec.name
            raise GetLocalError(
                f"{name}.collect(): the {name} adapter was never activated, so nothing was captured; "
                f"call {name}.activate() (or {name}.activate(model)) before running the model")
        return self._collect(model, options)

    def capture(self, model=None, *, cameras: Optional[Sequence[str]] = None, state_tokens: Optional[int] = None,
                convert="numpy", max_calls: Optional[int] = None, max_bytes: Optional[int] = None,
                mode: str = "eager", queries=None, heads=None, towers=None, layers=None, dtype=None):
        """``with vit.capture(model) as maps:`` activated for the block; ``maps`` is filled when it ends.

        ``maps`` is an empty ``AttentionMaps`` inside the block and holds what
        ``collect(model)`` gives for the calls made in it once the block ends
        without error. Arguments are checked here, before anything changes.
        The adapter is deactivated on exit, error or not, unless it was active
        before the block: then it stays active, under its own ``convert``,
        ``max_calls`` and ``max_bytes`` (a ``model`` given is switched until
        ``deactivate()``), and its calls stay in ``get_local.cache`` for
        ``collect()``; otherwise the block's calls are taken out of the cache
        (``maps`` holds them). ``cameras`` and ``state_tokens`` are those of
        :meth:`collect`, ``mode`` and the selection those of :meth:`activate`:
        ``vit.capture(model, mode='fast')`` leaves the model fused and gives the
        same maps.
        """
        options = self._options("capture", cameras, state_tokens)
        choice = dict(mode=mode, queries=queries, heads=heads, towers=towers, layers=layers, dtype=dtype)
        checked = self._check_choice(choice, convert)
        check_activation(model, convert, max_calls, max_bytes)
        check_options(options)
        if self.active and checked != self.choice:
            raise GetLocalError(
                f"{self.spec.name}.capture({show_choice(checked)}): the adapter is already active with "
                f"{show_choice(self.choice)}; call {self.spec.name}.deactivate() first")
        return self._capture(model, (convert, max_calls, max_bytes), choice, options)

    @contextlib.contextmanager
    def _capture(self, model, activation, choice, options):
        was_active = self.active
        if not was_active:
            convert, max_calls, max_bytes = activation
            self.activate(model, convert=convert, max_calls=max_calls, max_bytes=max_bytes, **choice)
        elif model is not None:
            self._check_model(model)
            self._roots.add(model)
            self.prepare(model)
        since = max((c.index for calls in get_local.calls.values() for c in calls), default=-1)
        maps = AttentionMaps()
        try:
            yield maps
            found = self._collect(model, options, since)
            maps.maps, maps.layouts = found.maps, found.layouts
        finally:
            if not was_active:  # the block's calls live on in ``maps`` only: the cache does not grow
                get_local.clear(*self._keys, after=since)
                self.deactivate()

    def _options(self, call: str, cameras, state_tokens) -> Dict[str, Any]:
        """The labelling options the spec takes; another one given is refused as Python refuses a keyword."""
        given = {"cameras": cameras, "state_tokens": state_tokens}
        for name, value in given.items():
            if name not in self.spec.options and value is not None:
                raise _check.ArgumentTypeError(f"{call}() got an unexpected keyword argument {name!r}")
        return {k: v for k, v in given.items() if k in self.spec.options}

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
        if self.spec.calls is not None:
            options = self.spec.calls(entries, names, options)
        maps = label(entries, self.spec, {k: v for k, v in options.items() if v is not None})
        c = self.choice
        if c["towers"] is not None or c["layers"] is not None or isinstance(c["queries"], str):
            counts: Dict[str, int] = {}  # layers per tower, from the labels of every call (left-out ones too)
            for m in maps.maps:
                counts[m.tower] = max(counts.get(m.tower, 0), m.layer + 1)
            maps.maps = [m for m in maps.maps if self._chosen(m, counts[m.tower])]  # exact where capture could not tell
        maps.maps = [m for m in maps.maps if not isinstance(m.__dict__["_array"], Skipped)]  # kept for labels only
        return maps

    def _chosen(self, m, count: int) -> bool:
        c = self.choice
        if isinstance(c["queries"], str) and m.phase != {"generated": "decode", "action": "denoise"}[c["queries"]]:
            return False
        return (c["towers"] is None or m.tower in c["towers"]) and layer_picked(m.layer, count, c["layers"])

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


def _looked_for(source) -> str:
    """What one attention source recognises in a model, for the refusal of a model without it."""
    classes = getattr(source, "classes", ())
    if classes:
        return "modules of class " + " or ".join(f"{c.__module__}.{c.__qualname__}" for c in classes)
    types = getattr(source, "model_types", ())
    if types:
        return ("transformers attention modules whose config.model_type is "
                + " or ".join(repr(t) for t in types))
    return ""


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
            adapter.prepare(module, whole=False)
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

