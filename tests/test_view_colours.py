"""The viewer speaks the PNGs' colour language: same colours for the same values, hidden keys grey, values on hover."""
import numpy as np
import pytest

pytest.importorskip("PIL.Image")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from getlocal import GetLocalError, plot  # noqa: E402
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout  # noqa: E402
from getlocal.patterns.display import LABEL_COLORS  # noqa: E402
from getlocal.viewer import page_size, view  # noqa: E402

import browser  # noqa: E402

N = 12
LAYOUT = TokenLayout([Segment("bos", 0, 1), Segment("text", 1, N)])


def causal_map():
    """One head, causal: BOS a sink at half of every row, one key at 3x uniform in the last row, the rest even."""
    a = np.zeros((1, 1, N, N))
    for q in range(N):
        a[0, 0, q, : q + 1] = 1.0
        a[0, 0, q, 0] = q + 1 if q else 1.0  # BOS takes about half
    a /= a.sum(-1, keepdims=True)
    a[0, 0, N - 1] = 0.25 / 10
    a[0, 0, N - 1, 0], a[0, 0, N - 1, 5] = 0.5, 0.25   # the last row: BOS 0.5, key 5 at 3x uniform, the rest 0.3x
    return a


@pytest.fixture(scope="module")
def chromium():
    driver = browser.start()
    yield driver
    browser.stop(driver)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def png_colour(matrix, q, k):
    """The colour the PNG figure (plot.attention_map, default scale) gives cell (q, k), read from its pixels."""
    fig = plt.figure(figsize=(N / 10, N / 10), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    plot.attention_map(matrix, ax=ax, cbar=False)
    ax.set_axis_off()
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    x, y = ax.transData.transform((k, q))
    return buf[int(buf.shape[0] - y), int(x)].astype(int).tolist()


def page_colour(driver, q, k):
    return driver.execute_script(
        f"const d = document.getElementById('matrix').getContext('2d').getImageData({k}, {q}, 1, 1).data;"
        "return [d[0], d[1], d[2]];")


@pytest.fixture
def page(chromium, tmp_path):
    m = AttentionMap(causal_map(), "llm", 0, "layers.0", 0, "prefill", 0, LAYOUT, LAYOUT)
    path = view(AttentionMaps([m]), out=tmp_path / "view.html", bits=16).path
    browser.open_page(chromium, path)
    assert browser.errors(chromium) == []
    return chromium


def test_the_default_scale_is_the_figures_x_uniform_scale(page):
    assert page.execute_script("return document.getElementById('scale').value") == "uniform"


@pytest.mark.parametrize("cell", [(N - 1, 5), (N - 1, 3), (N - 1, 0), (4, 2), (3, 9)])
def test_a_cell_has_the_same_colour_in_the_viewer_and_in_the_png(page, cell):
    q, k = cell
    shown = np.asarray(page.execute_script("return getlocalView.matrix()")).reshape(N, N)  # the page's own values
    assert png_colour(shown[None], q, k) == page_colour(page, q, k)


def test_keys_a_query_cannot_see_are_grey_and_a_sink_flattens_nothing(page):
    assert page_colour(page, 3, 9) == [217, 217, 217]  # above the causal diagonal, as on the PNGs
    hot = page_colour(page, N - 1, 5)                   # 3x uniform beside a sink of 0.5
    other = page_colour(page, N - 1, 3)                 # below uniform: the sink took half
    assert hot[0] > hot[2] + 60 and other[2] > other[0] + 20  # red above uniform, blue below: not one dark mass


def test_hovering_over_the_matrix_reads_the_value(page):
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = page.find_element("id", "matrix")
    rect = page.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    x = (5 + 0.5) / N * rect[0] - rect[0] / 2
    y = (N - 1 + 0.5) / N * rect[1] - rect[1] / 2
    ActionChains(page).move_to_element_with_offset(canvas, int(x), int(y)).perform()
    text = page.find_element("id", "hover").text
    value = causal_map()[0, 0, N - 1, 5]
    assert text == f"query {N - 1}, key 5: {value:.3f} = {value * N:.2f}x uniform"


def test_the_label_overview_uses_the_figures_label_colours(page):
    colours = page.execute_script("return [...document.querySelectorAll('#labels .kinds .swatch')]"
                                  ".map((s) => getComputedStyle(s).backgroundColor)")
    expected = [f"rgb({int(c[1:3], 16)}, {int(c[3:5], 16)}, {int(c[5:7], 16)})" for c in LABEL_COLORS.values()]
    assert colours == expected


def test_a_page_too_large_is_refused_before_it_is_written_naming_how_to_shrink_it(tmp_path):
    m = AttentionMap(causal_map(), "llm", 0, "layers.0", 0, "prefill", 0, LAYOUT, LAYOUT)
    maps = AttentionMaps([m])
    assert page_size(maps) > 40_000
    with pytest.raises(GetLocalError, match=r"about 0 MB .*above max_mb=0.01.*select\(tower='llm', step=0, layer="):
        view(maps, out=tmp_path / "big.html", max_mb=0.01)
    assert not (tmp_path / "big.html").exists()


def test_camera_images_are_large_enough_to_read_a_16_by_16_grid(chromium, tmp_path):
    grid = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 257, grid=(16, 16))])
    a = np.full((1, 1, 257, 257), 1 / 257)
    m = AttentionMap(a, "vit", 0, "blocks.0", 0, "encode", 0, grid, grid)
    path = view(AttentionMaps([m]), images={"image": np.zeros((224, 224, 3), np.uint8)}, out=tmp_path / "v.html").path
    browser.open_page(chromium, path)
    width = chromium.execute_script("return document.querySelector('#cameras canvas').getBoundingClientRect().width")
    assert width / 16 >= 20  # at least 20 screen pixels a patch


def test_hovering_over_a_camera_image_reads_the_patch_value(chromium, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    grid = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 17, grid=(4, 4))])
    a = np.full((1, 1, 17, 17), 1 / 17)
    m = AttentionMap(a, "vit", 0, "blocks.0", 0, "encode", 0, grid, grid)
    path = view(AttentionMaps([m]), images={"image": np.zeros((64, 64, 3), np.uint8)}, out=tmp_path / "v.html").path
    browser.open_page(chromium, path)
    canvas = chromium.find_element("css selector", "#cameras canvas")
    w, h = chromium.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    ActionChains(chromium).move_to_element_with_offset(canvas, int(w * (2.5 / 4) - w / 2), int(h * (1.5 / 4) - h / 2)).perform()
    assert chromium.find_element("id", "hover").text == "image patch row 1, column 2 (key 7): 0.059 = 1.00x uniform"
