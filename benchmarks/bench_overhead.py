"""Per-call cost of the capture mechanism, in ns per call.

A small function with ten locals, captured (one local) against the same
function uncaptured, measured side by side in one process. Run it with each
Python (needs only getlocal and bytecode):

    python benchmarks/bench_overhead.py [--with-torch]

Each figure is the best of 15 interleaved rounds of 20,000 calls. The cache
is emptied before each round, as a bounded or regularly cleared cache is in
real use. With --with-torch, torch is imported first, so that each recorded
call also passes through torch.compiler.disable (the guard that keeps
torch.compile from tracing the recorder), as it does in a model.
"""
import os
import platform
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from getlocal import get_local  # noqa: E402


def plain(x):
    a = 1; b = 2; c = 3; d = 4; e = 5; f = 6; g = 7; h = 8; i = 9  # noqa: E702
    attn = x + a + b + c + d + e + f + g + h + i
    return attn


def captured(x):
    a = 1; b = 2; c = 3; d = 4; e = 5; f = 6; g = 7; h = 8; i = 9  # noqa: E702
    attn = x + a + b + c + d + e + f + g + h + i
    return attn


def maybe_unbound(x):  # `attn` is unbound on one path: the locals() snapshot path
    a = 1; b = 2; c = 3; d = 4; e = 5; f = 6; g = 7; h = 8; i = 9  # noqa: E702
    if x >= 0:
        attn = x + a + b + c + d + e + f + g + h + i
    return x


def _time(func, number=20000):
    get_local.clear()
    return timeit.timeit(lambda: func(1), number=number) / number * 1e9


def main(rounds=15):
    get_local("attn")(captured)
    get_local("attn")(maybe_unbound)
    best = {"plain": [], "off": [], "on": [], "unbound": []}
    for _ in range(rounds):  # interleaved, so that load on the machine hits every configuration alike
        best["plain"].append(_time(plain))
        best["off"].append(_time(captured))  # decorated, capture off: the original code runs
        get_local.activate()
        best["on"].append(_time(captured))
        best["unbound"].append(_time(maybe_unbound))
        get_local.deactivate()
    base, off, on, unbound = (min(best[k]) for k in ("plain", "off", "on", "unbound"))
    loaded = "torch loaded" if "torch" in sys.modules else "no torch"
    print(f"Python {platform.python_version()} ({os.cpu_count()} cores, {loaded}): "
          f"plain {base:.0f} ns/call; decorated, off: {off - base:+.0f} ns; "
          f"captured: {on - base:+.0f} ns; captured, possibly-unbound local: {unbound - base:+.0f} ns")


if __name__ == "__main__":
    if "--with-torch" in sys.argv:
        import torch  # noqa: F401
    main()
