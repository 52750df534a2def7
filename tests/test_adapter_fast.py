"""mode='fast': the model keeps its attention kernel, and the maps equal eager's.

Every test pairs a model on transformers' default kernel (sdpa) with an eager
copy of the same weights, on batch 2 with padding where the tiny model supports it.
The OpenVLA tests run on every transformers (before 4.48 too, OpenVLA's pin; see
also test_adapter_fast_llama_old); PaliGemma and Pi0 need the attention interface.
"""
import numpy as np
import pytest
from required import attention_interface, import_or_skip

torch = import_or_skip("openvla", "torch")
transformers = import_or_skip("openvla", "transformers")

from getlocal import GetLocalError, get_local, load, record, save  # noqa: E402
from getlocal.adapters import openvla, paligemma, tiny  # noqa: E402
from getlocal.maps import Lazy  # noqa: E402

FAST = attention_interface()

needs_fast = pytest.mark.skipif(
    not FAST, reason=f"mode='fast' for PaliGemma/Pi0 needs transformers' attention interface (>= 4.48); "
    f"this is {transformers.__version__}")
pytestmark = pytest.mark.usefixtures("adapters_off")

TOLERANCE = 1e-5  # float32: fast and eager differ only in the order of float operations (measured ~1e-7)


def _llm_pair():
    """The tiny OpenVLA's Llama on sdpa (transformers' default) and an eager copy of it."""
    fast = tiny.openvla(attn_implementation=None).language_model
    eager = tiny.openvla(attn_implementation="eager").language_model
    eager.load_state_dict(fast.state_dict())
    return fast, eager


def _padded_prompt(batch=2, length=9, pad=3):
    """Left-padded token ids and mask: item 0 pads its first ``pad`` positions, item 1 none."""
    ids = torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(batch, length, dtype=torch.long)
    ids[0, :pad], mask[0, :pad] = 0, 0
    return ids, mask


def _generate(llm, ids, mask, n=4):
    return llm.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                        min_new_tokens=n, pad_token_id=0)


def _max_difference(fast_maps, eager_maps):
    assert len(fast_maps) == len(eager_maps) > 0
    worst = 0.0
    for a, b in zip(fast_maps, eager_maps):
        assert (a.tower, a.layer, a.step, a.phase, a.shape) == (b.tower, b.layer, b.step, b.phase, b.shape)
        worst = max(worst, float(np.abs(np.asarray(a.array) - np.asarray(b.array)).max()))
    return worst


def test_fast_prefill_map_is_rebuilt_on_first_read_from_fewer_bytes():
    fast, _ = _llm_pair()
    ids, mask = _padded_prompt(length=40, pad=0)
    with openvla.capture(fast, mode="fast") as maps:
        fast(input_ids=ids, attention_mask=mask)
    m = maps[0]
    pending = m.__dict__["_array"]
    assert isinstance(pending, Lazy) and m.shape == (2, 4, 40, 40)
    assert pending.nbytes < 2 * 4 * 40 * 40 * 4  # query + key (2 of the 4 heads: GQA) < the float32 map
    array = m.array
    assert array.shape == (2, 4, 40, 40) and m.array is array  # computed once, then kept
    np.testing.assert_allclose(array.sum(-1), 1, atol=1e-5)
    assert pending.nbytes == array.nbytes and not pending.inputs  # the map replaced query and key in the cache too


def test_a_second_collect_reads_the_map_the_first_one_computed():
    fast, _ = _llm_pair()
    ids, mask = _padded_prompt(length=40, pad=0)
    openvla.activate(fast, mode="fast")
    fast(input_ids=ids, attention_mask=mask)
    first = openvla.collect(fast)[0].array
    assert openvla.collect(fast)[0].array is first  # not rebuilt, not a second copy
    openvla.deactivate()


