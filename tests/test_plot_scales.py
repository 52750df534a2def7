"""Colour scales that tell the truth: uniform attention looks neutral, a peak looks hot, read back from the pixels."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from getlocal import plot  # noqa: E402
from getlocal.maps import Segment, TokenLayout  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def render(fig):
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def bare_axes(width, height):
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    return fig, ax


def cell_colours(buf, rows, cols, cell):
    """The rendered RGB at the centre of every cell of a ``rows x cols`` grid of ``cell``-pixel squares."""
    return np.array([[buf[int((r + 0.5) * cell), int((c + 0.5) * cell)] for c in range(cols)] for r in range(rows)])


def hot(rgb):
    """Redder than the neutral white/grey: what the eye reads as 'more than uniform'."""
    return rgb[..., 0] - rgb[..., 2] > 30


NEUTRAL = 255 * np.array(plt.get_cmap("RdBu_r")(0.5)[:3])


def vit_like(heat_row):
    """``[1, 17, 17]``: a class token and 4 x 4 patches; query 16 (the last patch) attends with ``heat_row``."""
    a = np.full((1, 17, 17), 1 / 17)
    a[0, 16] = heat_row
    return a


def test_a_uniform_maps_overlay_has_no_patch_above_the_neutral_colour():
    a = vit_like(np.full(17, 1 / 17))
    fig, ax = bare_axes(160, 160)
    plot.image_attention(np.full((160, 160, 3), 0.5), a, image_tokens=slice(1, 17), queries=16, ax=ax, cbar=False,
                         alpha=1.0)
    colours = cell_colours(render(fig), 4, 4, 40)
    assert not hot(colours).any()
    assert np.abs(colours - NEUTRAL).max() <= 2  # every patch is exactly the neutral colour
    im = ax.images[-1]
    assert np.allclose(im.get_array(), 17 / 17) and np.allclose(im.norm(im.get_array()), 0.5)


def test_a_one_hot_maps_overlay_has_exactly_one_hot_patch():
    row = np.zeros(17)
    row[1 + 2 * 4 + 1] = 1.0  # patch (2, 1)
    fig, ax = bare_axes(160, 160)
    plot.image_attention(np.full((160, 160, 3), 0.5), vit_like(row), image_tokens=slice(1, 17), queries=16, ax=ax,
                         cbar=False, alpha=1.0)
    colours = cell_colours(render(fig), 4, 4, 40)
    assert np.argwhere(hot(colours)).tolist() == [[2, 1]]


def test_a_near_uniform_random_head_looks_neutral_where_a_linear_scale_paints_it_hot():
    rng = np.random.default_rng(0)
    row = 1 + 0.05 * rng.standard_normal(17)  # what random weights give: every weight within ~10 % of uniform
    a = vit_like(row / row.sum())
    honest, linear = bare_axes(160, 160), bare_axes(160, 160)
    for (fig, ax), scale in ((honest, "uniform"), (linear, "linear")):
        plot.image_attention(np.zeros((160, 160)), a, image_tokens=slice(1, 17), queries=16, ax=ax, cbar=False,
                             alpha=1.0, scale=scale)
    on_uniform = cell_colours(render(honest[0]), 4, 4, 40)
    on_linear = cell_colours(render(linear[0]), 4, 4, 40)
    assert np.abs(on_uniform - NEUTRAL).max() < 40  # close to white everywhere
    assert (on_linear[..., 0] > 200).sum() >= 4  # 'jet' from 0 to the maximum: red patches out of nothing


def test_uniform_rows_of_a_causal_map_are_white_and_the_keys_they_cannot_see_are_grey():
    n = 6
    causal = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]  # each query uniform over the keys it sees
    fig, ax = bare_axes(120, 120)
    plot.attention_map(causal, ax=ax, cbar=False)
    colours = cell_colours(render(fig), n, n, 20)
    lower, upper = np.tril(np.ones((n, n), bool)), np.triu(np.ones((n, n), bool), 1)
    assert np.abs(colours[lower] - NEUTRAL).max() <= 2
    assert np.all(np.abs(colours[upper] - 0xD9) <= 2)  # grey: not visible to that query


def test_the_colour_bar_states_the_scale_with_values():
    fig, ax = plt.subplots()
    plot.attention_map(np.full((1, 8, 8), 1 / 8), ax=ax)
    bar = ax.images[0].colorbar
    assert bar.ax.get_ylabel() == "x uniform (attention x visible keys)"
    assert isinstance(bar.norm, LogNorm) and bar.norm.vmin == pytest.approx(1 / 8) and bar.norm.vmax == pytest.approx(8)
    fig.canvas.draw()
    assert any(t.get_text() for t in bar.ax.get_yticklabels() + bar.ax.get_yticklabels(minor=True))


def test_log_scale_shows_small_weights_that_a_linear_scale_paints_black():
    a = np.full((8, 8), 1e-3)
    a[:, 0] = 1.0  # a sink column
    a[:, 5] = 0.05  # a key that is 20x below the sink, 50x above the rest
    a /= a.sum(-1, keepdims=True)
    fig, (lin, log) = plt.subplots(1, 2)
    plot.attention_map(a, ax=lin, scale="linear", cbar=False)
    plot.attention_map(a, ax=log, scale="log", cbar=False)
    assert isinstance(log.images[0].norm, LogNorm)
    on_linear = lin.images[0].norm(a[0, 5])
    on_log = log.images[0].norm(a[0, 5])
    assert on_linear < 0.1 < 0.5 < on_log


def test_without_sinks_masks_the_sink_column_renormalises_rows_and_says_so():
    a = np.full((1, 5, 5), 0.1)
    a[0, :, 0] = 0.6  # key 0 takes 60 %: the rest look empty beside it
    fig = plot.layer_heads(a, sinks=0, average=False)
    (ax,) = [x for x in fig.axes if x.images]
    shown = ax.images[0].get_array()
    assert shown.mask[:, 0].all() and not shown.mask[:, 1:].any()
    assert np.allclose(shown[:, 1:], 1.0)  # 0.1 / 0.4 = 0.25 over the 4 keys left: uniform
    assert "without sinks (keys 0 masked, rows renormalised)" in fig.axes[-1].get_ylabel()


def test_token_layout_labels_the_axes_and_frames_the_class_and_register_tokens():
    layout = TokenLayout([Segment("cls", 0, 1), Segment("register", 1, 5), Segment("image", 5, 69, grid=(8, 8))])
    fig, ax = plt.subplots()
    plot.attention_map(np.full((69, 69), 1 / 69), layout=layout, ax=ax)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cls+reg", "image"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cls+reg", "image"]
    frames = [p for p in ax.patches if p.get_edgecolor()[:3] != (0, 0, 0)]
    assert len(frames) == 4  # the cls column and row, the register columns and rows


@pytest.mark.parametrize("call", [
    lambda: plot.attention_map(np.eye(3), scale="log2"),
    lambda: plot.layer_heads(np.eye(3)[None], scale="relative"),
    lambda: plot.image_attention(np.zeros((4, 4)), np.eye(5), image_tokens=slice(0, 4), queries=4, scale="lin"),
])
def test_an_unknown_scale_is_refused_naming_the_argument_and_the_choices(call):
    with pytest.raises(ValueError, match="scale") as err:
        call()
    assert "uniform" in str(err.value) and "linear" in str(err.value)
