#!/usr/bin/env bash
# CI, second test job: the whole test suite against the oldest torch fusedopt supports (the
# floor in pyproject.toml's `torch>=`) and the Triton that torch release pins, with a CPU-only
# build. Everything happens in a temporary folder (a fresh venv, a copy of the tree installed
# from there), so the main job's in-place build and its Python are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

floor=$(sed -n 's/^dependencies = \[.*"torch>=\([0-9.]*\)".*/\1/p' pyproject.toml)
if [[ -z "$floor" ]]; then
  echo "torch_floor: no torch>= floor found in pyproject.toml's dependencies" >&2
  exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fusedopt-torch-floor.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# The tree as committed plus what is new and not ignored (no built extension, no build/).
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mkdir "$tmp/src"
  git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$tmp/src"
else
  mkdir "$tmp/src"
  tar --exclude=.git --exclude='*.so' --exclude=build --exclude=__pycache__ -cf - . | tar -xf - -C "$tmp/src"
fi

python -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
# numpy < 2.4: Triton < 3.7's interpreter (the CPU tests' Triton) converts one-element arrays
# with int(), which NumPy 2.4 turned from a DeprecationWarning into a TypeError.
"$py" -m pip install -q -r requirements-dev.txt "torch==$floor.*" "numpy<2.4"
"$py" -c "import torch, triton; print('torch_floor: torch', torch.__version__, 'triton', triton.__version__)"
"$py" -c "import sys, torch; sys.exit(0 if torch.__version__.startswith('$floor.') else 1)" || {
  echo "torch_floor: expected torch $floor.*" >&2
  exit 1
}
echo "torch_floor: venv took $((SECONDS - start)) s"

# The README's install (editable: fusedopt.benchmarks is benchmarks/ only once installed), in
# the copy and into the venv.
cd "$tmp/src"
FUSEDOPT_BUILD_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" "$py" -m pip install -q --no-build-isolation -e .
echo "torch_floor: build took $((SECONDS - start)) s"
"$py" -m pytest -q -rs -n auto
echo "torch_floor: total $((SECONDS - start)) s"
