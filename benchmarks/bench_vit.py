"""End to end: timm vit_small_patch16_224 (random init, eager attention, CPU, batch 1).

    python benchmarks/bench_vit.py [--rounds N]

Side by side in one process, interleaved round by round: the forward without
capture; capturing `attn` of every block with getlocal under convert='device'
and under the default 'numpy'; and the PyPI package anycapture (the maintained
fork of the original tool) capturing the same local. anycapture 0.1.4's wheel
also ships an old modified copy of timm that would overwrite the installed
one, so it is never installed: its wheel is downloaded to a temporary folder
and only its `anycapture/` package is put on sys.path.

The run is made twice, in two processes (see benchmarks/_allocator.py): with
glibc's default allocator, and with one that keeps its memory.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import timm  # noqa: E402
import torch  # noqa: E402

from getlocal import get_local  # noqa: E402

import _allocator  # noqa: E402


def _anycapture():
    """Import anycapture from its wheel without installing it (or None, saying why)."""
    folder = tempfile.mkdtemp(prefix="anycapture-")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", folder, "anycapture==0.1.4"],
                       check=True, capture_output=True, timeout=120)
    except Exception as exc:
        print(f"anycapture: could not download its wheel ({exc}); it is left out")
        return None
    wheel = next(f for f in os.listdir(folder) if f.endswith(".whl"))
    with zipfile.ZipFile(os.path.join(folder, wheel)) as zf:
        zf.extractall(folder, [n for n in zf.namelist() if n.startswith("anycapture/")])
    sys.path.insert(0, folder)
    import anycapture

    return anycapture


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument(_allocator.ONCE, action="store_true", help="one run, with the allocator as it is")
    args = parser.parse_args()
    if _allocator.run_twice(__file__):
        return
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    for block in model.blocks:
        block.attn.fused_attn = False  # eager attention in every configuration
    image = torch.randn(1, 3, 224, 224)
    attention = type(model.blocks[0].attn)
    original = attention.forward

    anycapture = _anycapture()
    wrapped = None
    if anycapture is not None:
        # anycapture rewrites the __code__ of the function it is given, so it gets a copy.
        copy = types.FunctionType(original.__code__, original.__globals__, original.__name__,
                                  original.__defaults__, original.__closure__)
        copy.__qualname__, copy.__kwdefaults__ = original.__qualname__, original.__kwdefaults__
        wrapped = anycapture.get_local("attn")(copy)
        anycapture.get_local.activate()
    get_local("attn")(original)

    # Each configuration: (switch on, forward, switch off and check). Only the forward is timed.
    def nothing():
        pass

    def getlocal_on(mode):
        return lambda: get_local.activate(mode)

    def getlocal_off():
        get_local.deactivate()
        assert len(get_local.cache["Attention.forward"]) == 12
        get_local.clear()

    def anycapture_on():
        attention.forward = wrapped

    def anycapture_off():
        attention.forward = original
        assert len(anycapture.get_local.cache["Attention.forward.attn"]) == 12
        anycapture.get_local.clear()

    configs = {"no capture": (nothing, nothing), "getlocal 'device'": (getlocal_on("device"), getlocal_off),
               "getlocal 'numpy'": (getlocal_on("numpy"), getlocal_off)}
    if anycapture is not None:
        configs["anycapture 0.1.4"] = (anycapture_on, anycapture_off)
    times = {name: [] for name in configs}
    with torch.no_grad():
        for round_ in range(args.rounds + 2):  # the first two rounds warm up
            for name, (on, off) in configs.items():
                on()
                start = time.perf_counter()
                model(image)
                elapsed = time.perf_counter() - start
                off()
                if round_ >= 2:
                    times[name].append(elapsed)
    base = statistics.median(times["no capture"])
    print(f"vit_small_patch16_224, batch 1, CPU ({os.cpu_count()} threads), torch {torch.__version__}, "
          f"timm {timm.__version__}, Python {platform.python_version()}; median of {args.rounds} interleaved rounds")
    # The paired column compares each round with the uncaptured forward of the same round, which
    # cancels most of the drift of a shared machine.
    print(f"{'configuration':<20} {'ms/forward':>10} {'ratio':>7} {'paired extra ms':>16}")
    for name, ts in times.items():
        median = statistics.median(ts)
        extra = statistics.median(t - b for t, b in zip(ts, times["no capture"]))
        print(f"{name:<20} {median * 1e3:>10.2f} {median / base:>7.3f}x {extra * 1e3:>+16.2f}")


if __name__ == "__main__":
    main()
