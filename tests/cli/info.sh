#!/usr/bin/env bash
# deltamoe info: one JSON object with the build, the CPU features and the kernel of each hot
# operation; DELTAMOE_ISA caps the features the kernels use (and says so); a bad value is
# ignored with a one-line warning.
set -euo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
jget() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }

"$bin" info --json >"$tmp/i.json"
for key in build cpu cpu_features_detected cpu_features_used isa_cap threads_default kernels; do
  [ "$(jget "$tmp/i.json" "'$key' in d")" = True ] || fail "info: missing $key"
done
[ "$(jget "$tmp/i.json" "d['isa_cap'] is None and d['cpu_features_used'] == d['cpu_features_detected']")" = True ] || fail "no cap: used != detected"
"$bin" info >"$tmp/i.txt"
grep -q "linear_row_major_f32" "$tmp/i.txt" || fail "text: no kernels"

# portable: no AVX2/FMA/AVX-512 used, every linear on the portable path.
DELTAMOE_ISA=portable "$bin" info --json >"$tmp/p.json"
[ "$(jget "$tmp/p.json" "d['isa_cap'] == 'portable' and not any(d['cpu_features_used'].values())")" = True ] || fail "portable cap"
[ "$(jget "$tmp/p.json" "d['kernels']['linear_packed_f32'] == 'portable' and d['kernels']['linear_row_major_f32'].startswith('portable')")" = True ] || fail "portable kernels"
# avx2: no AVX-512 or AMX; the older DELTAMOE_DISABLE_AVX512=1 means the same.
for env in DELTAMOE_ISA=avx2 DELTAMOE_DISABLE_AVX512=1; do
  env "$env" "$bin" info --json >"$tmp/a.json"
  [ "$(jget "$tmp/a.json" "d['isa_cap'] == 'avx2' and not d['cpu_features_used']['avx512f'] and not d['cpu_features_used']['amx_tile']")" = True ] || fail "$env cap"
  [ "$(jget "$tmp/a.json" "d['kernels']['linear_packed_f32'] in ('avx2', 'portable')")" = True ] || fail "$env kernels"
done
# A bad value: ignored, one warning line on stderr naming it, exit 0.
DELTAMOE_ISA=sse9 "$bin" info --json >"$tmp/b.json" 2>"$tmp/b.err"
[ "$(wc -l <"$tmp/b.err")" -eq 1 ] && grep -q "DELTAMOE_ISA=sse9 ignored" "$tmp/b.err" || fail "bad cap warning"
[ "$(jget "$tmp/b.json" "d['isa_cap'] is None")" = True ] || fail "bad cap applied"
# The one-row read-ahead of the dot kernels: Intel's default, forced either way by the variable.
for v in 0 1; do
  want=$([ "$v" = 1 ] && echo on || echo off)
  DELTAMOE_ONE_ROW_PREFETCH=$v "$bin" info --json >"$tmp/o.json"
  [ "$(jget "$tmp/o.json" "d['kernels']['one_row_prefetch'].split()[0]")" = "$want" ] || fail "DELTAMOE_ONE_ROW_PREFETCH=$v"
done
DELTAMOE_ONE_ROW_PREFETCH=yes "$bin" info --json >"$tmp/o.json" 2>"$tmp/o.err"
[ "$(wc -l <"$tmp/o.err")" -eq 1 ] && grep -q "DELTAMOE_ONE_ROW_PREFETCH=yes ignored" "$tmp/o.err" || fail "bad one-row prefetch warning"
echo "info: ok"
