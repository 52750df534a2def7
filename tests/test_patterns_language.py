"""Language-model patterns: diagonals of any offset, blocks, sinks anywhere, padding left out."""
import numpy as np
import pytest

from getlocal import patterns
from getlocal.maps import Segment, TokenLayout

from synthetic import four_neighbour, identity, uniform


def shifted(n, offset, *, causal=False):
    """Every query on the key ``offset`` away; queries without one attend to themselves."""
    a = np.zeros((1, n, n))
    for q in range(n):
        k = q + offset
        a[0, q, k if 0 <= k < n else q] = 1
    if causal:
        assert np.allclose(np.triu(a[0], 1), 0)
    return a


def causal_uniform(n):
    a = np.tril(np.ones((n, n)))
    return (a / a.sum(-1, keepdims=True))[None]


@pytest.mark.parametrize("offset", [-1, -2, -5, 1, 3])
def test_a_head_on_a_fixed_offset_is_a_diagonal_with_that_offset(offset):
    s = patterns.head_scores(shifted(40, offset), causal=offset < 0)
    assert s["label"] == ["diagonal"] and s["offset"].tolist() == [offset]
    assert s["diagonal_mass"][0] == 1 and s["self_mass"][0] < 0.2


def test_self_attention_stays_a_diagonal_of_offset_zero():
    s = patterns.head_scores(identity(30))
    assert s["label"] == ["diagonal"] and s["offset"].tolist() == [0] and s["diagonal_mass"][0] == 1


def test_previous_token_head_on_a_decode_map_has_offset_minus_one():
    a = np.zeros((1, 4, 30))
    a[0, np.arange(4), 26 + np.arange(4) - 1] = 1  # query i sits at key 26 + i
    offset, score = patterns.diagonal_offset(a)
    assert offset.tolist() == [-1] and score.tolist() == [1.0]
    assert patterns.classify_heads(a, causal=True) == ["diagonal"]


def test_a_single_query_decode_row_is_not_called_an_offset_diagonal():
    a = np.zeros((1, 1, 30))
    a[0, 0, 3] = 1  # one row on a sink: no diagonal can be seen with one query
    s = patterns.head_scores(a, causal=True)
    assert s["offset"].tolist() == [0] and s["label"] == ["vertical"]


def test_uniform_attention_has_the_documented_one_d_reference_values():
    offset, score = patterns.diagonal_offset(uniform(50))
    assert np.isclose(score[0], 1 / 50)
    _, causal = patterns.diagonal_offset(causal_uniform(50))
    assert np.isclose(causal[0], np.mean(1 / np.arange(1, 51)))  # S(0) = H_K / K ~ ln K / K
    assert patterns.classify_heads(causal_uniform(50), causal=True) == ["mixed"]


def test_a_mixture_below_the_majority_is_mixed_and_above_is_diagonal():
    prev = shifted(40, -1)
    assert patterns.classify_heads(0.6 * prev + 0.4 * uniform(40)) == ["diagonal"]
    assert patterns.classify_heads(0.4 * prev + 0.6 * uniform(40)) == ["mixed"]


def test_grid_neighbour_head_stays_a_stripe_and_a_wrapping_shift_is_a_diagonal():
    h = w = 6
    left = np.zeros((1, h * w, h * w))
    for q in range(h * w):
        r, c = divmod(q, w)
        left[0, q, q - 1 if c else q + 1] = 1  # row starts take their right neighbour: always in-grid
    assert patterns.classify_heads(left, grid=(h, w)) == ["stripe"]
    assert patterns.classify_heads(four_neighbour(h, w)) == ["stripe"]
    wrapping = shifted(h * w, -1)  # a language model's previous-token head: also across row ends
    s = patterns.head_scores(wrapping, grid=(h, w))
    assert s["label"] == ["diagonal"] and s["offset"].tolist() == [-1]
    assert s["neighbour_mass"][0] < s["diagonal_mass"][0]


def test_a_causal_sink_at_a_later_position_is_vertical():
    n, p = 40, 17  # e.g. a [SEP] or a full stop at position 17
    a = np.zeros((1, n, n))
    a[0, :p, 0] = 1  # the queries before it use BOS
    a[0, p:, p] = 1
    assert patterns.top_key_mass(a, causal=True).tolist() == [1.0]
    assert [s.tolist() for s in patterns.sink_keys(a, causal=True)] == [[0, 17]]
    assert patterns.classify_heads(a, causal=True) == ["vertical"]
    assert patterns.top_key_mass(a).tolist() == [1.0]  # the map's zeros say it is causal, causal= or not


