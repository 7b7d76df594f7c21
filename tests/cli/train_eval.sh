#!/usr/bin/env bash
# deltamoe train / eval: a tiny model end to end; JSON keys, the checkpoint pair, the
# predictions CSV (one row per test image, consistent with the JSON), error messages.
set -euo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
data=/usr/share/datasets/fashion-mnist
# A missing data set names the path and the Debian package.
if "$bin" train --data-dir "$tmp/none" --out "$tmp/x.safetensors" 2>"$tmp/err.txt" >/dev/null; then
  echo "train without data succeeded"; exit 1
fi
grep -q "$tmp/none" "$tmp/err.txt" && grep -q "dataset-fashion-mnist" "$tmp/err.txt" ||
  { echo "bad missing-data message: $(cat "$tmp/err.txt")"; exit 1; }
if [ ! -e "$data/train-images-idx3-ubyte.gz" ]; then echo "train/eval cli: data not installed, skipped"; exit 0; fi

small=(--max-train 512 --val-size 100 --epochs 1 --hidden 32 --inter 32 --layers 1 --threads 1 --no-progress)
out=$("$bin" train --routing threshold --target-k 1.5 "${small[@]}" --out "$tmp/m.safetensors" --json 2>/dev/null)
[ "${out:0:1}" = "{" ] && [ "${out: -1}" = "}" ] || { echo "train stdout is not one JSON object"; exit 1; }
for key in '"test_accuracy"' '"test_avg_experts"' '"val_accuracy"' '"epochs"' '"samples_per_s"'; do
  grep -q "$key" <<<"$out" || { echo "train: missing $key"; exit 1; }
done
[ -s "$tmp/m.safetensors" ] && [ -s "$tmp/m.json" ] || { echo "checkpoint pair missing"; exit 1; }
# --out in a directory that does not exist yet (the README's out/demo/... on a fresh clone).
"$bin" train --routing top-k:1 "${small[@]}" --no-test --out "$tmp/new/dir/m.safetensors" >/dev/null 2>&1 ||
  { echo "train into a new directory failed"; exit 1; }
[ -s "$tmp/new/dir/m.safetensors" ] || { echo "train did not create --out's directory"; exit 1; }
# A directory that cannot be created fails at once, naming --out.
if "$bin" train "${small[@]}" --out /dev/null/sub/m.safetensors 2>"$tmp/err.txt" >/dev/null; then
  echo "train under /dev/null succeeded"; exit 1
fi
grep -q "/dev/null/sub/m.safetensors: cannot create its directory" "$tmp/err.txt" || { echo "bad --out message: $(cat "$tmp/err.txt")"; exit 1; }
grep -q '"thresholds"' "$tmp/m.json" || { echo "adapted thresholds not saved"; exit 1; }

ev=$("$bin" eval --model "$tmp/m.safetensors" --threads 1 --json --predictions-out "$tmp/p.csv" 2>/dev/null)
for key in '"accuracy"' '"avg_experts"' '"expert_flops_per_sample"' '"samples_per_s"' '"load"'; do
  grep -q "$key" <<<"$ev" || { echo "eval: missing $key"; exit 1; }
done
[ "$(head -1 "$tmp/p.csv")" = "index,label,predicted,experts_used" ] || { echo "bad CSV header"; exit 1; }
[ "$(wc -l <"$tmp/p.csv")" -eq 10001 ] || { echo "CSV should have 10000 rows"; exit 1; }
# Accuracy and average K recomputed from the CSV match the JSON.
python3 - "$tmp/p.csv" "$ev" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
j = json.loads(sys.argv[2])
acc = sum(r["label"] == r["predicted"] for r in rows) / len(rows)
k = sum(float(r["experts_used"]) for r in rows) / len(rows)
assert abs(acc - j["accuracy"]) < 1e-9, (acc, j["accuracy"])
assert abs(k - j["avg_experts"]) < 1e-4, (k, j["avg_experts"])
PY
# Another policy on the same weights.
"$bin" eval --model "$tmp/m.safetensors" --routing top-k:1 --threads 1 --json 2>/dev/null |
  grep -q '"avg_experts":1.0' || { echo "top-1 override did not use one expert"; exit 1; }
# Bad input: unknown model file, bad policy parameters.
if "$bin" eval --model "$tmp/none.safetensors" 2>"$tmp/err.txt" >/dev/null; then echo "missing model accepted"; exit 1; fi
grep -q "none" "$tmp/err.txt" || { echo "error does not name the file"; exit 1; }
if "$bin" eval --model "$tmp/m.safetensors" --routing top-k:9 2>/dev/null >/dev/null; then echo "k=9 of 8 accepted"; exit 1; fi
echo "train/eval cli: ok"
