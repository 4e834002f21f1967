"""A small run of every CUDA kernel of fusedopt, for compute-sanitizer (benchmarks/gpu_check.sh):

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \\
        python -m benchmarks.sanitize_kernels
    compute-sanitizer --tool racecheck python -m benchmarks.sanitize_kernels

Every op mode of tests/test_cuda_planner.py's OP_CASES in fp32, bf16, fp16 and fp64, the mixed
precision modes (fp32 masters, stochastic rounding, bf16 states), LAMB's phases, Adafactor's
passes (on its matrices, batched matrices and vectors: adafactor_args), the 8-bit ops
(tests/test_cuda_q8.py's Q8_CASES, their odd sizes and edge blocks), sum_sq over mixed
dtypes, and a list longer than one launch holds, on tensors of a few hundred elements at odd
offsets (vector and scalar paths, chunk tails). Without the caching allocator every tensor is
its own allocation, so memcheck sees an access past a tensor's end. ``--dry-run`` lists the calls
(no GPU needed). Prints one line per call and "sanitize_kernels: N calls" at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_cuda_planner import (  # noqa: E402
    MIXED,
    NO_PARAMS,
    OP_CASES,
    _lamb,
    _with_phase,
    adafactor_args,
    build,
)
from test_cuda_q8 import Q8_CASES, grads_for, q8_args  # noqa: E402

import fusedopt  # noqa: E402, F401 - loads the ops
from fusedopt._opdefs import OPS  # noqa: E402


def cuda_args(args):
    """The op's arguments on the GPU, each tensor at its storage offset (misaligned stays so)."""
    out = []
    for a in args:
        if isinstance(a, list):
            moved = []
            for t in a:
                base = torch.zeros(
                    t.untyped_storage().nbytes() // t.element_size(), dtype=t.dtype, device="cuda"
                )
                moved.append(base.as_strided(t.size(), t.stride(), t.storage_offset()).copy_(t))
            out.append(moved)
        elif isinstance(a, torch.Tensor):
            out.append(a.cuda())
        else:
            out.append(a)
    return out


def calls(small: bool):
    """(label, op, arguments on the CPU). small: fp32 only, one mixed mode per op (racecheck,
    whose hazards are the shared-memory exchanges every kernel makes alike, is slow)."""
    kw = {"grad_scale": torch.tensor(8.0), "found_inf": torch.tensor([0.0])}
    dtypes = (
        [torch.float32] if small else [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    )
    for op, mode_kw in OP_CASES:
        for dtype in dtypes:
            yield f"{op} {mode_kw} {dtype}", op, build(op, dict(mode_kw, **kw), dtype)[0]
    first = {}
    for op, mode_kw in OP_CASES:
        first.setdefault(op, mode_kw)
    for op, mode_kw in first.items():
        if op in NO_PARAMS:  # no params: no master_params / sr_seeds
            continue
        for p in MIXED[:1] if small else MIXED:
            dtype, state_dtype, mode = p.values
            args = build(op, dict(mode_kw, **kw), dtype, state_dtype=state_dtype, mode=mode)[0]
            yield f"{op} {mode_kw} {p.id}", op, args
    for dtype in dtypes:  # matrices, batched ones, vectors, 0-d, empty and strided tensors
        yield f"adafactor_ {dtype}", "adafactor_", adafactor_args(dtype, **kw)
    split, _ = _lamb(
        torch.bfloat16, torch.float32, "sr", phase=1, sq_sums=torch.zeros(12, 2).double(), **kw
    )
    yield "lamb_ phase 1", "lamb_", split
    yield "lamb_ phase 2", "lamb_", _with_phase(split, 2)
    sizes = [(i * 37) % 300 if i % 7 else 0 for i in range(1200)]  # several launches
    for op in ("adam_", "lamb_"):
        yield f"{op} 1200 tensors", op, build(op, {}, torch.float32, "mixed", sizes)[0]
    for op, dtype, mode, kw in Q8_CASES[:1] + Q8_CASES[5:6] + Q8_CASES[8:9] if small else Q8_CASES:
        args = q8_args(op, dtype, mode, **kw, grad_scale=torch.tensor(8.0))
        grads = grads_for(args["params"], 0, edge=dtype == torch.float32)
        yield f"{op} {dtype} {mode} {kw}", op, list(OPS[op].bind(**args, grads=grads))
    yield "sum_sq mixed dtypes", "sum_sq", [[
        torch.randn(1000), torch.randn(77777, dtype=torch.bfloat16), torch.randn(3).double(),
        torch.randn(60, 50).t(), torch.randn(0),
    ]]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sanitize_kernels", description=__doc__)
    ap.add_argument("--dry-run", action="store_true", help="list the calls without a GPU")
    ap.add_argument("--small", action="store_true", help="fp32 and one mixed mode per op")
    args = ap.parse_args(argv)
    n = 0
    for label, op, cpu_args in calls(args.small):
        n += 1
        if args.dry_run:
            print(f"would run {label}")
            continue
        getattr(torch.ops.fusedopt, op)(*cuda_args(cpu_args))
        torch.cuda.synchronize()
        print(f"ran {label}", flush=True)
    print(f"sanitize_kernels: {n} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
