"""The decorator, the switch, keys, provenance, bounds and errors of ``get_local``."""
import functools
import gc
import inspect
import subprocess
import sys
import threading
import types
import warnings

import pytest

from getlocal import Call, GetLocalError, get_local


def make_forward():
    def forward(self, x):
        attn = x * 2
        return attn + 1

    return forward


class Attention:
    def __init__(self, scale=1):
        self.scale = scale

    def forward(self, x):
        attn = x * self.scale
        return attn + 1


# -- the decorator is invisible ---------------------------------------------


def test_decorator_returns_the_same_function_object_when_inactive():
    forward = make_forward()
    code = forward.__code__
    assert get_local("attn")(forward) is forward
    assert forward.__code__ is code  # zero cost: the original code runs


def test_decorator_returns_the_same_function_object_when_active():
    get_local.activate()
    forward = make_forward()
    assert get_local("attn")(forward) is forward


def test_name_qualname_doc_signature_and_defaults_are_kept():
    def scaled(x, *, scale=2.0):
        """Scale x."""
        attn = x * scale
        return attn

    before = (scaled.__name__, scaled.__qualname__, scaled.__doc__, inspect.signature(scaled), scaled.__kwdefaults__)
    get_local("attn")(scaled)
    get_local.activate(convert="raw")
    after = (scaled.__name__, scaled.__qualname__, scaled.__doc__, inspect.signature(scaled), scaled.__kwdefaults__)
    assert after == before
    assert scaled(3) == 6.0


def test_function_decorated_before_activate_is_captured_after():
    forward = get_local("attn")(make_forward())
    assert forward(None, 1) == 3
    get_local.activate(convert="raw")
    assert forward(None, 2) == 5
    assert get_local.cache == {"make_forward.<locals>.forward": [4]}


def test_deactivate_restores_the_identical_code_object():
    forward = make_forward()
    original = forward.__code__
    get_local("attn")(forward)
    get_local.activate()
    assert forward.__code__ is not original
    get_local.deactivate()
    assert forward.__code__ is original
    forward(None, 1)
    assert get_local.cache == {}


def test_activate_twice_reuses_one_twin():
    forward = get_local("attn")(make_forward())
    get_local.activate()
    twin = forward.__code__
    get_local.deactivate()
    get_local.activate()
    assert forward.__code__ is twin


def test_is_active_follows_the_switch():
    assert not get_local.is_active()
    get_local.activate()
    assert get_local.is_active()
    get_local.deactivate()
    assert not get_local.is_active()


def test_capture_restores_the_previous_state_and_settings():
    forward = get_local("attn")(make_forward())
    with get_local.capture(convert="raw") as cache:
        forward(None, 1)
        assert get_local.is_active()
    assert not get_local.is_active()
    assert cache == {"make_forward.<locals>.forward": [2]}
    get_local.activate(convert="raw", max_calls=1)
    get_local.clear()
    with get_local.capture(convert=str):
        forward(None, 1)
        forward(None, 1)
    assert get_local.is_active()
    assert get_local.cache["make_forward.<locals>.forward"] == ["2", "2"]  # kept on leaving the block
    with pytest.warns(RuntimeWarning, match="max_calls=1"):
        forward(None, 5)
    assert get_local.cache["make_forward.<locals>.forward"] == [10]  # raw again, max_calls=1 again


def test_capture_restores_state_when_the_block_raises():
    with pytest.raises(KeyError):
        with get_local.capture():
            raise KeyError("x")
    assert not get_local.is_active()


# -- what can be decorated -----------------------------------------------------


def test_method_entries_carry_their_instance_as_owner():
    class Model:
        @get_local("attn")
        def forward(self, x):
            attn = x
            return attn

    first, second = Model(), Model()
    with get_local.capture(convert="raw"):
        first.forward(1)
        second.forward(2)
        first.forward(3)
    key = "test_method_entries_carry_their_instance_as_owner.<locals>.Model.forward"
    assert get_local.cache[key] == [1, 2, 3]
    calls = get_local.calls[key]
    assert [c.owner for c in calls] == [first, second, first]
    assert all(isinstance(c, Call) for c in calls)
    assert [c.index for c in calls] == sorted(c.index for c in calls)


