#!/usr/bin/env bash
# The README's test command: install with the test extra, lint, format check, run the suite.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]" || exit 1
ruff check . || exit 1
ruff format --check . || exit 1
python -m pytest -q "$@"
rc=$?
# pytest exits 5 when it collected no tests: that is a failure of the suite, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests collected"; exit 1; fi
exit "$rc"
