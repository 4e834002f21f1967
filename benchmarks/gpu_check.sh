#!/usr/bin/env bash
# The GPU check (issue 13): one command, from the repo root, on a bare GPU machine with torch and
# Triton installed and no network. Builds the extension for the visible GPU, runs the GPU tests
# (most important first, each test and each group time-boxed), the register check, the GPU
# benchmark and compute-sanitizer, and writes everything under $OUT (else
# benchmarks/results/gpu/): gpu_check.log, junit-*.xml, gpu_bench.csv, registers.txt,
# sanitizer-*.txt and summary.txt (one screen: build, backends, pass/fail counts, bandwidth
# table), printed last so that a truncated log still ends with it.
#
#   benchmarks/gpu_check.sh              the whole check (BUDGET_S seconds in all, default 540)
#   benchmarks/gpu_check.sh --no-build   use the extension already built in the tree
#   benchmarks/gpu_check.sh --dry-run    without a GPU (CI): the same steps and files; the tests
#                                        of the first group run (and skip), the others are only
#                                        collected; the benchmark steps every row once on the
#                                        CPU (Triton interpreted), no timings; no build when
#                                        fusedopt._C imports
#
# Environment: OUT, BUDGET_S (540), TEST_TIMEOUT_S (per test, 90), MAX_JOBS (all cores),
# TORCH_CUDA_ARCH_LIST (default: the visible GPUs' architectures, native code only).
# Exit status: 0 when everything ran and passed, 1 otherwise (the summary says what failed).
set -uo pipefail
cd "$(dirname "$0")/.."

build=1 dry=0
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --dry-run) dry=1 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/junit-*.xml "$out"/collected-*.txt "$out"/sanitizer-*.txt "$out"/summary.txt
exec > >(tee "$out/gpu_check.log") 2>&1

py=python3
command -v "$py" >/dev/null || py=python
budget=${BUDGET_S:-540}
case "$budget" in '' | *[!0-9]*) budget=540 ;; esac
test_timeout=${TEST_TIMEOUT_S:-90}
case "$test_timeout" in '' | *[!0-9]* | 0) test_timeout=90 ;; esac
deadline=$((SECONDS + budget))
problems=()  # one line per failure: the check fails
notes=()     # one line per thing worth knowing that is not a failure

step() { echo; echo "== $* ($SECONDS s elapsed, $(left) s left)"; }
left() { local l=$((deadline - SECONDS)); ((l < 0)) && l=0; echo "$l"; }
# Seconds a step may take: at most CAP, leaving RESERVE for what follows; 0 (skip the step)
# when less than MIN (default 20) would be left, so no timeout is ever zero or negative.
slot() {
  local cap=$1 reserve=$2 min=${3:-20} t
  t=$(($(left) - reserve))
  ((t > cap)) && t=$cap
  ((t < min)) && t=0
  echo "$t"
}

