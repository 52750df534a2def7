"""getlocal.view: one self-contained page per capture, checked in a real headless Chromium against the capture's values."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("safetensors")
pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("PIL.Image")  # the demo opens its picture with PIL

import getlocal  # noqa: E402
from getlocal import GetLocalError, cli, patterns, saved  # noqa: E402
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout  # noqa: E402
from getlocal.viewer import View, view  # noqa: E402

import browser  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL8 = 1 / 510 + 1e-6  # the declared bound for a softmax row at 8 bits, plus float32 rounding


def bound(rows: np.ndarray) -> float:
    """The declared quantisation error of these rows ``[..., K]``: (max - min) / 510 of the worst row."""
    return float((rows.max(-1) - rows.min(-1)).max()) / 510 + 1e-6


@pytest.fixture(scope="module")
def openvla_capture(tmp_path_factory):
    """The demo's tiny OpenVLA (DINOv2 + SigLIP + Llama, 7 action tokens), saved with its picture."""
    out = tmp_path_factory.mktemp("openvla")
    assert cli.main(["demo", "--model", "openvla-tiny", "--out", str(out), "--quiet"]) == 0
    return out / "capture"


@pytest.fixture(scope="module")
def pi0_capture(tmp_path_factory):
    """The demo's tiny Pi0 (two cameras, an action expert), saved with both pictures and two token strings."""
    out = tmp_path_factory.mktemp("pi0")
    assert cli.main(["demo", "--model", "paligemma-tiny", "--out", str(out), "--quiet"]) == 0
    found = saved.read(out / "capture")
    info = dict(found.info, tokens={"expert": {"128": "<bos>", "129": "pick", "133": "a0"}})  # JSON keys
    return saved.save(out / "with-tokens", found.data, images=found.images, info=info)


@pytest.fixture(scope="module")
def chromium():
    driver = browser.start()
    yield driver
    browser.stop(driver)


def page_of(capture, tmp_path, **kwargs):
    return view(capture, out=tmp_path / "view.html", **kwargs).path


def choose(driver, control, value):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", control)).select_by_value(str(value))


def state(driver):
    return driver.execute_script("return getlocalView.state()")


def shown(driver, what="row()"):
    return np.asarray(driver.execute_script(f"return getlocalView.{what}"), dtype=np.float64)


def click_at(driver, element, x, y):
    """A real mouse click at page point (x, y) inside ``element`` (selenium offsets are from its centre)."""
    from selenium.webdriver.common.action_chains import ActionChains

    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height]",
                                 element)
    ActionChains(driver).move_to_element_with_offset(element, int(round(x - rect[0] - rect[2] / 2)),
                                                     int(round(y - rect[1] - rect[3] / 2))).click().perform()


def click_patch(driver, camera, r, c):
    point = driver.execute_script("return getlocalView.patchPoint(arguments[0], arguments[1], arguments[2])", camera, r, c)
    canvas = driver.find_element("css selector", f'#cameras canvas[data-camera="{camera}"]')
    click_at(driver, canvas, point["x"], point["y"])


def click_token(driver, position):
    driver.find_element("css selector", f'#strip .tok[data-pos="{position}"]').click()


# --------------------------------------------------------------------------- in the browser


def test_clicking_a_patch_shows_that_querys_attention_within_the_quantisation_error(chromium, openvla_capture, tmp_path):
    maps = saved.load(openvla_capture)
    browser.open_page(chromium, page_of(openvla_capture, tmp_path))
    choose(chromium, "tower", "llm")
    choose(chromium, "step", 0)
    choose(chromium, "layer", 1)
    click_patch(chromium, "", 2, 5)
    m = maps.select(tower="llm", step=0, layer=1)[0]
    position = m.keys.image().start + 2 * 8 + 5
    assert state(chromium)["query"] == position
    want = m.array[0].mean(0)[position]                      # head mean is the default
    row = shown(chromium)
    assert np.abs(row - want).max() <= bound(m.array[0][:, position]), np.abs(row - want).max()
    heat = shown(chromium, "cameraHeat('')")
    assert np.abs(heat - want[m.keys.image()]).max() <= TOL8
    assert not browser.errors(chromium)


