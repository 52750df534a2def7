"""Episode figures of a recorded run: one GIF frame per step, the overlay where the model looked, the command line."""
import numpy as np
import pytest
from PIL import Image

import getlocal
from getlocal import plot
from getlocal.cli import main
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

PROMPT = TokenLayout([Segment("image", 0, 16, camera="wrist", grid=(4, 4)), Segment("text", 16, 18)])


def episode(tmp_path, steps=5, hot=(1, 0)):
    """Pi0-shaped steps: 2 action tokens attend only to patch ``hot`` of a 4x4 grid of a 40x20 letterboxed frame."""
    run = tmp_path / "run"
    keys = TokenLayout(list(PROMPT.segments) + [Segment("action", 18, 20)])
    with getlocal.record(run, durable=False, info={"pad_to_square": True}) as rec:
        for t in range(steps):
            attn = np.zeros((1, 2, 2, 20), np.float32)
            attn[..., hot[0] * 4 + hot[1]] = 0.5 + 0.1 * t
            attn[..., 16] = 0.5 - 0.1 * t  # the rest on text: the image share grows over the steps
            maps = AttentionMaps([AttentionMap(attn, "expert", 0, "gemma_expert.layers.0", 1, "denoise", t,
                                               keys.window(18, 20), keys)])
            rec.step(maps, images={"wrist": np.full((20, 40, 3), 128, np.uint8)}, info={"t": t})
    return run


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def redness_centre(frame, height):
    """Centre of the red (hot) pixels of the panel, as fractions of its height and width (panel at x=6, y=30)."""
    panel = np.asarray(frame.convert("RGB"), dtype=float)[30:30 + height, 6:6 + 2 * height]
    red = np.clip(panel[..., 0] - panel[..., 2], 0, None)
    red[red < 0.5 * red.max()] = 0
    rows, cols = np.indices(red.shape)
    return (rows * red).sum() / red.sum() / height, (cols * red).sum() / red.sum() / (2 * height)


def test_the_gif_has_one_frame_per_step_and_the_overlay_sits_where_the_letterboxed_model_looked(tmp_path):
    run = getlocal.load(episode(tmp_path))
    gif = plot.episode_gif(run, tmp_path / "episode.gif", pad_to_square=True, height=96)
    frames = Image.open(gif)
    assert frames.n_frames == 5
    frames.seek(4)
    row, col = redness_centre(frames, 96)
    # patch (1, 0) of the padded 40x40 square is the top-left quarter-width band of the 40x20 frame's upper half:
    # rows 0..10 of 20 (centre 0.25) once the letterbox is undone; stretched without undoing it, 0.375
    assert abs(row - 0.25) < 0.06 and abs(col - 0.125) < 0.06, (row, col)
    stretched = plot.episode_gif(run, tmp_path / "stretched.gif", pad_to_square=False, height=96)
    frames = Image.open(stretched)
    frames.seek(4)
    assert abs(redness_centre(frames, 96)[0] - 0.375) < 0.06  # the test can tell the two apart


def test_the_grid_has_a_panel_per_camera_and_step_and_the_share_plot_a_column_per_step(tmp_path):
    run = getlocal.load(episode(tmp_path, steps=5))
    fig = plot.episode_grid(run, pad_to_square=True, max_steps=3)
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["step 0", "step 2", "step 4"]
    import matplotlib.pyplot as plt

    ax = plot.episode_image_share(run, ax=plt.subplots()[1])
    share = ax.images[0].get_array()
    # the share over its baseline: the action rows (positions 18, 19) see 19 and 20 keys, 16 of them image patches
    baseline = np.mean([16 / 19, 16 / 20])
    assert share.shape == (1, 5) and np.allclose(share[0], np.array([0.5, 0.6, 0.7, 0.8, 0.9]) / baseline)
    assert "x uniform" in ax.get_title() and "uniform attention gives 0.82" in ax.get_title()


def test_python_m_getlocal_plot_draws_a_recorded_run(tmp_path, capsys):
    run = episode(tmp_path, steps=4)
    assert main(["plot", str(run), "--out", str(tmp_path / "figs")]) == 0
    assert Image.open(tmp_path / "figs" / "episode.gif").n_frames == 4
    assert (tmp_path / "figs" / "episode-grid.png").stat().st_size > 0
    assert (tmp_path / "figs" / "image-share.png").stat().st_size > 0
    assert "rank-00000 (rank 0): 4 steps" in capsys.readouterr().out


def test_episode_figures_of_a_raw_cache_say_how_to_record_labelled_maps(tmp_path):
    with getlocal.record(tmp_path / "run", durable=False) as rec:
        rec.step({"f": [np.zeros((2, 2))]})
    with pytest.raises(ValueError, match="holds a raw cache.*collect=lambda: adapter.collect"):
        plot.episode_gif(getlocal.load(tmp_path / "run"), tmp_path / "x.gif")


TWO = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 17, grid=(4, 4), camera="base"),
                   Segment("image", 17, 33, grid=(4, 4), camera="wrist")])