if [ "$dry" = 1 ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
fi

step "environment"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total --format=csv,noheader
if ! command -v nvcc >/dev/null; then
  for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-13.0; do
    [ -n "$d" ] && [ -x "$d/bin/nvcc" ] && export PATH="$d/bin:$PATH" && break
  done
fi
$py - <<'EOF'
import os, shutil, sys, torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "not installed"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"triton {tv}, {os.cpu_count()} CPUs")
print(f"GPUs visible: {torch.cuda.device_count()}; nvcc: {shutil.which('nvcc') or 'not found'}")
EOF
gpus=$($py -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$gpus" = 0 ] && [ "$dry" = 0 ]; then
  echo "gpu_check: no GPU visible (--dry-run runs the script without one)" >&2
  exit 1
fi

build_s="-"
if [ "$build" = 1 ]; then
  step "build"
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  if [ "$dry" = 1 ] && $py -c "import fusedopt._C" 2>/dev/null; then
    echo "dry run: fusedopt._C imports; not rebuilding (a GPU run: FUSEDOPT_BUILD_CUDA=1" \
      "TORCH_CUDA_ARCH_LIST=<the GPU's> $py setup.py build_ext --inplace)"
  else
    if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && [ "$gpus" != 0 ]; then
      TORCH_CUDA_ARCH_LIST=$($py -c "import torch
caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
print(';'.join(f'{a}.{b}' for a, b in caps))")
      export TORCH_CUDA_ARCH_LIST
    fi
    [ "$dry" = 1 ] && export FUSEDOPT_BUILD_CUDA=0 || export FUSEDOPT_BUILD_CUDA=1
    echo "FUSEDOPT_BUILD_CUDA=$FUSEDOPT_BUILD_CUDA MAX_JOBS=$MAX_JOBS" \
      "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-(setup.py default)}"
    # Without ninja torch compiles one file at a time: minutes instead of one. A ninja binary
    # can travel with the working tree (untracked) as .tools/ninja.
    [ -x .tools/ninja ] && export PATH="$PWD/.tools:$PATH"
    if ! command -v ninja >/dev/null; then
      echo "gpu_check: !!! ninja not found: the build compiles one file at a time (slow) !!!"
      notes+=("no ninja: a serial build")
    fi
    t0=$SECONDS
    t=$(slot 360 60)
    if [ "$t" = 0 ] || ! timeout -k 10 "$t" $py setup.py build_ext --inplace >"$out/build.log" 2>&1; then
      tail -40 "$out/build.log"
      problems+=("BUILD FAILED after $((SECONDS - t0)) s (build.log)")
    fi
    build_s=$((SECONDS - t0))
    echo "build: $build_s s"
  fi
fi

step "backends"
$py - <<'EOF' | tee "$out/backends.txt"
import fusedopt
for name, info in fusedopt.backends().items():
    print(f"  {name:9s} {'yes' if info.available else 'NO ':3s} {info.reason}")
EOF
if [ "$dry" = 0 ]; then
  for b in cuda triton; do
    if ! $py -c "import fusedopt, sys; sys.exit(not fusedopt.backends()['$b'].available)"; then
      problems+=("BACKEND $b NOT AVAILABLE: $(grep "^  $b " "$out/backends.txt" | cut -c16-)")
      echo "gpu_check: !!! backend $b is not available: its tests will skip !!!"
    fi
  done
fi

step "registers (benchmarks/check_registers.py)"
$py -m benchmarks.check_registers >"$out/registers.txt" 2>&1
rc=$?
cat "$out/registers.txt"
if [ "$rc" = 1 ] || { [ "$rc" = 2 ] && [ "$dry" = 0 ]; }; then
  problems+=("REGISTERS: $(tail -1 "$out/registers.txt")")
fi

# The per-test time limit: pytest-timeout if installed, else benchmarks/pytest_deadline.py.
if $py -c "import pytest_timeout" 2>/dev/null; then
  per_test=(--timeout="$test_timeout")
else
  per_test=(-p benchmarks.pytest_deadline --deadline="$test_timeout")
fi
bench_reserve=170  # the benchmark (150) and the summary
# A module that fails to import costs its own tests, not the group's. test_bench.py imports
# fusedopt.benchmarks, which exists only in an installed package (setup.py package_dir), not in
# the in-place build this script makes.
collect=(--continue-on-collection-errors --ignore=tests/test_bench.py)

# run_tests NAME CAP RESERVE PYTEST_ARGS...: one group, its junit XML, its own time box. In a dry
# run only the first group runs (its tests skip without a GPU); the others are collected.
ran_first=0
run_tests() {
  local name=$1 cap=$2 reserve=$3 t rc
  shift 3
  step "tests: $name"
  if [ "$dry" = 1 ] && [ "$ran_first" = 1 ]; then
    $py -m pytest -q --co -p no:cacheprovider "${collect[@]}" "$@" 2>&1 | tail -1 |
      tee "$out/collected-$name.txt"
    grep -q error "$out/collected-$name.txt" && problems+=("TESTS $name: collection errors")
    return
  fi
  ran_first=1
  t=$(slot "$cap" "$reserve")
  if [ "$t" = 0 ]; then
    echo "skipped: out of time"
    problems+=("TESTS $name: not run, out of time")
    return
  fi
  # SIGINT at the time limit: pytest stops and still writes the junit XML of what ran.
  timeout -s INT -k 15 "$t" $py -m pytest -q -rfE -p no:cacheprovider "${collect[@]}" "${per_test[@]}" \
    --junitxml="$out/junit-$name.xml" "$@"
  rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    if [ "$name" = rest ]; then
      notes+=("tests $name: stopped at the time limit ($t s), the counts are of what ran")
    else
      problems+=("TESTS $name: stopped at the time limit ($t s), the counts are of what ran")
    fi
  elif [ "$rc" != 0 ] && [ "$rc" != 5 ]; then  # 5: nothing collected
    problems+=("TESTS $name: pytest exit status $rc")
  fi
}

# The core tests by name (the rest of tests/test_cuda.py runs after Triton's): the 8-bit ops'
# kernels (test_8bit_*) among them, the newest kernels never yet run on a GPU.
core=(test_backend_is_picked test_kernel_image_check_agrees_with_the_runtime
  test_cuda_kernels_match_cpu_kernels test_optimizers_cpu_equals_cuda
  test_reductions_repeat_bit_for_bit test_step_on_a_side_stream test_step_on_the_second_gpu
  test_many_tensors_and_empties test_grad_scaler_found_inf_on_device
  test_cuda_graph_replay_equals_eager test_8bit_kernels_match_reference
  test_8bit_edge_blocks_match_reference)
core_ids=() core_deselect=()
for t in "${core[@]}"; do
  core_ids+=("tests/test_cuda.py::$t")
  core_deselect+=(--deselect "tests/test_cuda.py::$t")
done
run_tests cuda-core 150 "$bench_reserve" "${core_ids[@]}"
run_tests triton 180 "$bench_reserve" -m triton tests/
run_tests cuda-rest 150 "$bench_reserve" tests/test_cuda.py "${core_deselect[@]}"

step "benchmark (benchmarks/gpu_bench.py)"
t=$(slot 150 20)
if [ "$t" = 0 ]; then
  problems+=("BENCHMARK: not run, out of time")
else
  mode=()
  [ "$dry" = 1 ] && mode=(--dry-run)
  within=$((t - 40))
  ((within < 10)) && within=10
  timeout -k 10 "$t" $py -m benchmarks.gpu_bench "${mode[@]}" --budget-s "$within" \
    --csv "$out/gpu_bench.csv" --table "$out/bench_table.txt"
  rc=$?
  [ "$rc" != 0 ] && problems+=("BENCHMARK: exit status $rc (errors in gpu_bench.csv)")
fi

step "compute-sanitizer"
san=""
for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
  /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-13.0/bin/compute-sanitizer; do
  [ -n "$c" ] && [ -x "$c" ] && san=$c && break
done
if [ "$dry" = 1 ]; then
  $py -m benchmarks.sanitize_kernels --dry-run | tail -1 | tee "$out/sanitizer-dry-run.txt"
elif [ -z "$san" ]; then
  echo "compute-sanitizer not found: skipped" | tee "$out/sanitizer-missing.txt"
else
  for tool in memcheck racecheck; do
    small=()
    [ "$tool" = racecheck ] && small=(--small)
    t=$(slot 90 15 30)
    if [ "$t" = 0 ]; then
      echo "$tool: not run, out of time" | tee "$out/sanitizer-$tool.txt"
      continue
    fi
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$t" "$san" --tool "$tool" --error-exitcode 99 \
      --print-limit 20 $py -m benchmarks.sanitize_kernels "${small[@]}" >"$out/sanitizer-$tool.txt" 2>&1
    rc=$?
    echo "$tool: exit status $rc, $(grep -c '^ran ' "$out/sanitizer-$tool.txt") calls checked;" \
      "$(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer-$tool.txt")"
    if [ "$rc" = 99 ] || { [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$rc" != 137 ]; }; then
      problems+=("SANITIZER $tool: exit status $rc (sanitizer-$tool.txt)")
    fi
  done
fi

# The rest of the suite (CPU tests, on this machine's torch) with whatever time is left.
run_tests rest 600 15 tests/ -m "not cuda and not triton" --ignore=tests/test_cuda.py

step "summary"
summary_args=("$out" "$dry" "$build_s" "${#problems[@]}" "${problems[@]}" "${notes[@]}")
$py - "${summary_args[@]}" <<'EOF' >"$out/summary.txt"
import glob, os, sys, xml.etree.ElementTree as ET
out, dry, build_s, n = sys.argv[1], sys.argv[2] == "1", sys.argv[3], int(sys.argv[4])
problems, notes = sys.argv[5 : 5 + n], sys.argv[5 + n :]
status = "FAIL" if problems else "PASS"
print(f"gpu_check {'(dry run) ' if dry else ''}{status}; build {build_s} s; files in {out}")
for line in problems:
    print(f"  !! {line}")
for line in notes:
    print(f"  note: {line}")
print("backends:")
print(open(os.path.join(out, "backends.txt")).read().rstrip())
regs = os.path.join(out, "registers.txt")
if os.path.exists(regs):
    lines = open(regs).read().splitlines()
    keep = [l.strip() for l in lines if l.startswith(("  sm_", "OK: ", "FAIL", "check_registers: no"))]
    print("registers: " + " | ".join(keep))
print(f"{'tests':10s} {'pass':>6s} {'fail':>5s} {'error':>5s} {'skip':>5s} {'time':>6s}")
failed = []
for path in sorted(glob.glob(os.path.join(out, "junit-*.xml")), key=os.path.getmtime):
    name = os.path.basename(path)[6:-4]
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        print(f"{name:10s} unreadable junit: {e}")
        continue
    suites = [root] if root.tag == "testsuite" else list(root)
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    secs = sum(float(s.get("time", 0)) for s in suites)
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    print(f"{name:10s} {passed:>6d} {n['failures']:>5d} {n['errors']:>5d} {n['skipped']:>5d} {secs:>5.0f}s")
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}")
for path in sorted(glob.glob(os.path.join(out, "collected-*.txt"))):
    print(f"{os.path.basename(path)[10:-4]:10s} (dry run) {open(path).read().strip()}")
if failed:
    print(f"failed ({len(failed)}): " + ", ".join(failed[:12]) + (" ..." if len(failed) > 12 else ""))
for path in sorted(glob.glob(os.path.join(out, "sanitizer-*.txt"))):
    text = open(path).read()
    lines = text.strip().splitlines()
    keep = [l for l in lines if "SUMMARY" in l or l.startswith("sanitize_kernels")]
    shown = " | ".join(keep[-2:]) if keep else (lines[-1] if lines else "empty")
    print(f"{os.path.basename(path)[:-4]}: {shown}")
table = os.path.join(out, "bench_table.txt")
if os.path.exists(table):
    print(open(table).read().rstrip())
else:
    print("benchmark: no table")
EOF
cat "$out/summary.txt"
[ ${#problems[@]} = 0 ]
