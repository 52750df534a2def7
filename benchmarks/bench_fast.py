"""mode='fast' against the model's own kernel: time of a predict_action-shaped run, and bytes held.

    python benchmarks/bench_fast.py                      # OpenVLA-width Llama, PaliGemma shape, prompt sweep
    python benchmarks/bench_fast.py --parts sweep        # the prompt-length sweep alone
    python benchmarks/bench_fast.py --quick              # tiny sizes: a smoke run in seconds
    python benchmarks/bench_fast.py --device cuda --dtype bfloat16   # on a GPU (says so and stops without one)

Two random-init models built from their configs (nothing is downloaded), each as
an sdpa model (transformers' default kernel) and an eager copy sharing the same
weight tensors:

* OpenVLA's language model at full width: Llama, hidden 4096, 32 heads of 128
  (no grouped-query), MLP 11008, vocab 32064, at reduced depth (``--llama-layers``,
  default 2 of 32), fed ``inputs_embeds`` as Prismatic does;
* PaliGemma: a SigLIP-so400m-like tower (224 px / 14 px = 256 image tokens, width
  1152, 16 heads, MLP 4304; ``--siglip-layers``, default 4 of 27) and a Gemma-2B-like
  text model (width 2048, 8 heads, 1 KV head, head_dim 256, MLP 16384;
  ``--gemma-layers``, default 2 of 18; vocab reduced to 32768 from 257216), given
  ``token_type_ids`` as the processor does (without them transformers 5 runs the
  sdpa model's prompt bidirectionally and the eager copy's causally).

A predict_action-shaped run: a prompt of ``--tokens`` (276: OpenVLA's BOS + 256
patches + 19 text tokens; for PaliGemma 256 image tokens + BOS + 19 text) and 7
greedy new tokens, ``generate(max_new_tokens=7, min_new_tokens=7, do_sample=False)``:
one prefill forward and 6 decode forwards. The whole run is timed, and its first
forward (the prefill alone) by hooks on the model, so both come from the same run.

Configurations, interleaved in every round (the order rotates by one each round):

* ``sdpa, no capture``: the reference every ratio is taken against;
* ``eager, no capture``: the eager copy;
* ``eager capture``: ``adapter.capture(eager_model)`` (mode='eager', the default);
* ``fast, everything``: ``adapter.capture(sdpa_model, mode='fast')``;
* ``fast, generated+mean``: ``mode='fast', queries='generated', heads='mean'``.

Each capture configuration's ``with`` block times the run; leaving the block
(labelling, ``collect``) and then reading ``.array`` of every map (what makes
fast mode's lazy prefill maps real: a user who reads every map pays it) are timed
apart. Ratios are medians of the per-round ratios to ``sdpa, no capture`` of the
same round, extra ms medians of the per-round differences.

Bytes held after one run: the sum of every cache entry's ``.nbytes`` (numpy
arrays and fast mode's lazy entries alike), and the distinct storages they hold
(fast mode shares one mask copy between layers, so the sum counts it per layer),
before and after reading every map, against the full eager maps.

The first round is a warm-up and the check: outputs (the logits of every step)
compared with ``torch.equal`` (fast vs sdpa without capture, eager capture vs
eager), and fast mode's maps against the eager ones (max |difference|).

The sweep (``--parts sweep``): the prefill forward alone of an OpenVLA-width
Llama with ``--sweep-layers`` (default 1) at 276, 512, 1024 and 2048 tokens:
sdpa, eager, eager capture, fast; ratios to sdpa.
"""
import argparse
import contextlib
import gc
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from getlocal import get_local  # noqa: E402
from getlocal.adapters import openvla, paligemma  # noqa: E402

NEW_TOKENS = 7


# -- models -----------------------------------------------------------------------


def _share_weights(sdpa, eager):
    """``eager`` takes ``sdpa``'s weight tensors (no second copy); checked by pointer."""
    eager.load_state_dict(sdpa.state_dict(), assign=True)
    for (name, a), (_, b) in zip(sdpa.state_dict().items(), eager.state_dict().items()):
        assert a.data_ptr() == b.data_ptr(), f"{name} is not shared"
    return eager


def _set_attn(config, attn):
    for c in (config, getattr(config, "vision_config", None), getattr(config, "text_config", None)):
        if c is not None:
            c._attn_implementation = attn


