"""Opening a recorded run reads its logs only: arrays are read when touched, one step's file at a time."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

import getlocal
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OPEN = textwrap.dedent("""
    import json, sys, time
    opened = []
    sys.addaudithook(lambda event, args: event == "open" and opened.append(str(args[0])))
    import getlocal

    start = time.perf_counter()
    run = getlocal.load(sys.argv[1])
    seconds = time.perf_counter() - start
    at_open = [p for p in opened if sys.argv[1] in p]
    labels = [len(s.maps) for s in run]  # the labels of every step: still no array file
    at_labels = [p for p in opened if sys.argv[1] in p]
    small = run[1].maps[0].array.sum()  # one small map of step 1
    at_small = [p for p in opened if sys.argv[1] in p]
    print(json.dumps({"seconds": seconds, "at_open": at_open, "at_labels": at_labels, "at_small": at_small,
                      "steps": len(run), "labels": labels, "small": float(small)}))
""")


def layout(n):
    return TokenLayout([Segment("image", 0, n, grid=(n // 64, 64))])


def test_a_run_of_more_than_a_gigabyte_opens_without_touching_any_array_file(tmp_path):
    run = tmp_path / "run"
    with getlocal.record(run, durable=False) as rec:
        for t in range(4):  # 4 steps of a 256 MB map (zeros: the files are sparse, cheap to write) + a small one
            big = np.zeros((1, 1, 8192, 8192), np.float32)
            maps = AttentionMaps([AttentionMap(np.full((1, 1, 64, 64), t, np.float32), "llm", 0, "small", 0,
                                               "prefill", 0, layout(64), layout(64)),
                                  AttentionMap(big, "llm", 1, "big", 0, "prefill", 1, layout(8192), layout(8192))])
            rec.step(maps)
            del big, maps
    files = [run / "rank-00000" / f"step-{t:08d}.safetensors" for t in range(4)]
    assert sum(os.path.getsize(f) for f in files) >= 2 ** 30
    out = subprocess.run([sys.executable, "-c", OPEN, str(run)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    names = lambda paths: sorted({os.path.relpath(p, run) for p in paths})  # noqa: E731
    assert names(found["at_open"]) == ["rank-00000/part.json", "rank-00000/steps.log", "run.json"]
    assert names(found["at_labels"]) == names(found["at_open"]) and found["labels"] == [2, 2, 2, 2]
    assert set(names(found["at_small"])) - set(names(found["at_open"])) == {"rank-00000/step-00000001.safetensors"}
    assert found["small"] == 64 * 64 and found["seconds"] < 0.5, found


def test_a_touched_map_is_read_and_checked_while_its_neighbours_stay_on_disk(tmp_path):
    run = tmp_path / "run"
    arrays = [np.random.default_rng(i).random((1, 2, 64, 64)).astype(np.float32) for i in range(3)]
    with getlocal.record(run, durable=False) as rec:
        rec.step(AttentionMaps([AttentionMap(a, "llm", i, f"layers.{i}", 0, "prefill", i, layout(64), layout(64))
                                for i, a in enumerate(arrays)]))
    step = getlocal.load(run)[0]
    one = step.maps.select(layer=1)
    assert len(one) == 1 and one[0].shape == (1, 2, 64, 64) and np.array_equal(one[0].array, arrays[1])
    # damage the bytes of map 2 only: map 1 still reads, map 2 names its file and the way out
    file = run / "rank-00000" / "step-00000000.safetensors"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF
    file.write_bytes(bytes(data))
    maps = getlocal.load(run)[0].maps
    assert np.array_equal(maps[1].array, arrays[1])
    try:
        maps[2].array
    except getlocal.GetLocalError as exc:
        assert "step-00000000.safetensors does not match the sha256" in str(exc) and "copy the whole run" in str(exc)
    else:
        raise AssertionError("a damaged map was read without complaint")


def test_select_over_a_run_filters_each_step_by_what_it_holds_and_refuses_what_no_step_holds(tmp_path):
    import pytest

    def one(tower, layer):
        layout = TokenLayout([Segment("image", 0, 4, grid=(2, 2))])
        return AttentionMap(np.full((1, 1, 4, 4), 0.25, np.float32), tower, layer, f"{tower}.{layer}", 0, "encode",
                            0, layout, layout)

    with getlocal.record(tmp_path / "run") as rec:
        rec.step(AttentionMaps([one("vision", 0)]))                      # a step without the language tower
        rec.step(AttentionMaps([one("vision", 0), one("language", 0)]))
    run = getlocal.load(tmp_path / "run")
    chosen = run.select(tower="language")
    assert [len(s.maps) for s in chosen] == [0, 1] and chosen[1].maps[0].tower == "language"
    assert [len(s.maps) for s in run.select(tower=["vision", "language"])] == [1, 2]
    with pytest.raises(getlocal.GetLocalError, match="tower='expert' is not one of 'language', 'vision'"):
        run.select(tower="expert")
    with pytest.raises(ValueError, match="phase='decode' is not one of 'encode'"):
        run.select(phase="decode")
