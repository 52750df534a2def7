"""The README's Python examples run as written.

Every ```python block of README.md runs, in order, in one namespace (later
examples use what earlier ones made), none skipped; what they print is what
their comments say. Blocks fenced as ```py need real trained
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


def test_readme_python_examples_run_as_written_and_print_what_their_comments_say(tmp_path, monkeypatch, capsys):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    assert len(blocks) >= 5
    before = set(map(id, get_local.functions().values()))
    namespace = {"__name__": "readme"}
    try:
        for number, block in enumerate(blocks, 1):
            try:
                exec(compile(block, f"README.md python block {number}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"README python block {number} failed:\n{block}") from exc
        # every plot example made its own figure: none drew over another's axes (an Axes holds one map,
        # one picture, or a picture under its overlay: never a map under another drawing)
        axes = [ax for num in plt.get_fignums() for ax in plt.figure(num).axes]
        assert len(axes) > 10
        for ax in axes:
            assert len(ax.images) <= 1 or (len(ax.images) == 2 and ax.images[0].get_array().ndim == 3), ax
    finally:
        plt.close("all")
        get_local.deactivate()
        for func in list(get_local.functions().values()):
            if id(func) not in before:
                get_local.remove(func)
    assert len(namespace["maps_vit"]) == 12
    printed = capsys.readouterr().out
    assert "{'Attention.forward': [(1, 4, 10, 10), (1, 4, 10, 10)]}" in printed
    assert "language_model.model.layers.1.self_attn (1, 4, 1, 15)" in printed
    assert "TokenLayout(bos 0:1, image 2x2 1:5, text 5:9, generated 9:15)" in printed