def llama(args, layers, max_positions):
    """An OpenVLA-width Llama (sdpa) and its eager copy."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.quick:
        size = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                    vocab_size=128)
    else:
        size = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
                    vocab_size=32064)
    models = []
    for attn in ("sdpa", "eager"):
        config = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=max_positions, bos_token_id=1,
                             eos_token_id=2, pad_token_id=0, **size)
        _set_attn(config, attn)
        torch.manual_seed(0)
        models.append(LlamaForCausalLM(config).eval())
    sdpa, eager = models
    _share_weights(sdpa, eager)
    return [m.to(args.device, args.dtype) for m in (sdpa, eager)]


def llama_inputs(model, tokens, args):
    hidden = model.config.hidden_size
    embeds = torch.randn(1, tokens, hidden, generator=torch.Generator().manual_seed(1)) * hidden ** -0.5
    embeds = embeds.to(args.device, args.dtype)
    return dict(inputs_embeds=embeds, attention_mask=torch.ones(1, tokens, dtype=torch.long, device=args.device))


def gemma(args):
    """A PaliGemma-shaped model (sdpa) and its eager copy."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    if args.quick:
        image, vision_width, vision_heads, vision_mlp = 56, 32, 2, 64
        text = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, head_dim=16, vocab_size=128)
    else:
        image, vision_width, vision_heads, vision_mlp = 224, 1152, 16, 4304
        text = dict(hidden_size=2048, intermediate_size=16384, num_attention_heads=8, head_dim=256,
                    vocab_size=32768)
    patch = 14
    image_tokens = (image // patch) ** 2
    models = []
    for attn in ("sdpa", "eager"):
        vision = dict(model_type="siglip_vision_model", hidden_size=vision_width, intermediate_size=vision_mlp,
                      num_hidden_layers=args.siglip_layers, num_attention_heads=vision_heads, image_size=image,
                      patch_size=patch, num_image_tokens=image_tokens, projection_dim=text["hidden_size"])
        language = dict(model_type="gemma", num_hidden_layers=args.gemma_layers, num_key_value_heads=1,
                        max_position_embeddings=4096, bos_token_id=2, eos_token_id=1, pad_token_id=0, **text)
        config = PaliGemmaConfig(vision_config=vision, text_config=language, image_token_index=text["vocab_size"] - 1,
                                 projection_dim=text["hidden_size"])
        _set_attn(config, attn)
        torch.manual_seed(0)
        models.append(PaliGemmaForConditionalGeneration(config).eval())
    sdpa, eager = models
    _share_weights(sdpa, eager)
    return [m.to(args.device, args.dtype) for m in (sdpa, eager)]


def gemma_inputs(model, tokens, args):
    """``[image tokens, BOS, text]`` ids, as the processor lays them out, and one image."""
    config = model.config
    size = config.vision_config.image_size
    image_tokens = (size // config.vision_config.patch_size) ** 2
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.image_token_index, (1, tokens), generator=generator)
    ids[0, :image_tokens] = config.image_token_index
    ids[0, image_tokens] = config.text_config.bos_token_id
    pixels = torch.randn(1, 3, size, size, generator=generator)
    # token_type_ids as the processor gives them: without them transformers 5 runs the sdpa model's
    # prompt bidirectionally and the eager copy's causally, so the two models would attend differently.
    return dict(input_ids=ids.to(args.device), pixel_values=pixels.to(args.device, args.dtype),
                attention_mask=torch.ones_like(ids, device=args.device),
                token_type_ids=torch.zeros_like(ids, device=args.device))


# -- measuring ----------------------------------------------------------------------


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class ForwardClock:
    """The start and end of every forward of ``model`` (generate calls it once per new token)."""

    def __init__(self, model, device):
        self.device, self.marks = device, []
        model.register_forward_pre_hook(lambda *_: self._mark())
        model.register_forward_hook(lambda *_: self._mark())

    def _mark(self):
        _sync(self.device)
        self.marks.append(time.perf_counter())

    def first(self) -> float:
        return self.marks[1] - self.marks[0]


def _held(values):
    """(sum of ``.nbytes``, bytes of the distinct storages held) of cache entries or arrays."""
    total, seen = 0, {}
    for value in values:
        total += int(getattr(value, "nbytes", 0) or 0)
        parts = [value]
        if hasattr(value, "inputs"):  # fast mode's lazy Rebuild: the softmax inputs it holds
            parts = list(value.inputs)
        if getattr(value, "padding", None) is not None:
            parts.append(value.padding)
        for part in parts:
            if isinstance(part, torch.Tensor):
                storage = part.untyped_storage()
                seen[("tensor", storage.data_ptr())] = storage.nbytes()
            elif isinstance(part, np.ndarray):
                seen[("array", part.__array_interface__["data"][0], part.nbytes)] = part.nbytes
    return total, sum(seen.values())


class Result:
    def __init__(self):
        self.run, self.prefill, self.exit, self.read = [], [], [], []
        self.bytes = None  # (maps, sum of .nbytes, distinct, distinct after reading every map)
        self.logits = None


def run_config(model, adapter, capture, work, clock, args):
    """One run: ``work()`` (under ``adapter.capture(model, **capture)`` when given), timed in parts."""
    get_local.clear()
    gc.collect()
    clock.marks.clear()
    block = adapter.capture(model, **capture) if capture is not None else contextlib.nullcontext([])
    maps = block.__enter__()
    _sync(args.device)
    start = time.perf_counter()
    out = work()
    _sync(args.device)
    ran = time.perf_counter()
    block.__exit__(None, None, None)
    left = time.perf_counter()
    before = _held([m.__dict__["_array"] for m in maps])  # what the maps hold (the cache let go of it on exit)
    read_start = time.perf_counter()
    arrays = [m.array for m in maps]
    read = time.perf_counter() - read_start
    after = _held(arrays)
    get_local.clear()
    return dict(run=ran - start, prefill=clock.first(), exit=left - ran, read=read, out=out, maps=maps,
                bytes=(len(arrays), before[0], before[1], after[1]))


def _ratio(values, base):
    return statistics.median(v / b for v, b in zip(values, base))


def _extra(values, base):
    return statistics.median(v - b for v, b in zip(values, base))


def _max_difference(fast_maps, eager_maps):
    if len(fast_maps) != len(eager_maps) or not fast_maps:
        return f"{len(fast_maps)} vs {len(eager_maps)} maps"
    worst = 0.0
    for a, b in zip(fast_maps, eager_maps):
        if a.shape != b.shape:
            return f"shapes differ: {a.shape} vs {b.shape}"
        worst = max(worst, float(np.abs(np.asarray(a.array, np.float32) - np.asarray(b.array, np.float32)).max()))
    return f"{worst:.2g}"


def bench_model(title, sdpa, eager, inputs, adapter, args):
    """Every configuration of one model, interleaved; prints its tables."""

    def generate(model):
        def work():
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS,
                                     min_new_tokens=NEW_TOKENS, pad_token_id=0, return_dict_in_generate=True,
                                     output_logits=True)
            return torch.stack(out.logits)
        return work

    clocks = {id(sdpa): ForwardClock(sdpa, args.device), id(eager): ForwardClock(eager, args.device)}
    configs = [
        ("sdpa, no capture", sdpa, None),
        ("eager, no capture", eager, None),
        ("eager capture", eager, {}),
        ("fast, everything", sdpa, dict(mode="fast")),
        ("fast, generated+mean", sdpa, dict(mode="fast", queries="generated", heads="mean")),
    ]
    results = {name: Result() for name, _, _ in configs}
    # Bytes only (one run each, in the check round): the selection without the head reduction.
    extra_bytes = [("fast, generated", sdpa, dict(mode="fast", queries="generated")),
                   ("fast, everything, mean", sdpa, dict(mode="fast", heads="mean"))]
    checks = []
    kept_maps = {}
    for round_ in range(args.rounds + 1):  # round 0: warm-up and checks
        order = configs if round_ == 0 else configs[round_ % len(configs):] + configs[:round_ % len(configs)]
        for name, model, capture in order:
            r = run_config(model, adapter, capture, generate(model), clocks[id(model)], args)
            res = results[name]
            if round_ == 0:
                res.bytes, res.logits = r["bytes"], r["out"]
                if name in ("eager capture", "fast, everything", "fast, generated+mean"):
                    kept_maps[name] = r["maps"]
                continue
            res.run.append(r["run"])
            res.prefill.append(r["prefill"])
            res.exit.append(r["exit"])
            res.read.append(r["read"])
        if round_ == 0:
            for name, model, capture in extra_bytes:
                r = run_config(model, adapter, capture, generate(model), clocks[id(model)], args)
                results[name] = Result()
                results[name].bytes = r["bytes"]
            same = torch.equal
            checks.append("outputs (logits of all 7 steps), torch.equal: fast, everything vs sdpa: "
                          f"{same(results['fast, everything'].logits, results['sdpa, no capture'].logits)}; "
                          "fast, generated+mean vs sdpa: "
                          f"{same(results['fast, generated+mean'].logits, results['sdpa, no capture'].logits)}; "
                          "eager capture vs eager: "
                          f"{same(results['eager capture'].logits, results['eager, no capture'].logits)}; "
                          "sdpa vs eager: "
                          f"{same(results['sdpa, no capture'].logits, results['eager, no capture'].logits)}")
            em = kept_maps["eager capture"]
            fm = kept_maps["fast, everything"]
            gm = kept_maps["fast, generated+mean"]
            language = [m for m in em if m.tower in ("llm", "language")]
            decode_mean = []
            for m in language:
                if m.phase == "decode":
                    m2 = type(m).__new__(type(m))
                    m2.__dict__.update(m.__dict__)
                    m2.array = np.asarray(m.array, np.float32).mean(1, keepdims=True)
                    decode_mean.append(m2)
            checks.append(f"maps vs eager capture, max |difference|: fast, everything ({len(fm)} maps): "
                          f"{_max_difference(fm, em)}; fast, generated+mean ({len(gm)} maps) vs the eager decode "
                          f"rows' head mean: {_max_difference(gm, decode_mean)}")
            kept_maps.clear()

    base_run = results["sdpa, no capture"].run
    base_prefill = results["sdpa, no capture"].prefill
    print(f"## {title}")
    print(_header(args) + f"; median of {args.rounds} interleaved rounds after one warm-up round")
    print(f"{'configuration':<22}{'run ms':>9}{'x sdpa':>8}{'+ms':>8}{'prefill ms':>12}{'x sdpa':>8}{'+ms':>8}"
          f"{'exit ms':>9}{'read ms':>9}{'run+read x':>12}")
    for name, _, capture in configs:
        r = results[name]
        run_read = [a + b for a, b in zip(r.run, r.read)]
        capture_cols = (f"{statistics.median(r.exit) * 1e3:>9.1f}{statistics.median(r.read) * 1e3:>9.1f}"
                        f"{_ratio(run_read, base_run):>11.3f}x" if capture is not None else "")
        print(f"{name:<22}{statistics.median(r.run) * 1e3:>9.0f}{_ratio(r.run, base_run):>7.3f}x"
              f"{_extra(r.run, base_run) * 1e3:>+8.0f}{statistics.median(r.prefill) * 1e3:>12.0f}"
              f"{_ratio(r.prefill, base_prefill):>7.3f}x{_extra(r.prefill, base_prefill) * 1e3:>+8.0f}"
              + capture_cols)
    eager_held = results["eager capture"].bytes[2]
    print(f"{'bytes held after one run':<24}{'maps':>6}{'sum .nbytes':>14}{'held':>12}{'x eager':>10}"
          f"{'after read':>13}{'x eager':>10}")
    for name in ("eager capture", "fast, everything", "fast, everything, mean", "fast, generated",
                 "fast, generated+mean"):
        count, total, held, after = results[name].bytes
        print(f"{name:<24}{count:>6}{_mb(total):>14}{_mb(held):>12}{held / eager_held:>9.4f}x"
              f"{_mb(after):>13}{after / eager_held:>9.4f}x")
    for line in checks:
        print(line)
    print(flush=True)


