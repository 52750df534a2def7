"""The value at return is captured on every return path, and the function behaves exactly as before.

Each case is a function plus calls with the value the local must hold when the
function returns. Cases are source text so that syntax of newer Pythons
(``match``) only compiles where it exists.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from getlocal import get_local

CASES = {
    "single_return": ("""
        def f(x):
            attn = x * 2
            return attn + 1
        """, [((3,), 6)]),
    "early_return": ("""
        def f(x):
            attn = x
            if x > 10:
                return -1
            attn = x * 3
            return attn
        """, [((11,), 11), ((2,), 6)]),
    "if_else_returns": ("""
        def f(x):
            if x:
                attn = 'yes'
                return 1
            else:
                attn = 'no'
                return 2
        """, [((True,), 'yes'), ((False,), 'no')]),
    "return_inside_for_loop": ("""
        def f(xs):
            for attn in xs:
                if attn > 2:
                    return attn
            return None
        """, [(([1, 5, 9],), 5), (([1, 2],), 2)]),
    "return_inside_while_loop": ("""
        def f(n):
            attn = 0
            while True:
                attn += 1
                if attn == n:
                    return attn * 10
        """, [((4,), 4)]),
    "return_in_try_body": ("""
        def f(x):
            try:
                attn = 1 / x
                return attn
            except ZeroDivisionError:
                attn = 'inf'
                return attn
        """, [((4,), 0.25), ((0,), 'inf')]),
    "return_after_finally_changes_local": ("""
        def f(x):
            try:
                attn = x
                return attn
            finally:
                attn = x + 100
        """, [((1,), 101)]),
    "return_in_finally": ("""
        def f(x):
            try:
                attn = x
            finally:
                attn = attn * 2
                return attn
        """, [((4,), 8)]),
    "return_inside_with": ("""
        import contextlib
        def f(x):
            with contextlib.nullcontext():
                attn = [x]
                return len(attn)
        """, [((7,), [7])]),
    "return_inside_nested_with_and_try": ("""
        import contextlib
        def f(x):
            with contextlib.nullcontext():
                try:
                    with contextlib.nullcontext():
                        attn = x
                        if x:
                            return 'early'
                finally:
                    pass
            return 'late'
        """, [((1,), 1), ((0,), 0)]),
    "implicit_return_none": ("""
        def f(x):
            attn = x + 1
        """, [((1,), 2)]),
    "return_constant": ("""
        def f(x):
            attn = x
            return 42
        """, [((5,), 5)]),
    "bare_return": ("""
        def f(x):
            attn = x
            if x:
                return
            attn = -x
        """, [((3,), 3), ((0,), 0)]),
    "return_in_except_after_raise": ("""
        def f(x):
            attn = x
            try:
                raise KeyError(x)
            except KeyError:
                attn = 'caught'
                return None
        """, [((1,), 'caught')]),
    "cell_variable_gives_value_not_cell": ("""
        def f(x):
            attn = x * 2
            def inner():
                return attn
            return inner()
        """, [((3,), 6)]),
    "cell_argument": ("""
        def f(attn):
            def inner():
                return attn
            attn = attn + 1
            return inner()
        """, [((3,), 4)]),
    "argument_captured": ("""
        def f(attn, y=2):
            return attn * y
        """, [((3,), 3)]),
    "comprehension_variable_named_like_the_local": ("""
        def f(xs):
            attn = 'outer'
            squares = [attn * attn for attn in xs]
            return squares
        """, [(([2, 3],), 'outer')]),
    "local_bound_by_walrus_in_condition": ("""
        def f(x):
            if (attn := x * 2) > 3:
                return attn
            return 0
        """, [((5,), 10), ((1,), 2)]),
    "local_deleted_on_one_path": ("""
        def f(x):
            attn = x
            if x > 1:
                del attn
                return 'deleted'
            return 'kept'
        """, [((0,), 0)]),
    "except_as_name_captured_outside_the_handler": ("""
        def f(x):
            attn = 'none'
            try:
                if x:
                    raise ValueError('boom')
            except ValueError as err:
                attn = str(err)
            return attn
        """, [((1,), 'boom'), ((0,), 'none')]),
}

if sys.version_info >= (3, 10):
    CASES["match_statement_returns"] = ("""
        def f(x):
            match x:
                case 0:
                    attn = 'zero'
                    return 0
                case [a, b]:
                    attn = a + b
                    return attn
                case _:
                    attn = None
            return -1
        """, [((0,), 'zero'), (([1, 2],), 3), (('q',), None)])


def _define(source, name="f"):
    namespace = {"__name__": "test_rewrite_cases", "get_local": get_local}
    exec(compile(textwrap.dedent(source), "<case>", "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize("case", sorted(CASES))
def test_value_at_return_is_captured_and_result_unchanged(case):
    source, calls = CASES[case]
    plain, instrumented = _define(source), get_local("attn")(_define(source))
    with get_local.capture(convert="raw"):
        results = [instrumented(*args) for args, _ in calls]
    assert results == [plain(*args) for args, _ in calls]
    assert get_local.cache["f"] == [expected for _, expected in calls]


def test_unbound_local_is_skipped_and_counted():
    f = get_local("attn")(_define("""
        def f(x):
            if x:
                attn = 'bound'
            return x
        """))
    with get_local.capture(convert="raw"):
        assert f(0) == 0
        assert f(1) == 1
        assert f(0) == 0
    assert get_local.cache["f"] == ["bound"]
    assert get_local.skipped == {"f": {"attn": 2}}


def test_unbound_local_after_del_is_skipped_without_crashing():
    f = get_local("attn")(_define(CASES["local_deleted_on_one_path"][0]))
    with get_local.capture(convert="raw"):
        assert f(5) == "deleted"
    assert get_local.cache == {}
    assert get_local.skipped == {"f": {"attn": 1}}


def test_unbound_local_error_of_the_function_itself_is_unchanged():
    f = get_local("attn")(_define("""
        def f(x):
            if x:
                attn = 1
            return attn
        """))
    with get_local.capture(convert="raw"):
        with pytest.raises(UnboundLocalError):
            f(0)
        assert f(1) == 1
    assert get_local.cache["f"] == [1]


def test_exception_passes_through_unchanged_and_records_nothing():
    f = get_local("attn")(_define("""
        def f(x):
            attn = x
            raise RuntimeError(f'bad {x}')
        """))
    with get_local.capture(convert="raw"):
        with pytest.raises(RuntimeError, match="bad 3"):
            f(3)
    assert get_local.cache == {}


def test_several_names_give_one_dict_per_call_with_only_bound_names():
    f = get_local("q", "attn")(_define("""
        def f(x):
            q = x + 1
            if x:
                attn = q * 2
            return q
        """))
    with get_local.capture(convert="raw"):
        f(1)
        f(0)
    assert get_local.cache["f"] == [{"q": 2, "attn": 4}, {"q": 1}]
    assert get_local.skipped == {"f": {"attn": 1}}


def test_free_variable_of_a_closure_is_captured_by_value():
    outer = _define("""
        def outer(n):
            attn = n
            def f(x):
                return attn + x
            return f
        """, "outer")
    f = get_local("attn")(outer(10))
    with get_local.capture(convert="raw"):
        assert f(1) == 11
    assert get_local.cache["outer.<locals>.f"] == [10]


def test_unassigned_free_variable_is_skipped():
    outer = _define("""
        def outer():
            @get_local('attn')
            def g(flag):
                if flag:
                    return attn
                return 'ran'
            first = g(False)
            attn = 1
            return first, g(True)
        """, "outer")
    with get_local.capture(convert="raw"):
        assert outer() == ("ran", 1)
    assert get_local.cache["outer.<locals>.g"] == [1]
    assert get_local.skipped == {"outer.<locals>.g": {"attn": 1}}


def test_recursion_records_inner_call_first():
    f = get_local("attn")(_define("""
        def f(n):
            attn = n
            if n:
                f(n - 1)
            return n
        """))
    f.__globals__["f"] = f
    with get_local.capture(convert="raw"):
        f(2)
    assert get_local.cache["f"] == [0, 1, 2]


def test_returns_where_the_local_is_provably_bound_take_the_cheap_call():
    from getlocal import _rewrite

    def record(*args):
        pass

    def uses(source):
        code = _define(source).__code__
        return _rewrite.instrument(code, ["attn"], record, record)[1]

    # A typical attention forward: `attn` is assigned on every path before the one return.
    assert uses(CASES["single_return"][0]) == {"fast": 1, "locals": 0, "unreachable": 0}
    # Early return before `attn` exists: only that return needs the locals() snapshot.
    assert uses("""
        def f(x):
            if x is None:
                return None
            attn = x * 2
            return attn
        """) == {"fast": 1, "locals": 1, "unreachable": 0}
    # Bound on both branches of an if/else, in a try body and its handler.
    assert uses(CASES["if_else_returns"][0])["locals"] == 0
    assert uses(CASES["return_in_try_body"][0])["locals"] == 0
    # `del` anywhere makes the name unprovable at the returns after it.
    assert uses(CASES["local_deleted_on_one_path"][0])["locals"] >= 1


def _run_child(source):
    """Run ``source`` in a fresh interpreter that imports this getlocal: a crash fails the test, not pytest."""
    import getlocal

    root = os.path.dirname(os.path.dirname(os.path.abspath(getlocal.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_return_in_a_handler_nested_in_a_finally_neither_crashes_nor_changes_the_result():
    # 3.11-3.13 crashed here: the handlers around the return inside the
    # finally's loop unwound to exception-table depths that bytecode had
    # recomputed wrongly.
    child = _run_child("""
        def f():
            attn = 1
            try:
                return attn
            finally:
                for _ in range(2):
                    try:
                        try:
                            raise ValueError
                        except ValueError:
                            raise ValueError
                    except ValueError:
                        try:
                            attn = attn * 2
                        except ValueError:
                            return attn

        from getlocal import get_local
        plain = f()
        get_local('attn')(f)
        get_local.activate(convert='raw')
        print(plain, f(), get_local.cache['f'])
        """)
    assert child.returncode == 0, f"the child died with code {child.returncode}: {child.stderr[-2000:]}"
    assert child.stdout.split() == ["1", "1", "[4]"]
