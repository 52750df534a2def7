"""The rows of padding queries (every key masked) are exactly 0 in collect()'s maps, in both modes.

Eager's softmax gives such a row 1/K over every key, future ones included;
torch's sdpa kernel gives it 0. A left-padded prompt (OpenVLA's Llama, as
``generate()`` pads a batch) and Pi0's right-padded prefix are the two layouts;
each test runs the eager model and an sdpa copy of the same weights in fast mode.
"""
import numpy as np
import pytest
from required import attention_interface, import_or_skip

torch = import_or_skip("openvla", "torch")
transformers = import_or_skip("openvla", "transformers")

from getlocal import get_local  # noqa: E402
from getlocal.adapters import openvla, paligemma, tiny  # noqa: E402
from getlocal.tokens import visible_until  # noqa: E402

pytestmark = pytest.mark.usefixtures("adapters_off")

TOLERANCE = 1e-5  # float32 fast vs eager, as in test_adapter_fast
PAD = 3  # item 0 pads its first PAD positions, item 1 none
LENGTH = 9


def _llm_pair():
    """The tiny OpenVLA's Llama on sdpa and an eager copy of the same weights."""
    fast = tiny.openvla(attn_implementation=None).language_model
    eager = tiny.openvla(attn_implementation="eager").language_model
    eager.load_state_dict(fast.state_dict())
    return fast, eager


def _padded_prompt():
    ids = torch.randint(3, 128, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    ids[0, :PAD], mask[0, :PAD] = 0, 0
    return ids, mask


def _generate(llm, ids, mask, n=3):
    return llm.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                        min_new_tokens=n, pad_token_id=0)


def _worst(fast_maps, eager_maps):
    assert len(fast_maps) == len(eager_maps) > 0
    return max(float(np.abs(np.asarray(a.array) - np.asarray(b.array)).max()) for a, b in zip(fast_maps, eager_maps))


def test_padding_query_rows_are_exactly_zero_in_eager_and_fast_maps_and_fast_still_equals_eager():
    fast, eager = _llm_pair()
    ids, mask = _padded_prompt()
    with openvla.capture(eager) as em:
        _generate(eager, ids, mask)
    with openvla.capture(fast, mode="fast") as fm:
        _generate(fast, ids, mask)
    for maps in (em, fm):
        prefill = maps.select(phase="prefill")
        assert len(prefill) == 2
        for m in prefill:
            a = np.asarray(m.array)
            assert m.padding[0, :PAD].all() and not m.padding[0, PAD:].any() and not m.padding[1].any()
            assert (a[0, :, :PAD] == 0).all(), f"{m}: a padding query's row is not 0: {a[0, 0, :PAD]}"
            np.testing.assert_allclose(a[0, :, PAD:].sum(-1), 1, atol=1e-5)  # real queries: softmax rows
            np.testing.assert_allclose(a[1].sum(-1), 1, atol=1e-5)
            assert visible_until(a)[0, :PAD].tolist() == [-1] * PAD  # read as "sees nothing"
    worst = _worst(fm, em)  # every row, the padding queries' included
    assert worst <= TOLERANCE, f"fast vs eager: max |difference| {worst:.3g}"


def test_eager_real_rows_are_the_models_own_and_the_models_tensors_are_not_changed():
    _, eager = _llm_pair()
    ids, mask = _padded_prompt()
    with openvla.capture(eager) as maps:
        with torch.no_grad():
            out = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(maps) == len(out.attentions) == 2
    for m, weights in zip(maps, out.attentions):
        w = weights.numpy()
        # what eager computed for a padding query: 1/K over every key, future ones included (left untouched)
        np.testing.assert_array_equal(w[0, :, :PAD], np.full_like(w[0, :, :PAD], w[0, 0, 0, 0]))
        assert w[0, 0, 0, 0] == pytest.approx(1 / LENGTH)
        a = np.asarray(m.array)
        assert (a[0, :, :PAD] == 0).all()
        np.testing.assert_array_equal(a[0, :, PAD:], w[0, :, PAD:])  # real rows: unchanged, bit for bit
        np.testing.assert_array_equal(a[1], w[1])


