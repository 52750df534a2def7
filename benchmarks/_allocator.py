"""Run a benchmark twice, in two processes: with glibc's default allocator, and with one that keeps its memory.

Any capture keeps the maps alive until the cache is read, so every forward
needs fresh memory for them; by default glibc hands such large blocks back to
the kernel when they are freed and page-faults them in again on the next
forward. That costs a few per cent of a CPU forward, whatever captures (and
eager attention itself pays it for its own temporaries). With the allocator
keeping its memory, what is left is the cost of the capture itself.
"""
import os
import subprocess
import sys

KEEPS_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(1 << 26), "MALLOC_TRIM_THRESHOLD_": str(1 << 28)}
ONCE = "--once"


def run_twice(script: str) -> bool:
    """Re-run ``script`` with the same arguments under both settings; False when this is such a run."""
    if ONCE in sys.argv:
        return False
    settings = (("glibc malloc defaults", {}),
                ("malloc keeps its memory: " + " ".join(f"{k}={v}" for k, v in KEEPS_MEMORY.items()), KEEPS_MEMORY))
    for title, extra in settings:
        print(f"## {title}", flush=True)
        subprocess.run([sys.executable, os.path.abspath(script), *sys.argv[1:], ONCE],
                       env=dict(os.environ, **extra), check=True)
    return True
