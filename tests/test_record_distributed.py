"""getlocal.record under torchrun: each rank writes its own part, and load merges them."""
import os
import subprocess
import sys
import textwrap

import numpy as np

import getlocal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import torch.distributed as dist
    import getlocal
    from getlocal import get_local

    dist.init_process_group("gloo")
    rank = dist.get_rank()

    @get_local("attn")
    def attend(t):
        attn = np.full((2, 2), 10 * rank + t, np.float32)
        return attn

    with get_local.capture(), getlocal.record(sys.argv[1], info={"episode": rank}) as rec:
        for t in range(3):
            attend(t)
            rec.step(info={"t": t})
    dist.barrier()
    dist.destroy_process_group()
""")


def test_two_torchrun_processes_record_one_run_and_load_merges_their_parts(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(run)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    recording = getlocal.load(run)
    assert sorted(os.listdir(run)) == ["rank-00000", "rank-00001", "run.json"]
    assert recording.ranks == [0, 1]
    assert {name: (p["rank"], p["world_size"], p["info"]) for name, p in recording.parts.items()} == \
        {"rank-00000": (0, 2, {"episode": 0}), "rank-00001": (1, 2, {"episode": 1})}
    assert [(s.rank, s.step) for s in recording] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for s in recording:
        assert s.info == {"t": s.step} and np.array_equal(s.maps["attend"][0], np.full((2, 2), 10 * s.rank + s.step))
    assert [s.step for s in recording.select(rank=1, step=[0, 2])] == [0, 2]
