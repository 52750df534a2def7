"""Files written by earlier getlocal versions load, value for value (fixtures in tests/data/, see make_fixtures.py)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

import getlocal
from getlocal import saved
from getlocal.maps import AttentionMaps, Segment, TokenLayout

DATA = Path(__file__).resolve().parent / "data"

QUERIES = TokenLayout([Segment("text", 0, 2), Segment("action", 2, 3)])
KEYS = TokenLayout([Segment("padding", 0, 1), Segment("image", 1, 5, camera="wrist", grid=(2, 2)), Segment("text", 5, 7)])
IMAGE = (np.arange(4 * 4 * 3) * 5 % 256).astype(np.uint8).reshape(4, 4, 3)
FIRST = np.arange(2 * 3 * 7, dtype=np.float32).reshape(1, 2, 3, 7) / 100
SECOND = (np.arange(2 * 1 * 3 * 7, dtype=np.float16).reshape(2, 1, 3, 7) / 50).astype(np.float16)
PADDING = np.array([[True] + [False] * 6, [True] + [False] * 5 + [True]])


def same(a, b):
    """Equal values of equal types, NaN equal to NaN, arrays equal in dtype, shape and bits."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), (a, b)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b), (a, b)
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b, (a, b)


def check_maps(maps):
    assert isinstance(maps, AttentionMaps) and len(maps) == 2 and maps.layouts == {"llm": KEYS}
    a, b = maps
    assert (a.tower, a.layer, a.path, a.step, a.phase, a.call, a.camera) == \
        ("llm", 0, "model.layers.0.self_attn", 0, "prefill", 3, "wrist")
    assert (b.tower, b.layer, b.path, b.step, b.phase, b.call, b.camera) == \
        ("llm", 1, "model.layers.1.self_attn", 1, "decode", 7, None)
    for m in maps:
        assert m.queries == QUERIES and m.keys == KEYS
    same(np.asarray(a.array), FIRST)
    same(np.asarray(b.array), SECOND)
    assert a.padding is None and a.rows is None
    same(b.padding, PADDING)
    same(b.rows, np.array([4, 5, 6], np.int64))


def test_a_capture_of_maps_in_format_2_loads():
    found = saved.read(DATA / "capture-v2-maps")
    check_maps(found.data)
    check_maps(getlocal.load(DATA / "capture-v2-maps"))
    same(found.images, {"wrist": IMAGE})
    assert found.info == {"model": "fixture", "n": [1, 2.5]} and found.version == "0.1.0"
    assert found.calls is None and found.owners is None


def test_a_cache_in_format_2_loads_with_its_calls():
    found = saved.read(DATA / "capture-v2-cache")
    bf16 = np.arange(6, dtype=np.float32).reshape(2, 3)  # saved from a bfloat16 tensor: float32, exact
    same(found.data, {
        "Attention.forward": [np.eye(3, dtype=np.float32), bf16],
        "nested": [[1, 2.5, "x", None, True, float("nan"), float("-inf")],
                   (np.float32(0.5), np.int64(-3), np.bool_(True)),
                   {"a": [1, {"b": None}], (1, "k"): np.array(2.0), 3: np.arange(4, dtype=np.int16)}]})
    assert found.calls == {"Attention.forward": [0, 5], "nested": [1, 2, 9]}
    assert found.owners == {"Attention.forward": [None, None], "nested": [None, None, None]}
    same(saved.load(DATA / "capture-v2-cache"), found.data)


def test_a_cache_in_format_1_loads():
    found = saved.read(DATA / "capture-v1-cache")
    bf16 = np.array([[1.0, 2.0], [-1.0, 0.125]], np.float32)
    same(found.data, {"f": [{"a": np.array(1.5), "b": 2, "c": [bf16, ("t",)]}]})
    assert found.calls == {"f": [4]} and found.owners == {"f": ["Attention"]} and found.info == {"model": "by hand"}


