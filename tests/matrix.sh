#!/usr/bin/env bash
# The version matrix, on top of the README's test command:
#  1. the core tests on every CPython 3.9-3.13 present (bytecode differs per version);
#  2. the adapter tests against the library versions VLA code pins (.ci/pins/*.txt),
#     layered with --target over the default environment so torch is installed once;
#     a pins file with a "# python: 3.X" line gets its own venv of that Python instead
#     (the pins installed with their dependencies, kept in .ci/envs/NAME-venv while its pins are unchanged);
#     the adapters a pins file names on its "# adapters:" line must run there: a skip fails the leg.
set -uo pipefail
cd "$(dirname "$0")/.."
envs=.ci/envs
mkdir -p "$envs"
failed=0
ran=()
missing=()

find_python() {  # python3.X from PATH if it runs, else from pyenv's versions
  local v=$1 p
  if p=$(command -v "python$v") && "$p" -c 'import sys' 2>/dev/null; then echo "$p"; return; fi
  for p in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/$v.*/bin/python$v; do
    [ -x "$p" ] && "$p" -c 'import sys' 2>/dev/null && { echo "$p"; return; }
  done
  return 1
}

core_tests="tests/test_rewrite.py tests/test_verify.py tests/test_rewrite_fuzz.py tests/test_get_local.py tests/test_real_code.py tests/test_convert.py"
for v in 3.9 3.10 3.11 3.12 3.13; do
  if ! py=$(find_python "$v"); then missing+=("$v"); continue; fi
  echo "== core tests on Python $v ($py)"
  "$py" -m pip install -q --disable-pip-version-check --upgrade --target "$envs/py$v" bytecode pytest numpy >/dev/null \
    || { echo "could not install the test dependencies for Python $v"; failed=1; continue; }
  if PYTHONPATH="$envs/py$v" "$py" -m pytest -q -p no:cacheprovider $core_tests; then ran+=("$v"); else failed=1; fi
done
echo "== core tests ran on Python: ${ran[*]:-none}${missing:+; not on this machine: ${missing[*]}}"

for pins in .ci/pins/*.txt; do
  [ -e "$pins" ] || continue
  name=$(basename "$pins" .txt)
  adapters=$(sed -n 's/^# adapters: *//p' "$pins")  # the adapters whose tests must run, not skip, on these pins
  version=$(sed -n 's/^# python: *//p' "$pins")
  echo "== adapter tests with $name pins (must run: $adapters${version:+; Python $version}): $(grep -v '^#' "$pins" | tr '\n' ' ')"
  if [ -n "$version" ]; then  # a venv of its own: no default environment of this Python to layer over
    venv="$envs/$name-venv"
    py=$(find_python "$version") || { echo "no Python $version for the $name pins"; failed=1; continue; }
    if [ "$(grep -v '^#' "$pins")" != "$(cat "$venv/pins.txt" 2>/dev/null)" ]; then  # the pins, comments aside
      rm -rf "$venv"
      { "$py" -m venv "$venv" && "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$pins" >/dev/null \
        && grep -v '^#' "$pins" > "$venv/pins.txt"; } || { echo "could not install the $name pins"; failed=1; continue; }
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >/dev/null \
      || { echo "could not install getlocal into the $name venv"; failed=1; continue; }
    run=("$venv/bin/python") layer=""
  else
    python -m pip install -q --disable-pip-version-check --no-deps --upgrade --target "$envs/$name" -r "$pins" >/dev/null \
      || { echo "could not install the $name pins"; failed=1; continue; }
    run=(python) layer="$envs/$name"
  fi
  report="$envs/$name-report.xml"
  rm -f "$report"
  GETLOCAL_REQUIRE_ADAPTERS="${adapters// /,}" PYTHONPATH="$layer" \
    "${run[@]}" -m pytest -q -p no:cacheprovider --junitxml="$report" tests/test_adapter_*.py tests/test_maps.py || failed=1
  # A leg that skipped tests, or ran none of a required adapter's, has checked nothing on these pins.
  python - "$report" $adapters <<'PY' || failed=1
import os, sys, xml.etree.ElementTree as ET
if not os.path.exists(sys.argv[1]):
    sys.exit(f"no test report: the tests did not run")
cases = list(ET.parse(sys.argv[1]).iter("testcase"))
files = [f"test_adapter_{a}" for a in sys.argv[2:] if os.path.exists(f"tests/test_adapter_{a}.py")]
skipped = [f"{c.get('classname')}.{c.get('name')}" for c in cases
           if c.find("skipped") is not None and any(f in c.get("classname", "").split(".") for f in files)]
ran = [c.get("classname") for c in cases if c.find("skipped") is None]
idle = [f for f in files if not any(k.endswith(f) for k in ran)]
if skipped or idle:
    sys.exit(f"skipped: {skipped}; no test ran for: {idle}")
print(f"{len(ran)} tests ran, none skipped")
PY
done
exit $failed
