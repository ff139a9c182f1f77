#!/usr/bin/env bash
# The README's test command: install with the test extra, lint, format check, run the suite.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]" || exit 1
ruff check . || exit 1
ruff format --check . || exit 1
# Two workers (CI has 2 cores); tests/conftest.py groups the files so that each stays on one
# worker and the memory-heavy ones never run side by side.
python -m pytest -q -n 2 --dist loadgroup "$@"
rc=$?
# pytest exits 5 when it collected no tests: that is a failure of the suite, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests collected"; exit 1; fi
exit "$rc"
