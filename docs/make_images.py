"""Regenerate the README pictures in docs/images/ (offline: synthetic maps, matplotlib's sample photo).

    MPLBACKEND=Agg python docs/make_images.py

The attention maps are synthetic, built to show each pattern the way a ViT
(12 blocks, 6 heads, a class token and 14 x 14 patches) or a two-camera VLA
policy (16 x 16 patches per camera) shows it; no model weights are needed.
"""
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cbook import get_sample_data  # noqa: E402
from PIL import Image  # noqa: E402

# run from a checkout without installing: the repository root holds getlocal/
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from getlocal import patterns, plot  # noqa: E402
from getlocal.maps import Segment, TokenLayout  # noqa: E402

VIT_TOKENS = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 197, grid=(14, 14))])

OUT = ROOT / "docs" / "images"
DPI = 110


def picture(size=(256, 300)):
    with Image.open(get_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB").resize(size, Image.BILINEAR))


def _cells(h, w):
    r, c = np.divmod(np.arange(h * w), w)
    return r, c


def gaussian_rows(h, w, centre, sigma):
    """``[h*w]`` weights of a Gaussian blob centred on grid point ``centre``."""
    r, c = _cells(h, w)
    g = np.exp(-((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / (2 * sigma**2))
    return g / g.sum()


def vit_layer(depth, rng, heads=6, side=14):
    """One block of a synthetic ViT: diagonal early, local in the middle, sinks late."""
    n = side * side
    r, c = _cells(side, side)
    dist2 = (r[:, None] - r) ** 2 + (c[:, None] - c) ** 2
    t = depth / 11
    maps = np.zeros((heads, n + 1, n + 1))
    for h in range(heads):
        jitter = rng.uniform(-0.15, 0.15)
        w_diag = np.clip(0.95 - 2.4 * t + jitter, 0, 1)
        w_sink = np.clip(1.6 * t - 0.65 + jitter, 0, 1)
        w_local = np.clip(1 - w_diag - w_sink, 0, 1) * (0.95 if h % 3 else 0.6)
        # narrow neighbourhoods in the middle, some heads reach far as depth grows
        sigma = 0.55 + 6 * t**2 * h / heads + rng.uniform(0, 0.2)
        local = np.exp(-dist2 / (2 * sigma**2))
        np.fill_diagonal(local, 0)
        local /= local.sum(-1, keepdims=True)
        sink = np.zeros((n, n + 1))
        sink[:, 0] = 0.6
        sink[:, 1 + rng.integers(n)] = 0.4  # a high-norm patch token
        img = np.zeros((n, n + 1))
        img[:, 1:] = w_diag * np.eye(n) + w_local * local
        img += w_sink * sink
        img[:, 1:] += max(0.0, 1 - w_diag - w_local - w_sink) / n
        maps[h, 1:] = img / img.sum(-1, keepdims=True)
        maps[h, 0] = rng.dirichlet(np.full(n + 1, 0.5))
    return maps


def save(fig, name):
    path = OUT / name
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print(f"{path.relative_to(ROOT)}: {os.path.getsize(path) // 1024} KB")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vit = [vit_layer(d, rng) for d in range(12)]
    table = patterns.summarize(vit, image_tokens=slice(1, 197), patch_size=16)
    print(table)
    img = picture()

    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    plot.attention_map(vit[5], head=0, layout=VIT_TOKENS, ax=ax)
    ax.set_title("block 5, head 0 (synthetic): stripes at +-1 and +-14", fontsize=9)
    save(fig, "attention_map.png")

    fig = plot.layer_heads(vit[3], layout=VIT_TOKENS, ncols=4)
    fig.suptitle("block 3, every head (synthetic maps)", fontsize=10, y=1.0, va="bottom")
    save(fig, "layer_heads.png")

    fig, ax = plt.subplots(figsize=(3.2, 3.6))
    plot.patch_grid(img, grid=(14, 14), cells=[(3, 7), (4, 7), 12 * 14 + 10], ax=ax)
    save(fig, "patch_grid.png")

    # a query patch on the face attending to the face and the ribbons
    a = np.full((197, 197), 1e-4)
    q = 1 + 5 * 14 + 7
    a[q, 0] = 0.12
    a[q, 1:] += 0.6 * gaussian_rows(14, 14, (5.5, 7), 1.4) + 0.3 * gaussian_rows(14, 14, (11.8, 10.5), 0.8)
    a /= a.sum(-1, keepdims=True)
    save(plot.grid_to_grid(a, img, query=(5, 7), image_tokens=slice(1, 197), cls_token=0, figsize=(8, 3.2)), "grid_to_grid.png")

    # a two-camera policy: [exterior 256][wrist 256][text 12], letterboxed exterior view
    ext = picture((320, 375))
    wrist = np.asarray(Image.fromarray(ext[150:330, 40:310]).resize((270, 180)))
    tokens = 256 + 256 + 12
    b = np.full((8, tokens, tokens), 1e-4)
    side = ext.shape[0]  # the longer side: the model's square
    left = (side - ext.shape[1]) // 2
    face = ((0.38 * ext.shape[0]) / side * 16 - 0.5, (0.5 * ext.shape[1] + left) / side * 16 - 0.5)
    for h in range(8):
        b[h, 512:, :256] += 0.5 * gaussian_rows(16, 16, face, 1.0 + 0.2 * h)
        b[h, 512:, 256:512] += 0.3 * gaussian_rows(16, 16, (12, 11.5), 1.5)
    b /= b.sum(-1, keepdims=True)
    fig = plot.camera_attention([ext, wrist], b, image_tokens=[slice(0, 256), slice(256, 512)], queries=slice(512, 524),
                                pad_to_square=[True, False], titles=["exterior (letterboxed)", "wrist"], panel_size=2.8)
    save(fig, "camera_attention.png")

    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    plot.label_map(table, ax=ax)
    save(fig, "label_map.png")
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    plot.pattern_scores(table, ax=ax)
    save(fig, "pattern_scores.png")
    fig, ax = plt.subplots(figsize=(4.0, 3.0))
    plot.attention_distance(table, ax=ax, pixels=True)
    save(fig, "attention_distance.png")


if __name__ == "__main__":
    main()
