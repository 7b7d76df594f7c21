#!/usr/bin/env bash
# Installs dependencies, builds, and runs the main job on its embedded default:
# the MoE-layer benchmark on default shapes (H=1024, I=512, E=32, top-8; 1..512 tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh >&2
./build/deltamoe bench moe-layer "$@"
