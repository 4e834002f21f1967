#!/usr/bin/env bash
# Configure, build (2 jobs) and run the C++ unit tests with ctest, in cpp_tests/build/.
#   cpp_tests/run.sh                          # RelWithDebInfo (csrc/build.json flags, -g)
#   FUSEDOPT_SANITIZE=address cpp_tests/run.sh  # ASan build, in cpp_tests/build/sanitize-address/
#   FUSEDOPT_BUILD_TYPE=Release cpp_tests/run.sh  # no -g (CI: a third less compile time)
# Extra arguments go to ctest (e.g. -R ops).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sanitize="${FUSEDOPT_SANITIZE:-}"
build="$root/cpp_tests/build${sanitize:+/sanitize-${sanitize//,/-}}"
python="${PYTHON:-$(command -v python3 || command -v python)}"
jobs="${FUSEDOPT_JOBS:-2}"

cmake -S "$root" -B "$build" -G Ninja -DPython3_EXECUTABLE="$python" \
  -DFUSEDOPT_SANITIZE="$sanitize" ${FUSEDOPT_BUILD_TYPE:+-DCMAKE_BUILD_TYPE="$FUSEDOPT_BUILD_TYPE"}
cmake --build "$build" -j "$jobs"
env=()
if [[ "$sanitize" == *address* ]]; then
  # libtorch is not instrumented; its allocations at exit are not ours to report.
  env=(ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}")
fi
env "${env[@]}" ctest --test-dir "$build" --output-on-failure -j 1 "$@"