def test_clicking_an_action_token_shows_its_attention_over_both_cameras_for_one_head(chromium, pi0_capture, tmp_path):
    maps = saved.load(pi0_capture)
    browser.open_page(chromium, page_of(pi0_capture, tmp_path))
    assert state(chromium)["tower"] == "expert"              # the last tower: the action expert
    choose(chromium, "step", 2)
    choose(chromium, "layer", 1)
    choose(chromium, "head", 1)
    click_token(chromium, 134)                               # the second action token
    m = maps.select(tower="expert", step=2, layer=1)[0]
    q = 134 - (m.shape[-1] - m.shape[-2])
    want = m.array[0, 1, q]
    assert state(chromium)["query"] == 134
    assert np.abs(shown(chromium) - want).max() <= bound(want)
    for camera in ("exterior", "wrist"):
        heat = shown(chromium, f"cameraHeat('{camera}')")
        assert np.abs(heat - want[m.keys.image(camera)]).max() <= bound(want)
    assert sorted(chromium.execute_script("return getlocalView.cameras()")) == ["exterior", "wrist"]


def test_the_matrix_shows_the_mean_and_the_max_over_heads(chromium, pi0_capture, tmp_path):
    maps = saved.load(pi0_capture)
    browser.open_page(chromium, page_of(pi0_capture, tmp_path))
    choose(chromium, "tower", "language")
    m = maps.select(tower="language", step=0, layer=0)[0]
    tol = bound(m.array[0])
    assert np.abs(shown(chromium, "matrix()").reshape(m.shape[-2:]) - m.array[0].mean(0)).max() <= tol
    choose(chromium, "head", "max")
    assert np.abs(shown(chromium, "matrix()").reshape(m.shape[-2:]) - m.array[0].max(0)).max() <= tol


def test_clicking_a_matrix_row_makes_it_the_query(chromium, openvla_capture, tmp_path):
    browser.open_page(chromium, page_of(openvla_capture, tmp_path))
    choose(chromium, "tower", "siglip")
    matrix = chromium.find_element("id", "matrix")
    rect = chromium.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height]",
                                   matrix)
    click_at(chromium, matrix, rect[0] + rect[2] / 2, rect[1] + rect[3] * (10.5 / 64))
    assert state(chromium)["query"] == 10


def test_arrow_keys_step_through_layers_and_heads(chromium, openvla_capture, tmp_path):
    from selenium.webdriver.common.keys import Keys

    browser.open_page(chromium, page_of(openvla_capture, tmp_path))
    choose(chromium, "tower", "dinov2")
    body = chromium.find_element("tag name", "body")
    chromium.execute_script("document.activeElement.blur()")
    assert (state(chromium)["layer"], state(chromium)["head"]) == (0, "mean")
    body.send_keys(Keys.ARROW_RIGHT)
    body.send_keys(Keys.ARROW_RIGHT)
    assert state(chromium)["layer"] == 2
    body.send_keys(Keys.ARROW_RIGHT)                         # stays on the last layer
    assert state(chromium)["layer"] == 2
    body.send_keys(Keys.ARROW_UP)                            # mean -> head 1 (the last head)
    assert state(chromium)["head"] == 1
    body.send_keys(Keys.ARROW_LEFT)
    assert (state(chromium)["layer"], state(chromium)["head"]) == (1, 1)