def test_owner_is_a_weak_reference():
    class Model:
        @get_local("attn")
        def forward(self, x):
            attn = x
            return attn

    model = Model()
    with get_local.capture(convert="raw"):
        model.forward(1)
    del model
    gc.collect()
    (call,) = list(get_local.calls.values())[0]
    assert call.owner is None


def test_call_index_orders_calls_across_functions():
    @get_local("a")
    def first(x):
        a = x
        return a

    @get_local("b")
    def second(x):
        b = x
        return b

    with get_local.capture(convert="raw"):
        first(1)
        second(2)
        first(3)
    calls = get_local.calls
    order = sorted((c.index, key) for key, cs in calls.items() for c in cs)
    assert [key.split(".")[-1] for _, key in order] == ["first", "second", "first"]


@pytest.mark.parametrize("kind", [staticmethod, classmethod])
def test_stacked_over_staticmethod_and_classmethod(kind):
    def compute(first, x):
        attn = x + 1
        return attn

    class Holder:
        pass

    Holder.compute = get_local("attn")(kind(compute))
    if kind is staticmethod:
        call = lambda: Holder.compute(None, 1)  # noqa: E731
    else:
        call = lambda: Holder.compute(1)  # noqa: E731
    assert isinstance(Holder.__dict__["compute"], kind)
    with get_local.capture(convert="raw"):
        assert call() == 2
    assert get_local.cache[get_local.key_of(compute)] == [2]


