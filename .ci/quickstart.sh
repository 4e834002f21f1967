#!/usr/bin/env bash
# CI: the README's first command, exactly as written, in a fresh virtual environment and a fresh
# copy of this tree (its tracked and untracked, not ignored, files), run from that copy's root,
# where Python imports the tree's own fusedopt/. CPU-only build (FUSEDOPT_BUILD_CUDA=0) to save
# time; pip's cache makes the torch install local. Then: the compiled CPU kernels must load.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=$(awk '/^## Quickstart/ { q = 1 } q && /^```bash/ { getline; print; exit }' README.md)
[[ -n "$cmd" ]] || { echo "quickstart: no command under README's ## Quickstart" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - \
  | tar -xf - -C "$tmp/src"
python -m venv "$tmp/venv"
echo "quickstart: $cmd"
cd "$tmp/src"
# shellcheck disable=SC1091
source "$tmp/venv/bin/activate"
FUSEDOPT_BUILD_CUDA=0 bash -euo pipefail -c "$cmd"
python .ci/check_backends.py cpu
