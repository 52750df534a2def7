"""getlocal.saved: what save() accepts comes back exactly, and a crafted capture directory is refused by name."""
import hashlib
import json
import math
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from getlocal import GetLocalError, saved

torch = pytest.importorskip("torch")

DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
          "float16", "float32", "float64"]


def same(a, b):
    """Equal in type and value, NaN equal to NaN, arrays equal in dtype, shape and bits."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            same(k, next(kb for kb in b if kb == k or (k != k and kb != kb)))
            same(a[k], b[k])
    elif isinstance(a, (float, np.floating)) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


arrays = st.builds(
    lambda dtype, shape, seed: np.random.default_rng(seed).integers(0, 255, size=shape).astype(dtype),
    st.sampled_from(DTYPES), st.lists(st.integers(0, 3), max_size=3).map(tuple), st.integers(0, 2**32))
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), floats, st.text(max_size=5),
                    st.builds(lambda d, x: np.dtype(d).type(x), st.sampled_from(["float32", "float64", "int32"]),
                              st.integers(-100, 100)))
keys = st.one_of(st.text(max_size=4), st.integers(-5, 5), st.none(), st.tuples(st.integers(0, 3), st.text(max_size=2)))
values = st.recursive(scalars | arrays, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=12)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.lists(values, max_size=3), max_size=3))
def test_every_value_save_accepts_comes_back_with_its_type_and_value(tmp_path_factory, cache):
    back = saved.load(saved.save(tmp_path_factory.mktemp("c") / "c", cache))
    same(cache, back)


def test_nan_scalars_int_keys_and_0d_arrays_keep_their_types(tmp_path):
    cache = {"f": [float("nan"), {1: "one", (2, "b"): None}, np.array(3.5), np.float32("inf"), np.zeros((0, 2))]}
    back = saved.load(saved.save(tmp_path / "c", cache))["f"]
    assert type(back[0]) is float and math.isnan(back[0])
    assert back[1] == {1: "one", (2, "b"): None}
    assert type(back[2]) is np.ndarray and back[2].shape == () and back[2] == 3.5
    assert type(back[3]) is np.float32 and back[3] == np.inf and back[4].shape == (0, 2)


def test_tensors_come_back_as_numpy_arrays_of_equal_values(tmp_path):
    t = torch.arange(6, dtype=torch.int16).reshape(2, 3)
    back = saved.load(saved.save(tmp_path / "c", {"f": [t]}))["f"][0]
    assert back.dtype == np.int16 and np.array_equal(back, t.numpy())


@pytest.mark.parametrize("value, named", [
    (type("Point", (tuple,), {})((1, 2)), r"cache\['f'\]\[0\]: a .*Point"),
    ({"a": [1, {"b": object()}]}, r"cache\['f'\]\[0\]\['a'\]\[1\]\['b'\]: a builtins.object"),
    (np.array(["a"]), r"cache\['f'\]\[0\]: dtype <U1"),
    (b"bytes", r"cache\['f'\]\[0\]: a builtins.bytes"),
])
def test_values_that_would_not_come_back_as_they_were_are_refused_by_key(tmp_path, value, named):
    with pytest.raises(GetLocalError, match=named):
        saved.save(tmp_path / "c", {"f": [value]})
    assert not os.path.exists(tmp_path / "c" / saved.INDEX)


def test_values_nested_too_deep_are_refused_at_save_and_in_a_crafted_index(tmp_path):
    deep = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(GetLocalError, match="nested more than 100"):
        saved.save(tmp_path / "c", {"f": [deep]})
    path = saved.save(tmp_path / "d", {"f": [1]})
    index = json.loads((path / saved.INDEX).read_text())
    index["cache"]["f"][0]["value"] = "DEEP"
    deep_record = '{"list": [' * 5000 + "]}" * 5000
    (path / saved.INDEX).write_text(json.dumps(index).replace('"DEEP"', deep_record))
    with pytest.raises(GetLocalError, match="capture.json is not valid JSON|labels do not parse"):
        saved.load(path)


def _edit(path, change):
    index = json.loads((path / saved.INDEX).read_text())
    change(index)
    (path / saved.INDEX).write_text(json.dumps(index))


@pytest.mark.parametrize("version", [-5, 0, True, "2", None, 1.5])
def test_unknown_format_versions_are_refused(tmp_path, version):
    path = saved.save(tmp_path / "c", {"f": [1]})
    _edit(path, lambda index: index.update(format_version=version))
    with pytest.raises(GetLocalError, match=r"format_version .* which no getlocal wrote"):
        saved.load(path)


def test_captures_in_format_1_still_load(tmp_path):
    """A capture as getlocal 0.1.0 wrote it: arrays/, a 0-d array stored as [1], str-keyed dicts."""
    folder = tmp_path / "old" / "arrays"
    folder.mkdir(parents=True)
    header = b'{"data":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}'
    header += b" " * (-len(header) % 8)
    blob = struct.pack("<Q", len(header)) + header + struct.pack("<d", float("nan"))
    (folder / "00000.safetensors").write_bytes(blob)
    index = {"format": saved.FORMAT, "format_version": 1, "getlocal_version": "0.1.0", "kind": "cache",
             "cache": {"f": [{"value": {"dict": {"a": {"array": 0}, "b": {"json": 2}}}}]}, "images": {}, "info": {},
             "arrays": [{"file": "arrays/00000.safetensors", "key": "x", "shape": [], "dtype": "float64",
                         "source": "numpy.float64", "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}]}
    (tmp_path / "old" / saved.INDEX).write_text(json.dumps(index))
    value = saved.load(tmp_path / "old")["f"][0]
    assert value["b"] == 2 and value["a"].shape == () and np.isnan(value["a"])


def test_a_bfloat16_safetensors_file_from_another_tool_loads_as_float32(tmp_path):
    from safetensors.torch import save_file

    path = saved.save(tmp_path / "c", {"f": [np.zeros((2, 3), np.float32)]})
    t = torch.randn(2, 3).to(torch.bfloat16)
    index = json.loads((path / saved.INDEX).read_text())
    file = path / index["arrays"][0]["file"]
    save_file({"data": t}, str(file))
    blob = file.read_bytes()
    index["arrays"][0].update(dtype="bfloat16", bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (path / saved.INDEX).write_text(json.dumps(index))
    back = saved.load(path)["f"][0]
    assert back.dtype == np.float32 and np.array_equal(back, t.float().numpy())


def test_what_save_writes_is_a_safetensors_file_other_tools_read(tmp_path):
    from safetensors.numpy import load_file

    path = saved.save(tmp_path / "c", {"f": [np.arange(6, dtype=np.int32).reshape(2, 3), np.array(1.5)]})
    index = json.loads((path / saved.INDEX).read_text())
    assert np.array_equal(load_file(str(path / index["arrays"][0]["file"]))["data"], np.arange(6).reshape(2, 3))
    assert load_file(str(path / index["arrays"][1]["file"]))["data"] == 1.5


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_a_symbolic_link_inside_a_capture_is_refused_by_name(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 100)
    path = saved.save(tmp_path / "c", {"f": [np.zeros(2)]})
    index = json.loads((path / saved.INDEX).read_text())
    file = path / index["arrays"][0]["file"]
    file.unlink()
    os.symlink(secret, file)
    with pytest.raises(GetLocalError, match=r"00000.safetensors is a symbolic link"):
        saved.load(path)
    (path / saved.INDEX).rename(tmp_path / "index")
    os.symlink(tmp_path / "index", path / saved.INDEX)
    with pytest.raises(GetLocalError, match=r"capture.json is a symbolic link"):
        saved.load(path)


def test_one_file_listed_many_times_is_refused_before_reading(tmp_path):
    path = saved.save(tmp_path / "c", {"f": [np.zeros(2)]})
    _edit(path, lambda index: index.update(arrays=index["arrays"] * 10000))
    with pytest.raises(GetLocalError, match="lists the file .* twice"):
        saved.load(path)


@pytest.mark.parametrize("header", [
    {"data": {"dtype": "F32", "shape": [10 ** 12], "data_offsets": [0, 4 * 10 ** 12]}},
    {"data": {"dtype": "F32", "shape": [2], "data_offsets": [0, 400]}},
    {"data": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}},
    {"data": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
    {"other": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
])
def test_array_files_whose_header_does_not_match_their_size_are_refused_before_reading(tmp_path, header):
    path = saved.save(tmp_path / "c", {"f": [np.zeros(2, np.float32)]})
    index = json.loads((path / saved.INDEX).read_text())
    file = path / index["arrays"][0]["file"]
    text = json.dumps(header).encode()
    blob = struct.pack("<Q", len(text)) + text + b"\0" * 8
    file.write_bytes(blob)
    index["arrays"][0].update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (path / saved.INDEX).write_text(json.dumps(index))
    with pytest.raises(GetLocalError, match="is not a readable safetensors file"):
        saved.load(path)


def test_a_sparse_file_declared_huge_is_refused_without_reading_it(tmp_path):
    path = saved.save(tmp_path / "c", {"f": [np.zeros(2, np.float32)]})
    index = json.loads((path / saved.INDEX).read_text())
    file = path / index["arrays"][0]["file"]
    with open(file, "r+b") as f:
        f.truncate(1 << 40)  # a terabyte of holes
    _edit(path, lambda ix: ix["arrays"][0].update(bytes=1 << 40))
    with pytest.raises(GetLocalError, match="is not a readable safetensors file"):
        saved.load(path)