def test_decorator_above_a_functools_wraps_wrapper_captures_the_inner_function():
    def logged(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return func(*args, **kwargs)

        return wrapper

    @get_local("attn")
    @logged
    def forward(x):
        attn = x * 10
        return attn

    with get_local.capture(convert="raw"):
        assert forward(2) == 20
    assert list(get_local.cache.values()) == [[20]]


def test_existing_function_is_instrumented_in_place_for_every_reference():
    registry = {"attention": Attention.forward}
    model = Attention(scale=3)
    get_local("attn")(Attention.forward)
    with get_local.capture(convert="raw"):
        model.forward(1)
        registry["attention"](model, 2)
    assert get_local.cache["Attention.forward"] == [3, 6]
    get_local.remove(Attention.forward)


def test_remove_restores_one_function_and_frees_its_key():
    forward = make_forward()
    original = forward.__code__
    get_local("attn")(forward)
    get_local.activate(convert="raw")
    get_local.remove(forward)
    assert forward.__code__ is original
    forward(None, 1)
    assert get_local.cache == {}
    with pytest.raises(GetLocalError, match="not instrumented"):
        get_local.remove(forward)


def test_decorating_again_adds_names():
    forward = get_local("attn")(make_forward())
    get_local("x")(forward)
    with get_local.capture(convert="raw"):
        forward(None, 1)
    assert get_local.cache["make_forward.<locals>.forward"] == [{"attn": 2, "x": 1}]


# -- keys ----------------------------------------------------------------------


def test_namesake_functions_get_separate_keys():
    # Two classes called Attention in two modules, as timm and a user's own code may have.
    one = types.FunctionType(make_forward().__code__, {"__name__": "pkg.one"}, "forward")
    two = types.FunctionType(make_forward().__code__, {"__name__": "pkg.two"}, "forward")
    one.__qualname__ = two.__qualname__ = "Attention.forward"
    get_local("attn")(one)
    get_local("attn")(two)
    assert get_local.key_of(one) == "Attention.forward"
    assert get_local.key_of(two) == "Attention.forward@pkg.two"
    with get_local.capture(convert="raw"):
        one(None, 1)
        two(None, 10)
    assert get_local.cache == {"Attention.forward": [2], "Attention.forward@pkg.two": [20]}
    assert get_local.functions()["Attention.forward@pkg.two"] is two


def test_key_is_reused_once_the_first_namesake_is_gone():
    first = get_local("attn")(make_forward())
    del first
    gc.collect()
    second = get_local("attn")(make_forward())
    assert get_local.key_of(second) == "make_forward.<locals>.forward"


def test_key_with_entries_left_in_the_cache_is_not_given_to_another_function():
    first = get_local("attn")(make_forward())
    with get_local.capture(convert="raw"):
        first(None, 1)
    get_local.remove(first)
    second = get_local("attn")(make_forward())
    assert get_local.key_of(second) != "make_forward.<locals>.forward"
    with get_local.capture(convert="raw"):
        second(None, 5)
    assert get_local.cache["make_forward.<locals>.forward"] == [2]
    get_local.clear()
    third = get_local("attn")(make_forward())
    assert get_local.key_of(third) == "make_forward.<locals>.forward"


def test_thousands_of_live_namesakes_each_get_their_own_key():
    funcs = [get_local("attn")(make_forward()) for _ in range(12_000)]
    keys = [get_local.key_of(f) for f in funcs]
    assert len(set(keys)) == len(funcs)
    assert keys[:3] == [
        "make_forward.<locals>.forward",
        f"make_forward.<locals>.forward@{__name__}",
        f"make_forward.<locals>.forward@{__name__}#2",
    ]


def test_keys_of_dead_functions_are_freed():
    for _ in range(50):
        get_local("attn")(make_forward())
    gc.collect()
    assert not any(k.startswith("make_forward") for k in get_local.functions())
    assert not any(k.startswith("make_forward") for k in get_local._holders)


def test_a_reloaded_module_keeps_its_functions_keys(tmp_path, monkeypatch):
    import importlib

    (tmp_path / "reloaded_attention.py").write_text(
        "class Attention:\n    def forward(self, x):\n        attn = x * 2\n        return attn\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("reloaded_attention")
    try:
        old = module.Attention.forward
        get_local("attn")(old)
        get_local.activate(convert="raw")
        module.Attention().forward(1)
        module = importlib.reload(module)
        get_local("attn")(module.Attention.forward)
        module.Attention().forward(10)
        assert get_local.key_of(module.Attention.forward) == get_local.key_of(old) == "Attention.forward"
        assert get_local.cache == {"Attention.forward": [2, 20]}
    finally:
        get_local.remove(old)
        get_local.remove(module.Attention.forward)
        sys.modules.pop("reloaded_attention", None)


def test_an_instrumented_function_pickled_by_value_runs_as_its_original_elsewhere():
    cloudpickle = pytest.importorskip("cloudpickle")
    namespace = {"__name__": "__main__"}  # __main__ functions are pickled by value
    exec("def forward(x):\n    attn = x * 2\n    return attn + 1\n", namespace)
    forward = get_local("attn")(namespace["forward"])
    try:
        get_local.activate()
        data = cloudpickle.dumps(forward)
        assert cloudpickle.loads(data)(3) == 7
        elsewhere = subprocess.run(
            [sys.executable, "-c", "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read())(5))"],
            input=data, capture_output=True, timeout=120,
        )
        assert elsewhere.returncode == 0, elsewhere.stderr.decode()
        assert elsewhere.stdout.decode().strip() == "11"
        assert get_local.cache == {"forward": [6]}
    finally:
        get_local.remove(forward)


def _deepest(func) -> int:
    lo, hi = 1, 100_000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            func(mid)
            lo = mid
        except RecursionError:
            hi = mid - 1
    return lo


@pytest.mark.parametrize("bounds", [{}, {"max_calls": 2}, {"max_calls": 2, "max_bytes": 10}])
def test_recursion_goes_as_deep_as_without_getlocal(bounds):
    def countdown(n):
        attn = n
        if n == 0:
            return attn
        return countdown(n - 1)

    plain = _deepest(countdown)
    get_local("attn")(countdown)
    limit = sys.getrecursionlimit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with get_local.capture(**bounds):
            assert _deepest(countdown) >= plain
    assert sys.getrecursionlimit() == limit


def test_snapshot_is_consistent_while_threads_record():
    forward = get_local("attn")(make_forward())
    get_local.activate(convert="raw")
    stop = threading.Event()

    def work():
        while not stop.is_set():
            forward(None, 1)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            snap = get_local.snapshot()
            assert all(v == 2 for values in snap.values() for v in values)
            get_local.clear()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert isinstance(get_local.snapshot(), dict)


# -- bad use -------------------------------------------------------------------


def test_decorating_a_class_says_to_decorate_its_forward():
    with pytest.raises(GetLocalError, match=r"class Attention; decorate the method .* Attention\.forward"):
        get_local("attn")(Attention)


def test_unknown_name_lists_the_functions_locals():
    with pytest.raises(GetLocalError) as info:
        get_local("attnn")(Attention.forward)
    assert str(info.value) == "Attention.forward has no local 'attnn'; its locals are self, x, attn"


def test_generator_coroutine_and_async_generator_are_refused():
    def gen():
        attn = 1
        yield attn

    async def coro():
        attn = 1
        return attn

    async def agen():
        attn = 1
        yield attn

    for func, what in ((gen, "generator function"), (coro, "coroutine"), (agen, "async generator")):
        with pytest.raises(GetLocalError, match=what):
            get_local("attn")(func)


def test_non_function_objects_are_refused_with_a_hint():
    with pytest.raises(GetLocalError, match="only capture Python functions"):
        get_local("attn")(len)
    with pytest.raises(GetLocalError, match="not int"):
        get_local("attn")(3)


def test_missing_or_malformed_names_are_refused():
    with pytest.raises(GetLocalError, match="needs the names"):
        get_local()
    with pytest.raises(GetLocalError, match="without names"):
        get_local(make_forward())
    with pytest.raises(GetLocalError, match="must be a local variable name"):
        get_local("not a name")


def test_bad_activate_arguments_are_refused_and_change_nothing():
    get_local.activate(convert="raw", max_calls=3)
    with pytest.raises(GetLocalError, match="convert='nump'"):
        get_local.activate(convert="nump")
    with pytest.raises(GetLocalError, match="max_calls=0"):
        get_local.activate(max_calls=0)
    with pytest.raises(GetLocalError, match="max_bytes=-1"):
        get_local.activate(max_bytes=-1)
    forward = get_local("attn")(make_forward())
    with pytest.warns(RuntimeWarning, match="max_calls=3"):
        for i in range(5):
            forward(None, i)
    assert get_local.cache["make_forward.<locals>.forward"] == [4, 6, 8]


# -- cache ---------------------------------------------------------------------


def test_clear_empties_cache_and_keeps_capture_on():
    forward = get_local("attn")(make_forward())
    get_local.activate(convert="raw")
    forward(None, 1)
    cache = get_local.cache
    get_local.clear()
    assert cache == {} and get_local.is_active()
    forward(None, 2)
    assert get_local.cache == {"make_forward.<locals>.forward": [4]}


def test_clear_after_an_index_drops_only_the_later_calls_of_the_keys_named():
    forward = get_local("attn")(make_forward())
    other = get_local("attn")(make_forward())
    get_local.activate(convert="raw")
    forward(None, 1), other(None, 1)
    since = max(c.index for calls in get_local.calls.values() for c in calls)
    forward(None, 2), other(None, 2), forward(None, 3)
    key, other_key = get_local.key_of(forward), get_local.key_of(other)
    held = get_local.cache[key]
    get_local.clear(key, after=since)
    assert get_local.cache == {key: [2], other_key: [2, 4]}
    assert get_local.cache[key] is held  # emptied in place: a list the user holds is still the cache's
    assert [c.index <= since for c in get_local.calls[key]] == [True]
    get_local.clear(after=since)
    assert get_local.cache == {key: [2], other_key: [2]}
    get_local.clear(other_key)
    assert get_local.cache == {key: [2]}
    forward(None, 5)  # recording goes on after a partial clear, provenance aligned
    assert get_local.cache[key] == [2, 10] and len(get_local.calls[key]) == 2


@pytest.mark.parametrize("bad, error", [((3,), TypeError), ((), ValueError)])
def test_clear_with_a_bad_key_or_index_says_what_it_takes_and_clears_nothing(bad, error):
    forward = get_local("attn")(make_forward())
    get_local.activate(convert="raw")
    forward(None, 1)
    with pytest.raises(error, match="key_of|after"):
        get_local.clear(*bad, after=-2 if not bad else None)
    assert get_local.cache == {get_local.key_of(forward): [2]}


def test_cache_emptied_by_hand_keeps_recording():
    forward = get_local("attn")(make_forward())
    get_local.activate(convert="raw")
    forward(None, 1)
    get_local.cache.clear()
    forward(None, 2)
    assert get_local.cache == {"make_forward.<locals>.forward": [4]}
    assert len(get_local.calls["make_forward.<locals>.forward"]) == 1


def test_provenance_of_a_list_edited_by_hand_is_refused():
    forward = get_local("attn")(make_forward())
    get_local.activate(convert="raw")
    forward(None, 1)
    forward(None, 2)
    get_local.cache["make_forward.<locals>.forward"].pop()
    with pytest.raises(GetLocalError, match="changed by hand"):
        get_local.calls


def test_max_calls_keeps_the_newest_and_warns_once():
    forward = get_local("attn")(make_forward())
    get_local.activate(convert="raw", max_calls=2)
    with pytest.warns(RuntimeWarning, match="max_calls=2") as record:
        for i in range(6):
            forward(None, i)
    assert len(record) == 1
    assert get_local.cache["make_forward.<locals>.forward"] == [8, 10]
    assert len(get_local.calls["make_forward.<locals>.forward"]) == 2


def _sizes_by_function():
    """``{function name: [bytes of each cached array]}``."""
    return {key.split(".")[-1]: [v.nbytes for v in values] for key, values in get_local.cache.items()}


def test_max_bytes_drops_oldest_entries_across_keys():
    np = pytest.importorskip("numpy")

    @get_local("a")
    def one(x):
        a = np.zeros(x, dtype=np.uint8)
        return None

    @get_local("b")
    def two(x):
        b = np.zeros(x, dtype=np.uint8)
        return None

    get_local.activate(max_bytes=250)
    with pytest.warns(RuntimeWarning, match="max_bytes=250"):
        one(100)
        two(100)
        one(100)  # 300 bytes: the first call of `one` goes
    assert _sizes_by_function() == {"one": [100], "two": [100]}
    two(200)  # 400 bytes: `two`'s first, then `one`'s second call go
    assert _sizes_by_function() == {"one": [], "two": [200]}


def test_max_bytes_after_the_cache_was_emptied_by_hand_counts_only_what_is_held():
    np = pytest.importorskip("numpy")

    @get_local("a")
    def step(n):
        a = np.zeros(n, dtype=np.uint8)
        return None

    get_local.activate(max_bytes=250)
    step(200)
    get_local.cache.clear()
    step(200)
    assert _sizes_by_function() == {"step": [200]}


def test_bounded_cache_does_not_grow_over_many_calls():
    np = pytest.importorskip("numpy")

    @get_local("a")
    def step(i):
        a = np.full(10, i, dtype=np.uint8)
        return None

    get_local.activate(max_calls=5, max_bytes=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(2000):
            step(i % 200)
    store = get_local._store
    assert [int(v[0]) for v in get_local.cache[get_local.key_of(step)]] == [197, 198, 199]
    assert len(store._order) < 100 and store._bytes == 30


def test_calls_from_many_threads_are_all_recorded():
    forward = get_local("attn")(make_forward())
    get_local.activate(convert="raw")

    def work(offset):
        for i in range(500):
            forward(None, offset + i)

    threads = [threading.Thread(target=work, args=(1000 * t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    values = get_local.cache["make_forward.<locals>.forward"]
    assert sorted(values) == sorted(2 * (1000 * t + i) for t in range(8) for i in range(500))
    indices = [c.index for c in get_local.calls["make_forward.<locals>.forward"]]
    assert indices == sorted(indices) and len(set(indices)) == 4000


def test_callable_converter_gets_each_value():
    forward = get_local("attn")(make_forward())
    with get_local.capture(convert=lambda v: ("seen", v)):
        forward(None, 1)
    assert get_local.cache["make_forward.<locals>.forward"] == [("seen", 2)]


def test_failing_converter_never_breaks_the_call_and_warns():
    forward = get_local("attn")(make_forward())

    def broken(value):
        raise ValueError("no")

    with get_local.capture(convert=broken):
        with pytest.warns(RuntimeWarning, match="could not convert"):
            assert forward(None, 1) == 3
    assert get_local.cache == {}
    assert get_local.skipped == {"make_forward.<locals>.forward": {"attn": 1}}


def test_repr_says_state():
    assert repr(get_local).startswith("<get_local inactive")
