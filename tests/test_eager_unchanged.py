"""mode='eager' changes nothing but rounding: every adapter model's outputs under it equal the untouched model's.

Each model is built on its library's default kernel (timm's fused attention,
transformers' sdpa), as ``from_pretrained`` or ``create_model`` leave it, run
untouched, then under the adapter in eager mode (and in fast mode, whose maps
must equal eager's). transformers builds its masks per kernel, and 5.24's
PaliGemma without ``token_type_ids`` gets a bidirectional prefill on sdpa (no
mask, the Gemma layers' ``is_causal=False``) but a causal one from eager's
materialised mask: eager mode must keep the model's visibility.
"""
import numpy as np
import pytest
from required import attention_interface, import_or_skip

torch = import_or_skip("openvla", "torch")
transformers = import_or_skip("openvla", "transformers")
timm = import_or_skip("openvla", "timm")

from getlocal import patterns  # noqa: E402
from getlocal.adapters import openvla, paligemma, tiny, vit  # noqa: E402

pytestmark = pytest.mark.usefixtures("adapters_off")
needs_interface = pytest.mark.skipif(not attention_interface(), reason="PaliGemma and Pi0 need transformers >= 4.48")

# float32: eager and the fused/sdpa kernels sum the same products in another order, a few ulps (1.2e-7
# relative) per operation, grown through 2 layers (measured: at most 1.2e-6 on the ViT's 192 features,
# 3.2e-7 on the transformers models); before eager mode kept sdpa's visibility it moved PaliGemma's logits
# by 0.046 here, and its mean over every value for a query that sees no key (sdpa: 0) Llama's by 0.44.
OUTPUTS = 1e-5
# Fast mode rebuilds eager's weights from the kernel's own inputs: only the layers below differ by rounding.
MAPS = 1e-6
# The normalised entropy is a ratio of float64 sums over float32 weights.
ENTROPY = 1 + 1e-6
PAD = 2


def _vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32,
                              depth=2).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return vit, model, lambda m: m(images), {}


def _openvla():
    model = tiny.openvla(attn_implementation=None)
    pixels, ids = tiny.openvla_inputs(model, batch=2)
    return openvla, model, lambda m: m(pixels, ids).logits, {}


def _openvla_left_padded():
    """The language model alone on a left-padded batch: its padding queries see no key (sdpa gives them 0)."""
    llm = tiny.openvla(attn_implementation=None).language_model
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[0, :PAD], mask[0, :PAD] = 0, 0
    return openvla, llm, lambda m: m(input_ids=ids, attention_mask=mask).logits, {}


def _paligemma(text="gemma", token_type_ids=True, padded=False, **options):
    model = tiny.paligemma(text=text, attn_implementation=None, **options)
    inputs = tiny.paligemma_inputs(model, batch=2)
    if not token_type_ids:
        del inputs["token_type_ids"]
    if padded:
        inputs["attention_mask"][0, :PAD] = 0
    return paligemma, model, lambda m: m(**inputs).logits, {}


def _paligemma_generate(token_type_ids=True):
    """Greedy generate's logits of every step: the prefill and the decode steps over the cache."""
    _, model, _, _ = _paligemma(token_type_ids=token_type_ids)
    inputs = tiny.paligemma_inputs(model, batch=2)
    if not token_type_ids:
        del inputs["token_type_ids"]

    def run(m):
        out = m.generate(**inputs, do_sample=False, max_new_tokens=3, min_new_tokens=3, output_logits=True,
                         return_dict_in_generate=True)
        return torch.stack(out.logits)
    return paligemma, model, run, {}


def _pi0(pi05=False):
    model = tiny.pi0(attn_implementation=None, pi05=pi05)
    images, ids, state = tiny.pi0_inputs(model, batch=2, lengths=[4, 2])
    return paligemma, model, lambda m: m.sample_actions(images, ids, state, attention_mask=ids != 0), \
        {"state_tokens": 0 if pi05 else 1}


#: Every adapter model, on its library's default kernel. gemma2 without soft-capping: sdpa refuses it.
MODELS = {
    "vit": _vit,
    "openvla": _openvla,
    "openvla-left-padded": _openvla_left_padded,
    "paligemma": _paligemma,
    "paligemma-without-token-type-ids": lambda: _paligemma(token_type_ids=False),
    "paligemma-left-padded-without-token-type-ids": lambda: _paligemma(token_type_ids=False, padded=True),
    "paligemma-generate": _paligemma_generate,
    "paligemma-generate-without-token-type-ids": lambda: _paligemma_generate(token_type_ids=False),
    "paligemma-gemma2": lambda: _paligemma("gemma2", softcapping=None),
    "paligemma-gemma2-without-token-type-ids": lambda: _paligemma("gemma2", token_type_ids=False, softcapping=None),
    "paligemma-gemma3": lambda: _paligemma("gemma3"),
    "paligemma-gemma3-without-token-type-ids": lambda: _paligemma("gemma3", token_type_ids=False),
    "pi0": _pi0,
    "pi0.5": lambda: _pi0(pi05=True),
}


#: The cases, PaliGemma's and Pi0's skipped before transformers 4.48 (OpenVLA's pin runs the ViT and Llama ones).
CASES = [pytest.param(name, marks=[needs_interface] if name.startswith(("paligemma", "pi0")) else [])
         for name in MODELS]


def _worst(a, b):
    return float((a.float() - b.float()).abs().max())


def _three_runs(name):
    """``(untouched output, eager-mode output, fast-mode output, eager maps, fast maps)`` of MODELS[name]."""
    adapter, model, run, labels = MODELS[name]()
    with torch.no_grad():
        reference = run(model)
        with adapter.capture(model, **labels) as eager_maps:
            eager = run(model)
        with adapter.capture(model, mode="fast", **labels) as fast_maps:
            fast = run(model)
        assert torch.equal(run(model), reference), "the model must be left as it was"
    return reference, eager, fast, eager_maps, fast_maps


@pytest.mark.parametrize("name", CASES)
def test_eager_mode_outputs_equal_the_untouched_model_within_float32_rounding(name):
    reference, eager, fast, eager_maps, _ = _three_runs(name)
    assert len(eager_maps) > 0
    assert torch.equal(fast, reference), "mode='fast' keeps the model's kernel: not a bit may move"
    worst = _worst(eager, reference)
    assert worst <= OUTPUTS, f"{name}: mode='eager' moved the outputs by {worst:.3g} (float32 rounding: {OUTPUTS})"


@pytest.mark.parametrize("name", CASES)
def test_fast_and_eager_maps_agree_and_no_normalised_entropy_is_above_one(name):
    *_, eager_maps, fast_maps = _three_runs(name)
    assert len(eager_maps) == len(fast_maps) > 0
    worst = 0.0
    for e, f in zip(eager_maps, fast_maps):
        assert (e.tower, e.layer, e.step, e.phase, e.shape) == (f.tower, f.layer, f.step, f.phase, f.shape)
        worst = max(worst, float(np.abs(np.asarray(e.array, np.float32) - np.asarray(f.array, np.float32)).max()))
    assert worst <= MAPS, f"{name}: fast vs eager maps differ by up to {worst:.3g} (weights in [0, 1])"
    for maps in (eager_maps, fast_maps):
        for m in maps:
            table = patterns.summarize(m, exclude=m.padding)
            entropy = np.asarray(table["entropy_norm"], dtype=np.float64)
            top = float(np.nanmax(entropy)) if np.isfinite(entropy).any() else 0.0
            assert top <= ENTROPY, f"{name} {m.tower} layer {m.layer} step {m.step}: normalised entropy {top:.3f}"