def explained_episode(tmp_path, steps=4, explain_step=None):
    """[CLS] of a 2-camera ViT-shaped model attends to base patch ``t`` and wrist patch 5; only the rollout is kept."""
    from getlocal import explain

    def maps(t):
        out = []
        for layer in range(2):
            a = np.full((1, 2, 33, 33), 0.2)
            a[..., 0, 1 + t] = 20.0
            a[..., 0, 17 + 5] = 10.0
            out.append(AttentionMap(a / a.sum(-1, keepdims=True), "vit", layer, f"blocks.{layer}", 0, "encode",
                                    layer, TWO, TWO))
        return AttentionMaps(out, {"vit": TWO})

    def why(m):
        return explain.rollout(m, rows="cls", exclude="cls")

    run = tmp_path / "explained"
    with getlocal.record(run, explain=explain_step or why, maps=False, durable=False) as rec:
        for t in range(steps):
            frame = np.full((24, 40, 3), 90, np.uint8)
            rec.step(maps(t), images={"base": frame, "wrist": frame})
    return run, [why(maps(t)) for t in range(steps)]


def test_the_explanation_grid_draws_each_stored_explanation_per_camera_on_a_bar_marked_at_the_even_share(tmp_path):
    run, want = explained_episode(tmp_path)
    fig = plot.episode_grid(getlocal.load(run), explanation=True, pad_to_square=True)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * 4  # base and wrist, four steps
    for i, ax in enumerate(panels):
        camera, t = ("base", "wrist")[i // 4], i % 4
        assert np.array_equal(ax.images[-1].get_array().filled(np.nan), want[t].grid(camera, relative=True),
                              equal_nan=True)
        share, even = want[t].share("image", camera), 16 * float(want[t].even[0].mean())
        assert ax.get_xlabel() == f"{share:.0%} of the rows (even: {even:.0%})"
        assert ax.images[-1].get_extent() == [0.0, 40.0, 32.0, -8.0]  # the letterbox undone: a 40x40 square
    bar = [ax for ax in fig.axes if not ax.images][-1]
    assert "1 = even over the 32 keys" in bar.get_ylabel()
    assert [line.get_ydata()[0] for line in bar.lines] == [1.0]  # the even share, marked


def test_the_explanation_grid_needs_a_run_with_explanations_and_names_the_stored_ones(tmp_path):
    with pytest.raises(getlocal.GetLocalError, match=r"no explanation .*record\(path, explain=...\)"):
        plot.episode_grid(getlocal.load(episode(tmp_path)), explanation=True)
    from getlocal import explain

    def two(m):
        return {"a": explain.rollout(m, rows="cls"), "b": explain.rollout(m, rows="image")}

    run, _ = explained_episode(tmp_path, steps=1, explain_step=two)
    with pytest.raises(getlocal.GetLocalError, match=r"holds the explanations \['a', 'b'\]; pick one: explanation='a'"):
        plot.episode_grid(getlocal.load(run), explanation=True)
    assert len([ax for ax in plot.episode_grid(getlocal.load(run), explanation="b").axes if ax.images]) == 2
    with pytest.raises(getlocal.GetLocalError, match="explanation must be True or the name"):
        plot.episode_grid(getlocal.load(run), explanation=3)


def test_python_m_getlocal_plot_draws_the_explanations_of_a_run_recorded_without_maps(tmp_path, capsys):
    run, _ = explained_episode(tmp_path)
    assert main(["plot", str(run), "--out", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out
    figs = tmp_path / "figs"
    assert f"rank-00000 (rank 0): 4 steps' explanations -> {figs / 'episode-explanation.gif'}, " \
        f"{figs / 'episode-explanation.png'}" in printed
    assert "no attention figures: the steps hold no maps (recorded with maps=False)" in printed
    with Image.open(tmp_path / "figs" / "episode-explanation.png") as im:
        assert im.size[0] > 2 * im.size[1]  # four steps across, two cameras down
    with Image.open(figs / "episode-explanation.gif") as gif:
        assert gif.n_frames == 4


def test_the_gif_of_explanations_has_a_frame_per_explained_step_with_the_hot_patch_red(tmp_path):
    run, _ = explained_episode(tmp_path)
    path = plot.episode_gif(getlocal.load(run), tmp_path / "explained.gif", explanation=True, height=80,
                           pad_to_square=True)
    with Image.open(path) as gif:
        assert gif.n_frames == 4
        gif.seek(2)
        frame = np.asarray(gif.convert("RGB"), dtype=float)
    # the wrist camera, second panel (24x40 shown 80 high, 133 wide): patch 5 (row 1, column 1) is hot; in the
    # 40x40 letterboxed square it spans x 10-20, y 10-20, i.e. y 2-12 of the 24-row frame
    panel = frame[30:30 + 80, 6 + 133 + 6:6 + 133 + 6 + 133]
    red = np.clip(panel[..., 0] - panel[..., 2], 0, None)
    red[red < 0.5 * red.max()] = 0
    rows, cols = np.indices(red.shape)
    y, x = (rows * red).sum() / red.sum() / 80, (cols * red).sum() / red.sum() / 133
    assert abs(y - 7 / 24) < 0.06 and abs(x - 15 / 40) < 0.06, (y, x)
