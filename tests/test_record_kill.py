"""getlocal.record under SIGKILL: whatever moment a recording process dies, every completed step loads, bit-identical."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np

import getlocal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DATA = textwrap.dedent("""
    import numpy as np

    POOL = [np.random.default_rng(seed).random((1, 4, 256, 512), dtype=np.float32) for seed in range(3)]

    def expected(t):
        # 2 MB per map, 2 maps a step: writing and fsyncing them is most of a step's time
        return [POOL[t % 3] + np.float32(t), POOL[(t + 1) % 3]], np.full((6, 8, 3), t % 256, np.uint8)
""")
namespace = {}
exec(DATA, namespace)
expected = namespace["expected"]

CHILD = DATA + textwrap.dedent("""
    import sys
    import getlocal
    from getlocal import get_local

    @get_local("attn")
    def attend(t, i):
        attn = expected(t)[0][i]
        return attn

    with get_local.capture(), getlocal.record(sys.argv[1]) as rec:
        print("ready", flush=True)  # the run directory exists from here on
        for t in range(100000):
            attend(t, 0), attend(t, 1)
            rec.step(images={"cam": expected(t)[1]}, info={"t": t, "action": np.arange(7.0) * t})
            print(t, flush=True)  # the step is on disk: rec.step returned
""")


def test_a_recording_killed_at_random_moments_keeps_every_completed_step_bit_identical(tmp_path):
    rng = random.Random(12)
    orphans = committed_unreported = 0
    for trial in range(20):
        run = tmp_path / f"run{trial}"
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(run)], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        assert child.stdout.readline().strip() == b"ready", child.stderr.read()
        threading.Event().wait(rng.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
        reported = len(out.split())  # steps whose rec.step() returned before the kill
        recording = getlocal.load(run)
        steps = [s.step for s in recording]
        assert steps == list(range(len(steps))) and len(steps) in (reported, reported + 1), (steps, reported)
        committed_unreported += len(steps) == reported + 1  # killed after the log line, before the print
        part = run / "rank-00000"
        orphans += any(n.startswith("step-") and int(n[5:13]) >= len(steps) for n in os.listdir(part))
        for s in recording:
            maps, frame = expected(s.step)
            assert s.info["t"] == s.step and np.array_equal(s.info["action"], np.arange(7.0) * s.step)
            assert np.array_equal(s.images["cam"], frame)
            found = [entry for entry in s.maps["attend"]]
            assert len(found) == 2
            for got, want in zip(found, maps):
                assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    assert orphans >= 1, "no kill landed while a step file was being written"
    print(f"kills inside a step file write: {orphans}/20; after the log line, before the report: "
          f"{committed_unreported}/20")


EXPLAINED = textwrap.dedent("""
    import sys
    import numpy as np
    import getlocal
    from getlocal import explain
    from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

    LAYOUT = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 256, grid=(15, 17))])

    def maps(t):
        rng = np.random.default_rng(t)
        out = []
        for layer in range(3):
            a = rng.random((1, 4, 256, 256), dtype=np.float32)
            out.append(AttentionMap(a / a.sum(-1, keepdims=True), tower="vit", layer=layer, path=f"b.{layer}",
                                    step=0, phase="encode", call=layer, queries=LAYOUT, keys=LAYOUT))
        return AttentionMaps(out, {"vit": LAYOUT})

    def why(m):
        return explain.rollout(m, rows="cls", exclude="cls")
""")

EXPLAINED_CHILD = EXPLAINED + textwrap.dedent("""
    with getlocal.record(sys.argv[1], explain=why) as rec:  # the maps (3 MB) beside it: a kill lands in a write
        print("ready", flush=True)
        for t in range(100000):
            rec.step(maps(t), info={"t": t})
            print(t, flush=True)
""")


def test_a_recording_of_explanations_killed_at_random_moments_keeps_every_completed_explanation(tmp_path):
    explained = {}
    exec(EXPLAINED, explained)
    rng = random.Random(7)
    for trial in range(6):
        run = tmp_path / f"run{trial}"
        child = subprocess.Popen([sys.executable, "-c", EXPLAINED_CHILD, str(run)], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        assert child.stdout.readline().strip() == b"ready", child.stderr.read()
        threading.Event().wait(rng.uniform(0.3, 1.5))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
        reported = len(out.split())
        recording = getlocal.load(run)
        steps = [s.step for s in recording]
        assert steps == list(range(len(steps))) and len(steps) in (reported, reported + 1), (steps, reported)
        assert reported >= 1, "killed before any step was written: wait longer"
        for s in recording:
            want = explained["why"](explained["maps"](s.step))
            got = s.explanation
            assert s.info["t"] == s.step and s.explanation_error is None
            assert got.values.tobytes() == want.values.tobytes() and got.excluded == (0,)
            assert np.array_equal(got.grid(), want.grid(), equal_nan=True)
