"""record(explain=...): an explanation per step, kilobytes instead of maps, equal to one computed from the maps."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import getlocal
from getlocal import GetLocalError, explain, get_local

pytest.importorskip("timm")

from getlocal.adapters import paligemma, tiny, vit  # noqa: E402

DATA = Path(__file__).parent / "data"


def _step_bytes(run: Path, step: int) -> int:
    """What one step costs on disk: its array file plus its line of the log."""
    part = run / "rank-00000"
    line = (part / "steps.log").read_bytes().split(b"\n")[step]
    file = part / f"step-{step:08d}.safetensors"
    return len(line) + 1 + (file.stat().st_size if file.exists() else 0)


def _same(got: explain.Explanation, want: explain.Explanation):
    for name in ("values", "last_layer", "reach", "rows"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert got.keys.to_dict() == want.keys.to_dict()
    assert (got.excluded, got.method, got.layers, got.tower, got.step, got.phase) == \
        (want.excluded, want.method, want.layers, want.tower, want.step, want.phase)
    assert np.array_equal(got.even, want.even)


def test_a_vit_step_stored_as_its_rollout_takes_kilobytes_where_its_maps_take_megabytes(tmp_path, adapters_off):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()  # random weights, 12 blocks
    images = [torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(t)) for t in range(2)]

    def why(maps):
        return explain.rollout(maps, rows="cls", exclude="cls")

    kept = []
    vit.activate(model)
    try:
        for name, maps_too in (("maps", True), ("explained", False)):
            with getlocal.record(tmp_path / name, collect=lambda: vit.collect(model), explain=why, maps=maps_too,
                                 durable=False) as rec, torch.no_grad():
                for x in images:
                    model(x)
                    if not maps_too:
                        kept.append(vit.collect(model))
                    rec.step()
    finally:
        vit.deactivate()
    with_maps = [_step_bytes(tmp_path / "maps", t) for t in range(2)]
    alone = [_step_bytes(tmp_path / "explained", t) for t in range(2)]
    maps_bytes = sum(m.array.nbytes for m in kept[0])
    print(f"bytes per step: maps and rollout {with_maps}, rollout alone {alone}; the maps' arrays {maps_bytes}")
    assert maps_bytes == 12 * 3 * 197 * 197 * 4  # 12 blocks, 3 heads, 197 tokens, float32: 5.6 MB
    assert all(b < 8 * 1024 for b in alone)  # 197 shares, float64, twice (rollout, last layer), and the labels
    assert all(b < maps_bytes / 500 for b in alone) and all(b > maps_bytes for b in with_maps)
    run = getlocal.load(tmp_path / "explained")
    for step, maps in zip(run, kept):
        assert len(step.maps) == 0 and step.explanation_error is None
        _same(step.explanation, why(maps))
        assert step.explanation.grid().shape == (14, 14)
    both = getlocal.load(tmp_path / "maps")
    for step, maps in zip(both, kept):  # the maps written beside it are the ones it came from
        _same(step.explanation, why(step.maps))
        assert [a.array.tobytes() for a in step.maps] == [b.array.tobytes() for b in maps]


def test_a_pi0_episode_gives_back_each_cameras_grid_and_a_dict_of_explanations(tmp_path, adapters_off):
    pi0 = tiny.pi0()
    images, ids, state = tiny.pi0_inputs(pi0, cameras=2)

    def collect():
        return paligemma.collect(pi0, cameras=["base", "wrist"], state_tokens=1)

    def why(maps):
        return {"policy": explain.rollout(maps.select(tower=["language", "expert"]), rows="action"),
                "wrist": explain.rollout([m for m in maps.select(tower="vision") if m.camera == "wrist"],
                                         rows="image")}

    kept = []
    paligemma.activate(pi0)
    try:
        with getlocal.record(tmp_path / "run", collect=collect, explain=why, maps=False, durable=False) as rec:
            for t in range(3):
                pi0.sample_actions(images, ids, state + t, horizon=4, steps=1)
                kept.append(why(collect()))
                rec.step(images={"base": np.zeros((28, 28, 3), np.uint8)}, info={"t": t})
    finally:
        paligemma.deactivate()
    run = getlocal.load(tmp_path / "run")
    assert [s.info["t"] for s in run] == [0, 1, 2]
    for step, want in zip(run, kept):
        got = step.explanation
        assert sorted(got) == ["policy", "wrist"]
        for name in got:
            _same(got[name], want[name])
        for camera in ("base", "wrist"):
            grid = got["policy"].grid(camera)
            assert grid.shape == (2, 2) and np.array_equal(grid, want["policy"].grid(camera))
        assert np.allclose(got["wrist"].values.sum(-1), 1.0)


def test_an_explanation_that_fails_is_warned_and_recorded_and_the_step_is_written(tmp_path):
    @get_local("attn")
    def attend(x):
        attn = np.outer(x, x)
        return attn.sum()

    answers = iter([ZeroDivisionError("no keys left"), "not an explanation"])

    def why(capture):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with get_local.capture(), getlocal.record(tmp_path / "run", explain=why, durable=False) as rec:
        for t in range(2):
            attend(np.arange(3.0) + t)
            with pytest.warns(RuntimeWarning, match=r"record\(explain=...\) failed: .*written without"):
                assert rec.step(info={"t": t}) == t
    run = getlocal.load(tmp_path / "run")
    assert [s.info["t"] for s in run] == [0, 1]
    assert np.array_equal(run[1].maps[get_local.key_of(attend)][0], np.outer([1.0, 2, 3], [1.0, 2, 3]))
    assert run[0].explanation is None and run[1].explanation is None
    assert run[0].explanation_error == "record(explain=...) failed: ZeroDivisionError: no keys left"
    assert "returned 'not an explanation'" in run[1].explanation_error
    assert "return an Explanation" in run[1].explanation_error


@pytest.mark.parametrize("keyword, value, words", [
    ("explain", "rollout", "explain must be a function of the step's maps returning an Explanation"),
    ("explain", explain.rollout([np.eye(2)[None, None]]), "explain must be a function"),
    ("maps", "no", "maps"),
    ("maps", None, "maps"),
    ("select", {"tower": "llm"}, "picks the maps to write and maps=False writes none"),
])
def test_bad_explain_or_maps_arguments_are_refused_naming_them(tmp_path, keyword, value, words):
    with pytest.raises(GetLocalError, match=words):
        getlocal.record(tmp_path / "run", **{keyword: value}, **({"maps": False} if keyword == "select" else {}))
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_a_recording_made_before_explanations_loads_with_none(tmp_path):
    run = getlocal.load(DATA / "run-v1")
    assert [s.explanation for s in run] == [None] * len(run)
    assert [s.explanation_error for s in run] == [None] * len(run)
    assert len(run[0].maps) > 0


def test_a_damaged_explanation_record_is_named(tmp_path):
    with getlocal.record(tmp_path / "run", explain=lambda m: explain.rollout([np.eye(3)[None, None]]),
                         durable=False) as rec:
        rec.step({})
    log = tmp_path / "run" / "rank-00000" / "steps.log"
    number, _, text = log.read_bytes().rstrip(b"\n").split(b" ", 2)
    text = text.replace(b'"rows":[0,1,2]', b'"rows":[0,1]')
    import hashlib

    log.write_bytes(b"%s %s %s\n" % (number, hashlib.sha256(number + b" " + text).hexdigest().encode(), text))
    with pytest.raises(GetLocalError, match=r"step 0 does not parse .*explanation .*for 2 rows"):
        getlocal.load(tmp_path / "run")[0].explanation
    assert os.path.exists(log)


def test_a_fast_mode_episode_records_the_explanation_of_eager_mode(tmp_path, adapters_off):
    from getlocal.adapters import openvla

    vla = tiny.openvla()
    pixels, ids = tiny.openvla_inputs(vla)

    def why(maps):
        return explain.rollout(maps.select(tower="llm"), rows="generated", exclude="bos")

    got = {}
    for mode in ("eager", "fast"):  # fast: the model keeps its kernel, each map is rebuilt when rollout reads it
        openvla.activate(vla, mode=mode)
        try:
            with getlocal.record(tmp_path / mode, collect=lambda: openvla.collect(vla), explain=why, maps=False,
                                 durable=False) as rec:
                for t in range(2):
                    tiny.generate(vla, pixels + 0.5 * t, ids, max_new_tokens=4)
                    rec.step()
        finally:
            openvla.deactivate()
        got[mode] = [s.explanation for s in getlocal.load(tmp_path / mode)]
    for eager, fast in zip(got["eager"], got["fast"]):
        assert (fast.tower, fast.phase, fast.excluded) == ("llm", "prefill+decode", (0,))
        assert np.abs(eager.values - fast.values).max() < 1e-6
