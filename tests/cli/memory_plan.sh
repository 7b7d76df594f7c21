#!/usr/bin/env bash
# Training inside one planned arena (--memory-plan arena): train-lm and train write the same
# weights, byte for byte, as on the heap, and report the plan; `bench train-step` runs its three
# modes and reports the plan's figures; bad values are one-line errors. Memory figures are
# not asserted beyond their structure (they depend on the allocator and the kernel).
set -euo pipefail
bin="$1"
src="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
source "$src/tests/cli/error_lib.bash"
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

for i in $(seq 1 200); do
  printf 'The cat number %d sat on the mat.\nThe dog ate the hat of cat %d.\n\n' "$i" "$((i * 7 % 13))"
done >"$tmp/corpus.txt"
base=(--data "$tmp/corpus.txt" --vocab 320 --hidden 32 --heads 4 --kv-heads 2 --inter 32
      --seq-len 16 --batch 4 --threads 1 --no-progress --steps 10)
small=("${base[@]}" --experts 4)
"$bin" train-lm "${small[@]}" --out "$tmp/heap" --json >"$tmp/heap.json"
"$bin" train-lm "${small[@]}" --out "$tmp/arena" --memory-plan arena --json >"$tmp/arena.json"
cmp "$tmp/heap/model.safetensors" "$tmp/arena/model.safetensors" || fail "train-lm weights differ"
[ "$(jget "$tmp/arena.json" "d['memory_plan']['steps'] == 10 and d['memory_plan']['plans'] >= 1")" = True ] \
  || fail "train-lm memory_plan report: $(cat "$tmp/arena.json")"
[ "$(jget "$tmp/heap.json" "'memory_plan' in d")" = False ] || fail "heap run reports a plan"
# Pyramid experts per layer, and null experts with a target K (adaptive, per-layer policies).
for variant in "--layer-experts 4,8" "--experts 4 --routing null-experts --target-k 1.5"; do
  # shellcheck disable=SC2086
  "$bin" train-lm "${base[@]}" $variant --out "$tmp/vh" --force >/dev/null
  # shellcheck disable=SC2086
  "$bin" train-lm "${base[@]}" $variant --out "$tmp/va" --force --memory-plan arena >/dev/null
  cmp "$tmp/vh/model.safetensors" "$tmp/va/model.safetensors" || fail "weights differ: $variant"
done

# The classifier: synthetic-free, so only where Fashion-MNIST is installed.
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] ||
   [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ]; then
  cls=(--layers 1 --experts 4 --hidden 16 --inter 16 --epochs 1 --batch 64 --max-train 512
       --val-size 0 --threads 1 --no-progress --no-test)
  "$bin" train "${cls[@]}" --out "$tmp/c-heap.safetensors" >/dev/null 2>&1
  "$bin" train "${cls[@]}" --out "$tmp/c-arena.safetensors" --memory-plan arena --json \
    >"$tmp/c.json" 2>/dev/null
  cmp "$tmp/c-heap.safetensors" "$tmp/c-arena.safetensors" || fail "train weights differ"
  nulls=(--stem patch --routing null-experts --target-k 1.2)
  "$bin" train "${cls[@]}" "${nulls[@]}" --out "$tmp/n-heap.safetensors" >/dev/null 2>&1
  "$bin" train "${cls[@]}" "${nulls[@]}" --out "$tmp/n-arena.safetensors" --memory-plan arena \
    >/dev/null 2>&1
  cmp "$tmp/n-heap.safetensors" "$tmp/n-arena.safetensors" || fail "null-experts weights differ"
  [ "$(jget "$tmp/c.json" "d['memory_plan']['planned_steps'] >= 1")" = True ] || fail "train report"
fi

# bench train-step: the three modes as children, one JSON object.
"$bin" bench train-step --hidden 32 --inter 32 --experts 4 --vocab 256 --seq-len 16 --batch 4 \
  --steps 6 --rounds 1 --threads 1 --json >"$tmp/bench.json" 2>"$tmp/bench.err" \
  || { cat "$tmp/bench.err"; fail "bench train-step"; }
for key in heap_peak_bytes release_peak_bytes arena_peak_bytes planned_arena_bytes \
           planned_steps_measured_over_planned recorded_peak_bytes tape_resident_bytes \
           heap_step_ms release_step_ms arena_step_ms; do
  [ "$(jget "$tmp/bench.json" "'$key' in d and d['$key'] > 0")" = True ] || fail "bench: $key"
done
[ "$(jget "$tmp/bench.json" "len(d['runs']) == 3 and d['plan']['planned_steps'] >= 1")" = True ] \
  || fail "bench runs"
[ "$(jget "$tmp/bench.json" "d['recorded_peak_bytes'] < d['tape_resident_bytes'] <= 2 * d['heap_peak_bytes'] + 10**7")" = True ] \
  || fail "bench figures: $(cat "$tmp/bench.json")"
"$bin" bench train-step --kind classifier --hidden 16 --inter 16 --experts 4 --batch 16 --steps 3 \
  --memory-plan arena --threads 1 --json >"$tmp/cb.json" 2>/dev/null || fail "classifier bench"
[ "$(jget "$tmp/cb.json" "d['memory_plan'] == 'arena' and d['plan']['plans'] >= 1")" = True ] \
  || fail "classifier bench report"

expect_one_line_error 2 "memory-plan" "$bin" train-lm "${small[@]}" --out "$tmp/x" --memory-plan disk
expect_one_line_error 2 "memory-plan-slack" "$bin" train-lm "${small[@]}" --out "$tmp/x" \
  --memory-plan arena --memory-plan-slack -1
expect_one_line_error 2 "memory-plan" "$bin" bench train-step --memory-plan both
expect_one_line_error 1 "top-k" "$bin" bench train-step --experts 2 --top-k 3 --steps 2
echo ok