def test_the_label_overview_shows_classify_heads_and_jumps_to_the_clicked_head(chromium, openvla_capture, tmp_path):
    maps = saved.load(openvla_capture)
    browser.open_page(chromium, page_of(openvla_capture, tmp_path))
    choose(chromium, "tower", "dinov2")
    for m in maps.select(tower="dinov2"):
        want = patterns.classify_heads(m.array[0], image_tokens=m.keys.image(), grid=m.keys.grid())
        cells = [chromium.find_element("css selector", f'#labels button[data-layer="{m.layer}"][data-head="{h}"]')
                 for h in range(m.shape[1])]
        assert [c.get_attribute("title").split(": ")[-1] for c in cells] == want
    chromium.find_element("css selector", '#labels button[data-layer="2"][data-head="1"]').click()
    assert (state(chromium)["layer"], state(chromium)["head"]) == (2, 1)


def test_a_token_that_is_no_query_of_a_decode_step_keeps_the_query_and_says_why(chromium, openvla_capture, tmp_path):
    browser.open_page(chromium, page_of(openvla_capture, tmp_path))
    choose(chromium, "tower", "llm")
    choose(chromium, "step", 3)
    before = state(chromium)["query"]
    assert before == 71                                      # the decode step's one generated token
    click_patch(chromium, "", 0, 0)
    assert state(chromium)["query"] == before
    assert "not a query" in chromium.find_element("id", "status").text


def test_token_strings_saved_with_the_capture_show_in_the_strip(chromium, pi0_capture, tmp_path):
    browser.open_page(chromium, page_of(pi0_capture, tmp_path))
    assert chromium.find_element("css selector", '#strip .tok[data-pos="129"]').text == "pick"
    assert chromium.find_element("css selector", '#strip .tok[data-pos="130"]').text == "130"


def test_the_page_makes_no_network_request(chromium, pi0_capture, tmp_path):
    path = page_of(pi0_capture, tmp_path)
    browser.open_page(chromium, path)
    click_token(chromium, 133)
    choose(chromium, "tower", "vision")
    urls = browser.requested_urls(chromium)
    assert urls and urls[0] == f"file://{path}"
    assert all(u == f"file://{path}" or u.startswith("data:image/png;base64,") for u in urls), urls
    resources = chromium.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith("data:") for r in resources), resources


def test_every_view_draws_something_and_a_click_answers_in_well_under_a_second(chromium, openvla_capture, tmp_path):
    loaded = browser.open_page(chromium, page_of(openvla_capture, tmp_path))
    choose(chromium, "tower", "llm")
    t0 = time.perf_counter()
    click_token(chromium, 66)
    assert state(chromium)["query"] == 66
    answered = time.perf_counter() - t0
    assert loaded < 3 and answered < 0.5, (loaded, answered)
    for panel in ("cameras-panel", "strip-panel", "matrix-panel", "labels-panel"):
        png = chromium.find_element("id", panel).screenshot_as_png
        (tmp_path / f"{panel}.png").write_bytes(png)
        browser.assert_not_blank(png, panel)


def test_the_colour_legends_give_the_values_of_the_scale_from_zero_or_from_the_smallest(chromium, pi0_capture, tmp_path):
    browser.open_page(chromium, page_of(pi0_capture, tmp_path))
    legend = chromium.find_element("id", "legend-strip")
    row = shown(chromium)
    # the default is the figures' fixed x-uniform range
    assert float(legend.get_attribute("data-vmin")) == 1 / 8 and float(legend.get_attribute("data-vmax")) == 8
    choose(chromium, "scale", "zero")
    assert float(legend.get_attribute("data-vmin")) == 0 and float(legend.get_attribute("data-vmax")) == row.max()
    choose(chromium, "scale", "range")
    assert float(legend.get_attribute("data-vmin")) == row.min()
    ticks = legend.find_elements("css selector", ".ticks span")
    assert float(ticks[0].text) == pytest.approx(row.min(), rel=0.05)     # the printed ends, rounded for reading
    assert float(ticks[-1].text) == pytest.approx(row.max(), rel=0.05)


