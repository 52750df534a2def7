"""getlocal.maps: token layouts and labelled maps as plain data, without any model."""
import json

import numpy as np
import pytest

from getlocal import GetLocalError
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout


def _two_cameras():
    return TokenLayout([Segment("image", 0, 4, "base", (2, 2)), Segment("image", 4, 10, "wrist", (2, 3)),
                        Segment("bos", 10, 11), Segment("text", 11, 14)])


def _map(step=0, phase="prefill", tower="language", layer=0):
    layout = _two_cameras()
    array = np.arange(14 * 14, dtype=np.float32).reshape(1, 1, 14, 14)
    return AttentionMap(array, tower, layer, f"model.layers.{layer}.self_attn", step, phase, step * 10 + layer,
                        layout, layout)


def test_segments_must_be_contiguous_from_zero():
    with pytest.raises(GetLocalError, match="contiguous"):
        TokenLayout([Segment("bos", 0, 1), Segment("text", 2, 5)])


def test_image_of_a_sequence_with_several_images_needs_the_camera_and_names_them():
    layout = _two_cameras()
    with pytest.raises(GetLocalError, match="'base', 'wrist'"):
        layout.image()
    assert layout.image("wrist") == slice(4, 10)
    assert layout.grid("wrist") == (2, 3)
    with pytest.raises(GetLocalError, match="cameras: 'base', 'wrist'"):
        layout.image("top")


def test_indices_concatenate_every_segment_of_a_kind():
    layout = _two_cameras()
    assert layout.indices("image").tolist() == list(range(10))
    assert layout.indices("text").tolist() == [11, 12, 13]
    assert layout.indices("action").tolist() == []


def test_to_grid_takes_image_tokens_or_the_whole_sequence():
    layout = _two_cameras()
    whole = np.arange(14)
    assert layout.to_grid(whole, camera="wrist").tolist() == [[4, 5, 6], [7, 8, 9]]
    assert layout.to_grid(np.arange(6)[None], camera="wrist").shape == (1, 2, 3)
    with pytest.raises(GetLocalError, match="6 image tokens"):
        layout.to_grid(np.arange(5), camera="wrist")


def test_window_renumbers_and_drops_the_grid_of_a_cut_image():
    layout = _two_cameras()
    tail = layout.window(8, 13)
    assert [(s.kind, s.start, s.stop, s.grid) for s in tail.segments] == [
        ("image", 0, 2, None), ("bos", 2, 3, None), ("text", 3, 5, None)]
    assert layout.window(0, 4).grid("base") == (2, 2)


def test_layout_and_labels_round_trip_through_json():
    layout = _two_cameras()
    assert TokenLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout
    meta = json.loads(json.dumps(_map().meta()))
    assert meta["tower"] == "language" and meta["shape"] == [1, 1, 14, 14]
    assert TokenLayout.from_dict(meta["keys"]) == layout


def test_between_slices_query_kind_rows_and_key_kind_columns():
    m = _map()
    assert np.array_equal(m.between("text", "image", camera="base"), m.array[:, :, 11:14, 0:4])
    assert m.between("bos", "text").shape == (1, 1, 1, 3)


def test_select_filters_on_any_label_with_values_or_lists():
    maps = AttentionMaps([_map(0, "prefill", layer=0), _map(0, "prefill", layer=1), _map(1, "decode", layer=0),
                          _map(0, "prefill", tower="vision", layer=0)])
    assert len(maps.select(tower="language")) == 3
    assert [m.layer for m in maps.select(phase="prefill", tower="language")] == [0, 1]
    assert len(maps.select(step=[0, 1], layer=0)) == 3
    assert maps.steps == [(0, "prefill"), (1, "decode")]
    assert maps.towers == ["language", "vision"]
    with pytest.raises(GetLocalError, match="tower='expert' is not one of 'language', 'vision'"):
        maps.select(tower="expert")  # another model's tower: not in these maps, so it raises (issue 19)


def test_select_with_a_tower_or_phase_the_maps_lack_names_the_ones_they_hold():
    maps = AttentionMaps([_map(), _map(1, "decode", tower="vision")])
    with pytest.raises(GetLocalError, match="tower='dinov3' is not one of 'language', 'vision'"):
        maps.select(tower="dinov3")
    with pytest.raises(GetLocalError, match="phase='prefil' is not one of 'prefill', 'decode'"):
        maps.select(phase=["prefil"])
    with pytest.raises(ValueError, match="phase='prefill': these maps are empty"):
        AttentionMaps([]).select(phase="prefill")


def test_between_with_an_unknown_kind_names_the_kinds():
    m = _map()
    with pytest.raises(GetLocalError, match="query='imag' is not one of 'cls', 'register', 'image'"):
        m.between("imag", "text")
    with pytest.raises(GetLocalError, match="key='txt'"):
        m.between("image", "txt")
    with pytest.raises(GetLocalError, match="queries hold no 'state' tokens; they hold 'image', 'bos', 'text'"):
        m.between("state", "text")  # a kind this map does not hold: raises, never an empty block (issue 19)
