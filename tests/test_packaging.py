"""What gets installed: the wheel's layout and what `import getlocal` pulls in."""
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_getlocal_loads_neither_torch_nor_numpy():
    code = "import sys, getlocal; print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_wheel_installs_adapters_as_getlocal_adapters_and_no_top_level_adapters(tmp_path):
    pytest.importorskip("setuptools")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), ROOT],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert "getlocal/adapters/openvla.py" in names and "getlocal/adapters/paligemma.py" in names
    assert "getlocal/_rewrite.py" in names
    assert not [n for n in names if n.startswith("adapters/")]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"getlocal"}
