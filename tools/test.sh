#!/usr/bin/env bash
# Builds and tests kiln three ways — g++ Release (-Werror, -march=native, benchmarks built but
# not run), clang++ Release (-Werror) and g++ with AddressSanitizer + UBSan — and prints a
# summary. The last line reads "N passed, N failed"; the exit status is non-zero on any failure.
# Missing Debian packages are installed first (apt-get; sudo when not root).
set -uo pipefail
cd "$(dirname "$0")/.."

JOBS="${KILN_TEST_JOBS:-2}"
PACKAGES=(g++ clang cmake ninja-build pkg-config gzip doctest-dev libbenchmark-dev libopenblas-dev libeigen3-dev
          python3 python3-torch python3-numpy python3-scipy python3-nltk python3-torchvision python3-regex dataset-fashion-mnist fortunes)

log() { printf '\n==> %s\n' "$*"; }

source "tools/install-missing.sh"

deps_start=$SECONDS
if command -v dpkg >/dev/null 2>&1; then
  install_missing "${PACKAGES[@]}" || { echo "error: could not install the build dependencies" >&2; echo "0 passed, 1 failed"; exit 1; }
fi
CLANGXX="${KILN_CLANGXX:-clang++}"
for tool in cmake ninja g++ "$CLANGXX"; do
  command -v "$tool" >/dev/null 2>&1 || echo "warning: $tool not found" >&2
done
echo "compilers: $(g++ -dumpfullversion 2>/dev/null | sed 's/^/g++ /'), $CLANGXX $("$CLANGXX" -dumpversion 2>/dev/null)"

total_passed=0
total_failed=0
summary=()
timings=("$(printf '%-8s install   %4ds' deps $((SECONDS - deps_start)))")

# run_config <preset> [extra cmake -D arguments...]
run_config() {
  local preset="$1"; shift
  local dir="build/$preset" start=$SECONDS stage_start passed=0 failed=0 note=""
  log "[$preset] configure"
  stage_start=$SECONDS
  if ! cmake --preset "$preset" "$@"; then
    total_failed=$((total_failed + 1))
    summary+=("$(printf '%-8s configure FAILED' "$preset")")
    timings+=("$(printf '%-8s configure %4ds' "$preset" $((SECONDS - stage_start)))")
    return
  fi
  timings+=("$(printf '%-8s configure %4ds' "$preset" $((SECONDS - stage_start)))")

  log "[$preset] build"
  stage_start=$SECONDS
  # -k 0: keep going, so one broken file does not hide the state of the others.
  # shellcheck disable=SC2086 # BUILD_TARGETS is a list of words
  if cmake --build "$dir" -j"$JOBS" ${BUILD_TARGETS:+--target $BUILD_TARGETS} -- -k 0; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1)); note=" (build FAILED; see above)"
  fi
  timings+=("$(printf '%-8s build     %4ds' "$preset" $((SECONDS - stage_start)))")

  log "[$preset] test"
  stage_start=$SECONDS
  local out
  out="$(mktemp)"
  ctest --preset "$preset" --output-on-failure -j"$JOBS" --timeout 300 ${TEST_LABELS:+-L "$TEST_LABELS"} 2>&1 | tee "$out"
  # "100% tests passed, 0 tests failed out of 12"
  local line total tfailed
  line="$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$out" | tail -n 1)"
  if [ -n "$line" ]; then
    tfailed="$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")"
    total="$(sed -E 's/.* failed out of ([0-9]+).*/\1/' <<<"$line")"
    passed=$((passed + total - tfailed)); failed=$((failed + tfailed))
  elif grep -q 'No tests were found' "$out"; then
    note="$note (no tests found)"
  else
    failed=$((failed + 1)); note="$note (ctest did not finish)"
  fi
  rm -f "$out"
  timings+=("$(printf '%-8s test      %4ds' "$preset" $((SECONDS - stage_start)))")

  total_passed=$((total_passed + passed)); total_failed=$((total_failed + failed))
  summary+=("$(printf '%-8s %3d passed, %3d failed, %4ds%s' "$preset" "$passed" "$failed" $((SECONDS - start)) "$note")")
}

# Each configuration counts its build as one check plus one per CTest test.
# The release build compiles the tests, examples, tools and benchmarks with g++ -march=native: the
# tests at -O1, the examples, tools and benchmarks (built to check that they compile; kiln-eval is
# also run by a test on small inputs) at -O0, to keep the suite short
# (the presets and tools/demo.sh build at -O3); every header on its own is compiled by the clang++
# configuration.
run_config release -DKILN_BUILD_BENCHMARKS=ON -DKILN_HEADER_HYGIENE=OFF "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG" \
  -DKILN_EXTRA_PROGRAM_FLAGS=-O0
# clang++ checks every public header on its own and the umbrella header with -Wall -Wextra
# -Werror, the compile-fail wording and the README program (the unit tests are built by g++).
BUILD_TARGETS="kiln_header_hygiene kiln_hygiene_odr kiln_hygiene_readme hygiene_version" \
TEST_LABELS="hygiene|compile_fail" \
run_config clang -DKILN_BUILD_BENCHMARKS=OFF -DKILN_BUILD_EXAMPLES=OFF -DKILN_BUILD_TOOLS=OFF "-DCMAKE_CXX_COMPILER=$CLANGXX" \
  "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG"
# AddressSanitizer + UBSan at -O0 with line tables (-g1), over the tests of memory-handling code:
# tensors, views and expressions, the parsers and file formats, the data pipeline, the CPU kernels,
# the autograd graph, modules, optimizer state, the metrics (not the two that run whole networks)
# and the flow layers (the numerical tests of every
# op and model run in the release configuration).
TEST_LABELS="unit" \
run_config asan -DKILN_BUILD_BENCHMARKS=OFF -DKILN_BUILD_EXAMPLES=OFF -DKILN_BUILD_TOOLS=OFF \
  "-DCMAKE_CXX_FLAGS=-O0 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
  "-DCMAKE_CXX_FLAGS_DEBUG=-g1" \
  "-DKILN_TEST_FILTER=^(core|expr|io|data|backend|autograd)/|^metrics/(auroc|bleu|fid|inception_score|logger|perplexity|porter_stemmer|rouge)[.]cpp$|^optim/optimizer|^nn/module|^ops/(index|attention)|^models/flow"

log "timings"
printf '  %s\n' "${timings[@]}"
log "summary (per configuration: the build + every CTest test)"
printf '  %s\n' "${summary[@]}"
echo
echo "${total_passed} passed, ${total_failed} failed"
[ "$total_failed" -eq 0 ]
