"""getlocal.record with real models: what a step writes comes back from getlocal.load, labelled and bit-identical."""
import os

import numpy as np
import pytest
import torch

import getlocal
from getlocal import GetLocalError, get_local, saved
from getlocal.adapters import openvla, tiny


@pytest.fixture(scope="module")
def openvla_run(tmp_path_factory):
    """Three control steps of the tiny OpenVLA (1 prefill + 6 decode passes each), and what collect() gave."""
    run = tmp_path_factory.mktemp("rec") / "run"
    model = tiny.openvla()
    pixels, ids = tiny.openvla_inputs(model)
    kept = []
    get_local.clear()
    openvla.activate(model)
    try:
        with getlocal.record(run, collect=lambda: openvla.collect(model), info={"model": "openvla-tiny"}) as rec:
            for t in range(3):
                tiny.generate(model, pixels + 0.5 * t, ids, max_new_tokens=7)
                maps = openvla.collect(model)
                frame = np.random.default_rng(t).integers(0, 255, (28, 28, 3), dtype=np.uint8)
                kept.append((maps, frame))
                assert rec.step(images={"image": frame}, info={"action": np.arange(7) + t, "reward": t / 2}) == t
                assert get_local.cache == {}  # emptied after every step
    finally:
        openvla.deactivate()
        get_local.clear()
    return run, kept


def test_each_step_of_an_openvla_episode_loads_with_its_labels_frames_and_info_bit_identical(openvla_run):
    run, kept = openvla_run
    recording = getlocal.load(run)
    assert len(recording) == 3 and recording.parts["rank-00000"]["info"] == {"model": "openvla-tiny"}
    for step, (maps, frame) in zip(recording, kept):
        assert step.rank == 0 and step.part == "rank-00000" and step.kind == "maps"
        assert np.array_equal(step.images["image"], frame)
        assert step.info["reward"] == step.step / 2 and np.array_equal(step.info["action"], np.arange(7) + step.step)
        got = step.maps
        assert got.meta() == maps.meta() and got.steps == maps.steps and len(got.select(tower="llm")) == 14
        for a, b in zip(got, maps):
            assert a.array.dtype == b.array.dtype and a.array.tobytes() == b.array.tobytes()


def test_select_picks_steps_and_maps_by_step_tower_and_layer_without_reading_arrays(openvla_run):
    run, _ = openvla_run
    chosen = getlocal.load(run).select(step=[0, 2], tower="llm", layer=1)
    assert [s.step for s in chosen] == [0, 2]
    assert {(m.tower, m.layer) for s in chosen for m in s.maps} == {("llm", 1)} and len(chosen[1].maps) == 7


def test_a_raw_cache_is_recorded_with_the_call_of_each_entry(tmp_path):
    @get_local("x")
    def double(v):
        x = torch.full((2,), float(v))
        return x * 2

    with get_local.capture(), getlocal.record(tmp_path / "run", select={"key": [get_local.key_of(double)]}) as rec:
        for t in range(2):
            double(t), double(t + 10)
            rec.step(info={"t": t})
    recording = getlocal.load(tmp_path / "run")
    key = get_local.key_of(double)
    assert [[e.tolist() for e in s.maps[key]] for s in recording] == [[[0.0, 0.0], [10.0, 10.0]], [[1.0, 1.0], [11.0, 11.0]]]
    first, second = (s.calls[key] for s in recording)
    assert len(first) == len(second) == 2 and first[1] < second[0]  # call indices keep counting across steps


def test_every_writes_every_nth_step_and_clears_the_others(tmp_path):
    @get_local("x")
    def f(v):
        x = np.full(3, v)
        return x

    with get_local.capture(), getlocal.record(tmp_path / "run", every=3, durable=False) as rec:
        written = []
        for t in range(7):
            f(t)
            written.append(rec.step())
            assert get_local.cache == {}
    assert written == [0, None, None, 3, None, None, 6] and (rec.steps, rec.written) == (7, 3)
    recording = getlocal.load(tmp_path / "run")
    assert [(s.step, s.maps[get_local.key_of(f)][0][0]) for s in recording] == [(0, 0), (3, 3), (6, 6)]


def test_two_recorders_in_one_directory_write_separate_parts_and_overwrite_nothing(tmp_path):
    run = tmp_path / "run"
    with getlocal.record(run, durable=False) as a, getlocal.record(run, durable=False) as b:
        for t in range(2):
            a.step({"f": [np.full(2, t)]}), b.step({"f": [np.full(2, 100 + t)]})
    assert (a.part.name, b.part.name) == ("rank-00000", "rank-00000-1")
    recording = getlocal.load(run)
    assert [(s.part, int(s.maps["f"][0][0])) for s in recording] == [
        ("rank-00000", 0), ("rank-00000", 1), ("rank-00000-1", 100), ("rank-00000-1", 101)]
    assert [s.step for s in getlocal.load(run / "rank-00000-1")] == [0, 1]  # one part loads on its own


def test_a_torn_last_log_line_is_left_out_and_a_damaged_middle_line_is_refused(tmp_path):
    run = tmp_path / "run"
    with getlocal.record(run, durable=False) as rec:
        for t in range(3):
            rec.step({"f": [np.full(2, t)]})
    log = run / "rank-00000" / "steps.log"
    whole = log.read_bytes()
    log.write_bytes(whole[:-20])  # the third line cut short, as by a kill inside the write
    recording = getlocal.load(run)
    assert [s.step for s in recording] == [0, 1] and recording.torn == 1
    lines = whole.split(b"\n")
    lines[0] = lines[0].replace(b'"kind":"cache"', b'"kind":"cachf"')
    log.write_bytes(b"\n".join(lines))
    with pytest.raises(GetLocalError, match="line 1 is damaged but later lines are whole.*copy the whole directory"):
        getlocal.load(run)


def test_links_and_saved_captures_are_refused_by_name(tmp_path):
    run = tmp_path / "run"
    with getlocal.record(run, durable=False) as rec:
        rec.step({"f": [np.zeros(2)]})
    os.symlink(tmp_path, run / "rank-00007")
    with pytest.raises(GetLocalError, match="rank-00007 is a link or not a folder.*copy the folder"):
        getlocal.load(run)
    capture = saved.save(tmp_path / "capture", {"f": [np.zeros(2)]})
    with pytest.raises(GetLocalError, match="it holds a saved capture.*give a new directory"):
        getlocal.record(capture)
    with pytest.raises(GetLocalError, match="not a getlocal capture"):  # and save() will not overwrite a run
        saved.save(run, {"f": [np.zeros(2)]})
    with pytest.raises(TypeError, match="collect must be a function"):
        getlocal.record(tmp_path / "other", collect="openvla")
