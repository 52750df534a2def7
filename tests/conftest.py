import os
import sys

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from getlocal import get_local  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_get_local():
    """Each test starts with capture off and an empty cache, and forgets the functions it defined.

    Functions of libraries (instrumented by adapters) are left to the adapters' own deactivate().
    """
    before = set(map(id, get_local.functions().values()))
    get_local.deactivate()
    get_local.clear()
    yield get_local
    get_local.deactivate()
    get_local.clear()
    for func in list(get_local.functions().values()):
        if id(func) not in before and func.__module__.startswith("test_"):
            get_local.remove(func)


def pytest_report_header(config):
    return f"getlocal on Python {sys.version.split()[0]}"


@pytest.fixture
def adapters_off():
    """Every adapter deactivated when the test ends, whatever it left on."""
    yield
    from getlocal.adapters import openvla, paligemma, vit

    for adapter in (vit, openvla, paligemma):
        adapter.deactivate()
