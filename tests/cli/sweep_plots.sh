#!/usr/bin/env bash
# deltamoe sweep on a fresh install draws its plots (issue 18, item 7): a tiny sweep (1 seed,
# 1 epoch, 500 images) writes the report and every PNG python/plot_delta_moe.py promises.
# Skipped (exit 0 with a note) only when Fashion-MNIST is not installed.
set -euo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ ! -d /usr/share/datasets/fashion-mnist ]; then echo "sweep_plots: skipped (no Fashion-MNIST)"; exit 0; fi
"$bin" sweep --quick --seeds 1 --epochs 1 --max-train 500 --jobs 2 --out-dir "$tmp/out" \
  --work-dir "$tmp/work" >/dev/null 2>"$tmp/err.txt" || { cat "$tmp/err.txt"; echo "FAIL: sweep"; exit 1; }
if grep -q "plots skipped\|plotting failed" "$tmp/err.txt"; then cat "$tmp/err.txt"; echo "FAIL: no plots"; exit 1; fi
for png in delta-moe-e1 delta-moe-e2-load delta-moe-e2-class-expert delta-moe-e3-flops \
           delta-moe-e3-speed delta-moe-e3-k-by-class; do
  [ -s "$tmp/out/$png.png" ] || { echo "FAIL: $png.png not written"; ls "$tmp/out"; exit 1; }
  head -c 8 "$tmp/out/$png.png" | od -An -c | grep -q "P   N   G" || { echo "FAIL: $png.png is not a PNG"; exit 1; }
done
[ -s "$tmp/out/delta-moe.md" ] || { echo "FAIL: no report"; exit 1; }
echo "sweep_plots: ok"
