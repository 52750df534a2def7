"""Figures whose pixels match their captions: noise pale, patterns saturated, one colour per label, no overlapping labels."""
import colorsys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
timm = pytest.importorskip("timm")
import torch  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from getlocal import get_local, patterns, plot  # noqa: E402
from getlocal.maps import Segment, TokenLayout  # noqa: E402
from getlocal.patterns import display  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def saturation_of(rgb):
    return colorsys.rgb_to_hsv(*rgb)[1]


#: The pale 'noise' band: colours whose saturation (HSV) stays below 0.35, a pastel at most.
NOISE = 0.35


def test_the_noise_band_holds_0_4x_to_2_5x_uniform_and_8x_is_saturated():
    cmap = plt.get_cmap(display.UNIFORM_CMAP)
    at = lambda x: saturation_of(cmap((np.log(x) / np.log(display.UNIFORM_RANGE) + 1) / 2)[:3])  # noqa: E731
    assert at(0.4) <= NOISE and at(2.5) <= NOISE and at(1) < 0.02
    assert at(8) > 0.9 and at(1 / 8) > 0.9


def map_pixels(fig):
    """Saturation of every rendered pixel inside the figure's map panels (not the colour bar)."""
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255
    height = buf.shape[0]
    out = []
    for ax in fig.axes:
        if not ax.images or ax.get_label() == "<colorbar>":
            continue
        x0, y0, x1, y1 = ax.get_window_extent().extents
        crop = buf[int(height - y1) + 2:int(height - y0) - 2, int(x0) + 2:int(x1) - 2].reshape(-1, 3)
        mx, mn = crop.max(-1), crop.min(-1)
        out.append(np.where(mx > 0, (mx - mn) / np.where(mx > 0, mx, 1), 0))
    return np.concatenate(out)


@pytest.fixture(scope="module")
def random_vit_layer0():
    torch.manual_seed(0)
    get_local("attn")(timm.layers.Attention.forward)
    try:
        model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
        for block in model.blocks:
            block.attn.fused_attn = False
        with get_local.capture() as cache, torch.no_grad():
            model(torch.randn(1, 3, 224, 224))
        return np.asarray(cache["Attention.forward"][0])[0]
    finally:
        get_local.remove(timm.layers.Attention.forward)


def test_a_random_init_vit_figure_stays_in_the_pale_noise_band(random_vit_layer0):
    sat = map_pixels(plot.layer_heads(random_vit_layer0))
    assert np.mean(sat <= NOISE) > 0.99, (NOISE, np.quantile(sat, [0.5, 0.99, 1]))


def test_a_sharp_head_leaves_the_noise_band():
    a = np.full((1, 197, 197), 0.2 / 196)
    a[0, np.arange(197), (np.arange(197) + 1) % 197] = 0.8  # previous-token-like: 158x uniform on one key per row
    a[0] /= a[0].sum(-1, keepdims=True)
    sat = map_pixels(plot.layer_heads(a, average=False))
    assert np.mean(sat > NOISE + 0.05) > 0.5  # 0.2/196 is 0.2x uniform: saturated blue; the diagonal dark red


def test_the_random_weights_title_is_measured_on_the_figure(random_vit_layer0):
    values, _ = display.prepare_maps(random_vit_layer0, scale="uniform", sinks=None)
    text = display.departure_text(values)
    d = display.departure(values)
    assert d["max"] < 4 and d["min"] > 0.25 and 0 < d["outside"] < 0.5
    assert text.endswith("x uniform, " + f"{100 * d['outside']:.0f}% of entries outside 0.8-1.25x")


def test_a_label_has_one_colour_in_the_label_map_and_in_the_score_lines():
    stripe = np.zeros((1, 16, 16))
    for i in range(16):
        r, c = divmod(i, 4)
        for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            if 0 <= r + dr < 4 and 0 <= c + dc < 4:
                stripe[0, i, (r + dr) * 4 + c + dc] = 1
    stripe /= stripe.sum(-1, keepdims=True)
    table = patterns.summarize([np.eye(16)[None], stripe, np.tile(np.eye(16)[:1], (16, 1))[None]])
    assert np.asarray(table.labels).tolist() == [["diagonal"], ["stripe"], ["vertical"]]
    fig, (left, right) = plt.subplots(1, 2)
    plot.label_map(table, ax=left)
    plot.pattern_scores(table, ax=right)
    legend = {t.get_text(): to_rgb(h.get_facecolor()) for t, h in zip(left.get_legend().get_texts(),
                                                                     left.get_legend().legend_handles)}
    lines = {line.get_label(): to_rgb(line.get_color()) for line in right.lines}
    assert lines["diagonal (self mass)"] == legend["diagonal"] == to_rgb(display.LABEL_COLORS["diagonal"])
    assert lines["stripe (8-neighbour mass)"] == legend["stripe"] == to_rgb(display.LABEL_COLORS["stripe"])
    assert lines["vertical (top-2% key mass)"] == legend["vertical"] == to_rgb(display.LABEL_COLORS["vertical"])


def overlaps(fig):
    """Pairs of visible texts (tick labels, axis labels, titles) whose drawn extents overlap, per Axes."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        texts = [t for t in ax.get_xticklabels() + ax.get_yticklabels() + [ax.xaxis.label, ax.yaxis.label, ax.title]
                 if t.get_visible() and t.get_text()]
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if boxes[i][1].overlaps(boxes[j][1]):
                    found.append((boxes[i][0], boxes[j][0]))
    return found


LANGUAGE = TokenLayout([Segment("bos", 0, 1), Segment("image", 1, 65, camera="primary", grid=(8, 8)),
                        Segment("image", 65, 129, camera="wrist", grid=(8, 8)), Segment("bos", 129, 130),
                        Segment("text", 130, 134), Segment("generated", 134, 137)])


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_no_two_labels_of_a_language_figure_overlap(heads):
    n = len(LANGUAGE)
    a = np.tril(np.ones((heads, n, n)))
    a /= a.sum(-1, keepdims=True)
    fig = plot.layer_heads(a, layout=LANGUAGE)
    assert overlaps(fig) == []
    named = [ax for ax in fig.axes if ax.images and ax.get_xlabel()]
    assert named and all(ax.get_xlabel() == "keys" for ax in named)
    assert any(ax.get_ylabel() == "queries" for ax in fig.axes)
    fig, ax = plt.subplots()
    plot.attention_map(a, layout=LANGUAGE, ax=ax)
    assert overlaps(fig) == []
