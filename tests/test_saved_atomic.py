"""getlocal.saved under kills, concurrent saves and busy threads: the path always holds one whole capture."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from getlocal import get_local, saved

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CAPTURES = textwrap.dedent("""
    import numpy as np

    def capture(seed, entries=300):
        rng = np.random.default_rng(seed)
        return {"f": [rng.random((4, 8)).astype(np.float32) for _ in range(entries)],
                "g": [{"step": i, "seed": seed, "ids": rng.integers(0, 9, size=5)} for i in range(entries // 3)]}
""")
namespace = {}
exec(CAPTURES, namespace)
capture = namespace["capture"]

SAVER = CAPTURES + textwrap.dedent("""
    import sys
    from getlocal import saved

    path, seeds, rounds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], int(sys.argv[3])
    captures = [capture(s) for s in seeds]
    print("ready", flush=True)
    i = 0
    while rounds < 0 or i < rounds:
        saved.save(path, captures[i % len(captures)])
        print("saved", i, flush=True)
        i += 1
""")


def saver(path, seeds, rounds=-1):
    return subprocess.Popen([sys.executable, "-c", SAVER, str(path), ",".join(map(str, seeds)), str(rounds)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_same(found, expected):
    assert list(found) == list(expected)
    for key in expected:
        assert len(found[key]) == len(expected[key])
        for a, b in zip(found[key], expected[key]):
            if isinstance(b, dict):
                assert a.keys() == b.keys() and a["step"] == b["step"] and a["seed"] == b["seed"]
                a, b = a["ids"], b["ids"]
            assert a.dtype == b.dtype and np.array_equal(a, b)


def which(found, *seeds):
    """The seed whose capture ``found`` equals, checked array by array."""
    seed = found["g"][0]["seed"]
    assert seed in seeds
    assert_same(found, capture(seed))
    return seed


def only_the_capture(path):
    names = sorted(os.listdir(path))
    assert len(names) == 2 and names[0].startswith("arrays-") and names[1] == saved.INDEX, names
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_a_save_killed_at_any_moment_leaves_the_old_or_the_new_capture_whole(tmp_path):
    path = tmp_path / "c"
    saved.save(path, capture(0))
    rng = random.Random(9)
    completed, found = [], 0
    for trial in range(20):
        proc = saver(path, [1, 0])
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        if trial % 2:  # after the first switch, somewhere in a later save
            assert proc.stdout.readline().startswith("saved"), proc.stderr.read()
        # trial 0 is killed at once, before any switch; the others somewhere inside a save
        threading.Event().wait(rng.uniform(0.0, 0.4) if trial else 0.0)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        done = (trial % 2) + out.count("saved")
        completed.append(done)
        # what was saved last before the kill, or the save it was in the middle of
        allowed = {found if done == 0 else (1, 0)[(done - 1) % 2], (1, 0)[done % 2]}
        found = which(saved.load(path), 0, 1)
        assert found in allowed, (trial, done, found)
    assert 0 in completed and any(completed)  # kills landed before and after switches
    saved.save(path, capture(2))
    assert_same(saved.load(path), capture(2))
    only_the_capture(path)


def test_two_processes_saving_to_one_path_take_turns_and_leave_one_whole_capture(tmp_path):
    path = tmp_path / "c"
    procs = [saver(path, [seed], rounds=4) for seed in (3, 4)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "Traceback" not in err, err
    which(saved.load(path), 3, 4)
    only_the_capture(path)


def test_a_lock_left_by_a_killed_save_is_taken_over(tmp_path):
    path = tmp_path / "c"
    saved.save(path, {"f": [np.ones(2)]})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (path / saved.LOCK).write_text(dead.stdout)
    saved.save(path, {"f": [np.zeros(2)]})
    assert np.array_equal(saved.load(path)["f"][0], np.zeros(2))
    only_the_capture(path)


def test_saving_the_live_cache_returns_while_other_threads_keep_recording(tmp_path):
    @get_local("x")
    def step(i):
        x = np.full(3, i, dtype=np.int64)
        return x

    stop = threading.Event()

    def busy():
        i = 0
        while not stop.is_set():
            step(i)
            i += 1
            stop.wait(0.001)  # about a thousand calls a second: still faster than a save writes files

    key = get_local.key_of(step)

    def wait_for_entries():
        for _ in range(6000):  # at most a minute: never a hang
            if len(get_local.cache.get(key, ())) >= 50:
                return
            threading.Event().wait(0.01)

    workers = [threading.Thread(target=busy, daemon=True) for _ in range(2)]
    result = {}
    with get_local.capture():
        for w in workers:
            w.start()
        try:
            wait_for_entries()
            get_local.clear()
            wait_for_entries()
            writer = threading.Thread(target=lambda: result.update(path=saved.save(tmp_path / "c", get_local.cache)))
            writer.start()
            writer.join(timeout=60)  # a deadline that only a hang misses
            assert not writer.is_alive(), "save() of the live cache did not return"
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)
    found = saved.read(result["path"])
    entries, calls = found.data[key], found.calls[key]
    assert len(entries) >= 50 and len(calls) == len(entries)
    assert all(c is not None for c in calls) and calls == sorted(calls)


@pytest.mark.skipif(os.name == "nt", reason="the lock waits on live pids; Windows cannot probe them")
def test_a_lock_held_by_a_live_process_makes_the_save_wait_then_say_who_holds_it(tmp_path, monkeypatch):
    path = saved.save(tmp_path / "c", {"f": [np.ones(2)]})
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (path / saved.LOCK).write_text(f"{holder.pid}\n")
        monkeypatch.setattr(saved, "_LOCK_WAIT", 0.3)
        with pytest.raises(saved.GetLocalError, match=rf"another save \(pid {holder.pid}\) has held .*delete"):
            saved.save(path, {"f": [np.zeros(2)]})
    finally:
        holder.kill()
        holder.wait()
    assert np.array_equal(saved.load(path)["f"][0], np.ones(2))
