#!/usr/bin/env bash
# The main job on its embedded default: installs dependencies, builds, trains a delta-MoE
# classifier on Fashion-MNIST (per-expert thresholds, target 1.5 experts per sample) and a
# fixed top-2 baseline with the same seed, then evaluates both on the 10,000 test images.
# A few minutes on 2 cores. EPOCHS=12 is the full recipe of docs/training.md. Then makes a
# random-weight MoE language model and generates text from it (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh >&2
epochs="${EPOCHS:-5}"
dir="${DELTAMOE_DEMO_DIR:-out/demo}"
mkdir -p "$dir"
echo "demo: training fixed top-2 ($epochs epochs)..." >&2
./build/deltamoe train --routing top-k:2 --epochs "$epochs" --seed 1 --no-test \
  --out "$dir/top2.safetensors" >&2
echo "demo: training delta-MoE, threshold routing with K*=1.5 ($epochs epochs)..." >&2
./build/deltamoe train --routing threshold --target-k 1.5 --epochs "$epochs" --seed 1 --no-test \
  --out "$dir/threshold.safetensors" >&2
echo
echo "Fashion-MNIST test set (10,000 images), models in $dir:"
# Best of 3 timed passes each, so the samples/s of the two are comparable.
./build/deltamoe eval --model "$dir/top2.safetensors" --repeat 3
./build/deltamoe eval --model "$dir/threshold.safetensors" --repeat 3

# The language-model path, offline: a random-weight Mixtral-shaped checkpoint in Hugging Face
# layout (with a synthetic tokenizer), text from it with the model's own top-2 routing and
# with per-token top-p budgets (random weights give random text; the golden tests check the
# machinery against transformers).
echo
echo "MoE language model (random weights, Mixtral layout) in $dir/mixtral-small:"
./build/deltamoe make-model --arch mixtral --preset small --vocab 512 --out "$dir/mixtral-small" --force --quiet
./build/deltamoe generate --model "$dir/mixtral-small" --prompt "Once upon a time" -n 24 --temperature 0.8 --seed 1
./build/deltamoe generate --model "$dir/mixtral-small" --prompt "Once upon a time" -n 24 --temperature 0.8 --seed 1 \
  --routing top-p:0.6
