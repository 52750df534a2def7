"""The cache: entries in call order, their provenance, and the memory bounds."""
import itertools
import threading
import warnings
import weakref
from collections import deque
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ._convert import PLAIN_TYPES as _PLAIN_TYPES, converter, storages
from ._errors import GetLocalError


class Call(NamedTuple):
    """Where one cache entry came from.

    ``index`` orders every recorded call of every function (it grows by one
    per call, across keys); ``ref`` is a weak reference to the function's
    first argument (a method's ``self``, the ``module`` of a transformers
    attention function) when that object can be weakly referenced.
    """

    index: int
    ref: Optional[weakref.ref]

    @property
    def owner(self):
        """The first argument of the call, if it is still alive, else None."""
        return self.ref() if self.ref is not None else None


class UnboundType:
    """Marks a captured local that was not bound when the function returned."""

    def __repr__(self):
        return "<unbound>"


UNBOUND = UnboundType()


def _warn_unbound(key: str, name: str, why: str) -> None:
    """The first call of ``key`` that returned without binding ``name``: say so, never break the call."""
    try:
        warnings.warn(
            f"getlocal: {key} returned without binding its local {name!r}, so nothing was captured for that "
            f"call (get_local.skipped counts every such call; this is said once){why}",
            RuntimeWarning, stacklevel=5)  # the user's function: record, from_locals (an unbound name goes there) up
    except Exception:  # noqa: BLE001 - warnings turned into errors must not break the user's forward
        pass


class _Config:
    """One configuration of the store, replaced whole so a recorder never sees half of one."""

    __slots__ = ("convert", "mode", "plain", "max_calls", "max_bytes", "bounded")

    def __init__(self, convert, max_calls, max_bytes):
        for name, limit in (("max_calls", max_calls), ("max_bytes", max_bytes)):
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                raise GetLocalError(f"activate({name}={limit!r}): give a positive integer, or None for no limit")
        self.convert = converter(convert)
        self.mode = convert
        # Plain values skip conversion in the named modes; a user's callable sees everything.
        self.plain = frozenset() if callable(convert) else _PLAIN_TYPES
        self.max_calls = max_calls
        self.max_bytes = max_bytes
        self.bounded = max_calls is not None or max_bytes is not None