@pytest.mark.parametrize("heads", [None, "mean"])
@pytest.mark.parametrize("mode", ["eager", "fast"])
def test_rows_kept_by_index_blank_their_padding_queries(mode, heads):
    fast, eager = _llm_pair()
    model = fast if mode == "fast" else eager
    ids, mask = _padded_prompt()
    with openvla.capture(model, mode=mode, queries=[0, -1], heads=heads) as maps:
        model(input_ids=ids, attention_mask=mask)
    with openvla.capture(eager) as full:
        eager(input_ids=ids, attention_mask=mask)
    for m, whole in zip(maps, full):
        a, w = np.asarray(m.array), np.asarray(whole.array)
        if heads == "mean":
            w = w.mean(1, keepdims=True)
        assert m.rows.tolist() == [0, LENGTH - 1]
        assert (a[0, :, 0] == 0).all(), f"{m}: padding query 0 kept by index is not 0"
        np.testing.assert_allclose(a, w[:, :, [0, -1]], atol=TOLERANCE)


def test_a_map_in_the_autograd_graph_is_left_as_computed():
    _, eager = _llm_pair()
    ids, mask = _padded_prompt()
    with openvla.capture(eager, convert="raw") as maps:
        out = eager(input_ids=ids, attention_mask=mask)
    arrays = [m.array for m in maps]
    assert all(a.requires_grad for a in arrays)
    assert torch.allclose(arrays[0][0, :, :PAD], torch.tensor(1 / LENGTH))  # eager's 1/K, as the README says
    grads = torch.autograd.grad(out.logits[1, -1].sum(), arrays)  # the maps are the tensors the model used
    assert all(g is not None for g in grads)


def test_the_cache_keeps_what_eager_computed():
    _, eager = _llm_pair()
    ids, mask = _padded_prompt()
    openvla.activate(eager)
    eager(input_ids=ids, attention_mask=mask)
    maps = openvla.collect(eager)
    openvla.deactivate()
    cached = [v for values in get_local.cache.values() for v in values]
    assert len(cached) == len(maps) == 2
    for value, m in zip(cached, maps):
        assert (value[0, :, :PAD] > 0).all() and (np.asarray(m.array)[0, :, :PAD] == 0).all()


@pytest.mark.skipif(not attention_interface(), reason="Pi0's fast mode needs transformers' attention interface")
def test_pi0_right_padded_prefix_queries_are_zero_in_both_modes_and_the_expert_is_unchanged():
    fast = tiny.pi0(attn_implementation=None)
    eager = tiny.pi0()
    eager.load_state_dict(fast.state_dict())
    images, ids, state = tiny.pi0_inputs(fast, batch=2, lengths=[4, 2])
    mask = ids != 0
    with paligemma.capture(fast, mode="fast", state_tokens=1) as fm:
        fast.sample_actions(images, ids, state, attention_mask=mask)
    with paligemma.capture(eager, state_tokens=1) as em:
        eager.sample_actions(images, ids, state, attention_mask=mask)
    for maps in (em, fm):
        for prefix in maps.select(tower="language", phase="prefix"):
            a = np.asarray(prefix.array)
            padded = prefix.padding[1].nonzero()[0]
            assert len(padded) == 2 and not prefix.padding[0].any()
            assert (a[1][:, padded] == 0).all(), f"{prefix}: a padding query's row is not 0"
            real = np.setdiff1d(np.arange(a.shape[-1]), padded)
            np.testing.assert_allclose(a[1][:, real].sum(-1), 1, atol=1e-5)
            np.testing.assert_allclose(a[0].sum(-1), 1, atol=1e-5)
        for m in maps.select(tower="expert"):  # the suffix queries are real: softmax rows
            np.testing.assert_allclose(np.asarray(m.array).sum(-1), 1, atol=1e-5)
    worst = _worst(fm, em)
    assert worst <= TOLERANCE, f"fast vs eager: max |difference| {worst:.3g}"


@pytest.mark.parametrize("mode", ["eager", "fast"])
def test_a_padding_query_that_sees_real_keys_keeps_its_softmax_row(mode):
    """Right padding under a causal mask: the padded queries see the real tokens before them."""
    fast, eager = _llm_pair()
    model = fast if mode == "fast" else eager
    ids, mask = _padded_prompt()
    ids[0], mask[0] = ids[0].roll(-PAD), mask[0].roll(-PAD)  # item 0 pads its last PAD positions
    with openvla.capture(model, mode=mode) as maps:
        model(input_ids=ids, attention_mask=mask)
    for m in maps:
        a = np.asarray(m.array)
        assert m.padding[0, -PAD:].all() and not m.padding[0, :-PAD].any()
        np.testing.assert_allclose(a.sum(-1), 1, atol=1e-5)  # every row a softmax, the padded ones too
        assert (a[0, :, -PAD:, -PAD:] == 0).all()  # the padded keys are masked for them as for everyone
