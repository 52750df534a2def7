"""`python -m getlocal`: the README's main command and its help."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("timm")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, **kwargs):
    env = dict(os.environ, MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "getlocal", *args], cwd=kwargs.get("cwd", ROOT),
                          capture_output=True, text=True, env=env, timeout=600)


def test_demo_prints_one_attention_map_per_block_and_says_which_weights():
    result = run("demo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "random init" in lines[0] or "trained weights" in lines[0]
    blocks = [line for line in lines if line.startswith("block ")]
    assert len(blocks) == 12
    assert all("(1, 6, 197, 197)" in line and "rows sum to 1.000" in line for line in blocks)


def test_help_shows_an_example():
    result = run("--help")
    assert result.returncode == 0 and "python -m getlocal demo" in result.stdout
    result = run("demo", "--help")
    assert result.returncode == 0 and "example:" in result.stdout and "--pretrained" in result.stdout


def test_unknown_command_is_one_clear_error():
    result = run("dmeo")
    assert result.returncode == 2 and "invalid choice: 'dmeo'" in result.stderr
    assert "Traceback" not in result.stderr
