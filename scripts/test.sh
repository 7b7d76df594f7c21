#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite (what CI runs).
#
# Always: the Release build (build/) and every test (ctest --preset default).
# Under CI=true, or DELTAMOE_TEST_SANITIZE=1 / DELTAMOE_TEST_FUZZ=1 for one of them:
#   sanitize  the `debug` preset (ASan + UBSan, build-debug/, benchmarks not built) and its unit
#             and fixed-seed fuzz tests (ctest -L 'unit|fuzz': every test binary; the CLI
#             scripts and the ISA-capped reruns stay Release-only, and so do the few tests in
#             $slow_under_asan, which take 15-40 s each unoptimised), UBSan fatal;
#   fuzz      scripts/fuzz.sh: every libFuzzer target for DELTAMOE_FUZZ_SECONDS (default 20),
#             one per core at a time.
# Phases run one after another; each prints its wall time; a failed phase does not stop the
# independent ones after it, and the script exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

extras=0
[ "${CI:-}" = "true" ] && extras=1
sanitize="${DELTAMOE_TEST_SANITIZE:-$extras}"
fuzz="${DELTAMOE_TEST_FUZZ:-$extras}"
fuzz_seconds="${DELTAMOE_FUZZ_SECONDS:-20}"
# Speed and load tests, or the slowest of a binary's tests, under ASan at -O0 (measured: 15-40 s
# each, a quarter of the phase); the rest of their binaries runs.
slow_under_asan='^(Tokenizer\.(SyntheticTokenizerAnyVocabSize|EncodesAMegabyteQuickly|ConcurrentEncodeEqualsSerial|FortunesTextIsTheGoldenOne)|SchedExact\.IlpEqualsBruteForce|SchedSp\.AutoAgreesWithTheIlpOnLargerSpGraphs)$'

failed=()
timings=()
# phase NAME COMMAND...: runs COMMAND, records its wall time and whether it failed.
phase() {
  local name="$1" start=$SECONDS rc=0
  shift
  echo "test.sh: == $name ==" >&2
  "$@" || rc=$?
  timings+=("$(printf '%-16s %4d s%s' "$name" $((SECONDS - start)) "$([ $rc -eq 0 ] || echo "  FAILED ($rc)")")")
  [ $rc -eq 0 ] || failed+=("$name")
  return $rc
}

phase install-deps bash scripts/install-deps.sh || exit 1
if phase release-build bash scripts/build.sh; then
  phase release-tests ctest --preset default
fi
if [ "$sanitize" = 1 ]; then
  if phase debug-build bash -c 'cmake --preset debug -DDELTAMOE_BUILD_BENCH=OFF >/dev/null &&
                                cmake --build --preset debug'; then
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
      phase sanitizer-tests ctest --preset debug -L 'unit|fuzz' -E "$slow_under_asan"
    # The same dist tests under mpirun (np 2, 4): Open MPI never frees some of its own
    # allocations (LeakSanitizer reports them inside libmpi), so leaks are checked only in the
    # one-process run above.
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=0 \
      phase sanitizer-mpi-tests ctest --preset debug -L dist
  fi
fi
if [ "$fuzz" = 1 ]; then
  DELTAMOE_FUZZ_JOBS="${DELTAMOE_FUZZ_JOBS:-$(nproc)}" phase fuzz bash scripts/fuzz.sh "$fuzz_seconds"
fi

echo "test.sh: phases (wall time):" >&2
printf '  %s\n' "${timings[@]}" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test.sh: all phases passed" >&2
