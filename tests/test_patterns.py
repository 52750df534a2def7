"""Pattern scores on synthetic maps whose answers are known in closed form."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from getlocal import patterns

from synthetic import four_neighbour, identity, one_hot_column, uniform




def causal_uniform(q, k):
    """Query i (at key K - Q + i) spreads evenly over the keys it can see."""
    a = np.zeros((1, q, k))
    for i in range(q):
        a[0, i, : k - q + i + 1] = 1.0 / (k - q + i + 1)
    return a


# --------------------------------------------------------------------------- reference values


def test_identity_map_has_self_mass_one_distance_zero_entropy_zero():
    a = identity(196)
    assert patterns.self_mass(a)[0] == 1
    assert patterns.mean_attention_distance(a)[0] == 0
    assert patterns.attention_entropy(a)[0] == 0
    assert patterns.attention_entropy(a, normalize=False)[0] == 0


def test_uniform_attention_on_14x14_has_distance_7_281_and_entropy_ln_196():
    a = uniform(196)
    assert round(float(patterns.mean_attention_distance(a, grid=(14, 14))[0]), 3) == 7.281
    assert abs(patterns.attention_entropy(a, normalize=False)[0] - np.log(196)) < 1e-12
    assert abs(patterns.attention_entropy(a)[0] - 1) < 1e-12


def test_uniform_attention_on_16x16_has_distance_8_326():
    assert round(float(patterns.mean_attention_distance(uniform(256))[0]), 3) == 8.326


def test_one_hot_column_has_top_key_mass_one_and_zero_mutual_information():
    a = one_hot_column(196, 37)
    assert patterns.top_key_mass(a)[0] == 1
    assert patterns.query_key_nmi(a)[0] == 0


def test_pure_four_neighbour_head_has_distance_one():
    assert patterns.mean_attention_distance(four_neighbour(14, 14))[0] == 1


# --------------------------------------------------------------------------- diagonal


def test_self_mass_of_decode_map_reads_query_i_at_key_k_minus_q_plus_i():
    q, k = 3, 10
    a = np.zeros((1, q, k))
    a[0, np.arange(q), k - q + np.arange(q)] = 1.0  # each new token looks at itself
    assert patterns.self_mass(a)[0] == 1
    a_wrong = np.zeros((1, q, k))
    a_wrong[0, np.arange(q), np.arange(q)] = 1.0  # top-left alignment is not the self position
    assert patterns.self_mass(a_wrong)[0] == 0


def test_offset_profile_of_stripe_head_peaks_at_one_and_grid_width():
    h = w = 6
    a = four_neighbour(h, w)
    d, s = patterns.offset_profile(a, max_offset=w + 1)
    peaks = set(d[np.argsort(-s[0])[:4]].tolist())
    assert peaks == {-1, 1, -w, w}
    assert s[0, d.tolist().index(0)] == 0


def test_offset_profile_averages_only_over_existing_pairs():
    a = np.eye(5, k=4)[None]  # only query 0 has a key 4 positions to the right
    d, s = patterns.offset_profile(a)
    assert d[0] == -4 and d[-1] == 4
    assert s[0, d.tolist().index(4)] == 1
    assert s[0, d.tolist().index(-4)] == 0


# --------------------------------------------------------------------------- stripes


def test_neighbour_map_never_wraps_across_row_ends():
    h, w = 4, 5
    a = np.zeros((1, h * w, h * w))
    for q in range(h * w):
        r, c = divmod(q, w)
        # look right; the last patch of a row looks at the first of the same row
        a[0, q, r * w + (c + 1) % w] = 1.0
    m = patterns.neighbour_map(a, grid=(h, w), radius=1)
    assert m[0, 1, 2] == 1  # flat offset +1 at a row end would wrap and dilute this
    assert patterns.neighbour_mass(a, grid=(h, w))[0] == (w - 1) / w


def test_neighbour_map_centre_is_self_mass_and_corners_are_diagonal_neighbours():
    a = 0.5 * identity(49) + 0.5 * uniform(49)
    m = patterns.neighbour_map(a, grid=(7, 7), radius=3)
    assert m.shape == (1, 7, 7)
    assert np.isclose(m[0, 3, 3], 0.5 + 0.5 / 49)
    assert np.isclose(m[0, 0, 0], 0.5 / 49)


def test_pure_four_neighbour_head_has_neighbour_mass_one_and_four_dominant_offsets():
    a = four_neighbour(14, 14)
    assert np.isclose(patterns.neighbour_mass(a)[0], 1)
    assert set(patterns.dominant_offsets(a)[0]) == {(0, 1), (0, -1), (1, 0), (-1, 0)}


def test_uniform_head_has_no_dominant_offset():
    assert patterns.dominant_offsets(uniform(196)) == [[]]


# --------------------------------------------------------------------------- vertical lines


def test_received_attention_divides_by_the_queries_that_see_each_key():
    n = 6
    a = np.zeros((1, n, n))
    a[0, :, 0] = 0.5
    a[0, np.arange(n), np.arange(n)] += 0.5  # half on the first token, half on itself
    causal = patterns.received_attention(a, causal=True)[0]
    assert np.allclose(causal[1:], 0.5 / (n - np.arange(1, n)))
    assert causal[-1] == 0.5  # the last key is seen by one query, which gives it half
    # the map is zero above its diagonal: it says it is causal, with or without causal=True
    assert np.allclose(patterns.received_attention(a)[0], causal)
    full = a + np.triu(np.full((n, n), 1e-3), 1)[None]  # the same map, every key visible
    assert np.isclose(patterns.received_attention(full, causal=True)[0][-1], (0.5 + 1e-3 * (n - 1)) / n)


def test_top_key_mass_of_uniform_attention_is_top_two_percent_share():
    assert np.isclose(patterns.top_key_mass(uniform(196))[0], math.ceil(0.02 * 196) / 196)


def test_sink_keys_are_keys_receiving_more_than_0_3():
    a = np.full((1, 10, 10), 0.0)
    a[0, :, 0] = 0.31
    a[0, :, 1] = 0.29
    a[0, :, 2:] = 0.4 / 8
    assert [s.tolist() for s in patterns.sink_keys(a)] == [[0]]
    assert patterns.SINK_THRESHOLD == 0.3


def test_query_key_nmi_is_one_for_identity_and_zero_for_uniform():
    assert np.isclose(patterns.query_key_nmi(identity(50))[0], 1)
    assert abs(patterns.query_key_nmi(uniform(50))[0]) < 1e-12


# --------------------------------------------------------------------------- spread


def test_causal_entropy_is_normalised_by_the_visible_keys():
    a = causal_uniform(8, 8)
    assert np.isclose(patterns.attention_entropy(a, causal=True)[0], 1)
    assert np.isclose(patterns.attention_entropy(a)[0], 1)  # the map's zeros say so without causal=True


def test_causal_decode_map_counts_the_prefix_as_visible():
    a = causal_uniform(2, 6)  # rows see 5 and 6 keys
    assert np.isclose(patterns.attention_entropy(a, causal=True)[0], 1)
    received = patterns.received_attention(a, causal=True)[0]
    assert np.allclose(received[:5], (1 / 5 + 1 / 6) / 2) and np.isclose(received[5], 1 / 6)


def test_distance_in_pixels_is_patches_times_patch_size():
    a = uniform(197)
    px = patterns.mean_attention_distance(a, image_tokens=slice(1, 197), patch_size=16)[0]
    assert round(float(px / 16), 3) == 7.281


def test_class_token_does_not_shrink_the_grid_distance():
    a = uniform(197)
    for tokens in (slice(1, 197), (1, 197), np.arange(1, 197)):
        d = patterns.mean_attention_distance(a, image_tokens=tokens, grid=(14, 14))[0]
        assert round(float(d), 3) == 7.281


def test_non_square_grid_uses_rows_and_columns():
    h, w = 3, 8
    d = patterns.mean_attention_distance(uniform(h * w), grid=(h, w))[0]
    r, c = np.divmod(np.arange(h * w), w)
    assert np.isclose(d, np.hypot(r[:, None] - r, c[:, None] - c).mean())


# --------------------------------------------------------------------------- labels and tables


def test_each_synthetic_pattern_gets_its_label():
    maps = np.concatenate([identity(196), four_neighbour(14, 14), one_hot_column(196, 0), uniform(196)])
    assert patterns.classify_heads(maps) == ["diagonal", "stripe", "vertical", "mixed"]


def test_label_threshold_is_the_majority_of_the_attention():
    just = 0.5 * identity(196) + 0.5 * uniform(196)
    below = 0.49 * identity(196) + 0.51 * uniform(196)
    assert patterns.classify_heads(just) == ["diagonal"]
    assert patterns.classify_heads(below) == ["mixed"]


def test_without_a_grid_no_head_is_labelled_stripe():
    a = np.zeros((1, 197, 197))
    a[:, 1:, 1:] = four_neighbour(14, 14)  # token 0 is a class token: 197 keys is no square
    a[:, 0, :] = 1 / 197
    scores = patterns.head_scores(a)
    assert np.isnan(scores["neighbour_mass"][0]) and scores["label"] == ["mixed"]
    assert patterns.head_scores(a, image_tokens=slice(1, 197))["label"] == ["stripe"]


def test_batch_scores_are_the_mean_over_items():
    a = np.stack([identity(16), uniform(16)])  # [B=2, H=1, 16, 16]
    assert np.isclose(patterns.self_mass(a)[0], (1 + 1 / 16) / 2)


def test_torch_bfloat16_map_scores_like_float32():
    torch = pytest.importorskip("torch")
    a = torch.softmax(torch.randn(4, 196, 196, generator=torch.Generator().manual_seed(0)) * 3, -1)
    ref = patterns.head_scores(a.float())
    low = patterns.head_scores(a.to(torch.bfloat16))
    for name in ("self_mass", "top_key_mass", "entropy_norm", "distance"):
        assert np.allclose(ref[name], low[name], rtol=0.02, atol=2e-3), name


def test_summarize_takes_a_list_or_a_dict_and_returns_one_table():
    maps = [identity(196, 2), four_neighbour(14, 14).repeat(2, 0), one_hot_column(196, 0, 2)]
    t = patterns.summarize(maps)
    assert t.layers == [0, 1, 2] and t.num_heads == [2, 2, 2]
    assert t.labels.tolist() == [["diagonal"] * 2, ["stripe"] * 2, ["vertical"] * 2]
    assert t["self_mass"].shape == (3, 2)
    named = patterns.summarize({"blocks.0": maps[0], "blocks.11": maps[2]})
    assert named.layers == ["blocks.0", "blocks.11"]
    assert named.labels[1].tolist() == ["vertical", "vertical"]


def test_table_records_are_plain_and_json_serialisable():
    t = patterns.summarize({(3, 0): uniform(197, 2)}, image_tokens=slice(1, 197), patch_size=14)
    records = t.to_records()
    text = json.dumps(records, allow_nan=False)
    assert json.loads(text)[0]["layer"] == [3, 0]
    assert records[1]["head"] == 1 and records[1]["label"] == "mixed"
    assert round(records[0]["distance"], 3) == 7.281
    layer = t.to_records("layer")[0]
    assert layer["mixed"] == 2 and layer["heads"] == 2
    json.dumps(patterns.summarize([uniform(10)]).to_records(), allow_nan=False)  # NaN grid scores -> None


def test_table_prints_one_readable_line_per_layer():
    t = patterns.summarize([identity(196, 3), one_hot_column(196, 0, 3)])
    lines = str(t).splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:7] == ["layer", "heads", "diag", "stripe", "vert", "block", "mixed"]
    assert lines[2].split()[-1] == "0"  # the sink key of the vertical layer
    assert "2 layers x 3 heads" in repr(t)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "attn, words",
    [
        (np.eye(4), ["attn", "[H, Q, K]", "(4, 4)", "attn[None]"]),
        (-uniform(4), ["non-negative", "after softmax"]),
        (np.ones((1, 5, 3)) / 3, ["Q=5", "K=3", "transpose"]),
        (np.full((1, 4, 4), np.nan), ["NaN"]),
    ],
)
def test_bad_maps_raise_value_error_naming_the_problem(attn, words):
    with pytest.raises(ValueError) as err:
        patterns.self_mass(attn)
    for w in words:
        assert w in str(err.value)


def test_grid_that_does_not_match_the_image_tokens_raises():
    with pytest.raises(ValueError, match=r"grid=\(14, 15\) has 210 cells but image_tokens selects 196"):
        patterns.mean_attention_distance(uniform(196), grid=(14, 15))


def test_grid_of_non_square_token_count_cannot_be_inferred():
    with pytest.raises(ValueError, match=r"pass grid=\(h, w\).*image_tokens=slice\(1, 197\)"):
        patterns.neighbour_map(uniform(197))


def test_summarize_rejects_one_stacked_array():
    with pytest.raises(ValueError, match=r"layers must be a list.*\(2, 1, 4, 4\).*\[attn\]"):
        patterns.summarize(np.stack([uniform(4), uniform(4)]))


def test_image_tokens_outside_the_map_raise():
    with pytest.raises(ValueError, match="image_tokens"):
        patterns.neighbour_map(uniform(10), image_tokens=np.array([1, 2, 30, 4]))


def test_patterns_imports_neither_torch_nor_matplotlib():
    code = "import sys, getlocal.patterns; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_decode_map_past_the_image_has_no_grid_scores_but_all_others():
    a = causal_uniform(2, 300)  # two new tokens after BOS, 256 image tokens and text
    s = patterns.head_scores(a, image_tokens=slice(1, 257), causal=True)
    assert np.isnan(s["distance"][0]) and np.isnan(s["neighbour_mass"][0])
    assert np.isclose(s["entropy_norm"][0], 1) and np.isclose(s["self_mass"][0], (1 / 299 + 1 / 300) / 2)
    assert s["label"] == ["mixed"]
