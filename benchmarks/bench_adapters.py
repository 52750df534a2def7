"""What the PaliGemma adapter costs: capture every layer vs eager attention vs output_attentions.

    python benchmarks/bench_adapters.py [--reps 15] [--tokens 512]

A random-init PaliGemma-shaped model (SigLIP 224/14 tower, 256 image tokens; a
6-layer Gemma with 8 heads and hidden size 512; 256 text tokens, so the language
model sees 512) runs one forward pass on the CPU in each mode, the modes
interleaved in every round, and the best of ``--reps`` rounds is reported with
its ratio to the eager forward (twice, in two processes: see _allocator.py):

* ``sdpa``: transformers' default attention (nothing captured);
* ``eager``: the same weights with eager attention, the adapter not activated;
* ``eager + output_attentions``: transformers' own way of returning the maps;
* ``adapter, convert='device'``: eager with the adapter capturing every vision
  and language layer, tensors kept where they are (no copy);
* ``adapter, convert='numpy'``: the default, numpy views of CPU tensors;
* ``adapter on the sdpa model``: the adapter activated on the sdpa model, which
  eager mode switches to its own eager kernel under sdpa's masks.
"""
import argparse
import statistics
import time

import torch

from getlocal import get_local
from getlocal.adapters import paligemma

import _allocator


def build(tokens: int, attn: str, state=None):
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    image, patch = 224, 14
    image_tokens = (image // patch) ** 2
    vision = dict(model_type="siglip_vision_model", hidden_size=384, intermediate_size=1536, num_hidden_layers=4,
                  num_attention_heads=6, image_size=image, patch_size=patch, num_image_tokens=image_tokens,
                  projection_dim=512)
    text = dict(model_type="gemma", hidden_size=512, intermediate_size=2048, num_hidden_layers=6,
                num_attention_heads=8, num_key_value_heads=8, head_dim=64, vocab_size=1024,
                max_position_embeddings=2 * tokens, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=1023, projection_dim=512)
    for c in (config, config.vision_config, config.text_config):
        c._attn_implementation = attn
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config).eval()
    if state is not None:
        model.load_state_dict(state)
    ids = torch.randint(3, 1000, (1, tokens), generator=torch.Generator().manual_seed(0))
    ids[0, :image_tokens] = config.image_token_index
    ids[0, image_tokens] = 2
    pixels = torch.randn(1, 3, image, image, generator=torch.Generator().manual_seed(1))
    return model, dict(input_ids=ids, pixel_values=pixels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument(_allocator.ONCE, action="store_true", help="one run, with the allocator as it is")
    args = parser.parse_args()
    if _allocator.run_twice(__file__):
        return

    eager, inputs = build(args.tokens, "eager")
    sdpa, _ = build(args.tokens, "sdpa", eager.state_dict())

    def forward(model, **extra):
        with torch.no_grad():
            model(**inputs, **extra)

    modes = {  # name: (one forward, the adapter's convert or None, the model it is activated on)
        "sdpa": (lambda: forward(sdpa), None, None),
        "eager": (lambda: forward(eager), None, None),
        "eager + output_attentions": (lambda: forward(eager, output_attentions=True), None, None),
        "adapter, convert='device'": (lambda: forward(eager), "device", eager),
        "adapter, convert='numpy'": (lambda: forward(eager), "numpy", eager),
        # the default user's case: the model loaded on sdpa, switched by eager mode (sdpa's masks, eager's kernel)
        "adapter on the sdpa model": (lambda: forward(sdpa), "numpy", sdpa),
    }
    for run, _, _ in modes.values():  # warm-up: allocator, kernels, one-time instrumentation
        run()
    times = {name: [] for name in modes}
    captured = {}
    for _ in range(args.reps):
        for name, (run, convert, model) in modes.items():
            if convert is not None:
                paligemma.activate(model, convert=convert)
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            if convert is not None:
                captured[name] = sum(len(v) for v in get_local.cache.values())
                paligemma.deactivate()
                get_local.clear()

    base = min(times["eager"])
    print(f"PaliGemma-shaped model, CPU, {torch.get_num_threads()} threads: SigLIP 4 layers x 256 tokens, "
          f"Gemma 6 layers x 8 heads x {args.tokens} tokens; best of {args.reps} interleaved rounds")
    print(f"{'mode':<28}{'best ms':>10}{'median ms':>11}{'x eager':>9}  maps")
    for name, values in times.items():
        best = min(values)
        print(f"{name:<28}{best * 1e3:>10.1f}{statistics.median(values) * 1e3:>11.1f}{best / base:>9.3f}  "
              f"{captured.get(name, '')}")


if __name__ == "__main__":
    main()
