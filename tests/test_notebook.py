"""demo.ipynb: stored without outputs, and runs top to bottom, offline, in a fresh kernel."""
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("timm")
pytest.importorskip("transformers")

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo.ipynb")


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_stored_without_outputs():
    nb = _read()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_top_to_bottom_and_measures_the_patterns_by_depth(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the kernel inherits the environment: let it choose its own (inline) backend, as in a real session
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = _read()
    # "python3" is ipykernel's own kernel: jupyter_client finds it through ipykernel even where no
    # kernel spec was installed, and runs it with this interpreter
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "image/png" in o.get("data", {})]
    assert "12 maps of shape (1, 6, 197, 197) float32" in text
    assert "most common label by depth: diagonal -> stripe -> vertical" in text
    assert "loaded back equal: True" in text
    assert "TokenLayout(bos 0:1, image 8x8 1:65, text 65:69, generated 69:75)" in text
    assert "[(0, 'prefix'), (1, 'denoise'), (2, 'denoise'), (3, 'denoise')]" in text
    assert len(figures) == 7
    assert os.listdir(tmp_path) == []  # the notebook writes its capture to a temporary directory, not the cwd
