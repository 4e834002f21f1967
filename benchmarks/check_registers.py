"""Register use of the built CUDA kernels against the launch plan's assumption.

    python -m benchmarks.check_registers [LIBRARY]     # default: the in-tree fusedopt/_C*.so

The launch planner counts on kMinBlocksPerSm blocks of kBlockThreads threads resident per SM
(csrc/cuda/launch_plan.h); an SM has 65,536 registers, so every multi-tensor kernel must use at
most 65,536 / (kBlockThreads x kMinBlocksPerSm) of them per thread. The kernels carry that as
__launch_bounds__, which makes the compiler fit it, by spilling if it must: this reads the
registers and stack frames of every kernel from the library (`cuobjdump -res-usage`), per
architecture, fails if one uses more than the bound, and reports spills (a stack frame).

cuobjdump: $CUOBJDUMP, else $CUDA_HOME/bin, /usr/local/cuda/bin, PATH, else the copy bundled
with Triton (triton/backends/nvidia/bin). Exit status: 0 within bounds, 1 over, 2 nothing to
check (no cuobjdump, or a library without CUDA code: a CPU-only build).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTERS_PER_SM = 65536


@dataclass(frozen=True)
class Kernel:
    arch: str
    name: str  # mangled
    regs: int
    stack: int


def plan_bound(header: Path = ROOT / "csrc" / "cuda" / "launch_plan.h") -> tuple[int, int, int]:
    """(threads per block, blocks per SM, registers per thread allowed) from launch_plan.h."""
    text = header.read_text()
    threads = int(re.search(r"constexpr int kBlockThreads = (\d+);", text).group(1))
    blocks = int(re.search(r"constexpr int kMinBlocksPerSm = (\d+);", text).group(1))
    return threads, blocks, REGISTERS_PER_SM // (threads * blocks)


def find_cuobjdump() -> str | None:
    candidates = [os.environ.get("CUOBJDUMP")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(os.path.join(home, "bin", "cuobjdump"))
    candidates.append(shutil.which("cuobjdump"))
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin:
        candidates.append(
            os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump")
        )
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def parse_res_usage(text: str) -> list[Kernel]:
    """The kernels of `cuobjdump -res-usage` output: per ELF (arch = sm_XX), per function."""
    kernels = []
    arch = "?"
    name = None
    for line in text.splitlines():
        m = re.match(r"\s*arch = (\w+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"REG:(\d+)\s+STACK:(\d+)", line)
        if m and name is not None:
            kernels.append(Kernel(arch, name, int(m.group(1)), int(m.group(2))))
            name = None
    return kernels


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    lines = out.stdout.splitlines()
    return dict(zip(names, lines)) if len(lines) == len(names) else {n: n for n in names}


def short(demangled: str, width: int = 150) -> str:
    s = demangled.replace("fusedopt::cuda::", "").replace("c10::", "")
    s = re.sub(r"LaunchTable<(\d+), \d+>", r"Table<\1>", s)
    return s if len(s) <= width else s[: width - 3] + "..."


def default_library() -> str | None:
    found = sorted(glob.glob(str(ROOT / "fusedopt" / "_C*.so")))
    return found[0] if found else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.check_registers", description=__doc__)
    ap.add_argument("library", nargs="?", default=None, help="the built fusedopt/_C*.so")
    ap.add_argument("--all", action="store_true", help="list every kernel, not only the top")
    args = ap.parse_args(argv)
    lib = args.library or default_library()
    if lib is None or not os.path.exists(lib):
        print(f"check_registers: no library to check ({lib or 'fusedopt/_C*.so not built'})")
        return 2
    tool = find_cuobjdump()
    if tool is None:
        print("check_registers: no cuobjdump found (CUDA toolkit or Triton's bundled copy)")
        return 2
    out = subprocess.run([tool, "-res-usage", lib], capture_output=True, text=True)
    kernels = parse_res_usage(out.stdout)
    if not kernels:
        why = out.stderr.strip().splitlines()[-1:] or ["no device code"]
        print(f"check_registers: no CUDA kernels in {lib} ({why[0]}): a CPU-only build?")
        return 2
    threads, blocks, bound = plan_bound()
    names = demangle(sorted({k.name for k in kernels}))
    bounded = [k for k in kernels if "multi_tensor_kernel" in names[k.name]]
    over = [k for k in bounded if k.regs > bound]
    spills = [k for k in kernels if k.stack > 0]
    print(f"check_registers: {lib} ({tool})")
    print(
        f"launch plan: {blocks} blocks x {threads} threads per SM -> at most {bound} registers "
        "per thread for the multi-tensor kernels"
    )
    for arch in sorted({k.arch for k in kernels}):
        ks = [k for k in bounded if k.arch == arch]
        if not ks:
            continue
        n_over = sum(k.regs > bound for k in ks)
        n_spill = sum(k.stack > 0 for k in ks)
        print(
            f"  {arch}: {len(ks)} multi-tensor kernels, registers max {max(k.regs for k in ks)}, "
            f"median {sorted(k.regs for k in ks)[len(ks) // 2]}; {n_over} over {bound}; "
            f"{n_spill} with a stack frame (spills)"
        )
    top = sorted(kernels, key=lambda k: (-k.regs, -k.stack))
    shown = top if args.all else top[:8]
    print(f"{'arch':7s} {'REG':>4s} {'STACK':>5s}  kernel")
    for k in shown:
        print(f"{k.arch:7s} {k.regs:>4d} {k.stack:>5d}  {short(names[k.name])}")
    if spills:
        print(f"note: {len(spills)} kernels have a stack frame (register spills or local arrays)")
    if over:
        print(f"FAIL: {len(over)} multi-tensor kernels use more than {bound} registers")
        return 1
    print(f"OK: every multi-tensor kernel within {bound} registers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
