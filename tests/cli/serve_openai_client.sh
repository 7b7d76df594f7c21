#!/usr/bin/env bash
# The unmodified OpenAI Python client (PyPI `openai`, installed into a throwaway venv; dev and
# test only, never a dependency of the engine) against deltamoe serve on a made model:
# completions and chat, streamed and not, and a 400 as the client's BadRequestError
# (python/openai_client_check.py). Without network to PyPI the test is skipped (exit 77),
# except under CI=true, where it fails.
set -euo pipefail
bin="$1"
src="$2"
source "$src/tests/cli/serve_lib.bash"  # sets $tmp (removed at exit) and $pid
venv="${DELTAMOE_OPENAI_VENV:-$tmp/venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  if ! { /usr/bin/python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check openai; } >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log"
    if [ "${CI:-}" = true ]; then echo "cannot install the openai client from PyPI"; exit 1; fi
    echo "SKIP: the openai client could not be installed from PyPI"; exit 77
  fi
fi
"$bin" make-model --arch qwen2-moe --preset tiny --vocab 400 --seed 4 --out "$tmp/qm" --quiet
model_args=(--model "$tmp/qm")
start_server
timeout 300 "$venv/bin/python" "$src/python/openai_client_check.py" "$port" qm
stop_server
pid=""
