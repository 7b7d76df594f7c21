#!/usr/bin/env bash
# The main job on its embedded default: installs dependencies, builds, then trains a small MoE
# language model (Mixtral layout: 2 layers, 8 experts) on Debian's fortunes twice with the same
# seed and steps: fixed top-2 routing (the baseline), and delta-MoE top-p routing whose
# controller targets 1.5 experts per token. Prints each one's validation perplexity, experts
# per token and tokens/s, and text generated from the same prompt. About 5 minutes on 2 cores
# (STEPS=1500 per model; docs/llm-training.md).
# DEMO_CLASSIFIER=1 also runs the Fashion-MNIST classifier demo: a delta-MoE classifier with
# per-expert thresholds and a top-2 baseline, evaluated on the 10,000 test images (EPOCHS=5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh >&2
dir="${DELTAMOE_DEMO_DIR:-out/demo}"
steps="${STEPS:-1500}"
mkdir -p "$dir"
json_num() { sed -n "s/^  \"$2\": \([-0-9.e+]*\),\{0,1\}$/\1/p" "$1"; }

for r in top2 topp; do
  if [ "$r" = top2 ]; then routing=(--routing top-k:2); what="fixed top-2"
  else routing=(--routing top-p --target-k 1.5); what="delta-MoE top-p, target 1.5 experts/token"; fi
  echo "demo: training the MoE language model with $what ($steps steps)..." >&2
  ./build/deltamoe train-lm "${routing[@]}" --steps "$steps" --seed 1 --force --json \
    --out "$dir/lm-$r" >"$dir/lm-$r.json"
done

echo
echo "MoE language models trained on Debian's fortunes ($steps steps each), in $dir:"
printf '%-44s %12s %16s %18s\n' "routing" "val. ppl" "experts/token" "eval tokens/s"
for r in top2 topp; do
  f="$dir/lm-$r.json"
  if [ "$r" = top2 ]; then label="fixed top-2"; else label="top-p, target 1.5 (P per layer as trained)"; fi
  printf '%-44s %12.2f %16.3f %18.0f\n' "$label" \
    "$(json_num "$f" validation_perplexity)" "$(json_num "$f" validation_experts_per_token)" \
    "$(json_num "$f" validation_tokens_per_s)"
done
for r in top2 topp; do
  echo
  echo "--- $dir/lm-$r: \"Q: What is the meaning of life?\""
  ./build/deltamoe generate --model "$dir/lm-$r" --prompt $'Q: What is the meaning of life?\nA:' \
    -n 48 --temperature 0.7 --seed 1
done

if [ "${DEMO_CLASSIFIER:-0}" = 1 ]; then
  epochs="${EPOCHS:-5}"
  echo "demo: training fixed top-2 classifier ($epochs epochs)..." >&2
  ./build/deltamoe train --routing top-k:2 --epochs "$epochs" --seed 1 --no-test \
    --out "$dir/top2.safetensors" >&2
  echo "demo: training delta-MoE classifier, threshold routing with K*=1.5 ($epochs epochs)..." >&2
  ./build/deltamoe train --routing threshold --target-k 1.5 --epochs "$epochs" --seed 1 --no-test \
    --out "$dir/threshold.safetensors" >&2
  echo
  echo "Fashion-MNIST test set (10,000 images), models in $dir:"
  # Best of 3 timed passes each, so the samples/s of the two are comparable.
  ./build/deltamoe eval --model "$dir/top2.safetensors" --repeat 3
  ./build/deltamoe eval --model "$dir/threshold.safetensors" --repeat 3
fi
