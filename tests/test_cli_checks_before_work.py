"""The command line checks arguments and paths before torch is imported, leaves no --out behind a failed run,
writes one folder per model by default, names its page as ``view`` does, and says what it writes and counts."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")
pytest.importorskip("safetensors")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=ROOT, env=None, python=()):
    env = dict(os.environ, MPLBACKEND="Agg", HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, *python, "-m", "getlocal", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=600)


def imported(stderr: str) -> set:
    """The top-level modules that ``python -X importtime`` reports."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def error_lines(stderr: str):
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


@pytest.mark.parametrize("args, said", [
    (["--image", "/nonexistent/cat.jpg"], "--image /nonexistent/cat.jpg: no such file"),
    (["--image", "."], "--image .: is a directory"),
    (["--weights", "/nonexistent.safetensors"], "--weights /nonexistent.safetensors: no such file"),
    (["--model", "openvla-tiny", "--pretrained"], "--pretrained is for timm models"),
    (["--out", "notes.txt/sub"], "cannot write to --out 'notes.txt/sub'"),
])
def test_bad_arguments_leave_before_torch_or_timm_is_imported(args, said, tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    result = run("demo", *args, cwd=tmp_path, python=("-X", "importtime"))
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and said in lines[0], lines
    modules = imported(result.stderr)
    assert "getlocal.cli" in modules  # importtime did report
    assert not {"torch", "timm", "transformers"} & modules
    assert not (tmp_path / "getlocal-demo").exists()


def test_a_failed_pretrained_download_leaves_no_out_folder_behind(tmp_path):
    out = tmp_path / "new" / "figures"
    result = run("demo", "--pretrained", "--out", str(out), cwd=tmp_path,
                 env={"HF_HOME": str(tmp_path / "empty-cache"), "HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert result.returncode == 2 and "--pretrained" in result.stderr, result.stderr
    assert not (tmp_path / "new").exists()


def test_help_lists_what_each_command_writes():
    demo = run("demo", "--help").stdout
    for written in ("capture/", "summary.md", "summary.json", "capture.html", "getlocal-demo/MODEL/"):
        assert written in demo, written
    assert "summary.md" in run("plot", "--help").stdout
    assert "CAPTURE_DIR.html" in run("view", "--help").stdout


def test_the_default_out_is_one_folder_per_model_and_view_rewrites_the_demos_page(tmp_path):
    result = run("demo", "--model", "openvla-tiny", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "getlocal-demo" / "openvla-tiny"
    assert (out / "summary.json").is_file() and (out / "capture" / "capture.json").is_file()
    assert sorted(p.name for p in (tmp_path / "getlocal-demo").iterdir()) == ["openvla-tiny"]
    # the token counts are explained where they are printed
    assert ("7 generated (action) tokens: the prefill gives the first, each of 6 decode steps feeds the one "
            "before back and gives the next, so the llm's layout holds 6 generated positions") in result.stdout
    # a tiny model's closing note does not send the user to --pretrained for it (it refuses them)
    note = next(line for line in result.stdout.splitlines() if line.startswith("note:"))
    assert "no trained weights exist for the tiny models" in note
    page = out / "capture.html"
    assert result.stdout.strip().splitlines()[-1].endswith(f"{Path('getlocal-demo') / 'openvla-tiny' / 'capture.html'} "
                                                           "(one self-contained page)")
    before = page.stat().st_mtime_ns
    viewed = run("view", str(out / "capture"), cwd=tmp_path)
    assert viewed.returncode == 0, viewed.stderr
    assert f"wrote {out / 'capture.html'}" in viewed.stdout and page.stat().st_mtime_ns >= before
    assert sorted(p.name for p in out.glob("*.html")) == ["capture.html"]
