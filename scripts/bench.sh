#!/usr/bin/env bash
# Installs dependencies, builds, and runs the MoE-layer benchmark on default shapes
# (H=1024, I=512, E=32, top-8; 1, 16, 128, 512 tokens). Extra arguments go to
# `deltamoe bench moe-layer` (e.g. --dtype bf16, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh >&2
./build/deltamoe bench moe-layer "$@"
