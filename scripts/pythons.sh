#!/usr/bin/env bash
# The core suite on every Python the package claims that this machine has (pyenv's
# 3.10, 3.12, 3.13 on these machines): one venv each under .venv-py/, then pytest.
#   scripts/pythons.sh                 # the core files below
#   scripts/pythons.sh tests/test_x.py # other files
set -euo pipefail
cd "$(dirname "$0")/.."
core=(tests/test_executor.py tests/test_executor_cpython.py tests/test_task_api.py
      tests/test_failures.py tests/test_chunks.py tests/test_chunks_header.py
      tests/test_records.py tests/test_trust.py tests/test_cli.py tests/test_seeds_and_config.py
      tests/test_startup.py tests/test_joblib.py)
files=("$@")
[ ${#files[@]} -gt 0 ] || files=("${core[@]}")
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
status=0
for minor in 3.10 3.12 3.13; do
  py=$(ls -d "$root"/versions/"$minor".*/bin/python 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$py" ]; then echo "pythons: no Python $minor under $root (skipped)"; continue; fi
  venv=.venv-py/$minor
  if [ ! -f "$venv/.installed" ] || [ pyproject.toml -nt "$venv/.installed" ]; then
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
    touch "$venv/.installed"
  fi
  echo "== Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())')"
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "${files[@]}" | tail -3 || status=1
done
exit $status