def test_the_page_follows_a_dark_system_theme(chromium, pi0_capture, tmp_path):
    path = page_of(pi0_capture, tmp_path)
    chromium.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    try:
        browser.open_page(chromium, path)
        background = chromium.execute_script("return getComputedStyle(document.body).backgroundColor")
        png = chromium.get_screenshot_as_png()
    finally:
        chromium.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert background == "rgb(23, 24, 27)"
    (tmp_path / "dark.png").write_bytes(png)
    browser.assert_not_blank(png, "dark theme")
    assert browser.pixels(png).mean() < 100                  # mostly dark, with the pictures and heat maps on it


def test_a_letterboxed_picture_gets_its_heat_and_its_clicks_on_the_padded_square(chromium, tmp_path):
    # a wide picture the model saw letterboxed into a square: 4x4 patches of which the top and bottom rows are padding
    layout = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 17, grid=(4, 4))])
    a = np.full((1, 1, 17, 17), 0.01)
    a[0, 0, 0, 1 + 1 * 4 + 2] = 1.0                          # the cls token looks at patch (1, 2)
    maps = AttentionMaps([AttentionMap(a, "vit", 0, "blocks.0.attn", 0, "encode", 0, layout, layout)], {"vit": layout})
    picture = np.full((32, 64, 3), 90, dtype=np.uint8)        # h 32, w 64: the square is 64, the picture its rows 16..48
    path = view(maps, images={"image": picture}, pad_to_square=True, out=tmp_path / "pad.html").path
    browser.open_page(chromium, path)
    click_token(chromium, 0)
    brightest = chromium.execute_script("""  // the reddest pixel: the top of the x-uniform scale
        const c = document.querySelector('#cameras canvas'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let best = -1e9, at = 0;
        for (let i = 0; i < d.length; i += 4) { const s = d[i] - d[i + 2]; if (s > best) { best = s; at = i / 4; } }
        return [at % c.width / c.width * 64, Math.floor(at / c.width) / c.height * 32];""")
    # patch (1, 2) covers x 32..48 and, in the square, y 16..32: the picture's rows 0..16
    assert 32 <= brightest[0] <= 48 and 0 <= brightest[1] <= 16, brightest
    canvas = chromium.find_element("css selector", "#cameras canvas")
    rect = chromium.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height]",
                                   canvas)
    click_at(chromium, canvas, rect[0] + rect[2] * 40 / 64, rect[1] + rect[3] * 3 / 32)  # picture (40, 3): square row 1
    assert state(chromium)["query"] == 1 + 1 * 4 + 2


def test_a_capture_without_images_says_so_and_the_strip_and_matrix_still_work(chromium, openvla_capture, tmp_path):
    maps = saved.load(openvla_capture)
    path = view(maps, out=tmp_path / "bare.html").path
    browser.open_page(chromium, path)
    note = chromium.find_element("id", "no-images")
    assert note.is_displayed() and "no images" in note.text
    choose(chromium, "step", 0)
    click_token(chromium, 67)
    m = maps.select(tower="llm", step=0, layer=0)[0]
    assert np.abs(shown(chromium) - m.array[0].mean(0)[67]).max() <= bound(m.array[0][:, 67])
    browser.assert_not_blank(chromium.find_element("id", "cameras-panel").screenshot_as_png, "patch grid without picture")
    assert not browser.errors(chromium)


# --------------------------------------------------------------------------- the file


def test_a_vit_s16_capture_makes_a_page_of_at_most_15_mb(tmp_path):
    rng = np.random.default_rng(0)
    layout = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 197, grid=(14, 14))])
    maps = []
    for layer in range(12):
        logits = rng.normal(size=(1, 6, 197, 197)).astype(np.float32)
        a = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        maps.append(AttentionMap(a, "vit", layer, f"blocks.{layer}.attn", 0, "encode", layer, layout, layout))
    page = view(AttentionMaps(maps, {"vit": layout}), images={"image": np.zeros((224, 224, 3), np.uint8)},
                out=tmp_path / "vit.html")
    size = page.path.stat().st_size
    assert size <= 15 * 2**20, size / 2**20


