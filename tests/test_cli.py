"""`python -m getlocal`: the README's main command, the save/plot round trip, the VLA demos and every error path."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("timm")
pytest.importorskip("safetensors")
Image = pytest.importorskip("PIL.Image")

from getlocal import cli  # noqa: E402
from getlocal.saved import read  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=ROOT, env=None):
    env = dict(os.environ, MPLBACKEND="Agg", HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "getlocal", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def figures(root):
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*.png"))


@pytest.fixture(scope="module")
def vit_demo(tmp_path_factory):
    """The README's first command, run once in a fresh directory (default --out)."""
    cwd = tmp_path_factory.mktemp("fresh")
    result = run("demo", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result, cwd / "getlocal-demo" / "vit_small_patch16_224"  # one folder per model


# --------------------------------------------------------------------------- the main job


def test_demo_says_which_weights_and_prints_the_per_layer_table(vit_demo):
    result, _ = vit_demo
    lines = result.stdout.splitlines()
    assert lines[0].startswith("vit_small_patch16_224: ")
    assert "random init" in lines[0] and "--pretrained" in lines[0] or "trained weights" in lines[0]
    assert "grace_hopper.jpg" in lines[1]
    assert "step 0 encode: vit 12 x [1, 6, 197, 197]" in result.stdout
    assert "TokenLayout(cls 0:1, image 14x14 1:197)" in result.stdout
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["layer", "heads", "diag"])
    rows = [line.split() for line in lines[header + 1: header + 13]]
    assert [r[0] for r in rows] == [str(i) for i in range(12)] and all(r[1] == "6" for r in rows)
    assert "Traceback" not in result.stderr


def test_demo_writes_figures_summary_and_capture_into_the_default_out_dir(vit_demo):
    result, out = vit_demo
    names = [n for n in figures(out) if not n.startswith("explain/")]  # the report's; explain/ has its own line
    assert "explain/rollout.png" in figures(out)
    for layer in (0, 6, 11):
        assert f"vit/encode_L{layer}_attn_vis_heads.png" in names
        assert f"vit/encode_L{layer}_attn_vis_query-r7c7.png" in names
    assert "vit/encode_Lall_attn_vis_patterns.png" in names and "vit/encode_Lall_attn_vis_distance.png" in names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "vit_small_patch16_224" and summary["figures"] == [
        f for f in summary["figures"] if f in names] and len(summary["figures"]) == len(names)
    layers = summary["towers"]["vit"]["layers"]
    assert [rec["layer"] for rec in layers] == list(range(12)) and all(rec["heads"] == 6 for rec in layers)
    assert len(summary["towers"]["vit"]["heads"]) == 72
    markdown = (out / "summary.md").read_text()
    assert "| layer | heads | diag |" in markdown and "![vit/encode_L0_attn_vis_heads.png]" in markdown
    assert (out / "capture" / "capture.json").is_file()
    assert f"wrote {len(names)} figures into getlocal-demo/vit_small_patch16_224/" in result.stdout


def test_demo_writes_the_viewer_page_and_names_it_in_its_last_line(vit_demo):
    result, out = vit_demo
    page = out / "capture.html"  # the name `python -m getlocal view CAPTURE_DIR` gives it
    assert page.is_file() and page.stat().st_size > 10_000
    text = page.read_text(encoding="utf-8")
    assert "<script" in text and "http://" not in text and "https://" not in text
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("explore the capture in a browser: open ") and last.endswith("capture.html (one self-contained page)")


def test_plot_from_the_saved_capture_reproduces_the_demo_figures_pixel_for_pixel(vit_demo, tmp_path):
    _, out = vit_demo
    result = run("plot", str(out / "capture"), "--out", str(tmp_path / "again"))
    assert result.returncode == 0, result.stderr
    # all but the relevance figure, which needs the model (a second forward with gradients), not the capture
    redrawn = [name for name in figures(out) if name != "explain/relevance.png"]
    assert figures(tmp_path / "again") == redrawn != [] and len(redrawn) == len(figures(out)) - 1
    for name in redrawn:
        assert np.array_equal(pixels(out / name), pixels(tmp_path / "again" / name)), name
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again == json.loads((out / "summary.json").read_text())


