#!/usr/bin/env bash
# Quick start, command 2: installs the Debian packages, builds facteur, and runs the whole test
# suite (unit, fuzz replay, integration against the real binary), then builds again with
# AddressSanitizer + UndefinedBehaviorSanitizer and runs the whole suite once more.
# FACTEUR_TEST_SANITIZERS=0 skips the sanitizer pass (for a quicker local run).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"
bash deploy/setup.sh

echo "== build (RelWithDebInfo)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
echo "== tests"
ctest --test-dir build --output-on-failure -j"$jobs" --timeout 300

if [[ "${FACTEUR_TEST_SANITIZERS:-1}" != 0 ]]; then
  echo "== build (ASan + UBSan)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" \
        -DFACTEUR_SANITIZE=ON >/dev/null
  cmake --build build-asan -j"$jobs"
  echo "== tests under ASan + UBSan"
  export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:strict_string_checks=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  ctest --test-dir build-asan --output-on-failure -j"$jobs" --timeout 600
fi
