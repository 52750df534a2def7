"""getlocal.record over a long episode: memory stays flat, and the files are what the selection implies."""
import os
import subprocess
import sys
import textwrap

import numpy as np

import getlocal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EPISODE = textwrap.dedent("""
    import sys
    import torch
    import getlocal
    from getlocal import get_local

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qk = torch.nn.Linear(16, 32)

        @get_local("attn", "scores")
        def forward(self, x):
            q, k = self.qk(x).chunk(2, dim=-1)
            scores = q @ k.transpose(-1, -2)
            attn = scores.softmax(-1)
            return attn @ x

    def rss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    path, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = Attention()
    key = get_local.key_of(Attention.forward)
    with torch.no_grad(), get_local.capture(), \\
            getlocal.record(path, every=2, select={"key": [key]}, durable=False) as rec:
        for t in range(steps):
            for _ in range(2):  # two model calls per control step, as a decode loop makes
                model(torch.randn(1, 32, 16))
            rec.step(images={"cam": torch.zeros(8, 8, 3, dtype=torch.uint8)}, info={"reward": float(t)})
            if t + 1 in (10, steps):
                print(t + 1, rss(), len(get_local.cache), flush=True)
""")


def test_a_thousand_step_recording_keeps_memory_flat_and_writes_only_the_selected_steps(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-c", EPISODE, str(run), "1000"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (_, at_10, cached_10), (_, at_1000, cached_1000) = [map(int, line.split()) for line in out.stdout.split("\n")[:2]]
    assert cached_10 == cached_1000 == 0  # emptied after every step
    assert at_1000 - at_10 < 3 * 1024, f"RSS grew from {at_10} kB at step 10 to {at_1000} kB at step 1000"
    part = run / "rank-00000"
    files = sorted(os.listdir(part))
    assert files[0] == "part.json" and files[-1] == "steps.log" and len(files) == 502  # every=2: steps 0, 2, ..., 998
    # each step file: 2 calls x {"attn", "scores"} maps of 32x32 float32, plus the 8x8x3 frame, plus a header
    payload = 2 * 2 * 32 * 32 * 4 + 8 * 8 * 3
    sizes = {os.path.getsize(part / name) - payload for name in files[1:-1]}
    assert len(sizes) == 1 and 0 < sizes.pop() < 4096
    recording = getlocal.load(run)
    assert [s.step for s in recording] == list(range(0, 1000, 2))
    last = recording[-1]
    assert last.info == {"reward": 998.0} and last.images["cam"].shape == (8, 8, 3)
    (entries,) = last.maps.values()
    assert len(entries) == 2 and set(entries[0]) == {"attn", "scores"}
    assert np.allclose(entries[0]["attn"].sum(-1), 1, atol=1e-5)
