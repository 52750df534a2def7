"""Wrong arguments and crafted capture directories: save/load raise GetLocalError (or TypeError/ValueError)
naming what is wrong, and the command line prints one line and exits 2; never another exception."""
import json
import os
import random

import numpy as np
import pytest

pytest.importorskip("safetensors")

from getlocal import GetLocalError, cli, saved  # noqa: E402
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout  # noqa: E402

WRONG = [None, 3, -1, 10 ** 30, float("nan"), float("inf"), "", b"x", [], {}, (1,), object(), np.zeros(0),
         np.array([np.nan]), "\0", {1: 2}, {"f": 3}, {"f": [object()]}, {"f": (1, 2)}, {3: [1]}]


def maps():
    layout = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 5, grid=(2, 2))])
    a = np.full((1, 1, 5, 5), 0.2, np.float32)
    return AttentionMaps([AttentionMap(a, "vit", 0, "blocks.0.attn", 0, "encode", 0, layout, layout)], {"vit": layout})


@pytest.mark.parametrize("capture", WRONG, ids=repr)
def test_save_of_a_wrong_capture_is_refused_by_name(tmp_path, capture):
    if isinstance(capture, dict) and all(isinstance(v, list) for v in capture.values()) and \
            all(isinstance(k, str) for k in capture) and capture != {"f": [object()]}:
        return  # a valid cache
    with pytest.raises((GetLocalError, TypeError, ValueError)):
        saved.save(tmp_path / "c", capture)


@pytest.mark.parametrize("argument", ["images", "info", "calls"])
@pytest.mark.parametrize("value", WRONG[:14], ids=repr)
def test_save_with_wrong_keyword_arguments_raises_a_named_error(tmp_path, argument, value):
    try:
        saved.save(tmp_path / "c", {"f": [np.ones(2)]}, **{argument: value})
    except (GetLocalError, TypeError, ValueError):
        pass
    else:
        assert saved.load(tmp_path / "c")["f"][0].shape == (2,)


@pytest.mark.parametrize("path", [None, 3, b"\0", "a\0b", object()], ids=repr)
def test_save_and_load_of_a_wrong_path(tmp_path, path):
    with pytest.raises((GetLocalError, TypeError, ValueError)):
        saved.save(path, {"f": [1]})
    with pytest.raises((GetLocalError, TypeError, ValueError)):
        saved.load(path)


def crafted(tmp_path, seed):
    """A capture with one part of its index or its files changed at random."""
    path = saved.save(tmp_path / f"c{seed}", maps(), images={"image": np.zeros((4, 4, 3), np.uint8)},
                      info={"model": "m"})
    rng = random.Random(seed)
    index = json.loads((path / saved.INDEX).read_text())
    file = path / index["arrays"][0]["file"]
    junk = rng.choice([None, -1, 2 ** 70, 1.5, "x", "../x", [], {}, [1, 2], {"a": 1}, True, "\0"])
    where = rng.choice(["index", "field", "map", "segment", "array", "file"])
    if where == "index":
        index[rng.choice(list(index))] = junk
    elif where == "field":
        index["arrays"][0][rng.choice(list(index["arrays"][0]))] = junk
    elif where == "map":
        index["maps"][0][rng.choice(list(index["maps"][0]))] = junk
    elif where == "segment":
        segment = index["maps"][0][rng.choice(["queries", "keys"])]["segments"][rng.choice([0, 1])]
        segment[rng.choice(["kind", "start", "stop", "grid", "camera"])] = junk
    elif where == "array":
        index["images"] = {"image": {"array": junk}}
    else:
        blob = file.read_bytes()
        file.write_bytes(blob[: rng.randrange(len(blob))])
    (path / saved.INDEX).write_text(json.dumps(index))
    return path


@pytest.mark.parametrize("seed", range(40))
def test_a_crafted_capture_is_refused_by_name_or_loads_and_plots(tmp_path, capsys, seed):
    path = crafted(tmp_path, seed)
    try:
        saved.load(path)
    except GetLocalError as exc:
        assert str(path) in str(exc)
        refused = True
    else:
        refused = False
    code = cli.main(["plot", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    if refused:
        assert code == 2 and len(err) == 1 and err[0].startswith("getlocal plot: "), err
    else:
        assert code in (0, 2) and (code == 0 or len(err) == 1), err


@pytest.mark.parametrize("argv", [
    ["plot", "nowhere", "--out", "o"],
    ["plot", "", "--out", "o"],
    ["demo", "--image", "missing.png", "--out", "o"],
    ["demo", "--image", ".", "--out", "o"],
    ["demo", "--model", "", "--out", "o"],
    ["demo", "--model", "nan", "--out", "o"],
    ["demo", "--out", "o", "--model", "-1"],
    ["demo", "--bogus"],
    ["plot"],
])
def test_wrong_command_lines_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_in_place_of_an_array_file_is_refused_without_blocking(tmp_path):
    path = saved.save(tmp_path / "c", {"f": [np.ones(2)]})
    file = path / json.loads((path / saved.INDEX).read_text())["arrays"][0]["file"]
    file.unlink()
    os.mkfifo(file)
    with pytest.raises(GetLocalError, match="is not a plain file"):
        saved.load(path)
