"""Regenerate the README's explanation figure, docs/images/explain_rollout.png (offline, synthetic maps).

    MPLBACKEND=Agg python docs/make_explain_images.py

The maps are synthetic, built so that a single layer and the rollout disagree
the way they do in real ViTs: a class token and 14 x 14 patches over
matplotlib's sample photograph; blocks 0-2 mix each patch with its 3 x 3
neighbours (the class token mostly keeps to itself), and in the last block the
class token attends to four patches of the face. The last layer's map shows
those four patches; the rollout shows where their content came from: spread
over the neighbours, plus the class token's own mass.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cbook import get_sample_data  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from getlocal import explain, plot  # noqa: E402
from getlocal.maps import Segment, TokenLayout  # noqa: E402

H = W = 14
N = 1 + H * W
KEYS = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, N, grid=(H, W))])
FACE = [(4, 6), (4, 7), (5, 6), (5, 7)]


def _local_block(heads=2):
    """Each patch to its 3 x 3 neighbours (itself most); the class token 80% to itself, the rest even."""
    r, c = np.divmod(np.arange(H * W), W)
    near = (np.abs(r[:, None] - r[None]) <= 1) & (np.abs(c[:, None] - c[None]) <= 1)
    a = np.zeros((N, N))
    a[1:, 1:] = near + 2 * np.eye(H * W)
    a[1:, 0] = 0.5
    a[0, 0], a[0, 1:] = 0.8 * H * W, 0.2
    a /= a.sum(-1, keepdims=True)
    return np.broadcast_to(a, (1, heads, N, N)).copy()


def _last_block(heads=2):
    a = _local_block(heads)[0, 0].copy()
    a[0] = 0.02 / (N - 4)
    for rr, cc in FACE:
        a[0, 1 + rr * W + cc] = 0.98 / 4
    a[0] /= a[0].sum()
    return np.broadcast_to(a, (1, heads, N, N)).copy()


def main():
    with Image.open(get_sample_data("grace_hopper.jpg")) as im:
        photo = np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR))
    maps = [_local_block() for _ in range(3)] + [_last_block()]
    result = explain.rollout(maps, rows="cls", keys=KEYS)
    fig = plot.relevance_figure(result, photo, panel_size=3.0)
    fig.suptitle("[CLS] row, synthetic maps: 3 blocks of 3x3-neighbour mixing, then [CLS] on 4 face patches",
                 fontsize=9)
    out = ROOT / "docs" / "images" / "explain_rollout.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(out.relative_to(ROOT))


if __name__ == "__main__":
    main()
