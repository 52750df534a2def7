"""Token-kind attention shares: constructed maps with known shares, padding, and real tiny-VLA captures."""
import numpy as np
import pytest

from getlocal import get_local, patterns
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

LAYOUT = TokenLayout([Segment("image", 0, 4, camera="base", grid=(2, 2)), Segment("image", 4, 8, camera="wrist", grid=(2, 2)),
                      Segment("bos", 8, 9), Segment("text", 9, 12), Segment("action", 12, 14)])


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_shares_of_a_softmax_map_sum_to_one_over_key_kinds():
    a = softmax(np.random.default_rng(0).normal(size=(2, 3, 14, 14)))
    s = patterns.kind_shares(a, LAYOUT, LAYOUT)
    assert s.values.shape == (3, 5, 5) and s.key_kinds == ("image:base", "image:wrist", "bos", "text", "action")
    assert np.allclose(s.values.sum(-1), 1)


def test_a_constructed_map_returns_its_known_shares_per_camera():
    a = np.zeros((1, 14, 14))
    a[0, :, 8] = 1.0                     # everyone on BOS ...
    a[0, 9:12, :] = 0
    a[0, 9:12, 0:4] = 0.6 / 4            # ... but text: 60 % base camera, 40 % wrist
    a[0, 9:12, 4:8] = 0.4 / 4
    a[0, 12:, :] = 1 / 14                # actions: uniform
    s = patterns.kind_shares(a, LAYOUT, LAYOUT)
    assert s.share("text", "image:base").tolist() == pytest.approx([0.6])
    assert s.share("text", "image").tolist() == pytest.approx([1.0])
    assert s.share("action", "image").tolist() == pytest.approx([8 / 14])  # uniform: token count / K
    assert s.share("bos", "bos").tolist() == [1.0]
    with pytest.raises(ValueError, match="key='padding' is not a key kind here"):
        s.share("text", "padding")


def test_padded_positions_count_as_padding_per_item():
    a = np.full((2, 1, 14, 14), 1 / 14)
    pad = np.zeros((2, 14), bool)
    pad[1, 10:12] = True                 # item 1 pads two text positions
    s = patterns.kind_shares(a, LAYOUT, LAYOUT, padding=pad)
    assert "padding" in s.key_kinds and "padding" in s.query_kinds
    # mean over the 4 text queries (3 of item 0, 1 of item 1): 3 give 0 to padding, 1 gives 2/14
    assert s.share("text", "padding")[0] == pytest.approx((1 * 2 / 14) / 4)
    assert np.allclose(s.values.sum(-1)[~np.isnan(s.values.sum(-1))], 1)


def test_decode_map_uses_the_query_window_of_the_layout():
    a = np.zeros((1, 2, 14)); a[0, :, :4] = 0.25
    s = patterns.kind_shares(a, LAYOUT.window(12, 14), LAYOUT)
    assert s.query_kinds == ("action",) and s.share("action", "image:base").tolist() == [1.0]
    with pytest.raises(ValueError, match="pass the layouts of this map"):
        patterns.kind_shares(a, LAYOUT, LAYOUT)


def test_maps_stack_their_shares_by_layer_and_label_the_rows():
    maps = AttentionMaps([AttentionMap(np.full((1, 2, 14, 14), 1 / 14), "llm", i, f"l{i}", 0, "prefill", i, LAYOUT, LAYOUT)
                          for i in range(3)])
    s = maps.kind_shares()
    assert s.values.shape == (3, 2, 5, 5) and [r["layer"] for r in s.rows] == [0, 1, 2]
    rec = s.to_records()[0]
    assert rec["layer"] == 0 and rec["query"] == "image:base" and rec["bos"] == pytest.approx(1 / 14)


def test_tiny_pi0_with_padded_prompts_marks_the_padding_and_scores_without_it():
    pytest.importorskip("transformers")
    import torch  # noqa: F401

    from getlocal.adapters import paligemma, tiny

    model = tiny.pi0()
    images, ids, state = tiny.pi0_inputs(model, batch=2, text_tokens=5, lengths=[5, 3])
    paligemma.activate(model)
    try:
        model.sample_actions(images, ids, state, attention_mask=ids != 0, steps=1)
        maps = paligemma.collect(state_tokens=1)
    finally:
        paligemma.deactivate()
        get_local.clear()
    prefix = maps.select(tower="language", phase="prefix")
    assert all(np.flatnonzero(m.padding[1]).tolist() == [11, 12] and not m.padding[0].any() for m in prefix)
    expert = maps.select(tower="expert")[0]
    assert expert.padding.shape == (2, expert.shape[-1]) and expert.padding[1, 11:13].all()
    shares = expert.kind_shares()
    assert np.allclose(shares.share("action", "padding"), 0)  # the mask hides it: nothing spreads onto it
    assert np.allclose(shares.values.sum(-1), 1)
    m = prefix[0]
    got = patterns.head_scores(m.array, exclude=m.padding, causal=True)
    short = patterns.head_scores(m.array[1:, :, :11, :11], causal=True)  # the unpadded item 1
    full0 = patterns.head_scores(m.array[:1], causal=True)
    assert np.allclose(got["entropy_norm"], (short["entropy_norm"] + full0["entropy_norm"]) / 2, atol=1e-5)
    table = maps.select(tower="language", phase="prefix").kind_shares()
    assert table.values.shape[0] == 2 and "padding" in table.key_kinds


def test_a_batch_padded_everywhere_gets_a_padding_segment_in_its_layout():
    pytest.importorskip("transformers")
    from getlocal.adapters import paligemma, tiny

    model = tiny.pi0()
    images, ids, state = tiny.pi0_inputs(model, batch=1, text_tokens=5, lengths=[3])
    paligemma.activate(model)
    try:
        model.sample_actions(images, ids, state, attention_mask=ids != 0, steps=1)
        maps = paligemma.collect(state_tokens=1)
    finally:
        paligemma.deactivate()
        get_local.clear()
    keys = maps.select(tower="language")[0].keys
    assert [(s.kind, s.start, s.stop) for s in keys.find("padding")] == [("padding", 11, 13)]
    assert keys.indices("text").tolist() == [9, 10]
