"""`python -m getlocal plot` of a colleague's capture: names stay inside --out, files are whole, big captures are fast."""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors")
Image = pytest.importorskip("PIL.Image")

from getlocal import cli, saved  # noqa: E402
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout  # noqa: E402


def vision_maps(towers, phase="encode"):
    layout = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 5, grid=(2, 2))])
    rng = np.random.default_rng(0)
    maps = []
    for t, tower in enumerate(towers):
        a = rng.random((1, 1, 5, 5)).astype(np.float32)
        maps.append(AttentionMap(a / a.sum(-1, keepdims=True), tower, 0, "blocks.0.attn", 0, phase, t, layout, layout))
    return AttentionMaps(maps, {tower: layout for tower in towers})


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


def test_crafted_tower_and_phase_labels_never_write_outside_out_nor_over_each_other(tmp_path, capsys):
    towers = ["../../x", "/tmp/abs", "nul\0here", "y" * 300, "a/b", "a_b", ".hidden", "CON"]
    path = saved.save(tmp_path / "capture", vision_maps(towers, phase="../p"))
    out = tmp_path / "deep" / "out"
    assert cli.main(["plot", str(path), "--out", str(out)]) == 0, capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["capture", "deep"] and os.listdir(tmp_path / "deep") == ["out"]
    folders = [p for p in out.iterdir() if p.is_dir() and p.name != "explain"]  # explain/: the demo's rollouts
    assert len(folders) == len(towers)  # "a/b" and "a_b" are two folders, not one
    assert all(len(p.name) <= 64 and not p.name.startswith(".") for p in folders)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["figures"]) == sorted(f for f in files_under(out) if f.endswith(".png"))


def test_a_big_capture_of_many_small_maps_is_plotted_in_linear_time(tmp_path, capsys):
    keys = TokenLayout([Segment("image", 0, 4, grid=(2, 2)), Segment("text", 4, 5)])
    query = TokenLayout([Segment("generated", 0, 1)])
    arr = np.full((1, 1, 1, 5), 0.2, np.float32)
    maps = AttentionMaps([AttentionMap(arr, "llm", layer, f"layers.{layer}", step, "decode", 2 * step + layer,
                                       query, keys) for step in range(4000) for layer in (0, 1)], {"llm": keys})
    path = saved.save(tmp_path / "capture", maps)
    start = time.monotonic()
    assert cli.main(["plot", str(path), "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    took = time.monotonic() - start
    assert took < 40, f"plot of 8000 maps took {took:.0f} s"  # quadratic passes took over a minute
    assert "step 3999 decode: llm 2 x [1, 1, 1, 5]" in capsys.readouterr().out


def test_a_figure_interrupted_while_written_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.artist import Artist

    from getlocal import plot

    class CtrlC(Artist):
        def draw(self, renderer):
            raise KeyboardInterrupt

    fig = plt.figure()
    fig.gca().plot([0, 1])
    # SVG streams into the file while drawing: a Ctrl-C in the middle used to leave half a file
    old = plot.save_figure(fig, tmp_path, name="vit", phase="encode", layer=0, mode="heads", ext="svg",
                           bbox_inches=None)
    before = old.read_bytes()
    fig.add_artist(CtrlC())
    with pytest.raises(KeyboardInterrupt):
        plot.save_figure(fig, tmp_path, name="vit", phase="encode", layer=0, mode="heads", ext="svg",
                         bbox_inches=None)
    plt.close(fig)
    assert old.read_bytes() == before and os.listdir(old.parent) == [old.name]


def test_a_decompression_bomb_given_to_demo_is_one_line(tmp_path, capsys):
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 400 megapixels, a few kilobytes
    code = cli.main(["demo", "--image", str(tmp_path / "bomb.png"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bomb.png: too large to open safely" in err[0]
