"""The house keeps its shape: imports point down, no circles, no private name leaves its module.

Every import of a getlocal module is read from the source (function-level imports
included) and held against the floors of README's "The house": a module may import
its own floor or lower, never higher, and never in a circle.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# README, "How it works", "The house": from the ground up; a name stands for the module or the package.
FLOORS = [
    ["getlocal._errors", "getlocal._check", "getlocal._files", "getlocal._versions"],
    ["getlocal._verify", "getlocal._rewrite", "getlocal._convert", "getlocal._store", "getlocal._compile",
     "getlocal._core"],
    ["getlocal._arrays", "getlocal.tokens", "getlocal.maps"],
    ["getlocal.patterns", "getlocal.explain"],
    ["getlocal._codec", "getlocal._live", "getlocal.recording", "getlocal.saved"],
    ["getlocal.plot", "getlocal._viewer_page", "getlocal.viewer"],
    ["getlocal"],
    ["getlocal.adapters"],
    ["getlocal.cli", "getlocal.__main__"],
]


def _modules():
    """``{module name: source file}`` for the library and the adapters (installed as getlocal.adapters)."""
    found = {}
    for top, package in ((ROOT / "getlocal", "getlocal"), (ROOT / "adapters", "getlocal.adapters")):
        for file in top.rglob("*.py"):
            parts = list(file.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = file
    return found


MODULES = _modules()


def _floor(name: str) -> int:
    best = None
    for floor, names in enumerate(FLOORS):
        for owner in names:
            if (name == owner or name.startswith(owner + ".")) and (best is None or len(owner) > len(best[1])):
                best = (floor, owner)
    assert best is not None, f"{name} stands on no floor of the house: add it to FLOORS and to README's table"
    return best[0]


def _imports(name: str, file: Path):
    """``[(imported module, names taken from it, line)]`` for every getlocal import anywhere in ``file``."""
    is_package = file.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "getlocal"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            if base.split(".")[0] != "getlocal":
                continue
            names = []
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:  # `from . import saved`: the module itself
                    out.append((f"{base}.{alias.name}", [], node.lineno))
                else:
                    names.append(alias.name)
            if names:
                out.append((base, names, node.lineno))
    return [(target, names, line) for target, names, line in out if target != name]


GRAPH = {name: _imports(name, file) for name, file in MODULES.items()}


def test_every_module_stands_on_a_floor_of_the_readme_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in MODULES:
        _floor(name)
    for names in FLOORS:
        for owner in names:
            short = owner.replace("getlocal.", "", 1)
            named = (f"`{short}`", f"`{short}/`", f"`getlocal/{short}/`", "`getlocal/__init__.py`")
            assert any(n in readme for n in named[:3]) or (owner == "getlocal" and named[3] in readme), \
                f"README's house table does not name {short}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    up = [f"line {line}: {target} (floor {_floor(target)})" for target, _, line in GRAPH[name]
          if _floor(target) > _floor(name) and not (target == "getlocal" and name.startswith("getlocal.adapters"))]
    assert not up, f"{name} (floor {_floor(name)}) imports upward: {up}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_leaves_its_module(name):
    taken = [f"line {line}: {target}.{n}" for target, names, line in GRAPH[name] for n in names
             if n.startswith("_") and not n.startswith("__")]
    assert not taken, f"{name} imports private names of other modules: {taken}"


def test_no_import_circle():
    def targets(name):
        # importing a.b.c runs a and a.b first, but only the named module is an arrow of the code
        return {t for t, _, _ in GRAPH[name] if t in GRAPH}

    state = {}

    def visit(name, path):
        state[name] = "open"
        for target in targets(name):
            if state.get(target) == "open":
                circle = path[path.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_the_floors_test_sees_what_it_checks():
    # a reader that found no import would pass every test above
    assert ("getlocal._codec", ["StoredArray"]) in [(t, [n for n in ns if n == "StoredArray"])
                                                   for t, ns, _ in GRAPH["getlocal.recording"]]
    assert any(t == "getlocal.patterns.display" for t, _, _ in GRAPH["getlocal.plot._overlays"])
    assert len(MODULES) > 50
