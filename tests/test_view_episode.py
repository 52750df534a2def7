"""view(run): a recorded episode's explanations over its frames, checked in a real headless Chromium."""
import io

import numpy as np
import pytest

import getlocal
from getlocal import GetLocalError, explain
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout
from getlocal.patterns.display import UNIFORM_RANGE, uniform_colors
from getlocal.viewer import view

import browser  # noqa: E402

TWO = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 17, grid=(4, 4), camera="base"),
                   Segment("image", 17, 33, grid=(4, 4), camera="wrist")])
FRAME = np.full((24, 40, 3), 90, np.uint8)  # letterboxed: the 4x4 grid covers a 40x40 square


def _maps(t):
    """[CLS] attends to base patch ``5 + t`` (row 1: inside the letterboxed frame; 20x the rest) and wrist patch 5 (10x), both layers."""
    out = []
    for layer in range(2):
        a = np.full((1, 2, 33, 33), 0.2)
        a[..., 0, 1 + 5 + t] = 20.0
        a[..., 0, 17 + 5] = 10.0
        out.append(AttentionMap(a / a.sum(-1, keepdims=True), "vit", layer, f"blocks.{layer}", 0, "encode", layer,
                                TWO, TWO))
    return AttentionMaps(out, {"vit": TWO})


def _why(m):
    if not isinstance(m, AttentionMaps):
        raise ValueError("no maps this step")
    return explain.rollout(m, rows="cls", exclude="cls")


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    run = tmp_path_factory.mktemp("episode") / "run"
    with getlocal.record(run, explain=_why, maps=False, durable=False, info={"pad_to_square": True,
                                                                            "model": "two-camera toy"}) as rec:
        for t in range(3):
            rec.step(_maps(t), images={"base": FRAME, "wrist": FRAME})
        with pytest.warns(RuntimeWarning):
            rec.step({}, images={"base": FRAME})  # the explanation fails: the step says why
    return run


@pytest.fixture(scope="module")
def chromium():
    driver = browser.start()
    yield driver
    browser.stop(driver)


def _pixel(driver, camera, r, c):
    x, y = driver.execute_script("return getlocalView.patchPixel(arguments[0], arguments[1], arguments[2])", camera, r, c)
    return np.asarray(driver.execute_script(
        "const c = document.querySelector(`#cameras canvas[data-camera='${arguments[0]}']`);"
        "return Array.from(c.getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data)", camera, x, y)[:3],
        dtype=float)


def _expected_colour(ratio):
    lut = (255 * uniform_colors(256)).astype(np.uint8)
    t = (np.log(ratio) + np.log(UNIFORM_RANGE)) / (2 * np.log(UNIFORM_RANGE))
    heat = lut[min(255, max(0, int(np.floor(t * 256))))][:3].astype(float)
    return 0.6 * heat + 0.4 * FRAME[0, 0]  # drawn at alpha 0.6 over the frame


def test_the_episode_page_draws_each_steps_explanation_over_its_frames_and_steps_with_the_slider(chromium, episode,
                                                                                                  tmp_path):
    page = view(episode, out=tmp_path / "episode.html").path  # the run's directory: pad_to_square from its info
    browser.open_page(chromium, page)
    assert browser.errors(chromium) == []
    for t in range(3):
        if t:
            chromium.find_element("tag name", "body").send_keys("\ue014")  # the right arrow key: the next step
        assert chromium.execute_script("return getlocalView.state()")["step"] == t
        want = _why(_maps(t))
        assert chromium.execute_script("return getlocalView.cameras()") == ["base", "wrist"]
        for camera in ("base", "wrist"):
            got = np.array(chromium.execute_script("return getlocalView.relative(arguments[0])", camera), dtype=float)
            assert np.allclose(got, want.grid(camera, relative=True).ravel(), rtol=1e-12)
        hot = divmod(5 + t, 4)  # base patch 5 + t: its colour on the canvas is the figures' colour of its ratio
        ratio = want.grid("base", relative=True)[hot]
        assert ratio > 4 and np.abs(_pixel(chromium, "base", *hot) - _expected_colour(ratio)).max() <= 2
        share, even = want.share("image", "wrist"), 16 * float(want.even[0].mean())
        assert chromium.execute_script("return getlocalView.captions()")[1].startswith(
            f"wrist: {100 * share:.0f}% of the rows' mass (an even spread: {100 * even:.0f}%), letterbox undone")
    assert "rollout (mean) of vit: 1 row, layers 0, 1, keys 0 excluded" == chromium.execute_script(
        "return getlocalView.status()")
    chromium.find_element("tag name", "body").send_keys("\ue014")
    missing = chromium.execute_script("return getlocalView.missing()")
    assert missing.startswith("Step 3 has no explanation: record(explain=...) failed: ValueError: no maps this step")
    assert browser.errors(chromium) == []


def test_a_run_without_explanations_is_refused_saying_how_to_record_them(tmp_path):
    with getlocal.record(tmp_path / "run", durable=False) as rec:
        rec.step(_maps(0))
    with pytest.raises(GetLocalError, match=r"holds no explanation in its 1 steps: record with getlocal.record\(path, "
                                            r"explain=...\)"):
        view(getlocal.load(tmp_path / "run"))


def test_an_episode_page_over_max_mb_is_refused_naming_a_selection(episode):
    with pytest.raises(GetLocalError, match=r"passes max_mb=0.0001 at step 0 .*view\(run.select\(step=range"):
        view(getlocal.load(episode), max_mb=0.0001)


def test_the_command_line_writes_the_episode_page_beside_the_run(episode, capsys):
    from getlocal.cli import main

    assert main(["view", str(episode)]) == 0
    page = episode.parent / "run.html"
    assert f"wrote {page}" in capsys.readouterr().out
    assert "getlocal episode" in page.read_text(encoding="utf-8").split("</title>")[0]
