"""CI: fail when a backend that should run on this machine does not.

Without this, a broken build passes CI quietly: the test files that need ``fusedopt._C`` (or
Triton) skip themselves, and the suite is green on the reference backend alone. Expected here:
  cpu     always (the compiled C++ kernels);
  cuda    compiled in when torch is a CUDA build, nvcc is found and FUSEDOPT_BUILD_CUDA is not 0
          (what setup.py builds by default); runnable only where a GPU is visible;
  triton  on a GPU, or on the CPU under TRITON_INTERPRET=1 (as the test suite runs it).
Prints every backend with its reason either way. Arguments name the backends to check (default:
all three), e.g. ``cpu`` alone after the README's first command, which installs no Triton of
its own.
"""

from __future__ import annotations

import os
import shutil
import sys

import torch

# The fusedopt that `python -m pytest` in the repository root imports: the source tree's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # as tests/conftest.py sets it

import fusedopt  # noqa: E402
from fusedopt._ext import _C  # noqa: E402


def _nvcc() -> bool:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return os.path.exists(os.path.join(home, "bin", "nvcc"))
    return shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")


def main(argv: list[str]) -> int:
    wanted = set(argv) or {"cpu", "cuda", "triton"}
    info = fusedopt.backends()
    for name, b in info.items():
        print(f"  {name:<9}  {'yes' if b.available else 'no '}  {b.reason}")
    problems = []
    if "cpu" in wanted and not info["cpu"].available:
        problems.append(f"cpu: {info['cpu'].reason}")
    flag = os.environ.get("FUSEDOPT_BUILD_CUDA")
    want_cuda = (
        "cuda" in wanted
        and torch.version.cuda is not None
        and _nvcc()
        and flag in (None, "1", "true", "True")
    )
    if want_cuda and not (_C is not None and _C.with_cuda):
        problems.append(f"cuda: torch is a CUDA build and nvcc is here, but {info['cuda'].reason}")
    if want_cuda and torch.cuda.is_available() and not info["cuda"].available:
        problems.append(f"cuda: a GPU is visible, but {info['cuda'].reason}")
    if "triton" in wanted and not info["triton"].available:
        problems.append(f"triton: {info['triton'].reason}")
    for p in problems:
        print(f"check_backends: missing backend, {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
