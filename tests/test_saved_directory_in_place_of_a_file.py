"""A file of a capture or a run replaced by a directory: a GetLocalError naming it, no descriptor left open,
and one line from ``python -m getlocal plot`` (exit status 2)."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import getlocal
from getlocal import GetLocalError
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

PROMPT = TokenLayout([Segment("image", 0, 4, grid=(2, 2)), Segment("text", 4, 6)])
KEYS = TokenLayout(list(PROMPT.segments) + [Segment("action", 6, 8)])


def _maps(t):
    attn = np.full((1, 1, 2, 8), 1 / 8, np.float32)
    return AttentionMaps([AttentionMap(attn, "expert", 0, "gemma_expert.layers.0", t, "denoise", t,
                                       KEYS.window(6, 8), KEYS)])


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _into_directory(file):
    file.unlink()
    file.mkdir()
    (file / "inside").write_bytes(b"x")


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")


@needs_proc
def test_a_step_file_replaced_by_a_directory_is_named_and_leaks_no_descriptor(tmp_path):
    run = tmp_path / "run"
    with getlocal.record(run, durable=False) as rec:
        for t in range(2):
            rec.step(_maps(t))
    step_file = next((run / "rank-00000").glob("step-*1.safetensors"))
    _into_directory(step_file)
    loaded = getlocal.load(run)
    assert np.allclose(loaded[0].maps[0].array, 1 / 8)  # the other step reads as before
    before = _open_descriptors()
    for _ in range(5):
        with pytest.raises(GetLocalError, match=f"{step_file.name} is a directory"):
            loaded[1].maps[0].array
    assert _open_descriptors() == before


@needs_proc
def test_a_saved_capture_whose_array_file_is_a_directory_is_named_and_leaks_no_descriptor(tmp_path):
    path = getlocal.save(tmp_path / "cap", _maps(0))
    array_file = next(p for p in path.rglob("*.safetensors"))
    _into_directory(array_file)
    before = _open_descriptors()
    for _ in range(5):
        with pytest.raises(GetLocalError, match=f"{array_file.name} is a directory"):
            getlocal.load(path)[0].array
    assert _open_descriptors() == before


@needs_proc
def test_the_index_of_a_capture_replaced_by_a_directory_is_named(tmp_path):
    path = getlocal.save(tmp_path / "cap", _maps(0))
    index = next(p for p in path.iterdir() if p.suffix == ".json")
    _into_directory(index)
    before = _open_descriptors()
    with pytest.raises(GetLocalError, match=f"{index.name}"):
        getlocal.load(path)
    assert _open_descriptors() == before


def test_plot_of_a_run_whose_step_file_is_a_directory_prints_one_line_and_exits_2(tmp_path):
    run = tmp_path / "run"
    with getlocal.record(run, durable=False) as rec:
        for t in range(3):
            rec.step(_maps(t), images={"image": np.full((8, 8, 3), 128, np.uint8)})
    _into_directory(next((run / "rank-00000").glob("step-*1.safetensors")))
    result = subprocess.run([sys.executable, "-m", "getlocal", "plot", str(run), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, MPLBACKEND="Agg"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "step-00000001.safetensors is a directory" in lines[0]
