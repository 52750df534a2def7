"""Time ``getlocal.patterns.summarize`` on OpenVLA-sized prefill maps.

32 layers x 32 heads x 274 x 274 float32 (Llama-2 7B in OpenVLA at prefill:
BOS, 256 image patches on a 16 x 16 grid, a short instruction), causal, with
the grid scores on. Prints the best of a few runs and the machine.

    python benchmarks/bench_patterns.py [--layers 32] [--heads 32] [--tokens 274] [--repeat 3]
"""
import argparse
import os
import platform
import time

import sys

import numpy as np

# run from a checkout without installing: the repository root holds getlocal/
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from getlocal import patterns  # noqa: E402


def _causal_maps(layers, heads, tokens, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.triu(np.ones((tokens, tokens), dtype=bool), 1)
    maps = []
    for _ in range(layers):
        logits = rng.standard_normal((heads, tokens, tokens), dtype=np.float32) * 2
        logits[:, :, 0] += 8  # a BOS sink holding about half the attention, as in real language models
        logits[:, mask] = -np.inf
        logits -= logits.max(-1, keepdims=True)
        a = np.exp(logits)
        a /= a.sum(-1, keepdims=True)
        maps.append(a)
    return maps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=274)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    maps = _causal_maps(args.layers, args.heads, args.tokens)
    options = dict(image_tokens=slice(1, 257), grid=(16, 16), causal=True, patch_size=14)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        table = patterns.summarize(maps, **options)
        times.append(time.perf_counter() - start)
    size = f"{args.layers} layers x {args.heads} heads x {args.tokens} x {args.tokens} float32"
    print(f"summarize: {size}: best {min(times):.3f} s of {args.repeat} (all: {', '.join(f'{t:.3f}' for t in times)})")
    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"numpy {np.__version__}, python {platform.python_version()}")
    labels, counts = np.unique(table.labels, return_counts=True)
    print("labels:", ", ".join(f"{lab} {int(n)}" for lab, n in zip(labels, counts)))


if __name__ == "__main__":
    main()
