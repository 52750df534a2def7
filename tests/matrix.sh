#!/usr/bin/env bash
# The version matrix, on top of the README's test command:
#  1. the core tests on every CPython 3.9-3.13 present (bytecode differs per version);
#  2. the adapter tests against the library versions VLA code pins (.ci/pins/*.txt),
#     layered with --target over the default environment so torch is installed once.
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
  echo "== adapter tests with $name pins: $(grep -v '^#' "$pins" | tr '\n' ' ')"
  python -m pip install -q --disable-pip-version-check --no-deps --upgrade --target "$envs/$name" -r "$pins" >/dev/null \
    || { echo "could not install the $name pins"; failed=1; continue; }
  PYTHONPATH="$envs/$name" python -m pytest -q -p no:cacheprovider tests/test_adapter_*.py tests/test_maps.py || failed=1
done
exit $failed
