#!/usr/bin/env bash
# deltamoe bench moe-layer: JSON output shape and error handling (no timing assertions).
set -euo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$("$bin" bench moe-layer --tokens 1,3 --hidden 64 --inter 32 --experts 4 --top-k 2 \
      --min-seconds 0 --json 2>/dev/null)
for key in '"benchmark": "moe-layer"' '"time_ms"' '"gflops"' '"speedup_vs_naive"' \
           '"frac_of_sgemm"' '"frac_of_bandwidth_roofline"' '"bandwidth_gbps"'; do
  grep -q "$key" <<<"$out" || { echo "missing $key in: $out"; exit 1; }
done
# Exactly one JSON object on stdout: the first character is '{' and the last is '}'.
[ "${out:0:1}" = "{" ] && [ "${out: -1}" = "}" ] || { echo "stdout is not one JSON object"; exit 1; }
# int8 weights: the error against the f32 layer is reported, small but not zero.
out=$("$bin" bench moe-layer --tokens 1,40 --hidden 64 --inter 32 --experts 4 --top-k 2 \
      --dtype int8 --min-seconds 0 --skip-naive --json 2>/dev/null)
python3 -c "
import json, sys
d = json.loads(sys.argv[1])
assert d['dtype'] == 'int8' and d['kernel'] in ('avx2_int8', 'avx512_vnni_int8', 'avx512_vnni_int8+amx_bf16', 'portable'), d['kernel']
# Same-run ceilings exist on AVX2 CPUs too (the FMA probe had been AVX-512 only).
if d['kernel'] != 'portable':
    assert d['fma_peak_gflops'] > 0 and d['int8_dot_peak_gops'] > 0, d
    assert all(0 < r['frac_of_int8_dot_peak'] for r in d['results'])
for r in d['results']:
    assert 0 < r['mean_rel_error_vs_f32'] < 0.05 and 0 < r['max_rel_error_vs_f32'] < 0.1, r
" "$out" || { echo "bench moe-layer --dtype int8: bad error fields"; exit 1; }
# On an AMX CPU the bf16 layer runs tiles and the AMX peak is measured in the same run.
if [ "$("$bin" info --json | python3 -c "import json,sys; print(json.load(sys.stdin)['kernels']['linear_packed_bf16'])")" = amx_bf16 ]; then
  out=$("$bin" bench moe-layer --tokens 1,40 --hidden 64 --inter 32 --experts 4 --top-k 2 \
        --dtype bf16 --min-seconds 0 --skip-naive --json 2>/dev/null)
  python3 -c "
import json, sys
d = json.loads(sys.argv[1])
assert d['kernel'] == 'amx_bf16' and d['amx_bf16_peak_gflops'] > d['fma_peak_gflops'], d
assert all(r['frac_of_amx_bf16_peak'] > 0 for r in d['results'])
" "$out" || { echo "bench moe-layer --dtype bf16 on AMX: bad AMX fields"; exit 1; }
fi
# oneDNN baseline (when built): same routing, so in f32 it gives our layer's output; in int8
# its coarser scales give an error of the same order as ours, not zero.
if "$bin" info --json | python3 -c "import json,sys; sys.exit(0 if json.load(sys.stdin)['build']['onednn'] != 'not built' else 1)"; then
  for d in f32 bf16 int8; do
    if ! out=$("$bin" bench moe-layer --tokens 1,40 --hidden 64 --inter 32 --experts 4 --top-k 2 \
          --dtype $d --onednn --min-seconds 0 --skip-naive --json 2>"$tmp/err.txt"); then
      # oneDNN 2.x has no bf16 matmul without AVX-512: a clear error, not a crash.
      [ "$d" = bf16 ] && grep -q "^deltamoe: error: \[onednn\] no bf16 matmul" "$tmp/err.txt" && continue
      echo "bench moe-layer --onednn --dtype $d failed: $(cat "$tmp/err.txt")"; exit 1
    fi
    python3 -c "
import json, sys
d, dt = json.loads(sys.argv[1]), sys.argv[2]
bound = {'f32': 1e-5, 'bf16': 2e-2, 'int8': 5e-2}[dt]
for r in d['results']:
    assert r['onednn_time_ms'] > 0 and r['speedup_vs_onednn'] > 0, r
    assert r['onednn_mean_rel_error_vs_f32'] < bound, (dt, r)
    assert dt == 'f32' or r['onednn_mean_rel_error_vs_f32'] > 0, (dt, r)
    # The prepacked variant (weights in oneDNN's own layout), where this CPU allows it.
    if 'onednn_prepacked_time_ms' in r:
        assert r['onednn_prepacked_time_ms'] > 0 and r['speedup_vs_onednn_prepacked'] > 0, r
        assert r['onednn_prepacked_mean_rel_error_vs_f32'] < bound, (dt, r)
" "$out" "$d" || { echo "bench moe-layer --onednn --dtype $d: bad oneDNN fields"; exit 1; }
  done
else
  if "$bin" bench moe-layer --tokens 1 --hidden 64 --inter 32 --experts 4 --top-k 2 --onednn 2>"$tmp/err.txt" >/dev/null; then
    echo "--onednn without oneDNN was accepted"; exit 1
  fi
  grep -q "\[onednn\]" "$tmp/err.txt" || { echo "no [onednn] error: $(cat "$tmp/err.txt")"; exit 1; }
fi
# Bad input: a clear one-line error and a non-zero exit.
if "$bin" bench moe-layer --top-k 9 --experts 4 --hidden 8 --inter 8 --tokens 1 2>"$tmp/err.txt" >/dev/null; then
  echo "top-k > experts was accepted"; exit 1
fi
grep -q "\[bench\]" "$tmp/err.txt" || { echo "error message lacks component: $(cat "$tmp/err.txt")"; exit 1; }
if "$bin" bench moe-layer --dtype f64 2>/dev/null; then echo "--dtype f64 accepted"; exit 1; fi
echo "bench cli: ok"