class Store:
    """Holds ``cache`` (key -> list of entries) and everything beside it."""

    def __init__(self):
        self.cache: Dict[str, List[Any]] = {}
        self.skipped: Dict[str, Dict[str, int]] = {}
        self._meta: Dict[str, Tuple[list, list]] = {}  # key -> (the cache list, its Calls)
        self._counter = itertools.count()
        self._lock = threading.Lock()
        # Only with max_bytes: the memory entries keep alive, counted per storage, so that
        # views of one tensor count its storage once and a small view of a big one counts it all.
        self._order: deque = deque()  # (key, index) of held entries, oldest first
        self._storages: Dict[Tuple[str, int], list] = {}  # (key, index) -> [(storage id, bytes)]
        self._held: Dict[Any, list] = {}  # storage id -> [entries holding it, bytes]
        self._bytes = 0
        self._warned: set = set()
        self._cfg = _Config("numpy", None, None)

    mode = property(lambda self: self._cfg.mode)
    max_calls = property(lambda self: self._cfg.max_calls)
    max_bytes = property(lambda self: self._cfg.max_bytes)

    def configure(self, convert, max_calls, max_bytes, trim=True):
        cfg = _Config(convert, max_calls, max_bytes)  # raises before anything changes
        with self._lock:
            self._cfg = cfg
            self._warned = set()
            if max_calls is not None and trim:  # a new bound applies to what is already held
                for values, calls in self._meta.values():
                    del values[:-max_calls], calls[:-max_calls]
            self._recount()
            if max_bytes is not None and trim:
                self._trim_bytes()

    def _recount(self):
        """Recount the storage bytes of what the cache holds (only with max_bytes).

        Lists the user took out of the cache by hand are forgotten here.
        """
        for key in [k for k, (values, _) in self._meta.items() if self.cache.get(k) is not values]:
            del self._meta[key]
        self._order.clear()
        self._storages.clear()
        self._held.clear()
        self._bytes = 0
        if self._cfg.max_bytes is None:
            return
        held = [(call[0], key, value) for key, (values, calls) in self._meta.items() for call, value in zip(calls, values)]
        for index, key, value in sorted(held, key=lambda item: item[0]):
            self._hold(key, index, value)

    def _hold(self, key, index, entry):
        found = storages(entry)
        self._order.append((key, index))
        self._storages[(key, index)] = found
        for sid, size in found:
            slot = self._held.get(sid)
            if slot is None:
                self._held[sid] = [1, size]
                self._bytes += size
            else:
                slot[0] += 1

    def _release(self, key, index):
        for sid, size in self._storages.pop((key, index), ()):
            slot = self._held[sid]
            slot[0] -= 1
            if not slot[0]:
                del self._held[sid]
                self._bytes -= size

    # -- writing ---------------------------------------------------------

    def recorder(self, key: str, names: Tuple[str, ...], unbound: str = ""):
        """``record(owner, *values)``: convert, then append one entry to ``cache[key]``.

        Written as closures over local names, one positional value per captured
        name, because it runs on every call of every instrumented function
        (see benchmarks/bench_overhead.py). ``unbound``: what the warning says
        the first time a call returns with a captured local unbound (the
        function and the way out); once per recorder and local.
        """
        cache_get, meta_get, counter = self.cache.get, self._meta.get, self._counter
        acquire, release = self._lock.acquire, self._lock.release
        convert_one, lists = self._convert_one, self._lists
        warned: set = set()  # the locals this recorder has warned about: once per function and local

        def skip(key, name):  # only on the unbound path: a bound local costs nothing more
            self._skip(key, name)
            if name not in warned:
                warned.add(name)
                _warn_unbound(key, name, unbound)
        ref_type = weakref.ref
        name0 = names[0]

        def record_one(owner, entry, converted=False):
            cfg = self._cfg
            if not converted:
                if entry is UNBOUND:
                    return skip(key, name0)
                if type(entry) not in cfg.plain:
                    entry = convert_one(cfg, key, name0, entry)
                    if entry is UNBOUND:
                        return None
            ref = ref_type(owner) if owner is not None and type(owner).__weakrefoffset__ else None
            acquire()  # not `with`: a with-block costs three times as much here
            try:
                slot = meta_get(key)
                if slot is None or cache_get(key) is not slot[0]:
                    slot = lists(key)
                index = next(counter)
                slot[0].append(entry)
                slot[1].append((index, ref))
                if cfg.bounded:
                    self._bound(key, slot, index, entry)
            finally:
                release()
            return None

        if len(names) == 1:
            return record_one

        def record_many(owner, *values):
            cfg = self._cfg
            entry = {}
            for name, value in zip(names, values):
                if value is UNBOUND:
                    skip(key, name)
                    continue
                if type(value) not in cfg.plain:
                    value = convert_one(cfg, key, name, value)
                    if value is UNBOUND:
                        continue
                entry[name] = value
            if entry:
                record_one(owner, entry, True)

        return record_many

    def _bound(self, key, slot, index, entry):
        values, calls = slot
        cfg = self._cfg
        if cfg.max_bytes is not None:
            self._hold(key, index, entry)
        while cfg.max_calls is not None and len(values) > cfg.max_calls:
            self._warn_once("max_calls", f"max_calls={cfg.max_calls} reached for {key!r}")
            self._release(key, calls[0][0])
            del values[0], calls[0]
        if cfg.max_bytes is not None:
            if len(self._order) > 2 * len(self._storages) + 64:  # forget entries max_calls dropped
                self._order = deque(item for item in self._order if item in self._storages)
            self._trim_bytes()

    def _convert_one(self, cfg, key, name, value):
        try:
            return cfg.convert(value)
        except Exception as exc:  # a failed capture must never break the user's forward
            self._warn_once(
                ("convert", key, name),
                f"could not convert {key} local {name!r} ({type(value).__name__}): {exc}; "
                "it is skipped (choose another activate(convert=...))",
                dropping=False,
            )
            self._skip(key, name)
            return UNBOUND

    def _lists(self, key):
        values = self.cache.get(key)
        meta = self._meta.get(key)
        if values is None or meta is None or meta[0] is not values:
            # First call, or the user cleared or replaced cache[key] by hand.
            values = self.cache[key] = values if values is not None and not values else []
            meta = self._meta[key] = (values, [])
            if self._cfg.max_bytes is not None:
                self._recount()  # what was taken out by hand no longer counts
        return meta

    def _skip(self, key, name):
        with self._lock:
            counts = self.skipped.setdefault(key, {})
            counts[name] = counts.get(name, 0) + 1
        return None

    def _trim_bytes(self):
        max_bytes = self._cfg.max_bytes
        while self._bytes > max_bytes and self._order:
            key, index = self._order.popleft()
            meta = self._meta.get(key)
            if (key, index) not in self._storages or meta is None or not meta[1] or meta[1][0][0] != index:
                continue
            self._warn_once("max_bytes", f"max_bytes={max_bytes} reached")
            self._release(key, index)
            del meta[0][0], meta[1][0]

    def _warn_once(self, what, message, dropping=True):
        if what in self._warned:
            return
        self._warned.add(what)
        if dropping:
            message += "; the oldest calls are dropped from now on"
        warnings.warn(f"getlocal: {message}", RuntimeWarning, stacklevel=4)

    # -- reading ---------------------------------------------------------

    def calls(self) -> Dict[str, List[Call]]:
        out = {}
        with self._lock:
            for key, values in self.cache.items():
                meta = self._meta.get(key)
                if meta is None or meta[0] is not values or len(meta[1]) != len(values):
                    raise GetLocalError(
                        f"get_local.cache[{key!r}] was changed by hand, so its provenance is lost; "
                        "use get_local.clear() to empty the cache"
                    )
                out[key] = [Call(index, ref) for index, ref in meta[1]]
        return out

    def snapshot(self) -> Dict[str, List[Any]]:
        with self._lock:
            return {key: list(values) for key, values in self.cache.items()}

    def clear(self, keys=(), after=None):
        with self._lock:
            if not keys and after is None:
                self.cache.clear()
                self.skipped.clear()
                self._meta.clear()
            for key in keys or list(self.cache):  # after a full clear, nothing is left to look at
                meta = self._meta.get(key)
                if after is None or meta is None or meta[0] is not self.cache.get(key):
                    self.cache.pop(key, None)  # a list changed by hand has no call indexes: all of it goes
                    self.skipped.pop(key, None)
                    self._meta.pop(key, None)
                    continue
                values, calls = meta
                kept = [i for i, call in enumerate(calls) if call[0] <= after]
                if not kept:  # as if those calls had never happened
                    del self.cache[key], self._meta[key]
                    continue
                values[:] = [values[i] for i in kept]  # in place: the list the user may hold stays the cache's
                calls[:] = [calls[i] for i in kept]
            self._recount()
