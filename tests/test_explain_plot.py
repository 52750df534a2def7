"""Explanations drawn over the camera pictures: the values under the pixels, the unit on the bar, cameras."""
import matplotlib.pyplot as plt
import numpy as np
import pytest

from getlocal import GetLocalError, explain, plot
from getlocal.maps import Segment, TokenLayout


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


TWO_CAMERAS = TokenLayout([Segment("image", 0, 4, camera="base", grid=(2, 2)),
                           Segment("image", 4, 8, camera="wrist", grid=(2, 2)), Segment("text", 8, 10)])


def _maps(seed=0, n=10, layers=2):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        e = np.exp(rng.normal(size=(1, 2, n, n)) * 2)
        out.append(e / e.sum(-1, keepdims=True))
    return out


def test_the_overlay_draws_each_patch_as_its_share_over_the_even_share_and_says_so_on_the_bar():
    r = explain.rollout(_maps(), rows="text", keys=TWO_CAMERAS)
    fig, ax = plt.subplots()
    out = plot.relevance_overlay(r, np.zeros((28, 28, 3)), camera="wrist", ax=ax)
    assert out is ax
    drawn = ax.images[-1].get_array()
    assert np.allclose(drawn, r.values[0][:, 4:8].mean(0).reshape(2, 2) * 10)  # 10 keys reachable: even = 1/10
    assert np.allclose(drawn, r.grid("wrist", relative=True))
    label = fig.axes[-1].get_ylabel()
    assert "share of the row's mass x 10" in label and "1 = even" in label


def test_the_overlay_needs_a_camera_when_the_layout_has_several():
    r = explain.rollout(_maps(), rows="text", keys=TWO_CAMERAS)
    with pytest.raises(GetLocalError, match="camera= one of 'base', 'wrist'"):
        plot.relevance_overlay(r, np.zeros((28, 28)))
    with pytest.raises(GetLocalError, match="result"):
        plot.relevance_overlay(r.values, np.zeros((28, 28)))


def test_excluded_patches_are_left_grey():
    r = explain.rollout(_maps(), rows="text", keys=TWO_CAMERAS, exclude=[5])
    fig, ax = plt.subplots()
    plot.relevance_overlay(r, np.zeros((28, 28)), camera="wrist", ax=ax)
    assert np.ma.getmaskarray(ax.images[-1].get_array()).tolist() == [[False, True], [False, False]]


def test_the_figure_sets_the_last_layer_beside_the_rollout_on_one_scale():
    maps = _maps()
    r = explain.rollout(maps, rows="text", keys=TWO_CAMERAS)
    fig = plot.relevance_figure(r, np.zeros((28, 28)), camera="base")
    left, right = fig.axes[:2]
    assert np.allclose(left.images[-1].get_array(), maps[-1][0].mean(0)[8:, :4].mean(0).reshape(2, 2) * 10)
    assert np.allclose(right.images[-1].get_array(), r.grid("base", relative=True))
    assert left.images[-1].norm.vmax == right.images[-1].norm.vmax
    assert left.get_title().startswith("last layer") and right.get_title().startswith("rollout (mean), 2 layers")
    assert f"base image {r.share('image', 'base'):.0%} of the row (even: 40%)" in right.get_title()
