#!/usr/bin/env bash
# Runs every libFuzzer target (tests/libfuzzer/*.cpp: config.json / index.json, tokenizer.json
# and text, safetensors files, chat templates, OpenAI and classify request bodies, memgraph
# .json / .json.gz graphs, IDX files; docs/fuzzing.md) for SECONDS each (default 60), starting from
# the seed corpora in tests/libfuzzer/corpus/, with ASan + UBSan. Builds them first with clang
# (the `fuzz` preset, build-fuzz/). Findings (crashes, sanitizer reports, an error message
# that is not one "[component] ..." line) are written to build-fuzz/findings/<target>/ and
# fail the script.
# New corpus entries stay in build-fuzz/corpus/ (the committed seeds are not modified).
# Usage: scripts/fuzz.sh [SECONDS [TARGET...]]  (TARGET: a name of tests/libfuzzer/, e.g. idx;
# default all of them).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -ge 1 ] || { echo "fuzz.sh: SECONDS must be a positive integer, got '$seconds'" >&2; exit 2; }
bash scripts/install-deps.sh
for p in clang libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="${missing:-} $p"
done
if [ -n "${missing:-}" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -qq --no-install-recommends $missing >&2
fi
cmake --preset fuzz >/dev/null
targets=()
if [ $# -gt 1 ]; then
  for name in "${@:2}"; do
    [ -f "tests/libfuzzer/$name.cpp" ] || { echo "fuzz.sh: no target '$name' in tests/libfuzzer/" >&2; exit 2; }
    targets+=("libfuzzer_$name")
  done
else
  for f in tests/libfuzzer/*.cpp; do targets+=("libfuzzer_$(basename "$f" .cpp)"); done
fi
cmake --build --preset fuzz --target "${targets[@]}" >&2
# run_one TARGET: fuzzes one target; its status goes to build-fuzz/<name>.status.
run_one() {
  local t="$1" name="${1#libfuzzer_}" rc=0
  local corpus="build-fuzz/corpus/$name" findings="build-fuzz/findings/$name"
  mkdir -p "$corpus" "$findings"
  cp -n tests/libfuzzer/corpus/"$name"/* "$corpus"/ 2>/dev/null || true
  echo "fuzz.sh: $name for ${seconds}s" >&2
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "build-fuzz/$t" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 \
    -artifact_prefix="$findings/" -print_final_stats=1 "$corpus" 2>"build-fuzz/$name.log" || rc=$?
  [ $rc -eq 0 ] || echo "fuzz.sh: $name FOUND a problem; see build-fuzz/$name.log and $findings/" >&2
  { grep -E "^#[0-9]+[[:space:]]+DONE" "build-fuzz/$name.log" | tail -1
    grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)" "build-fuzz/$name.log"
  } | sed "s/^/  $name /" >&2 || true
  echo $rc >"build-fuzz/$name.status"
}
# DELTAMOE_FUZZ_JOBS targets at a time (default 1: one after another; CI uses one per core).
jobs="${DELTAMOE_FUZZ_JOBS:-1}"
for t in "${targets[@]}"; do
  rm -f "build-fuzz/${t#libfuzzer_}.status"
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run_one "$t" &
done
wait
status=0
for t in "${targets[@]}"; do
  [ "$(cat "build-fuzz/${t#libfuzzer_}.status" 2>/dev/null)" = 0 ] || status=1
done
exit $status
