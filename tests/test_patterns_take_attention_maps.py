"""``patterns.summarize`` and every analysis entry point take the library's own ``AttentionMaps`` / ``AttentionMap``,
and the hint of a refusal works when followed."""
import numpy as np
import pytest

from getlocal import GetLocalError, patterns
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

LAYOUT = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 17, grid=(4, 4))])


def _maps(layers=3):
    rng = np.random.default_rng(0)
    out = []
    for layer in range(layers):
        a = rng.random((1, 2, 17, 17)) + 5 * np.eye(17)
        out.append(AttentionMap(a / a.sum(-1, keepdims=True), "vit", layer, f"blocks.{layer}.attn", 0, "encode", layer,
                                LAYOUT, LAYOUT))
    return AttentionMaps(out, {"vit": LAYOUT})


def test_summarize_takes_attention_maps_as_one_layer_per_map_in_order():
    maps = _maps()
    options = dict(image_tokens=maps[0].keys.image(), grid=maps[0].keys.grid())
    table = patterns.summarize(maps, **options)
    expected = patterns.summarize([m.array for m in maps], **options)
    assert table.layers == [0, 1, 2]
    for name in table.columns:
        np.testing.assert_array_equal(table[name], expected[name])
    assert table.labels.tolist() == expected.labels.tolist()


def test_summarize_takes_one_attention_map_and_the_list_the_old_hint_named():
    maps = _maps()
    one = patterns.summarize(maps[1], image_tokens=slice(1, 17))
    assert len(one) == 1 and one.labels.tolist() == patterns.summarize([maps[1].array], image_tokens=slice(1, 17)).labels.tolist()
    assert len(patterns.summarize(list(maps), image_tokens=slice(1, 17))) == 3


ONE_MAP = [
    lambda a: patterns.head_scores(a, image_tokens=slice(1, 17)),
    lambda a: patterns.classify_heads(a, image_tokens=slice(1, 17)),
    patterns.self_mass,
    patterns.offset_profile,
    patterns.diagonal_offset,
    lambda a: patterns.block_score(a, LAYOUT),
    lambda a: patterns.neighbour_map(a, image_tokens=slice(1, 17)),
    lambda a: patterns.neighbour_mass(a, image_tokens=slice(1, 17)),
    lambda a: patterns.dominant_offsets(a, image_tokens=slice(1, 17)),
    patterns.received_attention,
    patterns.top_key_mass,
    patterns.sink_keys,
    patterns.query_key_nmi,
    lambda a: patterns.mean_attention_distance(a, image_tokens=slice(1, 17)),
    patterns.attention_entropy,
]


def _same(x, y):
    if isinstance(x, (tuple, list)):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    x, y = np.asarray(x), np.asarray(y)
    return np.array_equal(x, y, equal_nan=x.dtype.kind == "f")


@pytest.mark.parametrize("entry", range(len(ONE_MAP)))
def test_every_analysis_entry_point_takes_an_attention_map_as_its_array(entry):
    m = _maps()[0]
    assert _same(ONE_MAP[entry](m), ONE_MAP[entry](m.array))


@pytest.mark.parametrize("entry", range(len(ONE_MAP)))
def test_a_whole_attention_maps_given_for_one_map_names_both_ways_and_they_work(entry):
    maps = _maps()
    with pytest.raises(GetLocalError, match=r"AttentionMaps of 3 maps.*maps\[0\].*patterns\.summarize\(maps\)"):
        ONE_MAP[entry](maps)
    ONE_MAP[entry](maps[0])
    patterns.summarize(maps, image_tokens=slice(1, 17))


@pytest.mark.parametrize("given, follow", [
    (np.full((2, 1, 2, 4, 4), 0.25), lambda x: list(x)),           # stacked [L, B, H, Q, K]
    (np.full((2, 4, 4), 0.25), lambda x: [x]),                     # one [H, Q, K] layer
    (iter([np.full((1, 4, 4), 0.25)] * 2), lambda x: list(x)),     # any iterable of layers
])
def test_the_hint_of_a_refused_input_works_when_followed(given, follow):
    with pytest.raises(GetLocalError) as refused:
        patterns.summarize(given)
    hint = str(refused.value).rsplit("pass ", 1)[1]
    assert hint.split()[0] in ("list(attn)", "[attn]", "list(layers)"), hint
    assert len(patterns.summarize(follow(given))) >= 1


def test_kind_shares_takes_an_attention_map_which_numpy_reads_as_its_array():
    m = _maps()[0]
    assert np.array_equal(np.asarray(m), m.array)
    shares = patterns.kind_shares(m, m.queries, m.keys)
    np.testing.assert_array_equal(shares.values, patterns.kind_shares(m.array, m.queries, m.keys).values)
    np.testing.assert_array_equal(shares.values, m.kind_shares().values)