def block_map(bounds, n, *, causal=False):
    a = np.zeros((1, n, n))
    for start, stop in zip(bounds, bounds[1:] + [n]):
        for q in range(start, stop):
            end = q + 1 if causal else stop
            a[0, q, start:end] = 1 / (end - start)
    return a


@pytest.mark.parametrize("causal", [False, True])
def test_attention_within_segments_is_a_block(causal):
    layout = TokenLayout([Segment("bos", 0, 1), Segment("text", 1, 15), Segment("text", 15, 40)])
    a = block_map([0, 1, 15], 40, causal=causal)
    s = patterns.head_scores(a, segments=layout, causal=causal)
    assert np.isclose(s["block_score"][0], 1) and s["label"] == ["block"]
    assert patterns.block_score(a, [0, 1, 15], causal=causal).tolist() == pytest.approx([1.0])


def test_diagonals_sinks_and_uniform_attention_are_not_blocks():
    bounds = [0, 20]
    prev = shifted(40, -1)
    sink = np.zeros((1, 40, 40)); sink[0, :20, 3] = 1; sink[0, 20:, 25] = 1  # a sink inside each segment
    for a, label in ((prev, "diagonal"), (sink, "vertical"), (uniform(40), "mixed")):
        s = patterns.head_scores(a, segments=bounds)
        assert s["block_score"][0] == pytest.approx(0) and s["label"] == [label]
    half = 0.5 * block_map(bounds, 40) + 0.5 * uniform(40)
    assert patterns.block_score(half, bounds)[0] == pytest.approx(0.5)


def test_without_segments_there_is_no_block_score():
    assert np.isnan(patterns.head_scores(block_map([0, 20], 40))["block_score"][0])


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("causal", [False, True])
def test_scores_without_the_padding_equal_those_of_the_unpadded_map(causal):
    rng = np.random.default_rng(0)
    n, pad = 30, 6
    logits = rng.normal(size=(2, 3, n, n)) * 3
    logits[0, 1, :, 5] += 8  # a sink, so the scores are not all alike
    tri = np.tril(np.ones((n, n), bool)) if causal else np.ones((n, n), bool)
    padded = np.zeros((2, n), bool)
    padded[1, n - pad:] = True  # item 1 is right-padded
    masked = np.where(tri & ~padded[:, None, None, :], logits, -1e30)
    a = softmax(masked)
    layout = [0, 10]
    got = patterns.head_scores(a, exclude=padded, segments=layout, causal=causal)
    one = patterns.head_scores(a[:1], segments=layout, causal=causal)
    short = softmax(masked[1:, :, : n - pad, : n - pad])
    two = patterns.head_scores(short, segments=layout, causal=causal)
    for name in ("self_mass", "diagonal_mass", "top_key_mass", "block_score", "entropy_norm", "nmi"):
        assert np.allclose(got[name], (one[name] + two[name]) / 2), name
    again = patterns.summarize([a[1:]], exclude=padded[1], segments=layout, causal=causal)
    assert np.allclose(again["top_key_mass"][0], two["top_key_mass"])


def test_excluding_positions_keeps_the_grid_of_the_image_tokens():
    img = np.zeros((1, 200, 200))
    img[0, :196, :196] = four_neighbour(14, 14)[0]
    img[0, 196:, 196:] = np.eye(4)
    s = patterns.head_scores(img, image_tokens=slice(0, 196), exclude=slice(196, 200))
    assert s["label"] == ["stripe"] and np.isclose(s["neighbour_mass"][0], 1)
    with pytest.raises(ValueError, match="exclude leaves out 6 of the 196 image tokens"):
        patterns.head_scores(img, image_tokens=slice(0, 196), exclude=slice(190, 200))


def test_the_table_shows_the_offsets_of_its_diagonal_heads():
    t = patterns.summarize([np.concatenate([shifted(40, -1), identity(40)]), block_map([0, 20], 40)],
                           segments=[0, 20])
    assert t.labels.tolist() == [["diagonal", "diagonal"], ["block", ""]]
    assert t["offset"][0].tolist() == [-1, 0]
    layer = t.to_records("layer")[0]
    assert layer["offset"] == [-1, 0] and layer["block"] == 0 and t.to_records("layer")[1]["block"] == 1
    head = str(t).splitlines()[0].split()
    assert "block" in head and "offset" in head
    assert str(t).splitlines()[1].split()[head.index("offset")] == "-1,0"
