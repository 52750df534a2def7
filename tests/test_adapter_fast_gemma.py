"""mode='fast' on PaliGemma with Gemma 1, 2 and 3 language models, and in bfloat16.

What fast mode claims: the map it returns is the one the model's attention
kernel used. Two independent witnesses check that claim here:

* the eager twin (same weights, ``attn_implementation='eager'``): its maps are
  transformers' own ``attn_weights``;
* the kernel itself: the ``value`` and ``attn_output`` of every
  ``sdpa_attention_forward`` call, captured in a second identical run with
  ``get_local`` (the adapter off). ``map @ value`` must give the kernel's output,
  whatever eager would have computed (transformers 4.53's sdpa drops Gemma 2's
  soft-capping: there the fast map follows sdpa, not eager).

The tiny models have random weights, whose attention is nearly uniform; the
queries are scaled up (``_peaked``) so that the maps are sharp and a wrong
mask, scale or cap would show.
"""
import sys

import numpy as np
import pytest
from required import attention_interface, import_or_skip

torch = import_or_skip("paligemma", "torch")
transformers = import_or_skip("paligemma", "transformers")

from getlocal import get_local  # noqa: E402
from getlocal.adapters import openvla, paligemma, tiny  # noqa: E402

FAST = attention_interface()

pytestmark = [
    pytest.mark.skipif(not FAST, reason=f"mode='fast' needs transformers >= 4.48; this is {transformers.__version__}"),
    pytest.mark.usefixtures("adapters_off"),
]

TOLERANCE = 1e-5  # float32: fast, eager and the kernel differ only in the order of float operations
PAD = 2  # item 0 of every batch is left-padded by this many tokens
NEW_TOKENS = 4  # generate(): a prefill and 3 decode steps
TEXTS = ["gemma", "gemma2", "gemma3"]
WINDOW = 4  # gemma2/gemma3 sliding window: shorter than every tiny prompt (9 or 13 tokens)
SOFTCAP = 5.0  # gemma2's attn_logit_softcapping: small enough to change the peaked maps


def _needs(text):
    if text == "gemma3" and not hasattr(transformers, "Gemma3ForCausalLM"):
        pytest.skip(f"transformers {transformers.__version__} has no Gemma 3")


def _peaked(model, gain=30.0):
    """Scale the language model's queries so its attention is far from uniform (weights change, not code)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("self_attn") and hasattr(module, "q_proj") and "vision" not in name:
                if hasattr(module, "q_norm"):  # Gemma 3 normalises q: its norm's (1 + weight) is the gain
                    module.q_norm.weight.fill_(gain / 10 - 1)
                else:
                    module.q_proj.weight.mul_(gain)
    return model


def _pair(text, dtype=torch.float32):
    """A PaliGemma on sdpa where transformers allows it (else its default), and an eager twin with its weights."""
    options = dict(text=text, sliding_window=WINDOW, softcapping=SOFTCAP)
    try:
        fast = tiny.paligemma(attn_implementation="sdpa", **options)
    except ValueError as refused:  # transformers 5: "Gemma2Model does not support ... scaled_dot_product_attention"
        assert text == "gemma2", refused
        fast = tiny.paligemma(attn_implementation=None, **options)
    _peaked(fast)
    eager = tiny.paligemma(**options)
    eager.load_state_dict(fast.state_dict())
    return fast.to(dtype), eager.to(dtype)


def _padded_inputs(model, images, dtype=torch.float32):
    """Batch 2, item 0 left-padded by PAD tokens (its prompt is PAD text tokens shorter), as generate() wants."""
    inputs = tiny.paligemma_inputs(model, images=images, batch=2, text_tokens=4)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    ids[0] = torch.cat([torch.zeros(PAD, dtype=ids.dtype), ids[0, :-PAD]])
    mask[0, :PAD] = 0
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return dict(inputs, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)


def _kernel_calls(run):
    """The locals of every ``sdpa_attention_forward`` call of ``run()`` as the kernel returned, in call order."""
    from transformers.integrations import sdpa_attention

    sdpa = sdpa_attention.sdpa_attention_forward

    def keep(owner, values):
        return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in values.items()}

    names = ("module", "query", "key", "value", "attention_mask", "scaling", "is_causal", "attn_output")
    get_local(*names, keep=keep)(sdpa)
    try:
        with get_local.capture(convert="raw"):
            run()
        return list(get_local.cache.get(get_local.key_of(sdpa), []))
    finally:
        get_local.remove(sdpa)
        get_local.clear()


def _unpacked(call):
    """``query [B, H, Q, D]``, ``key`` / ``value`` with the key heads as the module has them, mask, output ``[B, H, Q, D]``.

    Undoes what sdpa_attention_forward did to its locals before returning:
    ``pack_gqa`` (one query: ``[B, H/n, n, D]``) and ``repeat_kv`` (grouped keys copied per head).
    """
    out = call["attn_output"].transpose(1, 2)
    batch, heads, q_len = out.shape[:3]
    query = call["query"].reshape(batch, heads, q_len, -1)
    groups = getattr(call["module"], "num_key_value_groups", 1)
    key, value = call["key"], call["value"]
    if key.shape[1] == heads and groups > 1:  # repeat_kv ran: each key head n times in a row
        key, value = key[:, ::groups], value[:, ::groups]
    mask = call["attention_mask"]
    if mask is not None and mask.shape[-2] not in (q_len, 1):
        mask = mask.reshape(mask.shape[0], -1, q_len, mask.shape[-1])
    return query, key, value, mask, out


def _expanded(t, heads):
    return t.repeat_interleave(heads // t.shape[1], dim=1) if t.shape[1] != heads else t


def _real_rows(m):
    """Query rows of real tokens: a padded prompt's padding queries see nothing (collect() gives them rows of 0)."""
    rows = np.ones(m.shape[0:1] + m.shape[2:3], dtype=bool)
    if m.padding is not None and m.shape[2] == m.shape[3]:  # a prompt's map: its queries are its keys
        rows &= ~np.asarray(m.padding)
    return rows


