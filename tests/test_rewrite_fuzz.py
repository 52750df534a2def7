"""Random functions with tangled control flow run the same instrumented, and capture ``attn`` at return.

Each function (see ``_functions``) runs plain under ``sys.settrace``, which
tells what it returns or raises and what ``attn`` holds at its return, then
instrumented. The corpus runs in child processes, so a function that crashes
the interpreter fails the test with its source instead of killing pytest.
``GETLOCAL_FUZZ_N`` sets how many functions to check (default 2000), for
example 50000 for a long campaign; ``GETLOCAL_FUZZ_SEED`` picks another corpus.
"""
import hashlib
import os

import pytest

import _functions

N = int(os.environ.get("GETLOCAL_FUZZ_N", "2000"))
SEED = int(os.environ.get("GETLOCAL_FUZZ_SEED", "0"))
BATCH = 1000


def _report(failures):
    return "\n\n".join(
        f"seed {f['seed']} index {f['index']}:\n  " + "\n  ".join(f["problems"]) + "\n" + f["source"]
        for f in failures[:5]
    ) + (f"\n\n... and {len(failures) - 5} more" if len(failures) > 5 else "")


@pytest.mark.parametrize("start", range(0, N, BATCH))
def test_random_functions_return_the_same_and_capture_the_local_at_return(start):
    failures = _functions.run(SEED, start, min(start + BATCH, N))
    assert not failures, _report(failures)


def test_a_seed_names_the_same_corpus_on_every_python():
    # A failure reported on one Python can then be replayed on another; a change
    # to the generator changes this digest on purpose.
    first = "".join(_functions.source(0, i) for i in range(20))
    assert hashlib.sha256(first.encode()).hexdigest()[:16] == "6bd6d1c4303179e1"
