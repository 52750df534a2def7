"""mode='fast' on OpenVLA's Llama whatever the transformers: its pinned 4.40.1 as well as >= 4.48.

Before 4.48 the kernel is the attention class (``LlamaSdpaAttention``,
``LlamaAttention``, ``LlamaFlashAttention2``) and the maps are rebuilt from
its forward's locals; from 4.48 on from ``sdpa_attention_forward``'s
arguments. The same tests hold for both, except where a class exists in one
only. Run under the pins with ``PYTHONPATH=.ci/envs/openvla``.
"""
import numpy as np
import pytest
from required import import_or_skip

torch = import_or_skip("openvla", "torch")
transformers = import_or_skip("openvla", "transformers")

from getlocal import GetLocalError  # noqa: E402
from getlocal.adapters import openvla, tiny  # noqa: E402
from getlocal.maps import Lazy  # noqa: E402

modeling_llama = import_or_skip("openvla", "transformers.models.llama.modeling_llama")
OLD = not hasattr(modeling_llama, "eager_attention_forward")  # the attention class is the kernel
pytestmark = pytest.mark.usefixtures("adapters_off")

# float32: the first layer sees the same inputs in both models and matches bit for bit; later layers
# see the sdpa kernel's own rounding of the layer below (measured ~3e-8).
# bfloat16: a weight near 1 has a step of 2**-8 ~ 4e-3 (measured: at most 2e-3 under 4.40.1, 1e-3 under 5.x)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
PAD = 3


def _llm_pair(dtype=torch.float32, dim=32):
    """The tiny OpenVLA's Llama on sdpa (the default, as from_pretrained leaves it) and an eager copy."""
    fast = tiny.openvla(dim=dim, attn_implementation=None).language_model.to(dtype)
    eager = tiny.openvla(dim=dim, attn_implementation="eager").language_model.to(dtype)
    eager.load_state_dict(fast.state_dict())
    return fast, eager


def _padded_prompt(batch=2, length=9, pad=PAD):
    """Left-padded token ids and mask: item 0 pads its first ``pad`` positions, item 1 none."""
    ids = torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(batch, length, dtype=torch.long)
    ids[0, :pad], mask[0, :pad] = 0, 0
    return ids, mask


def _generate(llm, ids, mask=None, n=4):
    return llm.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                        min_new_tokens=n, pad_token_id=0)


def _array(m):
    return np.asarray(m.array, dtype=np.float32)


def _compare(fast_maps, eager_maps):
    """``(max |difference| over every map, whether the first layer's maps are bit for bit equal)``."""
    assert len(fast_maps) == len(eager_maps) > 0
    worst, first_exact = 0.0, True
    for a, b in zip(fast_maps, eager_maps):
        assert (a.tower, a.layer, a.step, a.phase, a.shape) == (b.tower, b.layer, b.step, b.phase, b.shape)
        worst = max(worst, float(np.abs(_array(a) - _array(b)).max()))
        if a.layer == 0:
            first_exact &= bool(np.array_equal(_array(a), _array(b)))
    return worst, first_exact


def _attention_state(llm):
    return [type(layer.self_attn) for layer in llm.model.layers], llm.config._attn_implementation


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_fast_maps_equal_eager_every_layer_prefill_and_decode_left_padded(dtype):
    fast, eager = _llm_pair(dtype)
    ids, mask = _padded_prompt()
    with openvla.capture(fast, mode="fast") as fm:
        _generate(fast, ids, mask)
    with openvla.capture(eager) as em:
        _generate(eager, ids, mask)
    assert [p for _, p in fm.steps] == ["prefill", "decode", "decode", "decode"]
    assert len(fm) == 2 * 4  # every layer of every step
    worst, first_exact = _compare(fm, em)
    print(f"{dtype}: fast vs eager, max |difference| {worst:.3g}")
    assert worst <= TOLERANCE[dtype], f"fast vs eager ({dtype}): max |difference| {worst:.3g}"
    assert first_exact, "the first layer sees the same query and keys in both models: eager's arithmetic, bit for bit"
    for m in fm:
        a = _array(m)
        real_rows = a[0, :, PAD:] if m.phase == "prefill" else a[0]
        assert (real_rows[..., :PAD] == 0).all(), "the padded keys of item 0 must weigh exactly 0"
        if m.phase == "prefill":
            assert m.padding is not None and m.padding[0, :PAD].all() and not m.padding[1].any()
            assert (np.triu(a[1], 1) == 0).all(), "a decoder's map is exactly 0 above the diagonal"
            assert (np.triu(a[0, :, PAD:, PAD:], 1) == 0).all()


def test_first_layer_is_eager_bit_for_bit_with_a_scale_that_rounds():
    """head_dim 24: ``/ sqrt(24)`` (eager before 4.48) and ``* 24 ** -0.5`` differ in the last bit of many scores."""
    fast, eager = _llm_pair(dim=48)
    assert fast.model.layers[0].self_attn.head_dim == 24
    ids, mask = _padded_prompt()
    with openvla.capture(fast, mode="fast") as fm:
        _generate(fast, ids, mask)
    with openvla.capture(eager) as em:
        _generate(eager, ids, mask)
    worst, first_exact = _compare(fm, em)
    assert worst <= TOLERANCE[torch.float32] and first_exact


