"""The live cache that storage is handed: the front door's ``get_local``, and the getlocal version.

>>> import getlocal
>>> handed() is getlocal.get_local, version() == getlocal.__version__
(True, True)

``getlocal.save(path, get_local.cache)`` saves each entry's call beside it, and
``getlocal.record(path)`` writes and empties the live cache at every step: both
need the global ``get_local``, which the front door (``getlocal/__init__.py``)
creates above storage. Storage never imports the front door; instead the front
door hands its ``get_local`` and ``__version__`` here (:func:`hand`) while
``import getlocal`` runs, which is before any storage module can be imported.
This module imports nothing but the errors, so handing costs ``import getlocal``
nothing (numpy is imported with storage, on first use).
"""
from typing import Any, Dict, List, Optional, Tuple

from ._errors import GetLocalError

_HANDED: Dict[str, Any] = {}


def hand(get_local, version: str) -> None:
    """Give storage the live cache (an object with ``cache``, ``calls``, ``snapshot()``, ``clear()``)."""
    _HANDED.update(get_local=get_local, version=version)


def handed():
    """The ``get_local`` the front door handed (it always has, once ``getlocal`` is imported)."""
    if "get_local" not in _HANDED:
        raise GetLocalError("no get_local was handed to getlocal's storage; import getlocal first")
    return _HANDED["get_local"]


def version() -> str:
    """The version of getlocal, written into every file."""
    return _HANDED.get("version", "")


def frozen(cache, calls) -> Tuple[Dict[str, List[Any]], Optional[Dict[str, list]]]:
    """A copy of ``cache`` (and its calls) that other threads cannot change while it is written.

    When ``cache`` is the live ``get_local.cache`` and no ``calls`` are given,
    its calls are taken with it, from the same moment.
    """
    live = _HANDED.get("get_local")
    if live is None or cache is not live.cache:
        copy = {key: (list(values) if isinstance(values, list) else values) for key, values in list(cache.items())}
        return copy, calls
    if calls is not None:
        return live.snapshot(), calls
    error = None
    for _ in range(20):  # calls are read beside the snapshot: retry until no call landed in between
        before = live.snapshot()
        try:
            now = live.calls
        except GetLocalError as exc:  # a call was half recorded, or the cache was changed by hand
            error = exc
            continue
        after = live.snapshot()
        if all(len(after.get(k, ())) >= len(v) and all(a is b for a, b in zip(v, after[k])) for k, v in before.items()):
            return before, {k: now.get(k, [])[:len(v)] for k, v in before.items()}
    if error is not None:
        raise error
    return live.snapshot(), None  # calls kept coming and old ones were dropped: no provenance