def test_the_page_is_self_contained():
    layout = TokenLayout([Segment("image", 0, 4, grid=(2, 2))])
    m = AttentionMap(np.full((1, 1, 4, 4), 0.25), "vit", 0, "b.0", 0, "encode", 0, layout, layout)
    page = view(AttentionMaps([m], {"vit": layout}), tokens={"vit": ["</script><script>alert(1)</script>"]}).html
    assert "http://" not in page and "https://" not in page and "src=\"http" not in page
    assert page.count("</script>") == 2                      # a token string cannot close the data block


def test_the_notebook_shows_the_page_inline_in_an_iframe(tmp_path, openvla_capture):
    page = getlocal.view(openvla_capture)
    assert isinstance(page, View) and page.path is None
    shown_html = page._repr_html_()
    assert shown_html.startswith("<iframe srcdoc=\"") and "&lt;script" in shown_html
    assert page.save(tmp_path / "again.html").read_text(encoding="utf-8") == page.html
    assert page.path == tmp_path / "again.html"


def test_the_notebook_iframe_runs_the_page(chromium, pi0_capture, tmp_path):
    notebook_cell = tmp_path / "cell.html"
    notebook_cell.write_text(f"<!DOCTYPE html><html><body>{getlocal.view(pi0_capture)._repr_html_()}</body></html>",
                             encoding="utf-8")
    chromium.get(f"file://{notebook_cell}")
    chromium.switch_to.frame(chromium.find_element("tag name", "iframe"))
    try:
        deadline = time.perf_counter() + 10
        while chromium.execute_script("return document.body.dataset.ready") != "1":
            assert time.perf_counter() < deadline, "the page in the iframe did not get ready"
            time.sleep(0.05)
        click_token(chromium, 135)
        assert state(chromium)["query"] == 135
    finally:
        chromium.switch_to.default_content()


def test_the_command_line_writes_the_page_beside_the_capture(openvla_capture):
    result = subprocess.run([sys.executable, "-m", "getlocal", "view", str(openvla_capture)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    target = openvla_capture.parent / "capture.html"
    assert target.is_file() and str(target) in result.stdout


# --------------------------------------------------------------------------- bad input


def test_a_directory_that_is_not_a_capture_is_a_clear_error(tmp_path):
    with pytest.raises(GetLocalError, match="is not a getlocal capture: it has no capture.json"):
        view(tmp_path)


def test_an_empty_capture_says_there_is_nothing_to_show(tmp_path):
    path = saved.save(tmp_path / "empty", AttentionMaps([], {}))
    with pytest.raises(GetLocalError, match="holds no attention maps; nothing to show"):
        view(path)


def test_a_raw_cache_asks_for_labelled_maps(tmp_path):
    path = saved.save(tmp_path / "raw", {"Attention.forward": [np.eye(3)]})
    with pytest.raises(GetLocalError, match="raw cache"):
        view(path)


def test_bad_arguments_name_themselves(openvla_capture):
    with pytest.raises(GetLocalError, match=r"view\(bits=4\)"):
        view(openvla_capture, bits=4)
    with pytest.raises(GetLocalError, match=r"view\(batch=3\).*between 0 and 0"):
        view(openvla_capture, batch=3)
    with pytest.raises(GetLocalError, match="names tower 'llama'"):
        view(openvla_capture, tokens={"llama": ["a"]})
    with pytest.raises(GetLocalError, match="takes AttentionMaps"):
        view([np.eye(3)])


def test_the_command_line_gives_one_line_and_status_2(tmp_path):
    for argv in (["view", str(tmp_path)], ["view", str(saved.save(tmp_path / "empty", AttentionMaps([], {})))]):
        result = subprocess.run([sys.executable, "-m", "getlocal", *argv], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("getlocal view: "), result.stderr
