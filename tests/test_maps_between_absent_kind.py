"""``AttentionMap.between`` with a kind (or camera) the map's layouts do not hold raises, naming those they hold."""
import numpy as np
import pytest

from getlocal import GetLocalError
from getlocal.maps import AttentionMap, Segment, TokenLayout

VIT = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 197, grid=(14, 14))])
TWO = TokenLayout([Segment("image", 0, 4, camera="base", grid=(2, 2)), Segment("image", 4, 8, camera="wrist",
                                                                                grid=(2, 2)), Segment("text", 8, 10)])


def _map(layout, queries=None):
    queries = queries or layout
    return AttentionMap(np.full((1, 3, len(queries), len(layout)), 1 / len(layout)), "vit", 0, "blocks.0.attn", 0,
                        "encode", 0, queries, layout)


def test_a_kind_the_queries_lack_names_the_kinds_they_hold():
    with pytest.raises(GetLocalError, match=r"queries hold no 'text' tokens; they hold 'cls', 'image'"):
        _map(VIT).between("text", "image")


def test_a_kind_the_keys_lack_names_the_kinds_they_hold():
    with pytest.raises(GetLocalError, match=r"keys hold no 'bos' tokens; they hold 'cls', 'image'"):
        _map(VIT).between("cls", "bos")


def test_a_decode_map_asked_for_prompt_queries_names_its_generated_queries():
    keys = TokenLayout([Segment("bos", 0, 1), Segment("text", 1, 4), Segment("generated", 4, 6)])
    decode = _map(keys, queries=keys.window(5, 6))
    with pytest.raises(GetLocalError, match=r"queries hold no 'text' tokens; they hold 'generated'"):
        decode.between("text", "bos")
    assert decode.between("generated", "text").shape == (1, 3, 1, 3)


def test_a_camera_the_map_lacks_names_its_cameras():
    with pytest.raises(GetLocalError, match=r"no 'image' tokens of camera='top'; its cameras are 'base', 'wrist'"):
        _map(TWO).between("text", "image", camera="top")
    assert _map(TWO).between("text", "image", camera="wrist").shape == (1, 3, 2, 4)


def test_a_kind_the_map_holds_still_slices_its_block():
    m = _map(VIT)
    assert np.array_equal(m.between("cls", "image"), m.array[:, :, 0:1, 1:197])
