"""Generated wrong arguments for every public entry point of ``get_local``: each ends in a clear error.

A clear error is ``GetLocalError`` (or ``TypeError``/``ValueError``) whose message names the
argument or shows the value given; nothing else may escape, and the state is left unchanged.
"""
import math
import random

import pytest

from getlocal import GetLocalError, get_local


def _generator():
    yield 1


async def _coroutine():
    return 1


class _NoLocals:
    def forward(self):
        return 1


_BAD_VALUES = [
    None, 0, -1, 2**70, -(2**70), 1.5, math.nan, math.inf, -math.inf, True, False, "", " ", "1x",
    "not a name", "attn\x00", "a" * 10_000, b"attn", [], ["attn"], (), {}, {"attn": 1}, set(), object(),
    object, int, len, print, _generator, _coroutine, _NoLocals, _NoLocals().forward, lambda: None,
    complex(1, 1), bytearray(b"x"), range(3), slice(1), Ellipsis, NotImplemented,
]


def _clear(exc: BaseException, shown) -> bool:
    message = str(exc)
    return isinstance(exc, (GetLocalError, TypeError, ValueError)) and len(message) > 10 and (
        any(str(s) in message for s in shown)
    )


def _state():
    return (get_local.is_active(), dict(get_local.cache), get_local._store.mode, get_local._store.max_calls,
            get_local._store.max_bytes, sorted(get_local.functions()))


def _call(entry, value):
    if entry == "get_local(name)":
        return get_local(value)
    if entry == "get_local('attn')(obj)":
        return get_local("attn")(value)
    if entry == "get_local('attn', keep=)":
        return get_local("attn", keep=value)
    if entry == "activate(convert)":
        return get_local.activate(value)
    if entry == "activate(max_calls)":
        return get_local.activate(max_calls=value)
    if entry == "activate(max_bytes)":
        return get_local.activate(max_bytes=value)
    if entry == "capture(convert)":
        with get_local.capture(value):
            return None
    if entry == "capture(max_calls)":
        with get_local.capture(max_calls=value):
            return None
    if entry == "capture(max_bytes)":
        with get_local.capture(max_bytes=value):
            return None
    if entry == "remove(obj)":
        return get_local.remove(value)
    if entry == "key_of(obj)":
        return get_local.key_of(value)
    if entry == "clear(*keys)":
        return get_local.clear(value)
    if entry == "clear(after)":
        return get_local.clear(after=value)
    raise AssertionError(entry)


# What each entry point's message must show: the argument's name, or for a decorated object its name.
_ENTRIES = {
    "get_local(name)": ("get_local(",),
    "get_local('attn')(obj)": ("get_local", "no local 'attn'"),
    "get_local('attn', keep=)": ("keep=",),
    "activate(convert)": ("convert=",),
    "activate(max_calls)": ("max_calls=",),
    "activate(max_bytes)": ("max_bytes=",),
    "capture(convert)": ("convert=",),
    "capture(max_calls)": ("max_calls=",),
    "capture(max_bytes)": ("max_bytes=",),
    "remove(obj)": ("get_local", "not instrumented"),
    "key_of(obj)": ("get_local",),
    "clear(*keys)": ("get_local.clear(", "key_of"),
    "clear(after)": ("after",),
}

# Values that are valid for an entry point (it must then succeed).
_VALID = {
    "get_local('attn', keep=)": lambda v: v is None or callable(v),
    "activate(convert)": lambda v: callable(v),
    "capture(convert)": lambda v: callable(v),
    "activate(max_calls)": lambda v: v is None or (type(v) is int and v >= 1),
    "activate(max_bytes)": lambda v: v is None or (type(v) is int and v >= 1),
    "capture(max_calls)": lambda v: v is None or (type(v) is int and v >= 1),
    "capture(max_bytes)": lambda v: v is None or (type(v) is int and v >= 1),
    "clear(*keys)": lambda v: isinstance(v, str),
    "clear(after)": lambda v: v is None or (type(v) is int and v >= -1),
}


def _cases():
    rng = random.Random(20261201)
    cases = [(entry, value) for entry in _ENTRIES for value in _BAD_VALUES]
    # And generated ones: random strings, numbers and containers of them.
    for _ in range(300):
        kind = rng.randrange(4)
        if kind == 0:
            value = "".join(rng.choice("ab1 _.-\u00e9\n") for _ in range(rng.randrange(0, 12)))
        elif kind == 1:
            value = rng.choice([-1, 1]) * 10 ** rng.uniform(-5, 25)
        elif kind == 2:
            value = rng.randrange(-(2**40), 2**40)
        else:
            value = [rng.random() for _ in range(rng.randrange(3))]
        cases.append((rng.choice(list(_ENTRIES)), value))
    return cases


@pytest.mark.parametrize("entry", list(_ENTRIES))
def test_every_bad_argument_ends_in_a_clear_error_and_changes_nothing(entry):
    escaped = []
    for case_entry, value in _cases():
        if case_entry != entry:
            continue
        get_local.deactivate()
        before = _state()
        try:
            _call(entry, value)
        except Exception as exc:  # noqa: BLE001 - the point is to see every kind
            if not _clear(exc, _ENTRIES[entry]):
                escaped.append(f"{entry} with {value!r:.60}: {type(exc).__name__}: {exc}")
            elif _state() != before:
                escaped.append(f"{entry} with {value!r:.60}: state changed by a refused call")
            continue
        valid = _VALID.get(entry, lambda v: False)(value)
        if entry == "get_local(name)" and isinstance(value, str) and value.isidentifier():
            valid = True  # a name is checked against a function's locals when it is applied
        if not valid:
            escaped.append(f"{entry} with {value!r:.60}: accepted")
    get_local.deactivate()
    assert not escaped, "\n".join(escaped)
