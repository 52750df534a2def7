"""Random functions with tangled control flow, and a runner that checks the rewriter on them.

``source(seed, index)`` writes one function ``f(x)``: loops with break and
continue, try/except (``as`` a name, or ``as attn`` which unbinds it), try/finally
with returns in the finally, ``with`` blocks whose context manager suppresses
the exception or not, early returns and raises, nested up to four deep, the
local ``attn`` assigned or deleted on some paths. The same (seed, index)
gives the same source on every Python.

Run as a script (``python _functions.py SEED START STOP``), it checks each
function in a fresh process so that a crash of the interpreter is reported
instead of taking the caller down: it prints ``#index`` before each function
and one JSON line per mismatch. ``run(seed, start, stop)`` drives it and
restarts after a crash.
"""
import json
import os
import random
import subprocess
import sys
import warnings
from typing import Dict, List

MAX_DEPTH = 4
# 3.9 and 3.10 copy a finally body (and the cleanup of `with` and `except as`)
# onto every way out of its block, so nesting multiplies the code: these
# budgets keep a function small on every Python.
MAX_COMPOUND = 7
MAX_FINALLIES = 2
INPUTS = (0, 1, 2, 3)
_MISSING = "<unbound>"

PRELUDE = '''
class cm:
    """A context manager that swallows the exception of its block when `suppress` is true."""
    def __init__(self, suppress):
        self.suppress = suppress
    def __enter__(self):
        return 7
    def __exit__(self, *exc):
        return self.suppress
'''


def source(seed: int, index: int) -> str:
    """The source of function number ``index`` of corpus ``seed``."""
    rng = random.Random(f"getlocal-fuzz:{seed}:{index}")
    lines = ["def f(x):", "    y = 0"]
    # Assigned on entry, or on a branch that never runs so that it is a local, unbound.
    lines.append("    attn = x" if rng.random() < 0.6 else "    if x > 9:\n        attn = -1")
    lines += _block(rng, 1, in_loop=False, budget={'compound': MAX_COMPOUND, 'finally': MAX_FINALLIES})
    if rng.random() < 0.5:
        lines.append(f"    return {_value(rng)}")
    return "\n".join(lines) + "\n"


def _block(rng: random.Random, depth: int, in_loop: bool, budget: Dict[str, int]) -> List[str]:
    lines = []
    for _ in range(rng.randint(1, 3)):
        lines += _statement(rng, depth, in_loop, budget)
    return lines


def _statement(rng: random.Random, depth: int, in_loop: bool, budget: Dict[str, int]) -> List[str]:
    pad = "    " * depth
    kinds = ["assign", "assign", "assign", "count", "return", "return", "raise", "del"]
    if in_loop:
        kinds += ["break", "continue"]
    if depth < MAX_DEPTH and budget["compound"] > 0:
        kinds += ["if", "for", "while", "try_except", "try_finally", "try_full", "with"] * 2

    def inner(loop=in_loop):
        return _block(rng, depth + 1, loop, budget)

    kind = rng.choice(kinds)
    if kind in _COMPOUND:
        budget["compound"] -= 1
    if kind in ("try_finally", "try_full"):
        if budget["finally"] > 0:
            budget["finally"] -= 1
        else:
            kind = "try_except"
    if kind == "assign":
        return [f"{pad}attn = {rng.choice(_EXPRESSIONS).format(k=rng.randint(0, 3))}"]
    if kind == "count":
        return [f"{pad}y = y + {rng.randint(1, 3)}"]
    if kind == "return":
        return [f"{pad}return {_value(rng)}".rstrip()]
    if kind == "raise":
        return [f"{pad}raise {rng.choice(['ValueError(x)', 'KeyError(y)', 'ZeroDivisionError'])}"]
    if kind == "del":
        return [f"{pad}del attn"]
    if kind in ("break", "continue"):
        return [f"{pad}{kind}"]
    if kind == "if":
        lines = [f"{pad}if x % {rng.randint(2, 3)} == {rng.randint(0, 1)}:"] + inner()
        if rng.random() < 0.5:
            lines += [f"{pad}else:"] + inner()
        return lines
    if kind == "for":
        target = "attn" if rng.random() < 0.2 else "i"
        lines = [f"{pad}for {target} in range({rng.randint(0, 3)}):"] + inner(loop=True)
        if rng.random() < 0.2:
            lines += [f"{pad}else:"] + inner()
        return lines
    if kind == "while":
        # y only grows, so every while loop ends.
        return [f"{pad}while y < {rng.randint(1, 6)}:", f"{pad}    y = y + 1"] + inner(loop=True)
    if kind == "with":
        as_name = rng.choice(["", "", " as attn"])
        return [f"{pad}with cm({rng.random() < 0.5}){as_name}:"] + inner()
    lines = [f"{pad}try:"] + inner()
    if kind in ("try_except", "try_full"):
        for _ in range(rng.randint(1, 2)):
            lines += [f"{pad}{rng.choice(_HANDLERS)}:"] + inner()
        if kind == "try_full" and rng.random() < 0.5:
            lines += [f"{pad}else:"] + inner()
    if kind in ("try_finally", "try_full"):
        lines += [f"{pad}finally:"] + inner()
    return lines