def _kernel_difference(sdpa_maps, calls):
    """max |map @ value - the kernel's output| over real query rows: the map is the one the kernel used."""
    assert len(sdpa_maps) == len(calls) > 0
    worst = 0.0
    for m, call in zip(sdpa_maps, calls):
        _, _, value, _, out = _unpacked(call)
        weights = torch.as_tensor(np.asarray(m.array), dtype=torch.float64)
        assert weights.shape[:3] == out.shape[:3] and weights.shape[-1] == value.shape[2], (m, out.shape)
        rebuilt = weights @ _expanded(value, out.shape[1]).double()
        diff = (rebuilt - out.double()).abs().amax(dim=(1, 3)).numpy()  # [B, Q]
        worst = max(worst, float(diff[_real_rows(m)].max()))
    return worst


def _sdpa_maps(maps, model):
    """The maps whose kernel was sdpa, in call order (collect orders by step, then vision before language)."""
    kernels = {"vision": model.config.vision_config._attn_implementation,
               "language": model.config.text_config._attn_implementation}
    return [m for m in maps if kernels[m.tower] == "sdpa"]


def _max_difference(fast_maps, eager_maps):
    assert len(fast_maps) == len(eager_maps) > 0
    worst = 0.0
    for a, b in zip(fast_maps, eager_maps):
        assert (a.tower, a.layer, a.step, a.phase, a.shape) == (b.tower, b.layer, b.step, b.phase, b.shape)
        diff = np.abs(np.asarray(a.array, dtype=np.float64) - np.asarray(b.array, dtype=np.float64)).max(axis=(1, 3))
        worst = max(worst, float(diff[_real_rows(a)].max()))
    return worst


def _report(**measured):
    print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in measured.items()))


def _kernels(model):
    config = model.config
    return tuple(c._attn_implementation for c in (config.get_text_config(), getattr(config, "vision_config", config)))


