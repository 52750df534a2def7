"""getlocal.saved: a capture written to a directory comes back equal, and a damaged one is refused by name."""
import hashlib
import json
import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("safetensors")

from getlocal import GetLocalError, __version__, get_local, saved  # noqa: E402
from getlocal.adapters import vit  # noqa: E402
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout  # noqa: E402


@pytest.fixture(autouse=True)
def adapter_off():
    yield
    vit.deactivate()


def _small_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, depth=2, embed_dim=32,
                             num_heads=2, num_classes=0).eval()


def _vit_maps():
    model = _small_vit()
    vit.activate(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    maps = vit.collect(model)
    vit.deactivate()
    return maps


def _two_camera_maps():
    """A language-model map over two cameras' patches and text: layouts with cameras and grids."""
    prompt = TokenLayout([Segment("image", 0, 4, camera="exterior", grid=(2, 2)),
                          Segment("image", 4, 8, camera="wrist", grid=(2, 2)),
                          Segment("bos", 8, 9), Segment("text", 9, 11)])
    rng = np.random.default_rng(0)
    a = rng.random((1, 2, 11, 11)).astype(np.float32)
    m = AttentionMap(a / a.sum(-1, keepdims=True), "language", 3, "model.layers.3.self_attn", 0, "prefix", 17,
                     prompt, prompt)
    return AttentionMaps([m], {"language": prompt})


def _record(path, number=0):
    return json.loads((path / saved.INDEX).read_text())["arrays"][number]


def _array_file(path, number=0):
    return path / _record(path, number)["file"]


def _listing(path):
    """Every file and folder under ``path``, relative, with the generation folder's name made constant."""
    return sorted(p.relative_to(path).as_posix().replace(_record(path)["file"].split("/")[0], "arrays-GEN")
                  for p in path.rglob("*"))


# --------------------------------------------------------------------------- round trips


def test_attention_maps_come_back_with_equal_arrays_labels_and_layouts(tmp_path):
    maps = _vit_maps()
    picture = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    path = saved.save(tmp_path / "capture", maps, images={"image": picture}, info={"model": "tiny vit"})
    found = saved.read(path)
    back = found.data
    assert isinstance(back, AttentionMaps) and len(back) == len(maps) == 2
    for a, b in zip(maps, back):
        assert np.array_equal(a.array, b.array) and a.array.dtype == b.array.dtype
        assert a.meta() == b.meta()
    assert back[0].keys.grid() == (4, 4) and back[0].keys.find("cls")
    assert back.layouts == maps.layouts and back.steps == maps.steps
    assert np.array_equal(found.images["image"], picture) and found.info == {"model": "tiny vit"}
    assert found.version == __version__


def test_layouts_with_cameras_and_grids_survive_and_still_index_the_map(tmp_path):
    maps = _two_camera_maps()
    back = saved.load(saved.save(tmp_path / "c", maps))
    m = back[0]
    assert m.keys.cameras == ("exterior", "wrist") and m.keys.grid("wrist") == (2, 2)
    assert np.array_equal(m.between("text", "image", camera="wrist"), maps[0].between("text", "image", camera="wrist"))
    assert back.meta() == maps.meta()


def test_raw_cache_comes_back_with_call_indices_and_owner_types(tmp_path):
    model = _small_vit()
    for block in model.blocks:
        block.attn.fused_attn = False
    forward = type(model.blocks[0].attn).forward
    get_local("attn")(forward)
    try:
        with get_local.capture(), torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
        key = get_local.key_of(forward)
        path = saved.save(tmp_path / "cache", get_local.cache)  # calls are taken from get_local
        found = saved.read(path)
        assert list(found.data) == list(get_local.cache)
        for a, b in zip(get_local.cache[key], found.data[key]):
            assert np.array_equal(a, b)
        assert found.calls[key] == [c.index for c in get_local.calls[key]]
        assert found.owners[key] == ["Attention", "Attention"]
    finally:
        get_local.remove(forward)


def test_several_names_plain_values_and_nested_containers_come_back_as_they_were(tmp_path):
    cache = {"f": [{"attn": np.eye(2, dtype=np.float32), "scale": 0.125, "name": "x", "shape": (2, 2),
                    "parts": [np.zeros(3, dtype=np.int64), None]}],
             "g": [float("nan"), np.float32(2.5)]}
    back = saved.load(saved.save(tmp_path / "c", cache))
    entry = back["f"][0]
    assert np.array_equal(entry["attn"], np.eye(2)) and entry["attn"].dtype == np.float32
    assert entry["scale"] == 0.125 and entry["name"] == "x" and entry["shape"] == (2, 2)
    assert entry["parts"][0].dtype == np.int64 and entry["parts"][1] is None
    assert np.isnan(back["g"][0]) and back["g"][1] == 2.5


def test_bfloat16_tensors_are_saved_as_exact_float32_and_the_index_keeps_the_source_dtype(tmp_path):
    t = torch.randn(2, 3, 5, 5).softmax(-1).to(torch.bfloat16)
    path = saved.save(tmp_path / "c", {"attn": [t]})
    back = saved.load(path)["attn"][0]
    assert back.dtype == np.float32
    assert torch.equal(torch.from_numpy(back), t.float())  # exact: nothing rounded
    record = _record(path)
    assert record["source"] == "torch.bfloat16" and record["dtype"] == "float32"


def test_index_records_file_key_shape_dtype_size_and_sha256_of_every_array(tmp_path):
    path = saved.save(tmp_path / "c", _two_camera_maps())
    index = json.loads((path / saved.INDEX).read_text())
    assert index["format_version"] == saved.FORMAT_VERSION and index["getlocal_version"]
    (record,) = index["arrays"]
    blob = (path / record["file"]).read_bytes()
    assert record["key"] == "maps[0]" and record["shape"] == [1, 2, 11, 11] and record["dtype"] == "float32"
    assert record["bytes"] == len(blob) and record["sha256"] == hashlib.sha256(blob).hexdigest()
    assert index["maps"][0]["tower"] == "language" and index["layouts"]["language"]["segments"][0]["camera"] == "exterior"


# --------------------------------------------------------------------------- atomic save


def test_a_save_that_fails_halfway_leaves_the_old_capture_loadable_and_no_debris(tmp_path):
    path = saved.save(tmp_path / "c", {"old": [np.ones(3)]})
    # the first array is written, then the second value cannot be saved
    with pytest.raises(GetLocalError, match=r"cannot save cache\['new'\]\[1\]: a builtins.object"):
        saved.save(path, {"new": [np.zeros(4), object()]})
    assert list(saved.load(path)) == ["old"]
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_saving_again_replaces_the_capture(tmp_path):
    path = saved.save(tmp_path / "c", {"old": [np.ones(3)]})
    saved.save(path, {"new": [np.zeros(2)]})
    assert list(saved.load(path)) == ["new"]
    assert _listing(path) == ["arrays-GEN", "arrays-GEN/00000.safetensors", "capture.json"]


def test_saving_over_a_directory_that_is_not_a_capture_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(GetLocalError, match="not a getlocal capture"):
        saved.save(tmp_path / "notes", {"f": [np.ones(2)]})
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_saving_something_else_says_what_can_be_saved(tmp_path):
    with pytest.raises(GetLocalError, match="takes AttentionMaps .* or a cache dict"):
        saved.save(tmp_path / "c", [np.ones(2)])


# --------------------------------------------------------------------------- damaged captures


@pytest.fixture
def capture(tmp_path):
    return saved.save(tmp_path / "capture", _two_camera_maps(), images={"image": np.zeros((4, 4, 3), np.uint8)})


def test_a_directory_without_an_index_is_not_a_capture(tmp_path):
    with pytest.raises(GetLocalError, match=r"is not a getlocal capture: it has no capture.json"):
        saved.load(tmp_path)
    with pytest.raises(GetLocalError, match="is not a directory"):
        saved.load(tmp_path / "nowhere")


def test_a_missing_array_file_is_named(capture):
    os.remove(_array_file(capture))
    with pytest.raises(GetLocalError, match=r"00000.safetensors is missing.*copy the whole directory"):
        saved.load(capture)


def test_a_truncated_array_file_is_named_with_both_sizes(capture):
    file = _array_file(capture)
    size = file.stat().st_size
    file.write_bytes(file.read_bytes()[: size - 10])
    with pytest.raises(GetLocalError, match=rf"00000.safetensors is {size - 10} bytes but the index says {size}"):
        saved.load(capture)


def test_an_altered_array_file_fails_its_checksum(capture):
    file = _array_file(capture)
    blob = bytearray(file.read_bytes())
    blob[-1] ^= 0xFF  # same size, one value changed
    file.write_bytes(bytes(blob))
    with pytest.raises(GetLocalError, match=r"00000.safetensors does not match its sha256"):
        saved.load(capture)


def test_an_index_whose_shape_or_dtype_disagrees_with_the_file_is_refused(capture):
    index = json.loads((capture / saved.INDEX).read_text())
    index["arrays"][0]["shape"] = [1, 2, 11, 12]
    (capture / saved.INDEX).write_text(json.dumps(index))
    with pytest.raises(GetLocalError, match=r"holds float32 \[1, 2, 11, 11\] but the index says float32 \[1, 2, 11, 12\]"):
        saved.load(capture)


def test_a_broken_index_is_reported_not_raised_as_a_json_error(capture):
    (capture / saved.INDEX).write_text('{"format": "getlocal.capture", "arr')
    with pytest.raises(GetLocalError, match="capture.json is not valid JSON"):
        saved.load(capture)


def test_a_capture_from_a_newer_format_asks_for_an_upgrade(capture):
    index = json.loads((capture / saved.INDEX).read_text())
    index["format_version"] = saved.FORMAT_VERSION + 1
    (capture / saved.INDEX).write_text(json.dumps(index))
    with pytest.raises(GetLocalError, match="upgrade getlocal"):
        saved.load(capture)


def test_an_index_naming_a_file_outside_the_capture_is_refused(capture, tmp_path):
    (tmp_path / "elsewhere.safetensors").write_bytes((_array_file(capture)).read_bytes())
    index = json.loads((capture / saved.INDEX).read_text())
    index["arrays"][0]["file"] = index["generation"] + "/../../elsewhere.safetensors"
    (capture / saved.INDEX).write_text(json.dumps(index))
    with pytest.raises(GetLocalError, match="which is not arrays-<16 hex>/NNNNN.safetensors"):
        saved.load(capture)


class _Boom:
    def __reduce__(self):
        return (os.mkdir, (_Boom.target,))


def test_a_pickle_in_place_of_an_array_is_refused_and_never_run(capture, tmp_path):
    _Boom.target = str(tmp_path / "pickle-ran")
    blob = pickle.dumps(_Boom())
    file = _array_file(capture)
    file.write_bytes(blob)
    index = json.loads((capture / saved.INDEX).read_text())  # an index that agrees with the swapped file
    index["arrays"][0].update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (capture / saved.INDEX).write_text(json.dumps(index))
    with pytest.raises(GetLocalError, match="is not a readable safetensors file"):
        saved.load(capture)
    assert not os.path.exists(_Boom.target)