_COMPOUND = {"if", "for", "while", "try_except", "try_finally", "try_full", "with"}
_EXPRESSIONS = ["x + {k}", "attn * 2", "attn + {k}", "y - {k}", "{k} // (x - {k})", "x * y + {k}"]
_HANDLERS = [
    "except ValueError", "except (KeyError, ZeroDivisionError) as err", "except Exception as attn",
    "except NameError", "except Exception",
]


def _value(rng: random.Random) -> str:
    return rng.choice(["attn", "attn", "x + y", str(rng.randint(0, 9)), "", "attn * 10 + y"])


def _define(text: str, name: str):
    namespace = {"__name__": "fuzz"}
    exec(compile(PRELUDE + text, name, "exec"), namespace)
    return namespace["f"]


def _outcome(func, x):
    try:
        return ["value", repr(func(x))]
    except Exception as exc:
        return ["raise", type(exc).__name__]


def _traced(func, x):
    """What ``func(x)`` gives, and ``attn`` when it returned as seen by ``sys.settrace``."""
    at_return = []

    def tracer(frame, event, arg):
        if frame.f_code is not func.__code__:
            return None
        if event == "return":
            at_return.append(repr(frame.f_locals.get("attn", _MISSING)))
        return tracer

    sys.settrace(tracer)
    try:
        outcome = _outcome(func, x)
    finally:
        sys.settrace(None)
    captured = [] if outcome[0] == "raise" or at_return[-1] == repr(_MISSING) else [at_return[-1]]
    return outcome, captured


def check(seed: int, index: int) -> List[str]:
    """How the instrumented function number ``index`` differs from the plain one (empty: it does not)."""
    from getlocal import get_local

    text = source(seed, index)
    name = f"<fuzz seed={seed} index={index}>"
    plain, twin = _define(text, name), _define(text, name)
    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_local("attn")(twin)
    problems += [str(w.message) for w in caught]
    key = get_local.key_of(twin)
    try:
        for x in INPUTS:
            expected, expected_capture = _traced(plain, x)
            before = len(get_local.cache.get(key, []))
            got = _outcome(twin, x)
            capture = [repr(v) for v in get_local.cache.get(key, [])[before:]]
            if got != expected:
                problems.append(f"f({x}): plain gives {expected}, instrumented {got}")
            elif capture != expected_capture:
                problems.append(f"f({x}): captured {capture}, attn at return was {expected_capture}")
    finally:
        get_local.remove(twin)
        get_local.clear()
    return problems


def run(seed: int, start: int, stop: int, timeout: float = 600) -> List[Dict]:
    """Check functions ``start`` to ``stop - 1`` in child processes; one dict per function that fails."""
    import getlocal

    root = os.path.dirname(os.path.dirname(os.path.abspath(getlocal.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    failures = []
    while start < stop:
        try:
            child = subprocess.run(
                [sys.executable, os.path.abspath(__file__), str(seed), str(start), str(stop)],
                capture_output=True, text=True, env=env, timeout=timeout,
            )
            out, died = child.stdout, child.returncode and f"died with code {child.returncode}: {child.stderr[-2000:]}"
        except subprocess.TimeoutExpired as hung:
            # The output captured so far comes back as bytes on POSIX, whatever `text` says.
            out = hung.stdout.decode() if isinstance(hung.stdout, bytes) else hung.stdout or ""
            died = f"hung: still running after {timeout} s"
        last = start
        for line in out.splitlines():
            if line.startswith("#"):
                last = int(line[1:])
            elif line.startswith("{"):
                failures.append(json.loads(line))
        if not died:
            break
        failures.append({"seed": seed, "index": last, "source": source(seed, last),
                         "problems": [f"the process {died}"]})
        start = last + 1
    return failures


def _main(seed: int, start: int, stop: int) -> None:
    from getlocal import get_local

    get_local.activate(convert="raw")
    for index in range(start, stop):
        print(f"#{index}", flush=True)
        problems = check(seed, index)
        if problems:
            print(json.dumps({"seed": seed, "index": index, "source": source(seed, index), "problems": problems}),
                  flush=True)


if __name__ == "__main__":
    _main(*map(int, sys.argv[1:4]))
