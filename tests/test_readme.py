"""The README's Python examples run as written.

Every ```python block of README.md runs, in order, in one namespace (later
examples use what earlier ones made). Blocks fenced as ```py need real trained
models that cannot be downloaded here; they are shown, not run.
"""
import os
import re

import pytest

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from getlocal import get_local  # noqa: E402

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _blocks():
    text = open(README, encoding="utf-8").read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    assert len(blocks) >= 5
    before = set(map(id, get_local.functions().values()))
    namespace = {"__name__": "readme"}
    try:
        for number, block in enumerate(blocks, 1):
            if re.search(r"^\s*\.\.\.\s*$", block, flags=re.M):  # the schematic first example
                continue
            try:
                exec(compile(block, f"README.md python block {number}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"README python block {number} failed:\n{block}") from exc
    finally:
        plt.close("all")
        get_local.deactivate()
        for func in list(get_local.functions().values()):
            if id(func) not in before:
                get_local.remove(func)
    assert len(namespace["maps_vit"]) == 12
