"""The cache: entries in call order, their provenance, and the memory bounds."""
import itertools
import threading
import warnings
import weakref
from collections import deque
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ._convert import PLAIN_TYPES as _PLAIN_TYPES, converter, nbytes
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


class Store:
    """Holds ``cache`` (key -> list of entries) and everything beside it."""

    def __init__(self):
        self.cache: Dict[str, List[Any]] = {}
        self.skipped: Dict[str, Dict[str, int]] = {}
        self._meta: Dict[str, Tuple[list, list]] = {}  # key -> (the cache list, its Calls)
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._order: deque = deque()  # (key, index, nbytes), oldest first; only with max_bytes
        self._bytes = 0
        self.configure("numpy", None, None)

    def configure(self, convert, max_calls, max_bytes, trim=True):
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
        self._warned = set()
        if max_calls is not None and trim:  # a new bound applies to what is already held
            for values, calls in self._meta.values():
                del values[:-max_calls], calls[:-max_calls]
        self._rebuild_order()
        if max_bytes is not None and trim:
            self._trim_bytes()

    def _rebuild_order(self):
        """Recount the bytes of what the cache holds, oldest first (only with max_bytes).

        Lists the user took out of the cache by hand are forgotten here.
        """
        for key in [k for k, (values, _) in self._meta.items() if self.cache.get(k) is not values]:
            del self._meta[key]
        order = []
        if self.max_bytes is not None:
            for key, (values, calls) in self._meta.items():
                order += [(key, call[0], nbytes(value)) for call, value in zip(calls, values)]
        order.sort(key=lambda item: item[1])
        self._order = deque(order)
        self._bytes = sum(item[2] for item in order)

    # -- writing ---------------------------------------------------------

    def recorder(self, key: str, names: Tuple[str, ...]):
        """``record(owner, *values)``: convert, then append one entry to ``cache[key]``.

        Written as closures over local names, one positional value per captured
        name, because it runs on every call of every instrumented function
        (see benchmarks/bench_overhead.py).
        """
        cache_get, meta_get, counter = self.cache.get, self._meta.get, self._counter
        acquire, release = self._lock.acquire, self._lock.release
        convert_one, skip, lists = self._convert_one, self._skip, self._lists
        ref_type = weakref.ref
        name0 = names[0]

        def record_one(owner, entry, converted=False):
            if not converted:
                if entry is UNBOUND:
                    return skip(key, name0)
                if type(entry) not in self.plain:
                    entry = convert_one(key, name0, entry)
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
                if self.bounded:
                    self._bound(key, slot, index, entry)
            finally:
                release()
            return None

        if len(names) == 1:
            return record_one

        def record_many(owner, *values):
            entry = {}
            for name, value in zip(names, values):
                if value is UNBOUND:
                    skip(key, name)
                    continue
                if type(value) not in self.plain:
                    value = convert_one(key, name, value)
                    if value is UNBOUND:
                        continue
                entry[name] = value
            if entry:
                record_one(owner, entry, True)

        return record_many

    def _bound(self, key, slot, index, entry):
        values, calls = slot
        while self.max_calls is not None and len(values) > self.max_calls:
            self._warn_once("max_calls", f"max_calls={self.max_calls} reached for {key!r}")
            dropped = values[0]
            del values[0], calls[0]
            if self.max_bytes is not None:
                self._bytes -= nbytes(dropped)
                if len(self._order) > 2 * sum(len(m[0]) for m in self._meta.values()) + 64:
                    self._rebuild_order()  # forget the records of entries max_calls dropped
        if self.max_bytes is not None:
            size = nbytes(entry)
            self._order.append((key, index, size))
            self._bytes += size
            self._trim_bytes()

    def _convert_one(self, key, name, value):
        try:
            return self.convert(value)
        except Exception as exc:  # a failed capture must never break the user's forward
            self._warn_once(
                ("convert", key, name),
                f"could not convert {key} local {name!r} ({type(value).__name__}): {exc!r}; "
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
            if self.max_bytes is not None:
                self._rebuild_order()  # what was taken out by hand no longer counts
        return meta

    def _skip(self, key, name):
        with self._lock:
            counts = self.skipped.setdefault(key, {})
            counts[name] = counts.get(name, 0) + 1
        return None

    def _trim_bytes(self):
        while self._bytes > self.max_bytes and self._order:
            key, index, size = self._order.popleft()
            meta = self._meta.get(key)
            if meta is not None and meta[1] and meta[1][0][0] == index:
                self._warn_once("max_bytes", f"max_bytes={self.max_bytes} reached")
                del meta[0][0], meta[1][0]
                self._bytes -= size

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

    def clear(self):
        with self._lock:
            self.cache.clear()
            self.skipped.clear()
            self._meta.clear()
            self._order.clear()
            self._bytes = 0
