#!/usr/bin/env bash
# The build enforces the layering of docs/design.md: each layer's include path holds only its
# own headers and those of the layers below it, so an upward include does not compile. Probes
# each layer with a header from a layer above it (must fail) and one from below (must compile).
set -euo pipefail
bin="$1"
src="$2"
build=$(dirname "$bin")
layers="$build/layers"
[ -d "$layers" ] || { echo "no $layers: not a per-layer build"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cxx=${CXX:-c++}

# The include path a layer's sources get: its own folders and those of its dependencies.
declare -A deps=([core]="core" [kernels]="kernels core" [dist]="dist core"
                 [moe]="moe kernels dist core" [io]="io core"
                 [models]="models nn graph sched moe dist io kernels core")
flags() { for l in ${deps[$1]}; do printf -- '-I%s/%s/include -I%s/%s/src ' "$layers" "$l" "$layers" "$l"; done; }
probe() {  # layer header expect
  echo "#include \"$2\"" >"$tmp/probe.cpp"
  # shellcheck disable=SC2046
  if $cxx -std=c++20 -fsyntax-only $(flags "$1") $(pkg-config --cflags nlohmann_json 2>/dev/null) "$tmp/probe.cpp" 2>"$tmp/err.txt"; then
    got=ok
  else
    got=fail
  fi
  [ "$got" = "$3" ] || { echo "layer $1 including $2: expected $3, got $got"; cat "$tmp/err.txt"; exit 1; }
}
probe moe deltamoe/moe/routing.h ok
probe moe deltamoe/kernels/cpu.h ok
probe moe deltamoe/serve/model.h fail       # the queue runtime lives in serve/, above moe/
probe moe deltamoe/models/moe_classifier.h fail
probe kernels deltamoe/moe/routing.h fail
probe core deltamoe/kernels/cpu.h fail
probe io deltamoe/models/moe_classifier.h fail
probe models deltamoe/moe/moe_block.h ok
probe models deltamoe/serve/model.h fail
probe dist deltamoe/core/error.h ok
probe dist deltamoe/moe/moe_block.h fail    # the communicator knows nothing of MoE
probe moe deltamoe/dist/communicator.h ok   # expert parallelism uses it
echo "layering: 12 probes as expected"
