"""Every function of several standard-library modules, instrumented to capture ALL its locals,
behaves exactly as before: the twin is built for each shape of real-world bytecode the
interpreter produces, on whichever Python runs the suite."""
import argparse
import ast
import difflib
import fractions
import inspect
import json
import json.decoder
import json.encoder
import shlex
import textwrap
import warnings

import pytest

from getlocal import get_local

MODULES = [json, json.decoder, json.encoder, textwrap, difflib, fractions, shlex, argparse, ast]


def _functions():
    seen = {}
    for module in MODULES:
        for obj in vars(module).values():
            members = [obj] + (list(vars(obj).values()) if inspect.isclass(obj) else [])
            for member in members:
                func = inspect.unwrap(getattr(member, "__func__", member))
                if inspect.isfunction(func) and func.__module__ == module.__name__:
                    flags = func.__code__.co_flags
                    if not flags & (inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR):
                        seen[id(func)] = func
    return list(seen.values())


def _workload():
    data = {"a": [1, 2.5, None, True, "x\u00e9"], "b": {"c": [{}, []]}, "d": "quote\"s"}
    parser = argparse.ArgumentParser(prog="demo")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("items", nargs="*")
    source = "def f(a, *b, c=1, **d):\n    return [x async for x in y] if a else {k: v for k, v in d.items()}\n"
    return [
        json.dumps(data, indent=2, sort_keys=True),
        json.loads(json.dumps(data)),
        json.dumps(data, separators=(",", ":"), ensure_ascii=False),
        textwrap.fill("The quick brown fox jumps over the lazy dog. " * 5, width=30),
        textwrap.dedent("    a\n      b\n    c"),
        textwrap.shorten("Hello   world, this is long", width=15),
        textwrap.indent("x\ny", "> "),
        list(difflib.unified_diff(["a\n", "b\n", "c\n"], ["a\n", "c\n", "d\n"])),
        difflib.SequenceMatcher(None, "kitten", "sitting").ratio(),
        difflib.get_close_matches("appel", ["ape", "apple", "peach"]),
        str(fractions.Fraction(3, 4) + fractions.Fraction("1/6") * 2),
        fractions.Fraction(0.1).limit_denominator(100),
        shlex.split("cmd --opt 'quoted arg' \"dq\" plain"),
        shlex.join(["a b", "c"]),
        vars(parser.parse_args(["--n", "5", "x", "y"])),
        parser.format_help(),
        ast.unparse(ast.parse(source)) if hasattr(ast, "unparse") else None,
        ast.dump(ast.parse(source)),
        ast.literal_eval("{'k': [1, 2, (3, 4)], 'j': -5.5}"),
    ]


def test_instrumenting_every_local_of_real_functions_changes_no_result():
    expected = _workload()
    functions = _functions()
    assert len(functions) > 150
    for func in functions:
        code = func.__code__
        names = list(dict.fromkeys(code.co_varnames + code.co_cellvars + code.co_freevars))
        if names:
            get_local(*names)(func)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "could not instrument" would be a failure
            with get_local.capture(convert="raw"):
                got = _workload()
        assert got == expected
        recorded = sum(len(v) for v in get_local.cache.values())
        assert recorded > 100
        assert len(get_local.cache) > 30
    finally:
        for func in functions:
            if func.__code__.co_varnames or func.__code__.co_cellvars or func.__code__.co_freevars:
                get_local.remove(func)
    assert _workload() == expected


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_original_code_objects_come_back_after_remove(module):
    functions = [f for f in _functions() if f.__module__ == module.__name__ and f.__code__.co_varnames]
    originals = [f.__code__ for f in functions]
    for func in functions:
        get_local(func.__code__.co_varnames[0])(func)
    get_local.activate()
    for func in functions:
        get_local.remove(func)
    assert [f.__code__ for f in functions] == originals
    assert all(a is b for a, b in zip((f.__code__ for f in functions), originals))
