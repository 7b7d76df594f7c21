#!/usr/bin/env bash
# The Python package deltamoe_sched from the build tree (build/python): the scheduler against
# an independent simulator and enumerated optima (tests/python/sched_module.py), and, where a
# Python with PyTorch is found ($DELTAMOE_TORCH_PYTHON, else python3), inside torch.compile
# (tests/python/sched_inductor.py). Skipped (exit 77) in a build without the package
# (no pybind11: scripts/install-deps.sh installs it), except under CI=true.
set -euo pipefail
bin="$1"
src="${2:-$(cd "$(dirname "$0")/../.." && pwd)}"
pkg="$(dirname "$bin")/python"
if [ ! -f "$pkg/deltamoe_sched/__init__.py" ]; then
  [ "${CI:-}" = true ] && { echo "FAIL: no Python package under CI (install-deps: pybind11-dev)"; exit 1; }
  echo "SKIP: built without the Python package"; exit 77
fi
"$bin" info --json | python3 -c 'import json,sys; b=json.load(sys.stdin)["build"]; assert b["python_package"].startswith("deltamoe_sched"), b'
PYTHONPATH="$pkg" python3 "$src/tests/python/sched_module.py"
py="${DELTAMOE_TORCH_PYTHON:-python3}"
rc=0
PYTHONPATH="$pkg" "$py" "$src/tests/python/sched_inductor.py" || rc=$?
if [ "$rc" = 77 ]; then
  echo "(torch.compile part skipped: no PyTorch in $py; set DELTAMOE_TORCH_PYTHON)"
elif [ "$rc" != 0 ]; then
  exit "$rc"
fi
echo "PASS"