def test_fast_maps_without_a_mask_are_causal_and_equal_eager():
    """No mask (OpenVLA's predict_action may give none): sdpa runs ``is_causal``, eager builds the triangle."""
    fast, eager = _llm_pair()
    ids = _padded_prompt(length=40, pad=0)[0]  # long enough that the prefill is kept as its inputs
    with openvla.capture(fast, mode="fast") as fm:
        with torch.no_grad():
            fast(input_ids=ids)
        _generate(fast, ids[:, :9])
    with openvla.capture(eager) as em:
        with torch.no_grad():
            eager(input_ids=ids)
        _generate(eager, ids[:, :9])
    pending = fm[0].__dict__["_array"]
    assert isinstance(pending, Lazy) and pending.inputs[-1] is None, "the kernel got no mask: the triangle is ours"
    worst, first_exact = _compare(fm, em)
    print(f"no mask: fast vs eager, max |difference| {worst:.3g}")
    assert worst <= TOLERANCE[torch.float32] and first_exact
    for m in fm.select(phase="prefill"):
        assert m.padding is None and (np.triu(_array(m), 1) == 0).all()


def test_fast_mode_on_a_model_built_eager_keeps_its_own_weights_bit_for_bit():
    _, eager = _llm_pair()
    ids, mask = _padded_prompt()
    with openvla.capture(eager, mode="fast") as fm:
        _generate(eager, ids, mask)
    with openvla.capture(eager) as em:
        _generate(eager, ids, mask)
    assert _compare(fm, em) == (0.0, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_fast_mode_changes_no_output_and_switches_nothing(dtype):
    fast, _ = _llm_pair(dtype)
    ids, mask = _padded_prompt()
    before = _attention_state(fast)
    with torch.no_grad():
        logits = fast(input_ids=ids, attention_mask=mask).logits
    generated = _generate(fast, ids, mask)
    with openvla.capture(fast, mode="fast") as maps:
        with torch.no_grad():
            logits_fast = fast(input_ids=ids, attention_mask=mask).logits
        generated_fast = _generate(fast, ids, mask)
        during = _attention_state(fast)
    assert torch.equal(logits, logits_fast), "mode='fast' must not change a single bit of the logits"
    assert torch.equal(generated, generated_fast)
    assert before == during == _attention_state(fast)
    assert before[1] == "sdpa" and len(maps) == 2 * (1 + 4)


def test_fast_mode_leaves_openvla_predict_action_untouched_in_bfloat16():
    """The whole tiny OpenVLA in bfloat16, generating from inputs_embeds as predict_action does."""
    model = tiny.openvla(attn_implementation=None).to(torch.bfloat16)
    pixels, ids = tiny.openvla_inputs(model, batch=2)
    pixels = pixels.to(torch.bfloat16)
    before = _attention_state(model.language_model)
    generated = tiny.generate(model, pixels, ids)
    with openvla.capture(model, mode="fast") as maps:
        generated_fast = tiny.generate(model, pixels, ids)
    assert torch.equal(generated, generated_fast)
    assert _attention_state(model.language_model) == before
    assert maps.towers == ["dinov2", "siglip", "llm"] and len(maps.select(tower="llm")) == 2 * 7


@pytest.mark.skipif(not OLD, reason="from 4.48 the keys getlocal sees are sdpa_attention_forward's, repeated per "
                    "query head there when torch's sdpa is not asked to share them")
def test_fast_prefill_holds_one_copy_of_each_key_head():
    """A long prompt is kept as query + keys (the grouped-query keys once, not once per query head) + the mask."""
    fast, _ = _llm_pair()
    ids, mask = _padded_prompt(length=40)
    with openvla.capture(fast, mode="fast") as maps:
        with torch.no_grad():
            fast(input_ids=ids, attention_mask=mask)
    pending = maps[0].__dict__["_array"]
    query, key = pending.inputs[:2]
    assert isinstance(pending, Lazy) and query.shape == (2, 4, 40, 16) and key.shape == (2, 2, 40, 16)
    eager = maps[0].array
    np.testing.assert_allclose(eager[1].sum(-1), 1, atol=1e-5)
    np.testing.assert_allclose(eager[0, :, PAD:].sum(-1), 1, atol=1e-5)
    assert (eager[0, :, PAD:, :PAD] == 0).all()
    assert (eager[0, :, :PAD] == 0).all()  # the padding queries' rows: exactly 0, as sdpa gives them


@pytest.mark.skipif(not OLD, reason=f"transformers {transformers.__version__} has no LlamaFlashAttention2 class "
                    "(from 4.48 the kernel is the config's: test_adapter_fast checks that refusal, on every version)")
def test_fast_mode_refuses_a_flash_attention_module_naming_it_and_the_way_out():
    fast, _ = _llm_pair()
    fast.model.layers[1].self_attn = modeling_llama.LlamaFlashAttention2(fast.config, layer_idx=1)
    with pytest.raises(GetLocalError, match=r"LlamaFlashAttention2 \(model\.layers\.1\.self_attn\).*mode='eager'"):
        openvla.activate(fast, mode="fast")
    assert not openvla.is_active()
    assert type(fast.model.layers[0].self_attn).__name__ == "LlamaSdpaAttention"


def test_fast_mode_asked_for_weights_keeps_one_map_per_layer_and_those_weights():
    """``output_attentions=True``: before 4.48 an sdpa module hands the call to ``LlamaAttention.forward``."""
    fast, _ = _llm_pair()
    ids, mask = _padded_prompt()
    with openvla.capture(fast, mode="fast") as fm:
        with torch.no_grad():
            out = fast(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(fm) == 2  # one map per layer, not one per forward of the handover
    returned = [a for a in (out.attentions or ()) if a is not None]  # 5.x's sdpa returns none
    assert len(returned) == (2 if OLD else 0)
    for m, weights in zip(fm, returned):
        a, w = _array(m), weights.numpy()
        assert np.array_equal(a[1], w[1]) and np.array_equal(a[0, :, PAD:], w[0, :, PAD:])
        assert (a[0, :, :PAD] == 0).all()  # padding queries: collect() gives rows of 0 where eager gives 1/K
