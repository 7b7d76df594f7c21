#!/usr/bin/env bash
# deltamoe sweep-lm end to end on a tiny corpus and model (1 seed, a few steps): every CSV,
# plot and the report are written, the tables agree with each other (E3's top-2 perplexity is
# E1's top-2 at k = 2; K histograms sum to 1; post-hoc top-p uses more experts as p grows), a
# re-run reuses the trained models, and bad flags fail at once with one line.
set -euo pipefail
bin="$1"
src="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
source "$src/tests/cli/error_lib.bash"

for i in $(seq 1 300); do
  printf 'The cat number %d sat on the mat.\nThe dog ate the hat of cat %d.\n\n' "$i" "$((i * 7 % 13))"
done >"$tmp/corpus.txt"
args=(--data "$tmp/corpus.txt" --vocab 320 --hidden 32 --inter 32 --seeds 1 --steps 6
      --eval-tokens 1024 --out-dir "$tmp/out" --work-dir "$tmp/work" --json)
"$bin" sweep-lm "${args[@]}" >"$tmp/a.json" 2>"$tmp/a.err" || { cat "$tmp/a.err"; fail "sweep-lm"; }
for key in target_met closest top2_perplexity allocation_helps configurations time_s; do
  grep -q "\"$key\":" "$tmp/a.json" || fail "no $key in the JSON"
done
[ "$(wc -l <"$tmp/a.json")" -eq 1 ] || fail "stdout is not one JSON object"
for t in train e1 e2-load e2-summary e2-tokens e3 e3-k-hist posthoc; do
  [ -s "$tmp/out/delta-moe-lm-$t.csv" ] || fail "no delta-moe-lm-$t.csv"
done
[ -s "$tmp/out/delta-moe-lm.md" ] || fail "no report"
if ! grep -q "plots skipped\|plotting failed" "$tmp/a.err"; then
  for png in e1 e2-load e2-tokens e3-frontier; do
    head -c 8 "$tmp/out/delta-moe-lm-$png.png" | od -An -c | grep -q "P   N   G" || fail "$png.png"
  done
fi
python3 - "$tmp/out" <<'PY' || fail "tables disagree"
import csv, sys, collections
d = sys.argv[1]
rd = lambda n: list(csv.DictReader(open(f"{d}/delta-moe-lm-{n}.csv")))
e1 = {(r["k_train"], r["k_eval"]): float(r["perplexity"]) for r in rd("e1")}
e3 = {(r["method"], r["budget"]): r for r in rd("e3")}
assert len(e3) == 15, len(e3)
# The pyramid (4,8 experts) has fewer parameters than top-2 (8,8) at the same k.
assert int(e3[("pyramid", "2")]["params"]) < int(e3[("top-k", "2")]["params"]), e3[("pyramid", "2")]
assert abs(float(e3[("pyramid", "2")]["experts_per_token"]) - 2) < 1e-9
assert abs(float(e3[("top-k", "2")]["perplexity"]) - e1[("2", "2")]) < 1e-3 * e1[("2", "2")]
assert all(float(e3[("top-k", k)]["experts_per_token"]) == float(k) for k in "1234")
for (m, b), r in e3.items():
    assert (r["shuffled_perplexity"] != "") == (m in ("top-p", "threshold", "null-experts")), (m, b)
# PR-MoE residual: a shared expert as wide as a routed one beside top-1 has top-2's active FFN
# parameters, and more parameters than top-2 (the shared expert, its gate, q/k/v biases).
res, t2 = e3[("residual", "1")], e3[("top-k", "2")]
assert abs(float(res["active_ffn_params"]) - float(t2["active_ffn_params"])) < 1e-6 * float(t2["active_ffn_params"])
assert int(res["params"]) > int(t2["params"]) and int(t2["params"]) == int(e3[("top-k", "1")]["params"])
# Mixture-of-Students: one layer fewer, with and without the teacher, the same size.
st, kd = e3[("student", "2")], e3[("student-kd", "2")]
assert int(st["params"]) == int(kd["params"]) < int(t2["params"])
h = collections.defaultdict(float)
for r in rd("e3-k-hist"):
    h[(r["method"], r["budget"])] += float(r["fraction"])
assert all(abs(v - 1) < 1e-3 for v in h.values()), h
ph = sorted((float(r["p"]), float(r["experts_per_token"])) for r in rd("posthoc"))
assert all(a[1] <= b[1] + 1e-9 for a, b in zip(ph, ph[1:])), ph
assert len(rd("train")) == 15
PY
# A re-run trains nothing, and keeps hand-written notes in the report.
printf '## Notes\n\nnotes-marker-42\n' >"$tmp/out/delta-moe-lm-notes.md"
"$bin" sweep-lm "${args[@]}" --no-plots >/dev/null 2>"$tmp/b.err" || { cat "$tmp/b.err"; fail "re-run"; }
grep -q "notes-marker-42" "$tmp/out/delta-moe-lm.md" || fail "notes not in the report"
grep -q "0 models to train (13 cached)" "$tmp/b.err" && grep -q "0 models to train (2 cached)" "$tmp/b.err" ||
  { cat "$tmp/b.err"; fail "models not reused"; }

expect_one_line_error 1 "multiple of 8" "$bin" sweep-lm --hidden 12 --out-dir "$tmp/x" --work-dir "$tmp/w"
expect_one_line_error 2 "jobs" "$bin" sweep-lm --jobs 0 --out-dir "$tmp/x" --work-dir "$tmp/w"
expect_one_line_error 2 "data" "$bin" sweep-lm --data "$tmp/missing.txt" --out-dir "$tmp/x"
[ ! -e "$tmp/x" ] || fail "output left after an error"
echo "sweep-lm: ok"
