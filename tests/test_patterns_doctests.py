"""The runnable examples of every module of the numbers and pictures packages run.

``tests/test_docstrings.py`` runs a package's own docstrings; doctest leaves out
the functions that a package re-exports from its modules, so they run here.
"""
import doctest
import importlib
import pkgutil

import pytest

import getlocal.patterns

MODULES = ["getlocal.tokens", "getlocal._arrays"] + [
    f"getlocal.patterns.{m.name}" for m in pkgutil.iter_modules(getlocal.patterns.__path__)]
PLOT = ["getlocal.plot._heads", "getlocal.plot._overlays", "getlocal.plot._depth", "getlocal.plot._save"]


@pytest.mark.parametrize("name", MODULES + PLOT)
def test_module_examples_run(name):
    if name.startswith("getlocal.plot"):
        pytest.importorskip("matplotlib")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
