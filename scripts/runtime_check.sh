#!/usr/bin/env bash
# The runtime-only stage of CI: a fresh virtualenv with `pip install -e .` and nothing else, an
# empty HS_JAX_CACHE, then configs/tiny.py end to end and launch.generate on the real Gemma 3
# 270M. A runtime import of a test-only package (torch, transformers, peft, accelerate, IPython)
# fails here, where the test extra would hide it.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python -m venv "$scratch/venv"
py="$scratch/venv/bin/python"
"$py" -m pip install -q -e . || exit 1
for module in torch transformers peft accelerate IPython pytest; do
  if "$py" -c "import $module" 2>/dev/null; then
    echo "runtime install pulled in the test-only package '$module'"
    exit 1
  fi
done
export HS_JAX_CACHE="$scratch/cache"
"$py" -m launch.main --config=configs/tiny.py --workdir="$scratch/tiny" \
  --config.engine.compilation_cache=""
"$py" - "$scratch/tiny/results.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
assert results["best_system"]["test_utility"] is not None, results
print("tiny run:", results["task"], "test utility", results["best_system"]["test_utility"])
PY
"$py" -m launch.generate --prompt="The capital of France is" --max_new_tokens=8
echo "runtime-only stage passed"
