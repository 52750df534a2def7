"""The demo tells random weights apart, loads weights from disk, fails fast offline, and is quiet when asked."""
import fcntl
import os
import pty
import socket
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest

pytest.importorskip("timm")
pytest.importorskip("safetensors")
Image = pytest.importorskip("PIL.Image")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=ROOT, env=None, timeout=600):
    env = {**os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "getlocal", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def one_line(result):
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def small_capture(path, *, random):
    """A saved two-layer vision capture, as the demo saves it, with or without the random-weights flag."""
    from getlocal import saved
    from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

    layout = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 17, grid=(4, 4))])
    rng = np.random.default_rng(0)
    arrays = [rng.dirichlet(np.ones(17), size=(1, 2, 17)).astype(np.float32) for _ in range(2)]
    maps = AttentionMaps([AttentionMap(a, "vit", i, f"blocks.{i}.attn", 0, "encode", i, layout, layout)
                          for i, a in enumerate(arrays)], {"vit": layout})
    info = {"model": "vit", "weights": "random init" if random else "trained", "random_weights": random}
    return saved.save(path, maps, images={"image": np.zeros((64, 64, 3), np.uint8)}, info=info)


def titles(png_dir):
    """The title texts the report drew, read back from the summary of figures (names) and the capture info."""
    return sorted(p.name for p in png_dir.rglob("*.png"))


@pytest.mark.parametrize("random", [True, False])
def test_a_figure_from_random_weights_says_so_in_its_title_and_the_last_lines(tmp_path, monkeypatch, random):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from getlocal import saved
    from getlocal.cli import report as _report

    path = small_capture(tmp_path / "capture", random=random)
    drawn = []
    real_close = plt.close
    monkeypatch.setattr(_report.plt if hasattr(_report, "plt") else plt, "close",
                        lambda fig=None: (drawn.append(fig._suptitle.get_text()) if fig is not None and
                                          getattr(fig, "_suptitle", None) else None, real_close(fig))[1])
    found = saved.read(path)
    _report.report(found.data, found.images, dict(found.info), tmp_path / "out", quiet=True)
    assert drawn and all(("RANDOM WEIGHTS" in t) == random for t in drawn), drawn
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert ("these weights are random" in summary) == random
    result = run("plot", str(path), "--out", str(tmp_path / "again"))
    assert result.returncode == 0, result.stderr
    assert ("note: these weights are random" in result.stdout.strip().splitlines()[-1]) == random


def test_weights_loads_a_timm_state_dict_from_disk_and_the_capture_is_that_models(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from getlocal import saved
    from getlocal.adapters import vit

    name = "vit_tiny_patch16_224"
    torch.manual_seed(123)  # weights the demo's own seed (0) would never give
    model = timm.create_model(name, pretrained=False).eval()
    save_file(model.state_dict(), str(tmp_path / "tiny.safetensors"))
    result = run("demo", "--model", name, "--weights", str(tmp_path / "tiny.safetensors"), "--out",
                 str(tmp_path / "out"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{name}: weights from {tmp_path / 'tiny.safetensors'}"
    assert "these weights are random" not in result.stdout
    again = saved.load(tmp_path / "out" / "capture")
    # the same model run directly on the picture the demo saved beside the maps
    picture = saved.read(tmp_path / "out" / "capture").images["image"]
    pixels = torch.from_numpy(((picture / 255.0 - 0.5) / 0.5).astype(np.float32)).permute(2, 0, 1)[None]
    vit.activate(model)
    try:
        with torch.no_grad():
            model(pixels)
        direct = vit.collect(model)
    finally:
        vit.deactivate()
    assert len(direct) == len(again) == 12
    for a, b in zip(direct, again):
        np.testing.assert_allclose(a.array, b.array, atol=1e-6)


def main_line(capsys, *argv):
    from getlocal import cli

    assert cli.main(list(argv)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


def test_weights_of_another_model_or_no_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    import torch

    torch.save({"head.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    line = main_line(capsys, "demo", "--model", "vit_tiny_patch16_224", "--weights", str(tmp_path / "other.pth"),
                     "--out", str(tmp_path / "out"))
    assert "does not fit vit_tiny_patch16_224" in line and "missing" in line and "this very model" in line
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    line = main_line(capsys, "demo", "--weights", str(tmp_path / "junk.safetensors"), "--out", str(tmp_path / "out"))
    assert "not a readable state dict" in line
    line = main_line(capsys, "demo", "--weights", str(tmp_path), "--out", str(tmp_path / "out"))
    assert "a directory without model.safetensors or pytorch_model.bin" in line


def test_weights_of_a_tiny_vla_model_from_a_saved_directory(tmp_path):
    pytest.importorskip("transformers")
    import torch
    from safetensors.torch import save_model

    from getlocal.adapters import tiny

    torch.manual_seed(5)
    model = tiny.openvla(image_size=112)
    (tmp_path / "ckpt").mkdir()
    save_model(model, str(tmp_path / "ckpt" / "model.safetensors"))
    result = run("demo", "--model", "openvla-tiny", "--weights", str(tmp_path / "ckpt"), "--out",
                 str(tmp_path / "out"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "weights from" in result.stdout.splitlines()[0] and "these weights are random" not in result.stdout


def test_pretrained_without_network_fails_fast_in_one_line(tmp_path):
    with socket.socket() as s:  # a local port nobody listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HTTP_PROXY": "", "http_proxy": "",
           "HF_HOME": str(tmp_path / "hf")}  # an empty cache: nothing to fall back on
    # a deadline, not a timing claim: the hub client's retries would take about a minute
    line = one_line(run("demo", "--model", "deit_tiny_patch16_224", "--pretrained", "--out", str(tmp_path / "o"),
                        env=env, timeout=60))
    assert f"cannot reach http://127.0.0.1:{port}" in line and "--weights PATH" in line


def test_pretrained_with_hf_hub_offline_says_to_unset_it(tmp_path):
    line = one_line(run("demo", "--model", "deit_tiny_patch16_224", "--pretrained", "--out", str(tmp_path / "o"),
                        env={"HF_HOME": str(tmp_path / "hf")}))
    assert "HF_HUB_OFFLINE is set" in line and "--weights PATH" in line


def run_on_a_terminal(*args):
    """Run with stderr on a pseudo-terminal, as in a shell; returns what reached the terminal."""
    leader, follower = pty.openpty()
    # a terminal 100 columns wide (a fresh pseudo-terminal has 0, and tqdm draws a 0-column bar)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = dict(os.environ, MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "getlocal", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=follower, env=env)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(timeout=600) == 0, seen
    return seen.decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_plot_shows_a_progress_bar_on_a_terminal_and_none_with_quiet(tmp_path):
    path = small_capture(tmp_path / "capture", random=True)
    shown = run_on_a_terminal("plot", str(path), "--out", str(tmp_path / "a"))
    assert "figures:" in shown and "100%" in shown
    quiet = run_on_a_terminal("plot", str(path), "--out", str(tmp_path / "b"), "--quiet")
    assert "figures" not in quiet and "%" not in quiet