def test_a_fast_cache_saves_and_records_as_the_maps_it_stands_for(tmp_path):
    fast, _ = _llm_pair()
    ids, mask = _padded_prompt(length=40)
    openvla.activate(fast, mode="fast", queries="generated")  # prefills kept as Skipped, decode rows as arrays
    _generate(fast, ids, mask, n=2)
    openvla.deactivate()
    openvla.activate(fast, mode="fast")
    fast(input_ids=ids, attention_mask=mask)  # a prefill kept as a Rebuild (q and k are smaller than its map)
    maps = openvla.collect(fast)
    openvla.deactivate()
    assert any(isinstance(v, Lazy) for values in get_local.cache.values() for v in values)
    loaded = load(save(tmp_path / "cache", get_local.cache))
    saved = [v for key in get_local.cache for v in loaded[key]]  # the second activation took a second key
    assert [v is None for v in saved] == [True, True, False, False, False, False]  # left out by queries=: None
    for value, m in zip(saved[-2:], maps[-2:]):  # collect() also labels the decode rows kept before
        np.testing.assert_array_equal(value, m.array)
    key = list(get_local.cache)[-1]
    with record(tmp_path / "run") as run:
        run.step()  # the raw cache, rebuild inputs and all
    step = load(tmp_path / "run")[0]
    np.testing.assert_array_equal(step.maps[key][-1], maps[-1].array)


def test_fast_mode_leaves_openvla_outputs_and_kernel_untouched():
    model = tiny.openvla(attn_implementation=None)
    backbone = model.vision_backbone
    blocks = list(backbone.featurizer.blocks) + list(backbone.fused_featurizer.blocks)
    fused_before = [b.attn.fused_attn for b in blocks]
    pixels, ids = tiny.openvla_inputs(model, batch=2)
    with torch.no_grad():
        logits = model(pixels, ids).logits
    generated = tiny.generate(model, pixels, ids)
    with openvla.capture(model, mode="fast") as maps:
        with torch.no_grad():
            logits_fast = model(pixels, ids).logits
        generated_fast = tiny.generate(model, pixels, ids)
        assert model.language_model.config._attn_implementation == "sdpa"  # during the block too
        assert [b.attn.fused_attn for b in blocks] == fused_before
    assert torch.equal(logits, logits_fast), "mode='fast' must not change a single bit of the logits"
    assert torch.equal(generated, generated_fast)
    assert model.language_model.config._attn_implementation == "sdpa"
    assert [b.attn.fused_attn for b in blocks] == fused_before
    assert maps.towers == ["dinov2", "siglip", "llm"]  # the timm towers stay fused and are captured too
    llm = maps.select(tower="llm")
    assert len(llm) == 2 * (1 + 7)  # 2 layers: the forward, then generate's prefill and 6 decode steps
    towers = [len(maps.select(tower=t)) for t in ("dinov2", "siglip")]
    assert towers[0] == towers[1] > 0 and towers[0] % 2 == 0  # the same blocks in the forward and in generate


@needs_fast
def test_fast_paligemma_language_and_siglip_maps_equal_eager_and_outputs_unchanged():
    fast = tiny.paligemma(attn_implementation=None)
    eager = tiny.paligemma()
    eager.load_state_dict(fast.state_dict())
    # token_type_ids as the processor gives them (paligemma_inputs): the eager twin is a model of its own,
    # which without them would run causally where this sdpa one runs bidirectionally (test_eager_unchanged)
    kwargs = dict(tiny.paligemma_inputs(fast, batch=2), do_sample=False, max_new_tokens=3, min_new_tokens=3)
    chosen = fast.config.text_config._attn_implementation  # sdpa; transformers 4.53 picks eager for this config
    reference = fast.generate(**kwargs)
    with paligemma.capture(fast, mode="fast") as fm:
        out = fast.generate(**kwargs)
    assert torch.equal(reference, out)
    assert fast.config.text_config._attn_implementation == chosen
    with paligemma.capture(eager) as em:
        eager.generate(**kwargs)
    assert fm.towers == ["vision", "language"]
    worst = _max_difference(fm, em)
    assert worst <= TOLERANCE, f"fast vs eager: max |difference| {worst:.3g}"


@needs_fast
def test_fast_pi0_prefix_and_denoise_maps_equal_eager_and_actions_unchanged():
    fast = tiny.pi0(attn_implementation=None)
    eager = tiny.pi0()
    eager.load_state_dict(fast.state_dict())
    images, ids, state = tiny.pi0_inputs(fast, batch=2, lengths=[4, 2])
    mask = ids != 0
    reference = fast.sample_actions(images, ids, state, attention_mask=mask)
    with paligemma.capture(fast, mode="fast", state_tokens=1) as fm:
        actions = fast.sample_actions(images, ids, state, attention_mask=mask)
    assert torch.equal(reference, actions)
    with paligemma.capture(eager, state_tokens=1) as em:
        eager.sample_actions(images, ids, state, attention_mask=mask)
    assert [p for _, p in fm.steps] == ["prefix", "denoise", "denoise", "denoise"]
    worst = _max_difference(fm, em)
    assert worst <= TOLERANCE, f"fast vs eager: max |difference| {worst:.3g}"
    prefix = fm.select(tower="language", phase="prefix")[0]
    assert prefix.padding is not None and prefix.padding[1, -2:].all() and not prefix.padding[0].any()
    for m in fm.select(tower="expert"):
        assert (np.asarray(m.array)[1][..., prefix.padding[1].nonzero()[0]] == 0).all()


