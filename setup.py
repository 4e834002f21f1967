"""Build fusedopt._C: the CPU kernels, the op registrations and (when possible) the CUDA kernels.

Switches (environment variables):
  FUSEDOPT_BUILD_CUDA=0/1  force the CUDA sources off/on. Default: on when the installed torch is a
                           CUDA build and nvcc is found -- a visible GPU is NOT required.
  CUDA_HOME                the CUDA toolkit; found from nvcc when unset (see _cuda_home below).
  FUSEDOPT_DEBUG=1         keep debug info (-g). Default: -g0 -- Python's own CFLAGS carry -g,
                           which made every object 15x larger and the build a third slower
                           (csrc/cuda/sim.cpp: 196 s with -g, 132 s with -g0, one core).
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

_GENERATED = os.path.join("csrc", "include", "fusedopt", "ops_generated.h")


def _cuda_home() -> str | None:
    """The real toolkit root. `nvcc` on PATH may be a wrapper script, so ask nvcc itself (TOP)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    )
    if nvcc is None:
        return None
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if "TOP=" in line:
            return os.path.normpath(line.split("TOP=", 1)[1].strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


# Why the CUDA part was left out, recorded in the build (fusedopt._C.cuda_skip_code) so that
# fusedopt.backends() can say so: 1 switched off, 2 CPU-only torch, 3 no CUDA toolkit.
NO_CUDA_SWITCH, NO_CUDA_TORCH, NO_CUDA_TOOLKIT = 1, 2, 3


def _want_cuda(torch) -> tuple[bool, int]:
    flag = os.environ.get("FUSEDOPT_BUILD_CUDA")
    if flag is not None:
        on = flag not in ("0", "", "false", "False")
        return on, 0 if on else NO_CUDA_SWITCH
    if torch.version.cuda is None:
        return False, NO_CUDA_TORCH
    if _cuda_home() is None:
        return False, NO_CUDA_TOOLKIT
    return True, 0


# Without TORCH_CUDA_ARCH_LIST and without a visible GPU: one native image per major
# architecture people use, since a cubin runs on every GPU of its major version with an equal or
# higher minor one (sm_80's on the 8.6/8.7/8.9 parts, sm_100's on 10.3, sm_120's on 12.1):
# Turing (T4), Ampere, Hopper, Blackwell data-centre and consumer parts; plus PTX of the newest,
# which later GPUs compile at first use. The kernels are memory-bound: a minor-version-specific
# image would buy nothing, and each image adds a compile pass to every .cu file.
COMMON_ARCHS = ("7.5", "8.0", "9.0", "10.0", "12.0")


def _nvcc_gpu_codes() -> set[str] | None:
    """The real architectures the toolkit's nvcc can target ("sm_75", ...), or None."""
    home = _cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    try:
        out = subprocess.run(
            [nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, TypeError, subprocess.SubprocessError):
        return None
    return {line.strip() for line in out.stdout.splitlines() if line.strip().startswith("sm_")}


def _default_arch_list(torch) -> str:
    """TORCH_CUDA_ARCH_LIST when unset: the visible GPUs' architectures (torch's convention for
    extensions), else COMMON_ARCHS as far as nvcc supports them; PTX of the highest."""
    codes = _nvcc_gpu_codes()

    def supported(arch: str) -> bool:
        return codes is None or "sm_" + arch.replace(".", "") in codes

    archs = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            arch = f"{major}.{minor}"
            if supported(arch) and arch not in archs:
                archs.append(arch)
    if not archs:
        archs = [a for a in COMMON_ARCHS if supported(a)] or list(COMMON_ARCHS)
    archs.sort(key=lambda a: tuple(int(x) for x in a.split(".")))
    return ";".join(archs) + "+PTX"


def _arch_record() -> str:
    """The images the build embeds, for fusedopt.backends() to tell whether a GPU has one
    (csrc/cuda/info.cu): torch's -gencode flags for TORCH_CUDA_ARCH_LIST as one identifier,
    e.g. sm75_sm80_sm90_ptx90 (nvcc splits -D values at commas, the shell at semicolons)."""
    from torch.utils import cpp_extension

    try:
        flags = cpp_extension._get_cuda_arch_flags()
    except Exception:  # a private helper: without it the record is empty, not the build broken
        return "unknown"
    images = []
    for flag in flags:
        m = re.search(r"arch=compute_(\w+),code=(sm|compute)_(\w+)", flag)
        if m:
            images.append(("sm" if m.group(2) == "sm" else "ptx") + m.group(3))
    return "_".join(images) or "unknown"


def _extensions():
    import torch

    build_cuda, skip_code = _want_cuda(torch)
    if build_cuda and not os.environ.get("CUDA_HOME"):
        home = _cuda_home()
        if home is None:
            raise RuntimeError("FUSEDOPT_BUILD_CUDA=1 but no CUDA toolkit (nvcc) was found")
        os.environ["CUDA_HOME"] = home  # read when cpp_extension is imported, just below
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    # The C++ side of the op registry (Note [op registry] in fusedopt/_opdefs.py), written
    # before anything compiles; run as a script: the package itself needs the extension.
    # With CUDA it also writes one translation unit of GPU kernels per op into the build folder.
    registry = [
        sys.executable,
        os.path.join(here, "fusedopt", "_opdefs.py"),
        "--header",
        _GENERATED,
    ]
    if build_cuda:
        registry += ["--cuda", os.path.join("build", "generated_cuda")]
    generated_cu = subprocess.run(registry, check=True, stdout=subprocess.PIPE, text=True).stdout
    generated_cu = [os.path.relpath(p) for p in generated_cu.split()]
    # The compile flags and source globs, shared with CMakeLists.txt (csrc/build.json).
    # csrc/cuda/*.cpp is host code, built either way: the CUDA ops' glue (registered only with
    # CUDA) and its host simulation, which the CPU test suite runs (csrc/cuda/sim.h).
    with open(os.path.join(here, "csrc", "build.json")) as f:
        build = json.load(f)
    sources = sorted(p for g in build["sources"] for p in glob.glob(g))
    # -ffp-contract=off: no fused multiply-adds, so the vectorized loop body and its scalar tail
    # round identically and a result does not depend on where the threads' ranges split (the
    # same bits on any thread count), and the op order matches torch's written order.
    # -fopenmp (not in build.json: CMake links torch's own OpenMP runtime): at::parallel_for is
    # a header template that runs serially unless the including translation unit is compiled
    # with OpenMP (torch's own build uses it; we link its runtime).
    cxx = [*build["cxx_flags"], "-fopenmp"]
    if os.environ.get("FUSEDOPT_DEBUG") != "1":
        cxx.append("-g0")  # after Python's CFLAGS (-g) on the command line, so it wins
    macros = [("FUSEDOPT_CUDA_SKIP_CODE", str(skip_code))]
    if build_cuda:
        sources += sorted(p for g in build["cuda_sources"] for p in glob.glob(g)) + generated_cu
        macros.append(("FUSEDOPT_WITH_CUDA", None))
        # --fmad=false: no contraction into fused multiply-adds, as -ffp-contract=off on the
        # CPU, so that the device runs the same roundings in the same order as the CPU kernels
        # and the host simulation: fp32 results equal bit for bit (tests/test_cuda.py), not a
        # sign flip of Lion's update apart near zero. The kernels are memory-bound: the few
        # extra FMUL/FADD do not show against memory time (benchmarks/gpu_bench.py reports each
        # row against a copy of the same bytes).
        nvcc = list(build["nvcc_flags"])
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = _default_arch_list(torch)
        nvcc.append(f"-DFUSEDOPT_CUDA_IMAGES={_arch_record()}")
        ext = CUDAExtension
        args = {"cxx": cxx, "nvcc": nvcc}
    else:
        ext = CppExtension
        args = {"cxx": cxx}
    include_dirs = [os.path.join(here, d) for d in build["include_dirs"]]
    return [
        ext(
            "fusedopt._C",
            sources,
            include_dirs=include_dirs,
            define_macros=macros,
            extra_compile_args=args,
            extra_link_args=["-fopenmp"],
        )
    ], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(
    # fusedopt.benchmarks is the top-level benchmarks/ folder (fusedopt/benchmarks/__init__.py
    # is only the source tree's pointer to it and is not installed).
    packages=find_packages(include=["fusedopt", "fusedopt.*"]),
    package_dir={"fusedopt.benchmarks": "benchmarks"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