def test_a_recording_in_format_1_loads():
    run = getlocal.load(DATA / "run-v1")
    assert len(run) == 3 and run.ranks == [0] and run.torn == 0
    assert [(s.step, s.rank, s.part, s.kind) for s in run] == [(0, 0, "rank-00000", "maps"), (1, 0, "rank-00000", "cache"),
                                                              (2, 0, "rank-00000", "cache")]
    assert run.parts["rank-00000"]["info"] == {"task": "fixture"} and run.parts["rank-00000"]["world_size"] == 1
    first, second, third = run
    check_maps(first.maps)
    same(dict(first.images), {"wrist": IMAGE})
    same(first.info, {"action": np.array([0.5, -1.0]), "reward": 1.0})
    same(second.maps, {"plain": [np.ones(2, np.int32), {"k": (1, None)}]})
    assert second.info == {"text": "two"} and second.calls == {"plain": [None, None]}
    key = "main.<locals>.attend"
    same(third.maps, {key: [np.outer(np.arange(3.0), np.arange(3.0)), np.outer(np.arange(3.0) + 1, np.arange(3.0) + 1)]})
    assert third.calls == {key: [0, 1]} and third.owners == {key: [None, None]} and third.info == {}
    check_maps(run.select(tower="llm")[0].maps)
    assert len(run.select(layer=1)[0].maps) == 1


@pytest.mark.parametrize("name", ["capture-v2-maps", "capture-v2-cache", "capture-v1-cache"])
def test_a_fixture_saved_again_reads_back_the_same(tmp_path, name):
    found = saved.read(DATA / name)
    again = saved.read(saved.save(tmp_path / name, found.data, calls=found.calls, images=found.images, info=found.info))
    if isinstance(found.data, AttentionMaps):
        check_maps(again.data)
    else:
        same(again.data, found.data)
    same(again.images, found.images)
    assert again.info == found.info and again.calls == found.calls


def fixtures():
    """tests/data/make_fixtures.py, for the very values its files were written from."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def capture_bytes(path):
    """A capture's files as bytes, its random generation name and the getlocal version left out."""
    out = {}
    for file in sorted(path.rglob("*")):
        if file.is_file():
            name = "arrays-G/" + file.name if file.parent.name.startswith("arrays-") else file.name
            data = file.read_bytes()
            if file.name == saved.INDEX:
                index = json.loads(data)
                for record in index["arrays"]:
                    record["file"] = "arrays-G/" + record["file"].split("/")[1]
                index.update(generation="arrays-G", getlocal_version="")
                data = index
            out[name] = data
    return out


@pytest.mark.parametrize("name", ["capture-v2-maps", "capture-v2-cache"])
def test_a_capture_is_written_byte_for_byte_as_before(tmp_path, name):
    make = fixtures()
    if name == "capture-v2-maps":
        path = saved.save(tmp_path / name, make.maps(), images={"wrist": make.image()},
                          info={"model": "fixture", "n": [1, 2.5]})
    else:
        path = saved.save(tmp_path / name, make.cache(), calls=make.calls(), info={})
    assert capture_bytes(path) == capture_bytes(DATA / name)


def test_a_recorded_step_is_written_byte_for_byte_as_before(tmp_path):
    make = fixtures()
    with getlocal.record(tmp_path / "run", durable=False, info={"task": "fixture"}) as rec:
        rec.step(make.maps(), images={"wrist": make.image()}, info={"action": np.array([0.5, -1.0]), "reward": 1.0})
        rec.step({"plain": [np.ones(2, np.int32), {"k": (1, None)}]}, info={"text": "two"})
    new, old = tmp_path / "run" / "rank-00000", DATA / "run-v1" / "rank-00000"
    assert (tmp_path / "run" / "run.json").read_bytes() == (DATA / "run-v1" / "run.json").read_bytes()
    assert (new / "steps.log").read_bytes() == b"".join((old / "steps.log").read_bytes().splitlines(True)[:2])
    for step in range(2):
        file = f"step-{step:08d}.safetensors"
        assert (new / file).read_bytes() == (old / file).read_bytes()


def test_a_damaged_value_met_when_a_step_is_touched_is_a_getlocal_error_and_a_type_error(tmp_path):
    import hashlib
    import shutil

    from getlocal import GetLocalError

    shutil.copytree(DATA / "run-v1", tmp_path / "run")
    log = tmp_path / "run" / "rank-00000" / "steps.log"
    lines = log.read_bytes().splitlines(True)
    text = lines[1].split(b" ", 2)[2].rstrip(b"\n").replace(b'{"json":"two"}', b'{"json":["two"]}')
    lines[1] = b"1 %s %s\n" % (hashlib.sha256(b"1 " + text).hexdigest().encode(), text)
    log.write_bytes(b"".join(lines))
    step = getlocal.load(tmp_path / "run")[1]
    with pytest.raises(GetLocalError, match=r"^info\['text'\]: \['two'\] is not a plain value$") as caught:
        step.info
    assert isinstance(caught.value, TypeError)
