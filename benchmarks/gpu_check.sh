#!/usr/bin/env bash
# The GPU check (issue 5): on a machine with a GPU, torch preinstalled and no network, build the
# extension against that torch, run the `cuda` and `triton` tests, and print the benchmark table
# (benchmarks/gpu_bench.py). Sized to finish within 8 minutes on an H200 with 16 cores.
#
#   benchmarks/gpu_check.sh              the whole check
#   benchmarks/gpu_check.sh --no-build   use the extension already built
#   benchmarks/gpu_check.sh --quick      the benchmark at small sizes
#   benchmarks/gpu_check.sh --dry-run    without a GPU: every step that can run does (the build,
#                                        the tests' skip paths, the benchmark's row list)
#
# Environment: MAX_JOBS (default: all cores), TORCH_CUDA_ARCH_LIST (default: the visible GPU's
# architecture only, which builds about 3x faster than setup.py's default list), BUDGET_S (480).
set -uo pipefail
cd "$(dirname "$0")/.."

build=1 quick="" dry=0
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --quick) quick="--quick" ;;
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

budget=${BUDGET_S:-480}
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
step() { echo; echo "== $* ($((SECONDS - start)) s elapsed)"; }
status=0

step "environment"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python - <<'EOF'
import shutil, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs visible: {torch.cuda.device_count()}")
print(f"nvcc: {shutil.which('nvcc') or 'not on PATH'}")
EOF
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" = "0" ] && [ "$dry" = "0" ]; then
  echo "gpu_check: no GPU visible (use --dry-run to exercise the script without one)" >&2
  exit 1
fi

if [ "$build" = "1" ]; then
  step "build"
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && [ "$gpus" != "0" ]; then
    TORCH_CUDA_ARCH_LIST=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    export TORCH_CUDA_ARCH_LIST
  fi
  echo "MAX_JOBS=$MAX_JOBS TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-(setup.py default)}"
  t0=$SECONDS
  command -v ninja >/dev/null || python -c "import ninja" 2>/dev/null ||
    echo "gpu_check: ninja not found: torch compiles the extension one file at a time (slow)" >&2
  if ! timeout "$(left)" python -m pip install --no-build-isolation --no-deps --no-index -q -e .; then
    echo "gpu_check: the build failed" >&2
    exit 1
  fi
  echo "build: $((SECONDS - t0)) s"
fi
python - <<'EOF'
import fusedopt
for name, info in fusedopt.backends().items():
    print(f"  {name:9s} {'yes' if info.available else 'no ':3s} {info.reason}")
EOF

step "tests: -m 'cuda or triton'"
# The benchmark needs about 90 s: the tests get the rest of the budget.
if ! timeout $(($(left) - 90)) python -m pytest -q --maxfail=20 -m "cuda or triton" tests/ \
    -p no:cacheprovider; then
  echo "gpu_check: tests failed or ran out of time" >&2
  status=1
fi

step "benchmark"
if [ "$gpus" = "0" ]; then
  python -m benchmarks.gpu_bench --list $quick
  python -m benchmarks.gpu_bench $quick  # the no-GPU path
else
  timeout "$(left)" python -m benchmarks.gpu_bench $quick || status=1
fi

echo
echo "gpu_check: done in $((SECONDS - start)) s (status $status)"
exit $status