def test_the_grid_to_grid_figure_marks_the_query_patch_on_the_picture(vit_demo):
    _, out = vit_demo
    img = pixels(out / "vit" / "encode_L0_attn_vis_query-r7c7.png").astype(int)
    # the query cell is filled red over the photo: a strongly red region exists in the left panel
    left = img[:, : img.shape[1] // 3]
    red = (left[..., 0] > 150) & (left[..., 1] < 110) & (left[..., 2] < 110)
    assert red.sum() > 50


def test_demo_on_the_users_own_picture_into_the_users_out_dir(tmp_path):
    from matplotlib.cbook import get_sample_data

    with Image.open(get_sample_data("grace_hopper.jpg")) as im:
        im.convert("RGB").resize((300, 200)).save(tmp_path / "cat.jpg")  # not square: the demo crops the centre
    result = run("demo", "--image", "cat.jpg", "--out", "cat", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "image: cat.jpg" in result.stdout
    assert (tmp_path / "cat" / "summary.json").exists() and (tmp_path / "cat" / "capture" / "capture.json").exists()
    assert "vit/encode_L0_attn_vis_query-r7c7.png" in figures(tmp_path / "cat")


def test_openvla_tiny_labels_prefill_and_decode_steps_and_draws_text_and_generated_overlays(tmp_path):
    result = run("demo", "--model", "openvla-tiny", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "random init" in result.stdout.splitlines()[0]
    assert "step 0 prefill: dinov2 3 x [1, 2, 69, 69], siglip 3 x [1, 2, 64, 64], llm 2 x [1, 4, 69, 69]" in result.stdout
    assert "step 6 decode: llm 2 x [1, 4, 1, 75]" in result.stdout
    assert "llm tokens: TokenLayout(bos 0:1, image 8x8 1:65, text 65:69, generated 69:75)" in result.stdout
    names = figures(tmp_path)
    assert "llm/prefill_L1_attn_vis_text-to-image.png" in names
    assert "llm/decode_L1_attn_vis_generated-to-image.png" in names
    assert "dinov2/prefill_L1_attn_vis_query-r4c4.png" in names and "siglip/prefill_Lall_attn_vis_patterns.png" in names
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["step"], s["phase"]) for s in summary["steps"]] == [(0, "prefill")] + [(t, "decode") for t in range(1, 7)]


def test_demo_in_fast_mode_keeps_the_kernels_and_gives_the_maps_of_eager_mode(tmp_path):
    for mode in ("eager", "fast"):
        result = run("demo", "--model", "openvla-tiny", "--mode", mode, "--out", str(tmp_path / mode), "--quiet")
        assert result.returncode == 0, result.stderr
    eager, fast = (read(tmp_path / mode / "capture") for mode in ("eager", "fast"))
    assert fast.info["mode"] == "fast" and eager.info["mode"] == "eager"
    assert [(m.tower, m.layer, m.step, m.phase, m.shape) for m in fast.data] == \
        [(m.tower, m.layer, m.step, m.phase, m.shape) for m in eager.data]
    worst = max(float(np.abs(f.array - e.array).max()) for f, e in zip(fast.data, eager.data))
    assert worst < 1e-5, worst


def test_paligemma_tiny_draws_text_and_action_overlays_for_both_cameras(tmp_path):
    result = run("demo", "--model", "paligemma-tiny", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "step 0 prefix: vision 4 x [1, 2, 64, 64], language 2 x [1, 2, 132, 132]" in result.stdout
    assert "step 3 denoise: expert 2 x [1, 2, 5, 137]" in result.stdout
    assert "image exterior 8x8 0:64, image wrist 8x8 64:128" in result.stdout
    names = figures(tmp_path)
    assert "language/prefix_L1_attn_vis_text-to-image.png" in names
    assert "expert/denoise_L1_attn_vis_action-to-image.png" in names
    # two camera panels side by side: wider than tall
    h, w, _ = pixels(tmp_path / "expert" / "denoise_L1_attn_vis_action-to-image.png").shape
    assert w > 1.5 * h


# --------------------------------------------------------------------------- help


def test_help_says_what_each_command_does_and_shows_an_example():
    result = run("--help")
    assert result.returncode == 0
    assert "python -m getlocal demo" in result.stdout and "python -m getlocal plot" in result.stdout
    for command, option in (("demo", "--model"), ("plot", "CAPTURE_DIR")):
        result = run(command, "--help")
        assert result.returncode == 0 and "example" in result.stdout and option in result.stdout
        assert f"python -m getlocal {command}" in result.stdout


def test_no_command_prints_the_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out


# --------------------------------------------------------------------------- errors: one line, non-zero, no traceback


def one_line_error(capsys, argv, *expected):
    """Run main() in-process; exactly one line on stderr holding every expected piece."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for piece in expected:
        assert piece in lines[0], lines[0]
    return lines[0]


def test_unknown_command_is_one_clear_line():
    result = run("dmeo")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "invalid choice: 'dmeo'" in line and "see python -m getlocal --help" in line


def test_unknown_model(capsys, tmp_path):
    one_line_error(capsys, ["demo", "--model", "vit_smol", "--out", str(tmp_path)],
                   "unknown model 'vit_smol'", "openvla-tiny", "timm.list_models")


def test_a_timm_model_that_is_not_a_vit(capsys, tmp_path):
    one_line_error(capsys, ["demo", "--model", "resnet18", "--out", str(tmp_path)], "resnet18 is not a vision transformer")


def test_missing_image(capsys, tmp_path):
    one_line_error(capsys, ["demo", "--image", str(tmp_path / "cat.jpg"), "--out", str(tmp_path)],
                   "cat.jpg: no such file")


def test_a_file_that_is_not_a_picture(capsys, tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture")
    one_line_error(capsys, ["demo", "--image", str(tmp_path / "notes.jpg"), "--out", str(tmp_path / "o")],
                   "not a picture PIL can read")


def test_unwritable_out_dir(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    one_line_error(capsys, ["demo", "--out", str(tmp_path / "file" / "sub")], "cannot write to --out", "choose another")


def test_pretrained_with_a_tiny_model(capsys, tmp_path):
    one_line_error(capsys, ["demo", "--model", "openvla-tiny", "--pretrained", "--out", str(tmp_path)],
                   "--pretrained is for timm models")


def test_tiny_models_without_transformers_say_what_to_install(tmp_path):
    fake = tmp_path / "site"
    (fake / "transformers").mkdir(parents=True)
    (fake / "transformers" / "__init__.py").write_text("raise ImportError('No module named transformers')\n")
    result = run("demo", "--model", "paligemma-tiny", "--out", str(tmp_path / "o"), env={"PYTHONPATH": str(fake)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == 'getlocal demo: --model paligemma-tiny needs transformers: ' \
                                    'python -m pip install -e ".[adapters]"'


def test_plot_of_a_capture_without_maps(capsys, tmp_path):
    from getlocal import saved
    from getlocal.maps import AttentionMaps

    path = saved.save(tmp_path / "capture", AttentionMaps())
    one_line_error(capsys, ["plot", str(path), "--out", str(tmp_path / "o")], "holds no attention maps")


def test_plot_of_a_directory_that_is_not_a_capture(capsys, tmp_path):
    one_line_error(capsys, ["plot", str(tmp_path), "--out", str(tmp_path / "o")],
                   "is not a getlocal capture: it has no capture.json")


def test_plot_of_a_damaged_capture_names_the_file(capsys, tmp_path):
    from getlocal import saved
    from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

    layout = TokenLayout([Segment("image", 0, 4, grid=(2, 2))])
    maps = AttentionMaps([AttentionMap(np.full((1, 1, 4, 4), 0.25, np.float32), "vit", 0, "blocks.0.attn", 0,
                                       "encode", 0, layout, layout)], {"vit": layout})
    path = saved.save(tmp_path / "capture", maps)
    os.remove(path / json.loads((path / "capture.json").read_text())["arrays"][0]["file"])
    one_line_error(capsys, ["plot", str(path), "--out", str(tmp_path / "o")], "00000.safetensors is missing")


def test_plot_of_a_raw_cache_asks_for_labelled_maps(capsys, tmp_path):
    from getlocal import saved

    path = saved.save(tmp_path / "capture", {"Attention.forward": [np.eye(3, dtype=np.float32)]})
    one_line_error(capsys, ["plot", str(path), "--out", str(tmp_path / "o")], "holds a raw cache")


def test_plot_without_out_is_a_usage_error(capsys, tmp_path):
    one_line_error(capsys, ["plot", str(tmp_path)], "the following arguments are required: --out",
                   "see python -m getlocal plot --help")


def test_summary_counts_block_heads_and_shows_the_offsets_of_diagonal_heads(tmp_path, capsys):
    from getlocal import saved
    from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

    n = 12
    previous = np.eye(n, k=-1)
    previous[0, 0] = 1  # the first token has no previous one
    block = np.zeros((n, n))  # causal, each token spread over its own segment so far
    for lo, hi in ((0, 6), (6, n)):
        for i in range(lo, hi):
            block[i, lo:i + 1] = 1 / (i + 1 - lo)
    layout = TokenLayout([Segment("text", 0, 6), Segment("generated", 6, n)])
    maps = AttentionMaps([AttentionMap(np.stack([previous, block])[None].astype(np.float32), tower="llm", layer=0,
                                       path="model.layers.0.self_attn", step=0, phase="prefill", call=0,
                                       queries=layout, keys=layout)])
    path = saved.save(tmp_path / "capture", maps, info={"model": "constructed", "weights": "constructed maps"})
    assert cli.main(["plot", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    capsys.readouterr()
    markdown = (tmp_path / "o" / "summary.md").read_text()
    header = "| layer | heads | diag | stripe | vert | block | mixed | offset |"
    assert header in markdown and "**offset**" in markdown and "**diag, stripe, vert, block, mixed**" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| 0 | 2 |"))
    assert row.split(" | ")[2:8] == ["1", "0", "0", "1", "0", "-1"]


def test_demo_whose_page_would_be_too_large_writes_everything_else_and_says_how_to_view_a_part(tmp_path, monkeypatch,
                                                                                              capsys):
    from getlocal import cli
    from getlocal.cli import commands

    monkeypatch.setattr(commands, "PAGE_MB", 0.05)  # the tiny model's page is about 0.5 MB
    assert cli.main(["demo", "--model", "paligemma-tiny", "--quiet", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "no page written: one page of all 12 maps would be about" in out and "above 0.05 MB" in out
    assert "getlocal.view(getlocal.load(" in out and "explore the capture" not in out
    assert (tmp_path / "o" / "summary.json").exists() and not (tmp_path / "o" / "capture.html").exists()