def _prove(fast, eager, kwargs, text, prompt_tokens):
    """Generated ids untouched, kernel unchanged, maps == the kernel's == eager's; the language maps, for more checks."""
    kernels = _kernels(fast)
    reference = fast.generate(**kwargs)  # the model without getlocal
    with paligemma.capture(fast, mode="fast") as fm:
        generated = fast.generate(**kwargs)
        assert _kernels(fast) == kernels, "mode='fast' switches nothing, during the block too"
    assert torch.equal(reference, generated), "mode='fast' must not change a single generated id"
    assert _kernels(fast) == kernels
    with paligemma.capture(eager) as em:
        eager.generate(**kwargs)
    assert [p for _, p in fm.steps] == ["prefill"] + ["decode"] * (NEW_TOKENS - 1)
    layers = fast.config.get_text_config().num_hidden_layers
    assert len(fm.select(tower="language")) == layers * NEW_TOKENS

    # Witness 1, the kernel: map @ value is what sdpa returned, for every sdpa call (vision and language).
    calls = _kernel_calls(lambda: fast.generate(**kwargs))
    sdpa_maps = [m for m in fm if dict(language=kernels[0], vision=kernels[1])[m.tower] == "sdpa"]
    kernel = _kernel_difference(sdpa_maps, calls) if sdpa_maps else 0.0
    assert kernel <= TOLERANCE, f"map @ value vs the kernel's output: max |difference| {kernel:.3g}"

    # Witness 2, eager: transformers' attn_weights on the same weights.
    versus_eager = _max_difference(fm, em)
    sdpa_drops_softcap = text == "gemma2" and kernels[0] == "sdpa"
    _report(text=text, kernel=kernels[0], sdpa_calls=len(calls), versus_kernel=kernel, versus_eager=versus_eager)
    if sdpa_drops_softcap:
        # transformers 4.53 runs Gemma 2 on sdpa without its soft-capping (sdpa takes `softcap` and ignores it;
        # 5.x refuses sdpa for Gemma 2). The model computed uncapped attention, so that is the map returned:
        # it differs from eager's capped one, while matching the kernel's output above.
        assert versus_eager > 1e-3, "a soft-capped map would mean fast mode showed what the kernel did not compute"
    else:
        assert versus_eager <= TOLERANCE, f"fast vs eager: max |difference| {versus_eager:.3g}"

    for m, e in zip(fm.select(tower="language"), em.select(tower="language")):
        a, b = np.asarray(m.array), np.asarray(e.array)
        if a.shape[-1] == prompt_tokens + m.step:  # the cache holds every key (not a slid window)
            assert (a[0][:, PAD if m.phase == "prefill" else 0:, :PAD] == 0).all(), f"{m}: a padded key is weighted"
        if not sdpa_drops_softcap:  # every key eager masks (exactly 0) fast masks too, and no other
            assert ((a == 0) == (b == 0)).transpose(0, 2, 1, 3)[_real_rows(m)].all(), f"{m}: masked keys differ"
    return fm.select(tower="language")


def _older_than_window(m):
    """``[Q, K]`` bool: the keys more than WINDOW - 1 positions before each query (the map's last row is the newest)."""
    q_len, k_len = m.shape[2:]
    position = np.arange(q_len)[:, None] + (k_len - q_len)
    return np.arange(k_len)[None, :] <= position - WINDOW


@pytest.mark.parametrize("images", [1, 2], ids=["one_camera", "two_cameras"])
@pytest.mark.parametrize("text", TEXTS)
def test_fast_paligemma_maps_are_the_kernels_own_prefill_and_decode_with_padding(text, images):
    _needs(text)
    fast, eager = _pair(text)
    kwargs = _padded_inputs(fast, images)
    # The last two prompt tokens as a suffix (token_type_ids 1, causal), as in PaliGemma's training layout: the
    # bidirectional prefix ignores the sliding window (transformers 5), a causal token does not.
    kwargs["token_type_ids"][:, -2:] = 1
    language = _prove(fast, eager, kwargs, text, kwargs["input_ids"].shape[1])
    assert {m.phase for m in language} == {"prefill", "decode"}
    layer_types = getattr(fast.config.text_config, "layer_types", None)
    sliding = [m for m in language if layer_types and layer_types[m.layer] == "sliding_attention"]
    if sliding and int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 4.53's PaliGemma passes one 4D mask, without windows, to every layer (eager and sdpa alike);
        # 5.x windows the causal rows of the prefill and slides the cache of a decode step
        prefill = np.asarray(sliding[0].array)[:, :, -2:]  # the two suffix queries
        old = _older_than_window(sliding[0])[-2:]
        assert old.any() and (prefill[:, :, old] == 0).all(), "a key older than the window is weighted"
        assert all(m.shape[-1] <= WINDOW for m in sliding if m.phase == "decode")


