"""Undoable switches: every change an adapter makes to a library or a model, and how to take it back."""
import weakref
from typing import Callable, List

_MISSING = object()


class Undo:
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
