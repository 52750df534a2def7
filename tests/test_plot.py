"""Plots checked by their rendered pixels, on synthetic maps and pictures."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from PIL import Image  # noqa: E402

from getlocal import patterns, plot  # noqa: E402

from synthetic import four_neighbour  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def render(fig):
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def pixel(fig, ax, x, y):
    """The rendered RGB at data point ``(x, y)`` of ``ax``."""
    buf = render(fig)
    px, py = ax.transData.transform((x, y))
    return buf[int(buf.shape[0] - py), int(px)]


def cmap_rgb(name, value):
    return 255 * np.array(plt.get_cmap(name)(value)[:3])


def bare_axes(width, height):
    """A figure whose one Axes fills it, one rendered pixel per picture pixel."""
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    return fig, ax


def peak_map(tokens, key, queries, background=1e-3):
    """``[1, tokens, tokens]``: the given query rows put almost all weight on ``key``."""
    a = np.full((1, tokens, tokens), background)
    a[0, queries, key] = 1.0
    return a / a.sum(-1, keepdims=True)


def bright_centroid(buf):
    """Row, column of the centre of the brightest pixels."""
    gray = buf.mean(-1)
    rows, cols = np.nonzero(gray >= gray.max() - 8)
    return rows.mean(), cols.mean()


# --------------------------------------------------------------------------- maps


def test_attention_map_puts_queries_on_rows_and_keys_on_columns():
    a = np.zeros((5, 5))
    a[1, 3] = 1.0
    fig, ax = plt.subplots()
    assert plot.attention_map(a, ax=ax, scale="linear") is ax
    hot, cold = pixel(fig, ax, 3, 1), pixel(fig, ax, 1, 3)
    assert np.allclose(hot, cmap_rgb("viridis", 1.0), atol=2)
    assert np.allclose(cold, cmap_rgb("viridis", 0.0), atol=2)
    assert len(fig.axes) == 2  # the colour bar


def test_attention_map_draws_into_the_current_axes_and_picks_a_head():
    a = np.stack([np.eye(4), np.ones((4, 4)) / 4])
    fig, ax = plt.subplots()
    assert plot.attention_map(a, head=1, cbar=False) is ax
    assert np.allclose(ax.images[0].get_array(), 1.0)  # 0.25 over 4 keys: uniform, 1 on the default scale


@pytest.mark.parametrize("heads, ncols, shape", [(1, None, (1, 2)), (3, None, (1, 4)), (7, None, (2, 4)), (12, 5, (3, 5))])
def test_layer_heads_lays_out_any_number_of_heads_plus_their_mean(rng, heads, ncols, shape):
    a = rng.random((heads, 6, 6))
    fig = plot.layer_heads(a, ncols=ncols)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == heads + 1
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == shape
    assert np.allclose(panels[-1].images[0].get_array(), a.mean(0) * 6)  # x 6 visible keys: 1 = uniform
    assert [ax.get_title() for ax in panels][-1] == "mean"


def test_layer_heads_shares_one_colour_scale_so_the_hot_cell_shows_in_its_head():
    a = np.zeros((2, 4, 4))
    a[0, 0, 0] = 1.0
    a[1, 2, 3] = 0.5
    fig = plot.layer_heads(a, average=False, cmap="gray", scale="linear")
    ax0, ax1 = [ax for ax in fig.axes if ax.images]
    assert pixel(fig, ax0, 0, 0).min() > 250
    assert abs(int(pixel(fig, ax1, 3, 2)[0]) - 128) <= 2  # 0.5 on the shared 0..1 scale
    assert pixel(fig, ax1, 0, 0).max() < 5


# --------------------------------------------------------------------------- patch grids


def test_patch_grid_fills_the_chosen_cell_red_and_leaves_the_others():
    fig, ax = bare_axes(140, 140)
    img = np.full((140, 140, 3), 0.5)
    plot.patch_grid(img, grid=(14, 14), cells=[(2, 5)], ax=ax, alpha=0.5)
    buf = render(fig)
    r, g, b = buf[25, 55]  # centre of row 2, column 5 (10 px cells)
    assert r > 180 and g < 80 and b < 80
    assert np.all(np.abs(buf[105, 105] - 128) <= 2)  # another cell: the grey picture


def test_patch_grid_takes_flat_indices_on_a_non_square_grid():
    fig, ax = bare_axes(160, 80)
    plot.patch_grid(np.zeros((80, 160)), grid=(2, 4), cells=7, ax=ax, alpha=1.0)
    buf = render(fig)
    assert tuple(buf[60, 140]) == (255, 0, 0)  # cell 7 = row 1, column 3
    assert buf[20, 20].max() < 5


def test_grid_to_grid_highlights_the_query_and_peaks_over_the_attended_patch():
    query, target = (2, 3), (10, 11)
    a = peak_map(197, 1 + target[0] * 14 + target[1], 1 + query[0] * 14 + query[1])
    fig = plot.grid_to_grid(a, np.zeros((224, 224, 3)), query=query, image_tokens=slice(1, 197), scale="linear")
    left, right = fig.axes[0], fig.axes[1]
    ring = pixel(fig, left, 3 * 16 + 0.3, 2.5 * 16)  # the outline on the query cell's left edge
    assert ring.min() > 200  # white on a black picture
    hot = pixel(fig, right, 11.5 * 16, 10.5 * 16)
    cold = pixel(fig, right, 2.5 * 16, 2.5 * 16)
    assert hot[0] > 50 and hot[2] < 10  # the top of 'jet' is red
    assert cold[2] > 50 and cold[0] < 10  # its bottom is blue


def test_grid_to_grid_outlines_the_query_so_that_it_shows_on_a_bright_patch():
    fig = plot.grid_to_grid(np.full((197, 197), 1 / 197), np.ones((224, 224, 3)), query=(2, 3),
                            image_tokens=slice(1, 197))
    buf = render(fig)
    left = fig.axes[0]
    xs = [left.transData.transform((3 * 16 + d, 2.5 * 16)) for d in np.linspace(-3, 3, 25)]
    darkest = min(buf[int(buf.shape[0] - py), int(px)].max() for px, py in xs)
    assert darkest < 60  # a black ring round the cell, on a white picture
    assert "mean over heads" in fig.axes[-2].get_title() or "mean over heads" in fig.axes[1].get_title()


def test_grid_to_grid_writes_cls_and_registers_in_the_overlay_unit():
    a = np.full((1, 69, 69), 1 / 69)
    fig = plot.grid_to_grid(a, np.zeros((32, 32, 3)), query=(1, 1), image_tokens=slice(5, 69), grid=(8, 8),
                            cls_token=0, registers=[1, 2, 3, 4])
    box = fig.axes[1]
    assert [t.get_text() for t in box.texts] == ["1x"] * 5
    assert [t.get_text() for t in box.get_yticklabels()] == ["CLS", "reg 0", "reg 1", "reg 2", "reg 3"]
    assert box.get_title() == "x uniform"


@pytest.mark.parametrize("weight, text", [(0.004, "0.004"), (0.9, "0.9")])
def test_grid_to_grid_shows_the_class_token_weight_as_its_real_value(weight, text):
    a = np.zeros((1, 197, 197))
    a[0, 1 + 30, 0] = weight
    a[0, 1 + 30, 1:] = (1 - weight) / 196
    a[0, 1 + 30, 1 + 50] += 0.001  # a patch that stands out a little
    fig = plot.grid_to_grid(a, np.zeros((56, 56)), query=30, image_tokens=slice(1, 197), cls_token=0,
                            scale="linear")
    cls_ax = fig.axes[1]
    assert [t.get_text() for t in cls_ax.texts] == [text]
    assert cls_ax.get_title() == "weight" and [t.get_text() for t in cls_ax.get_yticklabels()] == ["CLS"]
    if weight > a[0, 31, 1:].max():  # above the patches' scale: drawn as its top colour, bar extended
        assert np.allclose(cls_ax.images[0].get_array(), weight)
        assert np.allclose(pixel(fig, cls_ax, 0.3, 0.3), cmap_rgb("jet", 1.0), atol=2)
        assert fig.axes[2].images[-1].colorbar.extend == "max"


# --------------------------------------------------------------------------- VLA overlays


def test_query_heatmap_reduces_heads_by_mean_or_max():
    a = np.zeros((2, 6, 6))
    a[0, 5, 1] = 1.0  # head 0: image token 1 = cell (0, 0)
    a[1, 5, 4] = 1.0  # head 1: image token 4 = cell (1, 1)
    mean = plot.query_heatmap(a, image_tokens=slice(1, 5), queries=5, grid=(2, 2))
    peak = plot.query_heatmap(a, image_tokens=slice(1, 5), queries=5, grid=(2, 2), reduce="max")
    assert mean.tolist() == [[0.5, 0.0], [0.0, 0.5]]
    assert peak.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert plot.query_heatmap(a, image_tokens=slice(1, 5), queries=5, heads=[1]).tolist() == [[0, 0], [0, 1]]


def test_query_heatmap_averages_the_chosen_queries():
    a = np.zeros((1, 8, 8))
    a[0, 6, 0] = 1.0
    a[0, 7, 3] = 1.0
    heat = plot.query_heatmap(a, image_tokens=slice(0, 4), queries=[6, 7], grid=(1, 4))
    assert heat.tolist() == [[0.5, 0.0, 0.0, 0.5]]


def _letterbox_case(row, col):
    """A 300 x 200 picture seen by the model as an 8 x 8 grid of a padded square."""
    tokens = 1 + 64 + 3  # BOS, image, text
    a = peak_map(tokens, 1 + row * 8 + col, [65, 66, 67])
    return np.full((200, 300, 3), 0.5), a


def test_image_attention_undoes_pad_to_square_so_the_peak_lands_on_the_picture():
    img, a = _letterbox_case(6, 2)
    fig, ax = bare_axes(300, 200)
    plot.image_attention(img, a, image_tokens=slice(1, 65), queries=slice(65, 68), pad_to_square=True,
                         ax=ax, cbar=False, alpha=1.0, cmap="gray", scale="linear")
    gray = render(fig).mean(-1)
    rows, cols = np.nonzero(gray > 200)
    # cell (6, 2) of the padded 300 x 300 square spans rows 225..262.5 and columns 75..112.5; the top 50 rows
    # were padding, so on the picture it starts at row 175 and is cut by the picture's bottom edge at 200
    assert (rows.min(), rows.max() + 1) == (175, 200) and abs(cols.min() - 75) <= 1 and abs(cols.max() + 1 - 112.5) <= 1


def test_image_attention_without_padding_stretches_the_grid_over_the_picture():
    img, a = _letterbox_case(6, 2)
    fig, ax = bare_axes(300, 200)
    plot.image_attention(img, a, image_tokens=slice(1, 65), queries=[65, 66, 67], ax=ax, cbar=False, alpha=1.0, cmap="gray", scale="linear")
    y, x = bright_centroid(render(fig))
    assert abs(y - 6.5 * 25) < 4 and abs(x - 2.5 * 37.5) < 4


def test_image_attention_undoes_padding_of_a_tall_picture_too():
    a = peak_map(16, 5, 15)  # a 4 x 4 grid on tokens 0..15; token 5 is cell (1, 1)
    fig, ax = bare_axes(100, 200)
    plot.image_attention(np.zeros((200, 100)), a, image_tokens=slice(0, 16), queries=-1, pad_to_square=True,
                         ax=ax, cbar=False, alpha=1.0, cmap="gray", scale="linear")
    y, x = bright_centroid(render(fig))
    assert abs(y - 1.5 * 50) < 4 and abs(x - (1.5 * 50 - 50)) < 4


@pytest.mark.parametrize("kind", ["pil_rgba", "pil_gray", "uint8_rgb", "float16_gray", "torch_chw", "torch_bf16_map"])
def test_image_attention_accepts_pictures_and_maps_of_every_kind(kind):
    a = peak_map(17, 6, 16)
    pic = (np.random.default_rng(1).random((40, 60, 3)) * 255).astype(np.uint8)
    if kind == "pil_rgba":
        image = Image.fromarray(pic).convert("RGBA")
    elif kind == "pil_gray":
        image = Image.fromarray(pic).convert("L")
    elif kind == "uint8_rgb":
        image = pic
    elif kind == "float16_gray":
        image = (pic.mean(-1) / 255).astype(np.float16)
    else:
        torch = pytest.importorskip("torch")
        image = torch.from_numpy(pic).permute(2, 0, 1).float() / 255
        if kind == "torch_bf16_map":
            a = torch.from_numpy(a).to(torch.bfloat16)
    fig, ax = plt.subplots()
    plot.image_attention(image, a, image_tokens=slice(0, 16), queries=16, ax=ax, pad_to_square=True)
    assert ax.images[0].get_array().shape[:2] == (40, 60)
    assert ax.images[-1].get_array().shape == (4, 4)  # one value per patch
    render(fig)


def test_camera_attention_puts_cameras_side_by_side_on_one_scale():
    # tokens: 16 exterior (4 x 4), 16 wrist (4 x 4), 2 action queries
    a = np.full((2, 34, 34), 1e-3)
    a[:, 32:, 5] = 1.0  # exterior cell (1, 1)
    a[:, 32:, 16 + 14] = 0.5  # wrist cell (3, 2)
    a /= a.sum(-1, keepdims=True)
    fig = plot.camera_attention([np.zeros((60, 90)), np.zeros((50, 50, 3))], a, image_tokens=[slice(0, 16), slice(16, 32)],
                                queries=[32, 33], pad_to_square=[True, False], titles=["exterior", "wrist"])
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["exterior", "wrist"]
    heats = [ax.images[-1] for ax in panels]
    assert heats[0].get_clim() == heats[1].get_clim()
    ext, wrist = (h.get_array() for h in heats)
    assert np.unravel_index(np.argmax(ext), ext.shape) == (1, 1) and np.unravel_index(np.argmax(wrist), wrist.shape) == (3, 2)
    # the exterior's grid covers the letterboxed square: 90 px wide, centred on the 60 px high picture
    assert list(heats[0].get_extent()) == [0, 90, 75, -15] and list(heats[1].get_extent()) == [0, 50, 50, 0]


def test_camera_attention_per_head_gives_one_figure_per_head():
    a = np.full((3, 10, 10), 0.1)
    figs = plot.camera_attention([np.zeros((20, 20))], a, image_tokens=[slice(0, 9)], queries=9, per_head=True)
    assert len(figs) == 3
    assert [f.axes[0].get_title() for f in figs] == ["camera 0, head 0", "camera 0, head 1", "camera 0, head 2"]


# --------------------------------------------------------------------------- patterns by depth


@pytest.fixture
def table():
    n = 36
    diag, uni = np.eye(n)[None], np.full((1, n, n), 1 / n)
    col = np.zeros((1, n, n))
    col[0, :, 0] = 1
    return patterns.summarize(
        [np.concatenate([diag, uni]), np.concatenate([four_neighbour(6, 6), col])], patch_size=16
    )


def test_label_map_colours_each_head_by_its_label(table):
    fig, ax = plt.subplots()
    assert plot.label_map(table, ax=ax) is ax
    expected = {(0, 0): "diagonal", (0, 1): "mixed", (1, 0): "stripe", (1, 1): "vertical"}
    for (layer, head), label in expected.items():
        rgb = pixel(fig, ax, head, layer) / 255
        assert np.allclose(rgb, to_rgb(plot.LABEL_COLORS[label]), atol=2 / 255), label


def test_pattern_scores_draws_the_head_means_against_depth(table):
    fig, ax = plt.subplots()
    plot.pattern_scores(table, ax=ax)
    lines = {ln.get_label(): ln.get_ydata() for ln in ax.lines}
    assert np.allclose(lines["diagonal (self mass)"], np.nanmean(table["self_mass"], 1))
    assert np.allclose(lines["stripe (8-neighbour mass)"], np.nanmean(table["neighbour_mass"], 1))
    assert np.allclose(lines["vertical (top-2% key mass)"], np.nanmean(table["top_key_mass"], 1))


def test_attention_distance_draws_one_dot_per_head(table):
    fig, ax = plt.subplots()
    plot.attention_distance(table, ax=ax, pixels=True)
    dots = ax.collections[0].get_offsets()
    assert np.allclose(dots[:, 1], table["distance_px"].ravel())
    assert dots[:, 0].tolist() == [0, 0, 1, 1]
    assert "pixels" in ax.get_ylabel()


def test_attention_distance_without_a_grid_says_what_is_missing():
    t = patterns.summarize([np.full((1, 10, 10), 0.1)])
    with pytest.raises(ValueError, match="image_tokens/grid"):
        plot.attention_distance(t)


# --------------------------------------------------------------------------- files and conventions


def test_save_figure_writes_a_readable_name(tmp_path):
    fig, ax = plt.subplots()
    path = plot.save_figure(fig, tmp_path, name="openvla", phase="prefill", layer=3, mode="mean", dpi=50)
    assert path == tmp_path / "openvla" / "prefill_L3_attn_vis_mean.jpg"
    assert Image.open(path).format == "JPEG"
    with pytest.raises(ValueError, match="phase"):
        plot.figure_path(tmp_path, name="x", phase="a/b", layer=0, mode="max")


def test_helpers_never_call_show(monkeypatch, table):
    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("plt.show() called"))
    a = peak_map(17, 3, 16)
    plot.attention_map(a)
    plot.layer_heads(a)
    plot.patch_grid(np.zeros((8, 8)), grid=(2, 2), cells=0)
    plot.grid_to_grid(a, np.zeros((8, 8)), query=0, image_tokens=slice(0, 16), cls_token=16)
    plot.image_attention(np.zeros((8, 8)), a, image_tokens=slice(0, 16), queries=16)
    plot.camera_attention([np.zeros((8, 8))], a, image_tokens=[slice(0, 16)], queries=16)
    plot.label_map(table)
    plot.pattern_scores(table)
    plot.attention_distance(table)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: plot.patch_grid(np.zeros((8, 8, 2)), grid=(2, 2)), ["image", "(8, 8, 2)"]),
        (lambda: plot.patch_grid(np.zeros((8, 8)), grid=(2, 2), cells=[(2, 0)]), ["cells=(2, 0)", "2 x 2"]),
        (lambda: plot.query_heatmap(np.ones((1, 5, 5)), image_tokens=slice(0, 4), queries=4, reduce="median"), ["reduce", "'median'"]),
        (lambda: plot.query_heatmap(np.ones((1, 5, 5)), image_tokens=slice(0, 4), queries=9), ["queries=9", "5 query rows"]),
        (lambda: plot.query_heatmap(np.ones((1, 7, 7)), image_tokens=slice(0, 6), queries=6, grid=(2, 2)), ["grid=(2, 2)", "6 tokens"]),
        (lambda: plot.attention_map(np.ones((2, 1, 4, 4))), ["batch of 2", "attn[0]"]),
        (lambda: plot.camera_attention([np.zeros((4, 4))] * 2, np.ones((1, 9, 9)), image_tokens=[slice(0, 4)], queries=8),
         ["image_tokens", "2 cameras"]),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, words):
    with pytest.raises(ValueError) as err:
        call()
    for w in words:
        assert w in str(err.value)