@pytest.mark.parametrize("text", ["gemma2", "gemma3"])
def test_fast_gemma_sliding_window_layers_decode_past_the_window(text):
    """The language model alone (Gemma2/Gemma3ForCausalLM): windows in the mask in every version, past the prompt."""
    _needs(text)
    import copy

    config = tiny.paligemma(text=text, sliding_window=WINDOW, softcapping=SOFTCAP).config.text_config
    auto = transformers.AutoModelForCausalLM
    fast = _peaked(auto.from_config(copy.deepcopy(config), attn_implementation="sdpa")
                   if text == "gemma3" or int(transformers.__version__.split(".")[0]) < 5
                   else auto.from_config(copy.deepcopy(config))).eval()  # transformers 5: Gemma 2 is eager only
    eager = auto.from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    eager.load_state_dict(fast.state_dict())
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[0, :PAD], mask[0, :PAD] = 0, 0
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW_TOKENS,
                  min_new_tokens=NEW_TOKENS, pad_token_id=0)
    language = _prove(fast, eager, kwargs, text, ids.shape[1])
    sliding = [m for m in language if config.layer_types[m.layer] == "sliding_attention"]
    assert sliding
    for m in sliding:
        old = _older_than_window(m)
        assert (np.asarray(m.array)[:, :, old] == 0).all(), f"{m}: a key older than the window is weighted"
        assert m.phase == "decode" or old.any()


# -- bfloat16 ---------------------------------------------------------------------------------------------------
#
# eager and sdpa round differently in bfloat16, so an eager twin's maps drift from the fast model's after the first
# layer (its hidden states differ by bf16 rounding). What fast mode claims is narrower and exact: its map is eager's
# arithmetic on the very query and key the kernel got. That is checked against transformers' own
# eager_attention_forward, called on the kernel's inputs; the eager twin is compared with a bfloat16 tolerance.

BF16_SAME_INPUTS = 0.0  # the same operations on the same tensors: bit for bit
BF16_TWIN = 2 ** -5  # a few bf16 ulps of a weight near 1 (2^-8), grown by drifted hidden states (measured <= 0.0117)


def _eager_on_the_kernels_inputs(call):
    """transformers' own ``eager_attention_forward`` (of the module's model) on the inputs the sdpa kernel got."""
    query, key, value, mask, _ = _unpacked(call)
    module = call["module"]
    eager = sys.modules[type(module).__module__].eager_attention_forward
    if mask is None and call["is_causal"]:  # sdpa's is_causal (top-left aligned), as a mask
        mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool).tril()[None, None]
    if mask is not None and mask.dtype == torch.bool:  # transformers' eager mask: 0 where seen, the minimum elsewhere
        mask = torch.zeros(mask.shape, dtype=query.dtype).masked_fill(~mask, torch.finfo(query.dtype).min)
    with torch.no_grad():
        return eager(module, query, key, value, mask, scaling=call["scaling"], dropout=0.0)[1]


def _bf16_versus_same_inputs(maps, calls, kernels):
    sdpa_maps = [m for m in maps if kernels.get(m.tower) == "sdpa"]
    assert len(sdpa_maps) == len(calls) > 0
    worst = 0.0
    for m, call in zip(sdpa_maps, calls):
        assert call["query"].dtype == torch.bfloat16
        want = _eager_on_the_kernels_inputs(call).float().numpy()
        got = np.asarray(m.array)
        assert got.shape == want.shape, (m, want.shape)
        diff = np.abs(got - want).max(axis=(1, 3))
        worst = max(worst, float(diff[_real_rows(m)].max()))
    return worst


def _llama_bf16_pair():
    fast = tiny.openvla(attn_implementation=None).language_model
    eager = tiny.openvla(attn_implementation="eager").language_model
    eager.load_state_dict(fast.state_dict())
    return _peaked(fast).to(torch.bfloat16), _peaked(eager).to(torch.bfloat16)


def test_fast_bfloat16_llama_logits_and_ids_untouched_and_maps_are_eagers_arithmetic_on_the_same_inputs():
    fast, eager = _llama_bf16_pair()
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[0, :PAD], mask[0, :PAD] = 0, 0
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW_TOKENS,
                  min_new_tokens=NEW_TOKENS, pad_token_id=0)
    with torch.no_grad():
        logits = fast(input_ids=ids, attention_mask=mask).logits
    generated = fast.generate(**kwargs)
    with openvla.capture(fast, mode="fast") as fm:
        with torch.no_grad():
            logits_fast = fast(input_ids=ids, attention_mask=mask).logits
        generated_fast = fast.generate(**kwargs)
    assert torch.equal(logits, logits_fast) and torch.equal(generated, generated_fast)
    assert fast.config._attn_implementation == "sdpa"
    calls = _kernel_calls(lambda: (fast(input_ids=ids, attention_mask=mask), fast.generate(**kwargs)))
    same = _bf16_versus_same_inputs(fm, calls, {"llm": "sdpa"})
    with openvla.capture(eager) as em:
        with torch.no_grad():
            eager(input_ids=ids, attention_mask=mask)
        eager.generate(**kwargs)
    twin = _max_difference(fm, em)
    _report(model="llama-bf16", versus_same_inputs=same, versus_eager_twin=twin)
    assert same <= BF16_SAME_INPUTS, f"fast vs eager's arithmetic on the kernel's inputs: {same:.3g}"
    assert twin <= BF16_TWIN, f"fast vs the eager twin: {twin:.3g}"