def _mb(n):
    return f"{n / 1e6:.3f} MB" if n < 1e5 else f"{n / 1e6:.1f} MB"


def _header(args):
    threads = f"{torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    return (f"{args.device} {str(args.dtype).replace('torch.', '')} ({threads}, {os.cpu_count()} cores, "
            f"{platform.machine()}), torch {torch.__version__}, transformers {transformers.__version__}, "
            f"numpy {np.__version__}, Python {platform.python_version()}")


def sweep(args):
    """The prefill forward alone at growing prompts: sdpa, eager, eager capture, fast (lazy), reading fast's maps."""
    lengths = [20, 40] if args.quick else [276, 512, 1024, 2048]
    sdpa, eager = llama(args, args.sweep_layers, max(lengths) + NEW_TOKENS)
    clocks = {id(sdpa): ForwardClock(sdpa, args.device), id(eager): ForwardClock(eager, args.device)}
    configs = [("sdpa", sdpa, None), ("eager", eager, None), ("eager capture", eager, {}),
               ("fast", sdpa, dict(mode="fast"))]
    print(f"## prompt sweep: OpenVLA-width Llama, {args.sweep_layers} layer(s), prefill forward alone "
          "(logits of the last position only, as generate computes them)")
    print(_header(args) + f"; median of {args.sweep_rounds} interleaved rounds after one warm-up round")
    print(f"{'tokens':>6}{'sdpa ms':>10}{'eager x':>9}{'eager capture x':>17}{'fast x':>9}{'fast +ms':>10}"
          f"{'read ms':>9}{'fast+read x':>13}{'eager maps':>12}{'fast held':>12}")
    for tokens in lengths:
        inputs = llama_inputs(sdpa, tokens, args)

        def forward(model):
            def work():
                with torch.no_grad():
                    return model(**inputs, logits_to_keep=1).logits
            return work

        times = {name: [] for name, _, _ in configs}
        read, held = [], {}
        for round_ in range(args.sweep_rounds + 1):
            k = round_ % len(configs)
            for name, model, capture in configs[k:] + configs[:k]:
                r = run_config(model, openvla, capture, forward(model), clocks[id(model)], args)
                held[name] = r["bytes"][2]
                if round_:
                    times[name].append(r["run"])
                    if name == "fast":
                        read.append(r["read"])
                del r
        base = times["sdpa"]
        fast_read = [a + b for a, b in zip(times["fast"], read)]
        print(f"{tokens:>6}{statistics.median(base) * 1e3:>10.0f}{_ratio(times['eager'], base):>8.3f}x"
              f"{_ratio(times['eager capture'], base):>16.3f}x{_ratio(times['fast'], base):>8.3f}x"
              f"{_extra(times['fast'], base) * 1e3:>+10.1f}{statistics.median(read) * 1e3:>9.0f}"
              f"{_ratio(fast_read, base):>12.3f}x{_mb(held['eager capture']):>12}{_mb(held['fast']):>12}", flush=True)
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="openvla,paligemma,sweep",
                        help="comma-separated: openvla, paligemma, sweep (default: all three)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds of each model (after one warm-up)")
    parser.add_argument("--tokens", type=int, default=276, help="prompt length of the predict_action-shaped run")
    parser.add_argument("--llama-layers", type=int, default=2)
    parser.add_argument("--siglip-layers", type=int, default=4)
    parser.add_argument("--gemma-layers", type=int, default=2)
    parser.add_argument("--sweep-layers", type=int, default=1)
    parser.add_argument("--sweep-rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--quick", action="store_true", help="tiny models and prompts: a smoke run in seconds")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device on this machine (torch {torch.__version__}); nothing was run")
        return
    args.dtype = getattr(torch, args.dtype)
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    if args.quick:
        args.tokens = min(args.tokens, 24)
        args.rounds, args.sweep_rounds = min(args.rounds, 2), min(args.sweep_rounds, 1)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"openvla", "paligemma", "sweep"}
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}")
    started = time.perf_counter()
    if "openvla" in parts:
        sdpa, eager = llama(args, args.llama_layers, args.tokens + NEW_TOKENS + 16)
        hidden, heads = sdpa.config.hidden_size, sdpa.config.num_attention_heads
        bench_model(f"OpenVLA-width Llama: hidden {hidden}, {heads} heads, {args.llama_layers} layers, vocab "
                    f"{sdpa.config.vocab_size}; prompt {args.tokens} tokens (inputs_embeds) + {NEW_TOKENS} new",
                    sdpa, eager, llama_inputs(sdpa, args.tokens, args), openvla, args)
        del sdpa, eager
        gc.collect()
    if "paligemma" in parts:
        sdpa, eager = gemma(args)
        v, t = sdpa.config.vision_config, sdpa.config.text_config
        image_tokens = (v.image_size // v.patch_size) ** 2
        tokens = max(args.tokens, image_tokens + 2)
        bench_model(f"PaliGemma shape: SigLIP {v.num_hidden_layers} layers x {v.num_attention_heads} heads x "
                    f"{image_tokens} tokens (width {v.hidden_size}), Gemma {t.num_hidden_layers} layers x "
                    f"{t.num_attention_heads} heads / {t.num_key_value_heads} KV head (width {t.hidden_size}, head_dim "
                    f"{t.head_dim}); prompt {tokens} tokens + {NEW_TOKENS} new",
                    sdpa, eager, gemma_inputs(sdpa, tokens, args), paligemma, args)
        del sdpa, eager
        gc.collect()
    if "sweep" in parts:
        sweep(args)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
