"""The runnable examples in the docstrings run (each module under its installed name)."""
import doctest
import importlib

import pytest

MODULES = ["getlocal", "getlocal._core", "getlocal.maps", "getlocal.patterns", "getlocal.plot", "getlocal.saved",
           "getlocal.recording", "getlocal._codec", "getlocal._live", "getlocal.cli.inputs",
           "getlocal.viewer", "getlocal.adapters.openvla", "getlocal.adapters.paligemma", "getlocal.adapters.vit"]
NEEDS = {"getlocal.plot": "matplotlib", "getlocal.saved": "safetensors", "getlocal.viewer": "safetensors",
         "getlocal.recording": "safetensors", "getlocal._codec": "safetensors",
         "getlocal.adapters.openvla": "transformers",
         "getlocal.adapters.paligemma": "transformers", "getlocal.adapters.vit": "timm"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0 or name.startswith("getlocal.adapters")