def _held_bytes(adapter_keys):
    return sum(int(v.nbytes) for key in adapter_keys for v in get_local.cache.get(key, ()))


@pytest.mark.parametrize("heads", [None, "mean", "max"])
def test_fast_selection_keeps_generated_rows_only_and_they_equal_the_full_map(heads):
    fast, _ = _llm_pair()
    ids, mask = _padded_prompt()
    with openvla.capture(fast, mode="fast") as full:
        _generate(fast, ids, mask)
    get_local.clear()
    with openvla.capture(fast, mode="fast", queries="generated", heads=heads) as chosen:
        _generate(fast, ids, mask)
        keys = list(openvla._ADAPTER._keys)  # sdpa_attention_forward, or before 4.48 the Llama attention forwards
        held = _held_bytes(keys)  # inside the block: on exit its calls leave the cache
    decode = full.select(phase="decode")
    assert [m.phase for m in chosen] == ["decode"] * len(decode)
    worst = 0.0
    for a, b in zip(chosen, decode):
        rows = np.asarray(b.array)
        if heads is not None:
            rows = rows.mean(1, keepdims=True) if heads == "mean" else rows.max(1, keepdims=True)
        assert a.shape == rows.shape and a.keys == b.keys and a.queries == b.queries
        worst = max(worst, float(np.abs(np.asarray(a.array) - rows).max()))
    assert worst <= 1e-6, f"selected rows vs the full map: max |difference| {worst:.3g}"
    # what the selection implies: batch x heads kept x 1 query x keys of each decode map, float32;
    # the prefill holds only its [batch, keys] padding
    implied = sum(m.shape[0] * (1 if heads else 4) * 1 * m.shape[-1] * 4 for m in decode)
    padding = 2 * 2 * ids.shape[1]  # two prefill layers, [2, 9] bool
    assert held == implied + padding, (held, implied, padding)
    if heads:
        assert held < 4 * 1024  # kilobytes for every layer of every step


@needs_fast
def test_fast_selection_action_keeps_the_denoise_rows():
    model = tiny.pi0(attn_implementation=None)
    images, ids, state = tiny.pi0_inputs(model, batch=2)
    with paligemma.capture(model, mode="fast", queries="action", heads="mean", state_tokens=1) as maps:
        model.sample_actions(images, ids, state)
    assert {m.phase for m in maps} == {"denoise"} and {m.tower for m in maps} == {"expert"}
    assert all(m.shape[1] == 1 and len(m.queries.find("action")) == 1 for m in maps)


def test_fast_mode_refuses_a_kernel_it_cannot_rebuild_naming_the_module_and_the_way_out():
    llm, _ = _llm_pair()
    llm.config._attn_implementation_internal = "flash_attention_2"
    # the module's class is LlamaAttention from 4.48 on, LlamaSdpaAttention before (its kernel then)
    with pytest.raises(GetLocalError, match=r"Llama\w*Attention \(model\.layers\.0\.self_attn\).*mode='eager'"):
        openvla.activate(llm, mode="fast")
    assert not openvla.is_active()


def test_fast_mode_refuses_attention_dropout_in_training_and_skips_a_call_that_meets_it():
    fast, _ = _llm_pair()
    fast.config.attention_dropout = 0.1
    for layer in fast.model.layers:
        layer.self_attn.attention_dropout = 0.1
    ids, mask = _padded_prompt()
    fast.train()
    with pytest.raises(GetLocalError, match=r"training mode with attention dropout 0.1.*model\.eval\(\)"):
        openvla.activate(fast, mode="fast")
    assert not openvla.is_active()
    fast.eval()
    with openvla.capture(fast, mode="fast") as maps:
        fast.train()  # after activation: the kernel's dropped weights are random, so no map is kept
        with pytest.warns(RuntimeWarning, match="attention dropout 0.1"):
            fast(input_ids=ids, attention_mask=mask)
    assert len(maps) == 0
