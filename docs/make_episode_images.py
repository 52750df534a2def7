"""Record a 12-step episode of the tiny Pi0 and draw its figures into docs/images (python docs/make_episode_images.py)."""
import shutil
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402

import getlocal  # noqa: E402
from getlocal import get_local  # noqa: E402
from getlocal.cli.report import report_run  # noqa: E402
from getlocal.adapters import paligemma, tiny  # noqa: E402

SIZE = 56  # a 4x4 patch grid


def scene(t, steps):
    """A grey table with a red block sliding right; the wrist camera sees it up close."""
    exterior = np.full((SIZE, SIZE, 3), (150, 140, 125), np.uint8)
    exterior[: SIZE // 3] = (200, 210, 225)
    x = 4 + int((SIZE - 18) * t / (steps - 1))
    exterior[30:42, x:x + 12] = (200, 30, 30)
    wrist = np.kron(exterior[20:48, max(0, x - 8):max(0, x - 8) + 28], np.ones((2, 2, 1), np.uint8))
    wrist = np.pad(wrist, ((0, SIZE - wrist.shape[0]), (0, SIZE - wrist.shape[1]), (0, 0)), mode="edge")
    return exterior, wrist


def main(out=Path(__file__).parent / "images", steps=12):
    torch.manual_seed(0)
    model = tiny.pi0(image_size=SIZE)
    _, ids, state = tiny.pi0_inputs(model, cameras=2)
    run = Path(tempfile.mkdtemp()) / "episode"
    paligemma.activate(model)
    try:
        with getlocal.record(run, collect=lambda: paligemma.collect(model, cameras=["exterior", "wrist"],
                                                                    state_tokens=1),
                             select={"tower": "expert"}, info={"model": "pi0-tiny"}) as rec:
            for t in range(steps):
                exterior, wrist = scene(t, steps)
                pixels = [torch.from_numpy(p / 127.5 - 1).float().permute(2, 0, 1)[None] for p in (exterior, wrist)]
                actions = model.sample_actions(pixels, ids, state, horizon=4, steps=3)
                rec.step(images={"exterior": exterior, "wrist": wrist}, info={"action": actions[0, 0].numpy()})
    finally:
        paligemma.deactivate()
        get_local.clear()
    figs = Path(tempfile.mkdtemp())
    print("\n".join(report_run(getlocal.load(run), figs)))
    shutil.copy(figs / "episode.gif", out / "episode.gif")
    shutil.copy(figs / "episode-grid.png", out / "episode-grid.png")
    shutil.copy(figs / "image-share.png", out / "episode-image-share.png")
    shutil.rmtree(run.parent), shutil.rmtree(figs)


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:2]))
