#!/usr/bin/env bash
# Installs every Debian package deltamoe's build, tests and demos need. Idempotent.
set -euo pipefail
PKGS=(
  build-essential cmake pkg-config git
  libopenblas-dev          # BLAS (SGEMM baseline and large GEMMs)
  libcli11-dev             # CLI parsing
  nlohmann-json3-dev       # JSON (graphs, configs, safetensors headers)
  zlib1g-dev               # gzip (.json.gz graphs, IDX data)
  libgtest-dev libgmock-dev googletest  # tests
  libbenchmark-dev         # micro benchmarks
  libdnnl-dev              # oneDNN: the library baseline of bench moe-layer --onednn
  coinor-libcbc-dev        # exact ILP scheduler
  libboost-dev             # Boost.Graph max flow (header-only): the scheduler's step-cut bound
  libmicrohttpd-dev        # HTTP server (event-driven: deltamoe serve)
  libcpp-httplib-dev       # HTTP client (deltamoe loadgen --url, tests)
  libopenmpi-dev openmpi-bin  # MPI: mpirun -np N deltamoe ... --parallel ep (dist/)
  dataset-fashion-mnist    # training data (installs under /usr/share/datasets/fashion-mnist)
  libpcre2-dev libutf8proc-dev libsentencepiece-dev  # tokenizers: regexes, NFC, tokenizer.model
  fortunes fortunes-min    # English text for the tokenizer tests (/usr/share/games/fortunes)
  python3 python3-matplotlib  # sweep's plots (python/plot_delta_moe.py)
  python3-dev pybind11-dev    # the Python package deltamoe_sched (build/python)
  python3-venv             # tests/cli/serve_openai_client.sh: the openai client in a throwaway venv
  chromium                 # tests/cli/chat_page.sh: drives the chat page in headless Chromium
)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages already installed" >&2
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
