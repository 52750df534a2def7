"""``get_local``: the decorator, the switch, and the registry of instrumented functions."""
import contextlib
import inspect
import itertools
import secrets
import sys
import threading
import types
import warnings
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import _check, _compile, _convert, _rewrite, _store
from ._errors import ArgumentTypeError, GetLocalError
from ._store import UNBOUND, Call, Store

_UNSUPPORTED_FLAGS = (
    (inspect.CO_GENERATOR, "a generator function"),
    (inspect.CO_COROUTINE, "a coroutine function (async def)"),
    (inspect.CO_ASYNC_GENERATOR, "an async generator function"),
    (inspect.CO_ITERABLE_COROUTINE, "a generator-based coroutine"),
)


# The deepest the recording path goes below an instrumented function's return (the
# recorder, the bounds, a warning): activate() raises the recursion limit by this
# much, so that a recursion that fits without getlocal still fits.
_RECORDER_FRAMES = 16


class _Target:
    """One function that get_local knows about, and the two code objects it switches between."""

    __slots__ = ("func", "names", "key", "original", "twin", "dynamo_flag", "keep", "__weakref__")

    def __init__(self, func, names, key, keep=None):
        self.func = weakref.ref(func)
        self.names: Tuple[str, ...] = names
        self.key = key
        self.keep = keep  # keep(owner, {name: raw value}) -> the entry to store, or None
        self.original = func.__code__
        self.twin = None
        self.dynamo_flag = False  # whether we set torch.compile's skip flag on func


