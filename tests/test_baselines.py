"""Numbers come with their baseline, and scores read which keys each query sees from the map itself."""
import numpy as np
import pytest
import torch

from getlocal import patterns
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

LAYOUT = TokenLayout([Segment("bos", 0, 1), Segment("image", 1, 65, grid=(8, 8)), Segment("text", 65, 69)])


def softmax_map(mask, heads=3, seed=0):
    """A real softmax over random logits with a bool mask [Q, K] (True = seen), as torch's eager kernels do."""
    torch.manual_seed(seed)
    q, k = mask.shape
    logits = torch.randn(1, heads, q, k, dtype=torch.float32) * 0.5  # near uniform, as random weights give
    logits = logits.masked_fill(~torch.as_tensor(mask), float("-inf"))
    return torch.softmax(logits, -1).numpy()


def masks(n=69):
    full = np.ones((n, n), bool)
    causal = np.tril(full)
    prefix = causal.copy()
    prefix[:65, :65] = True          # PaliGemma: bidirectional prefix, causal suffix
    block = np.zeros((n, n), bool)   # a block mask: each query sees its own segment only
    for s in LAYOUT.segments:
        block[s.start:s.stop, s.start:s.stop] = True
    return {"bidirectional": full, "causal": causal, "prefix": prefix, "block": block}


@pytest.mark.parametrize("name", ["bidirectional", "causal", "prefix", "block"])
@pytest.mark.parametrize("causal", [False, True])
def test_normalised_entropy_is_never_above_one_whatever_the_mask_and_the_causal_flag(name, causal):
    a = softmax_map(masks()[name])
    assert (patterns.attention_entropy(a, causal=causal) <= 1 + 1e-9).all()
    s = patterns.head_scores(a, image_tokens=LAYOUT.image(), causal=causal)
    assert (s["entropy_norm"] <= 1 + 1e-9).all()


@pytest.mark.parametrize("name", ["bidirectional", "causal", "prefix"])
def test_uniform_attention_over_the_visible_keys_has_entropy_one(name):
    m = masks()[name].astype(np.float64)
    a = (m / m.sum(-1, keepdims=True))[None]
    assert np.allclose(patterns.attention_entropy(a, causal=True), 1)
    assert np.allclose(patterns.attention_entropy(a), 1)


def test_a_bidirectional_prefix_scored_as_causal_has_no_sinks_on_ordinary_tokens():
    # the case: a prefix map passed with causal=True made late keys "sinks" (few queries see them)
    a = softmax_map(masks()["bidirectional"], heads=2)
    s = patterns.head_scores(a, image_tokens=LAYOUT.image(), causal=True)
    assert all(len(k) == 0 for k in s["sinks"]), s["sinks"]
    assert s["label"] != ["vertical", "vertical"]


@pytest.mark.parametrize("name", ["bidirectional", "causal", "prefix"])
def test_the_image_share_of_a_uniform_map_equals_its_baseline(name):
    m = masks()[name].astype(np.float64)
    a = np.broadcast_to(m / m.sum(-1, keepdims=True), (1, 2, 69, 69)).copy()
    maps = AttentionMaps([AttentionMap(a, "llm", i, "p", 0, "prefill", i, LAYOUT, LAYOUT) for i in range(2)])
    shares = maps.kind_shares()
    for query in ("bos", "image", "text"):
        assert np.allclose(shares.share(query, "image"), shares.baseline(query, "image"))
    rec = shares.to_records()[0]
    assert rec["image uniform"] == pytest.approx(rec["image"])


def test_the_baseline_is_the_share_of_visible_keys_not_of_all_keys():
    m = masks()["causal"].astype(np.float64)
    a = (m / m.sum(-1, keepdims=True))[None]
    s = patterns.kind_shares(a, LAYOUT, LAYOUT)
    # text query at position p sees p + 1 keys, 64 of them image tokens
    expected = np.mean([64 / (p + 1) for p in range(65, 69)])
    assert s.baseline("text", "image")[0] == pytest.approx(expected)
    assert s.baseline("bos", "image")[0] == 0  # BOS sees only itself


def test_a_map_on_the_image_beyond_its_baseline_reads_above_it():
    m = masks()["bidirectional"].astype(np.float64)
    a = np.zeros((1, 1, 69, 69))
    a[..., 1:65] = 1 / 64
    a[..., 0] += 1e-6
    a[..., 65:] += 1e-6  # every key stays visible: only a mask leaves exact zeros
    s = patterns.kind_shares(a, LAYOUT, LAYOUT)
    assert s.share("text", "image")[0] == pytest.approx(1, abs=1e-4)
    assert s.baseline("text", "image")[0] == pytest.approx(64 / 69)
