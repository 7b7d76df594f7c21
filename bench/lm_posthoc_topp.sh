#!/usr/bin/env bash
# Post-hoc top-p on language models trained by train-lm (issue 15: what llama.cpp users do with
# expert_used_count, against a model trained for the budget): `deltamoe perplexity` of the
# fortunes validation split (io::load_fortunes' rule, documents joined by blank lines, windows
# of 64 tokens) for each model with its own routing, top-p at several P, and top-1.
# Prints one JSON object per line: model, routing, perplexity, experts per token.
#   bash bench/lm_posthoc_topp.sh build/deltamoe DIR...
set -euo pipefail
bin="$1"; shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 "$(dirname "$0")/../python/fortunes.py" validation "$tmp/val.txt"
for m in "$@"; do
  for r in "" top-p:0.3 top-p:0.4 top-p:0.5 top-p:0.6 top-p:0.7 top-k:1; do
    "$bin" perplexity --model "$m" --file "$tmp/val.txt" --context 64 ${r:+--routing "$r"} --json 2>/dev/null |
      python3 -c "import json,sys; j=json.load(sys.stdin); print(json.dumps({'model': '$m', 'routing': j['routing'], 'perplexity': round(j['perplexity'], 3), 'experts_per_token': round(j['mean_experts_per_token'], 4)}))"
  done
done