class GetLocal:
    """Capture named locals of functions into ``get_local.cache``.

    >>> from getlocal import get_local
    >>> @get_local('attn')
    ... def forward(x):
    ...     attn = x * 2
    ...     return attn + 1
    >>> with get_local.capture(convert='raw'):
    ...     forward(3)
    7
    >>> get_local.cache['forward']
    [6]

    Decorating never wraps: it returns the object it was given. While capture
    is off the function runs its original code (zero cost); ``activate()``
    swaps in an instrumented twin of its code object, in place, so every
    reference to the function (class attributes, registries) is captured, and
    ``deactivate()`` swaps the original back.
    """

    def __init__(self):
        self._store = Store()
        self._targets: "weakref.WeakKeyDictionary[types.FunctionType, _Target]" = weakref.WeakKeyDictionary()
        # key -> weak references to the live functions recording under it (several only
        # when a module was reloaded or a function redefined: they keep their key).
        self._holders: Dict[str, List["weakref.ref"]] = {}
        self._numbers: Dict[str, int] = {}  # qualname@module -> next #n to try
        self._active = False
        self._raised_limit: Optional[int] = None  # the recursion limit activate() set
        self._lock = threading.RLock()

    # -- the decorator -----------------------------------------------------

    def __call__(self, *names: str, keep: Optional[Callable[[Any, Dict[str, Any]], Any]] = None):
        """``@get_local('attn')`` or ``get_local('q', 'k', 'attn')(existing_function)``.

        ``keep(owner, {name: value})``, if given, sees the raw locals of each call
        as the function returns (an unbound one is left out) and
        returns what the cache holds for that call (then converted), or None to
        hold nothing: a reduction that runs before anything is kept. An
        exception in it skips the call with one warning.
        """
        if keep is not None and not callable(keep):
            raise GetLocalError(f"get_local(keep={keep!r}): give a function keep(owner, locals_dict), or None")
        if not names:
            raise GetLocalError("get_local() needs the names of the locals to capture, e.g. @get_local('attn')")
        if len(names) == 1 and callable(names[0]) and not isinstance(names[0], str):
            raise GetLocalError(
                f"get_local was used without names on {_describe(names[0])}; write @get_local('attn') "
                "with the local(s) to capture"
            )
        for name in names:
            if not isinstance(name, str) or not name.isidentifier():
                raise GetLocalError(f"get_local({name!r}): each name must be a local variable name, such as 'attn'")
        names = tuple(dict.fromkeys(names))

        def decorate(obj):
            self._watch(obj, names, keep)
            return obj

        return decorate

    def _watch(self, obj, names: Tuple[str, ...], keep=None) -> str:
        """Register ``obj`` (instrumenting it now if capture is on); return its cache key."""
        func = _innermost_function(obj)
        code = func.__code__
        for flag, what in _UNSUPPORTED_FLAGS:
            if code.co_flags & flag:
                raise GetLocalError(
                    f"get_local{names!r} cannot capture {func.__qualname__}: it is {what}, whose locals "
                    "live on after each yield/await; capture them in a plain function it calls"
                )
        known = _local_names(code)
        missing = [n for n in names if n not in known]
        if missing:
            raise GetLocalError(
                f"{func.__qualname__} has no local {', '.join(repr(n) for n in missing)}; "
                f"its locals are {', '.join(known) or '(none)'}"
            )
        with self._lock:
            target = self._targets.get(func)
            if target is not None and keep is not target.keep:
                raise GetLocalError(
                    f"{func.__qualname__} is already decorated with get_local"
                    f"{'(keep=...)' if target.keep is not None else ''}; call get_local.remove() on it "
                    f"before decorating it {'with another keep=' if keep is not None else 'without keep='}")
            if target is None:
                target = _Target(func, names, self._new_key(func), keep)
                self._targets[func] = target
                self._hold(target.key, func)
            elif not set(names) <= set(target.names):
                self._set_code(func, target, target.original)
                target.names += tuple(n for n in names if n not in target.names)
                target.twin = None
            if self._active:
                self._instrument(func, target)
            return target.key

    def _new_key(self, func) -> str:
        """The function's ``__qualname__``, else ``qualname@module``, else ``qualname@module#2``, ...

        A key is taken while a live function holds it or the cache still holds
        entries under it, so two functions never share a list; except that a
        function redefined in its module (a reloaded module, a re-run notebook
        cell) takes over the key of the one it replaces.
        """
        base, module = func.__qualname__, func.__module__
        scoped = f"{base}@{module}"
        for key in (base, scoped):
            holders = self._live_holders(key)
            if any(_redefines(func, other, self._targets[other].original) for other in holders if other in self._targets):
                return key
            if not holders and not self._store.cache.get(key):
                return key
        n = self._numbers.get(scoped, 2)
        while self._live_holders(f"{scoped}#{n}") or self._store.cache.get(f"{scoped}#{n}"):
            n += 1
        self._numbers[scoped] = n + 1
        return f"{scoped}#{n}"

    def _live_holders(self, key) -> list:
        return [f for f in (ref() for ref in self._holders.get(key, ())) if f is not None]

    def _hold(self, key, func) -> None:
        holders = self._holders

        def forget(_, key=key):  # runs when func dies, possibly in another thread: no lock
            alive = [ref for ref in holders.get(key, ()) if ref() is not None]
            if alive:
                holders[key] = alive
            else:
                holders.pop(key, None)

        holders[key] = [ref for ref in holders.get(key, ()) if ref() is not None] + [weakref.ref(func, forget)]

    # -- switching -----------------------------------------------------------

    def activate(
        self,
        convert: Union[str, Callable[[Any], Any]] = "numpy",
        *,
        max_calls: Optional[int] = None,
        max_bytes: Optional[int] = None,
    ) -> None:
        """Start capturing, into ``get_local.cache``.

        ``convert``: ``'numpy'`` (tensors detached, on the CPU, float16 and
        bfloat16 up-cast to float32, as numpy arrays), ``'cpu'`` (detached
        CPU tensors, dtype kept), ``'device'`` (detached, where they are),
        ``'raw'`` (the object itself, autograd graph kept), or a callable
        applied to each captured value. ``max_calls`` bounds the entries of
        each key and ``max_bytes`` the array/tensor bytes of the whole cache;
        past a bound the oldest entries are dropped (with one warning).
        """
        with self._lock:
            self._store.configure(convert, max_calls, max_bytes)
            if not self._active:
                self._raise_recursion_limit()
            self._active = True
            for func, target in list(self._targets.items()):
                self._instrument(func, target)
            compiled = [t.key for t in self._targets.values() if _compile.compiled_already(t.original)]
        if compiled:
            warnings.warn(
                f"getlocal: torch.compile already compiled {', '.join(compiled)} before get_local.activate(); "
                "compiled code keeps running what it compiled, so those calls capture nothing. Call "
                "torch.compiler.reset() after activate() (it recompiles on the next call), or activate "
                "before the first compiled call",
                RuntimeWarning,
                stacklevel=2,
            )

    def deactivate(self) -> None:
        """Stop capturing: every instrumented function gets its original code object back."""
        with self._lock:
            self._active = False
            for func, target in list(self._targets.items()):
                self._set_code(func, target, target.original)
            if self._raised_limit is not None and sys.getrecursionlimit() == self._raised_limit:
                sys.setrecursionlimit(self._raised_limit - _RECORDER_FRAMES)
            self._raised_limit = None

    def _raise_recursion_limit(self) -> None:
        """Give the recorder its own frames, so user code recurses as deep as without getlocal."""
        limit = sys.getrecursionlimit() + _RECORDER_FRAMES
        sys.setrecursionlimit(limit)
        self._raised_limit = limit

    def is_active(self) -> bool:
        return self._active

    @contextlib.contextmanager
    def capture(self, convert="numpy", *, max_calls=None, max_bytes=None):
        """Capture inside a ``with`` block (yields the cache), then restore the previous state."""
        with self._lock:
            before = (self._active, self._store.mode, self._store.max_calls, self._store.max_bytes)
            self.activate(convert, max_calls=max_calls, max_bytes=max_bytes)
        try:
            yield self.cache
        finally:
            with self._lock:
                was_active, mode, calls, size = before
                # What was captured inside the block is kept even if the old bounds were tighter.
                self._store.configure(mode, calls, size, trim=False)
                if not was_active:
                    self.deactivate()

    def remove(self, obj) -> None:
        """Forget one function: its original code comes back and its key is freed."""
        func = _innermost_function(obj)
        with self._lock:
            target = self._targets.pop(func, None)
            if target is None:
                raise GetLocalError(f"{func.__qualname__} is not instrumented by get_local; nothing to remove")
            self._set_code(func, target, target.original)
            alive = [ref for ref in self._holders.get(target.key, ()) if ref() not in (None, func)]
            if alive:
                self._holders[target.key] = alive
            else:
                self._holders.pop(target.key, None)

    def _instrument(self, func, target: _Target) -> None:
        _compile.shield_recording_code((sys.modules[__name__], _store, _convert))
        if target.twin is None:
            try:
                fast, from_locals = _recorders(self._store, target)
                target.twin = _rewrite.instrument(target.original, target.names, fast, from_locals)[0]
            except Exception as exc:  # a bytecode bug must not break the user's model
                warnings.warn(
                    f"getlocal: could not instrument {target.key}: {exc!r}; it runs uncaptured",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return
        self._set_code(func, target, target.twin)

    @staticmethod
    def _set_code(func, target: _Target, code) -> None:
        if func.__code__ is code:
            return
        if func.__code__ not in (target.original, target.twin):
            warnings.warn(
                f"getlocal: {target.key}.__code__ was replaced by someone else; leaving it alone",
                RuntimeWarning,
                stacklevel=4,
            )
            return
        if code is target.twin:
            target.dynamo_flag = _compile.skip(func, code) or target.dynamo_flag
        elif target.dynamo_flag:
            _compile.unskip(func)
            target.dynamo_flag = False
        func.__code__ = code

    # -- reading -------------------------------------------------------------

    @property
    def cache(self) -> Dict[str, List[Any]]:
        """``{key: [entry of call 1, entry of call 2, ...]}``; an entry is the value, or
        ``{name: value}`` when several names are captured."""
        return self._store.cache

    def snapshot(self) -> Dict[str, List[Any]]:
        """A copy of the cache taken under the store's lock: ``{key: [entries]}``, safe to iterate
        while other threads keep calling instrumented functions."""
        return self._store.snapshot()

    @property
    def calls(self) -> Dict[str, List[Call]]:
        """``{key: [Call, ...]}``, one per entry of ``cache[key]``: its global call index and owner."""
        return self._store.calls()

    @property
    def skipped(self) -> Dict[str, Dict[str, int]]:
        """``{key: {name: n}}``: calls that returned while the captured local was unbound."""
        return self._store.skipped

    def clear(self, *keys: str, after: Optional[int] = None) -> None:
        """Empty the cache (keeps what is instrumented and whether capture is on).

        ``keys``: only these keys (``get_local.key_of(func)``); ``after``: only the
        calls whose index (``Call.index``) is larger, e.g. those of one block of code:

        >>> from getlocal import get_local
        >>> since = max((c.index for cs in get_local.calls.values() for c in cs), default=-1)
        >>> get_local.clear(after=since)   # what ran since then is dropped, the rest is kept
        """
        for key in keys:
            if not isinstance(key, str):
                raise ArgumentTypeError(
                    f"get_local.clear(*keys): each key is a str (get_local.key_of(func)); got {_check.show(key)}")
        _check.integer("after", after, low=-1, high=None, optional=True)
        self._store.clear(keys, after)

    def key_of(self, obj) -> str:
        """The cache key of a decorated function (``qualname``, or ``qualname@module`` for a namesake)."""
        target = self._targets.get(_innermost_function(obj))
        if target is None:
            raise GetLocalError(f"{_describe(obj)} is not decorated with get_local")
        return target.key

    def functions(self) -> Dict[str, Callable]:
        """``{key: function}`` for every live function get_local knows about."""
        return {t.key: f for f, t in list(self._targets.items())}

    def __repr__(self):
        state = "active" if self._active else "inactive"
        return f"<get_local {state}, {len(self._targets)} functions, {len(self.cache)} keys in cache>"


def _recorders(store: Store, target: _Target):
    """The two calls the instrumented code makes before it returns (see _rewrite)."""
    record = store.recorder(target.key, target.names, _unbound_hint(target))
    names, owner_name = target.names, _rewrite.first_argument(target.original)
    if target.keep is not None:
        record = _kept(store, target)

    if len(names) == 1:
        name = names[0]

        def from_locals(frame_locals):
            record(frame_locals.get(owner_name), frame_locals.get(name, UNBOUND))
    else:
        def from_locals(frame_locals):
            record(frame_locals.get(owner_name), *[frame_locals.get(n, UNBOUND) for n in names])

    return _RECORDERS.named(record), _RECORDERS.named(from_locals)


def _unbound_hint(target: _Target) -> str:
    """What the first "returned without binding" warning adds: the way out, where the code shows one.

    A function that reads ``fused_attn`` (timm's ``Attention.forward``) binds its
    map only on the non-fused path; anything else is said in general terms.
    """
    code = target.original
    if "fused_attn" in code.co_names:
        func = target.func()
        timm = func is not None and (func.__module__ or "").startswith("timm.")
        return ("; this function binds it only when the module's fused_attn is False: set module.fused_attn = "
                "False on each attention block (or build the model after timm.layers.set_fused_attn(False))"
                + (", or use getlocal.adapters.vit, which switches timm models for you" if timm else ""))
    return "; it is bound only on some paths of the function (an early return, a branch not taken, a del)"


def _kept(store: Store, target: _Target):
    """``record(owner, *values)`` that stores ``keep(owner, {name: value})`` (see ``get_local(keep=)``)."""
    store_one = store.recorder(target.key, target.names[:1])
    keep, names, key = target.keep, target.names, target.key

    def record(owner, *values):
        try:
            entry = keep(owner, {n: v for n, v in zip(names, values) if v is not UNBOUND})
        except Exception as exc:  # a failed reduction must never break the user's forward
            store._warn_once(("keep", key), f"keep() of {key} raised {exc!r}; the call is skipped", dropping=False)
            return None
        if entry is not None:
            store_one(owner, entry)
        return None

    return record


class _Recorders:
    """Every recorder a twin calls, reachable as ``getlocal._core._RECORDERS.<name>``.

    Pickling an instrumented function by value (cloudpickle, as Ray and loky
    do) pickles its code's constants, the recorders among them. Named here,
    they pickle by reference; in a process that does not hold the recorder
    the name resolves to a no-op, so the function unpickled there behaves as
    its original and records nothing.
    """

    def __init__(self):
        self._live: "weakref.WeakValueDictionary[str, Callable]" = weakref.WeakValueDictionary()
        self._prefix = f"r{secrets.token_hex(6)}_"  # unique per process, so names never collide
        self._count = itertools.count()

    def named(self, func: Callable) -> Callable:
        name = f"{self._prefix}{next(self._count)}"
        func.__module__, func.__qualname__ = __name__, f"_RECORDERS.{name}"
        self._live[name] = func
        return func

    def __getattr__(self, name):
        if not name.startswith("r") or name.startswith("r_") or "_" not in name:
            raise AttributeError(name)
        return self.__dict__["_live"].get(name, _discard)


def _discard(*args) -> None:
    return None


_RECORDERS = _Recorders()


def _redefines(func, other, their_code) -> bool:
    """Whether ``func`` is a new definition of ``other``: same module, name and source file, new code.

    Closures made by one factory share their code object, and stay apart.
    """
    if func is other or func.__module__ != other.__module__ or func.__qualname__ != other.__qualname__:
        return False
    mine = func.__code__
    return mine is not their_code and mine.co_filename == their_code.co_filename


def _local_names(code) -> List[str]:
    names = list(code.co_varnames)
    names += [n for n in code.co_cellvars + code.co_freevars if n not in names]
    return names


def _describe(obj) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{type(obj).__name__} {name}"


def _innermost_function(obj) -> types.FunctionType:
    """The Python function whose code runs when ``obj`` is called."""
    if inspect.isclass(obj):
        raise GetLocalError(
            f"get_local was applied to the class {obj.__qualname__}; decorate the method that holds the "
            f"local instead, e.g. put @get_local(...) on {obj.__qualname__}.forward"
        )
    seen = obj
    for _ in range(100):
        if isinstance(obj, (staticmethod, classmethod, types.MethodType)):
            obj = obj.__func__
        elif isinstance(obj, types.FunctionType) and not hasattr(obj, "__wrapped__"):
            return obj
        elif hasattr(obj, "__wrapped__"):
            obj = obj.__wrapped__
        else:
            break
    hint = ""
    if callable(seen) and hasattr(type(seen), "forward"):
        hint = f"; to capture a module's locals decorate its class's method: get_local(...)({type(seen).__qualname__}.forward)"
    raise GetLocalError(f"get_local can only capture Python functions and methods, not {_describe(seen)}{hint}")