def test_fast_bfloat16_paligemma_ids_untouched_and_maps_are_eagers_arithmetic_on_the_same_inputs():
    fast, eager = _pair("gemma", torch.bfloat16)
    kwargs = _padded_inputs(fast, 2, torch.bfloat16)
    reference = fast.generate(**kwargs)
    with paligemma.capture(fast, mode="fast") as fm:
        generated = fast.generate(**kwargs)
    assert torch.equal(reference, generated)
    assert _kernels(fast) == ("sdpa", "sdpa")
    calls = _kernel_calls(lambda: fast.generate(**kwargs))
    same = _bf16_versus_same_inputs(fm, calls, {"language": "sdpa", "vision": "sdpa"})
    with paligemma.capture(eager) as em:
        eager.generate(**kwargs)
    twin = _max_difference(fm, em)
    _report(model="paligemma-bf16", versus_same_inputs=same, versus_eager_twin=twin)
    assert same <= BF16_SAME_INPUTS, f"fast vs eager's arithmetic on the kernel's inputs: {same:.3g}"
    assert twin <= BF16_TWIN, f"fast vs the eager twin: {twin:.3g}"


def test_fast_bfloat16_pi0_actions_untouched_and_maps_are_eagers_arithmetic_on_the_same_inputs():
    fast = tiny.pi0(attn_implementation="sdpa")
    eager = tiny.pi0()
    eager.load_state_dict(fast.state_dict())
    fast, eager = fast.to(torch.bfloat16), eager.to(torch.bfloat16)
    images, ids, state = tiny.pi0_inputs(fast, batch=2, lengths=[4, 2])
    images, state, mask = [i.to(torch.bfloat16) for i in images], state.to(torch.bfloat16), ids != 0
    reference = fast.sample_actions(images, ids, state, attention_mask=mask)
    with paligemma.capture(fast, mode="fast", state_tokens=1) as fm:
        actions = fast.sample_actions(images, ids, state, attention_mask=mask)
    assert reference.dtype == torch.bfloat16 and torch.equal(reference, actions)
    calls = _kernel_calls(lambda: fast.sample_actions(images, ids, state, attention_mask=mask))
    same = _bf16_versus_same_inputs(fm, calls, {"language": "sdpa", "vision": "sdpa"})
    with paligemma.capture(eager, state_tokens=1) as em:
        eager.sample_actions(images, ids, state, attention_mask=mask)
    twin = _max_difference(fm, em)
    _report(model="pi0-bf16", versus_same_inputs=same, versus_eager_twin=twin)
    assert same <= BF16_SAME_INPUTS, f"fast vs eager's arithmetic on the kernel's inputs: {same:.3g}"
    assert twin <= BF16_TWIN, f"fast vs the eager twin: {twin:.3g}"


@pytest.mark.parametrize("mode", ["eager", "fast"])
def test_a_sliding_window_layers_decode_map_is_labelled_with_the_last_keys_of_the_sequence(mode):
    """A cache that keeps only the window gives decode maps of fewer keys: they are the newest positions."""
    _needs("gemma3")
    import copy

    config = tiny.paligemma(text="gemma3", sliding_window=WINDOW).config.text_config
    model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    ids = torch.randint(3, 100, (1, 9), generator=torch.Generator().manual_seed(2))
    with paligemma.capture(model, mode=mode) as maps:
        model.generate(input_ids=ids, do_sample=False, max_new_tokens=3, min_new_tokens=3, pad_token_id=0)
    for step, phase in maps.steps:
        if phase != "decode":
            continue
        full, *_ = [m for m in maps.select(step=step) if config.layer_types[m.layer] == "full_attention"]
        total = full.shape[-1]
        for m in maps.select(step=step):
            assert m.keys == full.keys.window(total - m.shape[-1], total)
            assert m.queries.find("generated") and len(m.keys.find("generated")[0]) == min(step, m.shape[-1])
