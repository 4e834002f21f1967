"""The GPU table of benchmarks/gpu_check.sh: one optimizer step of fusedopt's CUDA (and Triton)
kernels against torch.optim's fused and foreach AdamW, in achieved bytes/s and as a fraction of
the GPU's measured device-to-device copy bandwidth.

    python -m benchmarks.gpu_bench                # the table (about a minute on an H200)
    python -m benchmarks.gpu_bench --quick        # small sizes: a smoke test
    python -m benchmarks.gpu_bench --list         # the rows it would run, without a GPU

Note [GPU timing]
Each row steps its own params and state (grads are shared: no implementation writes them) and is
timed with CUDA events around each of `repeats` steps after `warmup` untimed steps; the median is
reported. Rows run one after another and free their memory before the next (the 1B-parameter
fp32 rows need 12 GB each), and the copy bandwidth is measured right before the rows, on the
same GPU: `dst.copy_(src)` over 2 GiB, counting 2 bytes moved per byte copied (read + write).
A copy is the bandwidth an optimizer step can reach with every array streamed once: the ratio
%copy is the scoreboard (issue 5's target: 90% for fp32 AdamW on one 1B-parameter tensor).
Bytes models: benchmarks/optimizers.py (Note [bytes models]).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

import fusedopt

from .optimizers import adamw_bytes, lion_bytes
from .workloads import gpt_shapes

COPY_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Workload:
    name: str
    shapes: list[tuple[int, ...]]
    dtype: torch.dtype

    @property
    def params(self) -> int:
        return sum(_numel(s) for s in self.shapes)


@dataclass(frozen=True)
class Row:
    workload: Workload
    optimizer: str  # "AdamW" or "Lion"
    impl: str  # "fusedopt-cuda", "fusedopt-triton", "torch-fused", "torch-foreach"
    repeats: int


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def workloads(quick: bool) -> list[Workload]:
    flat = 2**20 if quick else 1_000_000_000
    gpt = gpt_shapes(n_layer=2, d_model=128, vocab=2048, ctx=256) if quick else gpt_shapes()
    tiny = 100 if quick else 10_000
    return [
        Workload("flat-1B" if not quick else "flat-1M", [(flat,)], torch.float32),
        Workload("gpt", gpt, torch.float32),
        Workload(f"tiny-{tiny}", [(1024,)] * tiny, torch.float32),
        Workload("flat-1B-bf16" if not quick else "flat-1M-bf16", [(flat,)], torch.bfloat16),
        Workload("gpt-bf16", gpt, torch.bfloat16),
    ]


def rows(quick: bool, impls: list[str]) -> list[Row]:
    w = {x.name: x for x in workloads(quick)}
    names = list(w)
    reps = 5 if quick else 20
    out = []
    for name in names:
        for impl in impls:
            out.append(Row(w[name], "AdamW", impl, reps if "tiny" not in name else 2 * reps))
    lion_impls = [i for i in impls if i.startswith("fusedopt")]
    for name in (names[0], names[1]):  # Lion: fp32, one large tensor and the GPT list
        for impl in lion_impls:
            out.append(Row(w[name], "Lion", impl, reps))
    return out


BYTES = {"AdamW": adamw_bytes, "Lion": lion_bytes}


def make_optimizer(row: Row, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if row.optimizer == "Lion":
        backend = row.impl.removeprefix("fusedopt-")
        return fusedopt.Lion(params, lr=1e-4, weight_decay=0.1, backend=backend)
    kw = {"lr": 1e-3, "weight_decay": 0.1}
    if row.impl.startswith("fusedopt-"):
        return fusedopt.AdamW(params, backend=row.impl.removeprefix("fusedopt-"), **kw)
    if row.impl == "torch-fused":
        return torch.optim.AdamW(params, fused=True, **kw)
    return torch.optim.AdamW(params, foreach=True, **kw)


def copy_bandwidth(repeats: int = 20) -> float:
    """Device-to-device copy, bytes read + written per second (Note [GPU timing])."""
    src = torch.empty(COPY_BYTES // 4, device="cuda").normal_()
    dst = torch.empty_like(src)
    times = _time(lambda: dst.copy_(src), warmup=3, repeats=repeats)
    return 2 * COPY_BYTES / statistics.median(times)


def _time(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for s, e in zip(start, end):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in zip(start, end)]


def run_row(row: Row, grads: list[torch.Tensor]) -> float:
    """Median seconds per step."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = []
    for g in grads:
        p = torch.empty_like(g).normal_(0, 0.02, generator=gen).requires_grad_()
        p.grad = g
        params.append(p)
    opt = make_optimizer(row, params)
    times = _time(opt.step, warmup=3, repeats=row.repeats)
    del opt, params
    torch.cuda.empty_cache()
    return statistics.median(times)


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    ap.add_argument("--list", action="store_true", help="print the rows and exit (no GPU needed)")
    ap.add_argument(
        "--impls",
        default="fusedopt-cuda,fusedopt-triton,torch-fused,torch-foreach",
        help="comma-separated implementations (default: all available)",
    )
    ap.add_argument(
        "--csv",
        default=str(Path(__file__).resolve().parent / "results" / "gpu_bench.csv"),
        help="append the rows here ('' for none)",
    )
    args = ap.parse_args(argv)
    impls = [i for i in args.impls.split(",") if i]
    known = {"fusedopt-cuda", "fusedopt-triton", "torch-fused", "torch-foreach"}
    if set(impls) - known:
        ap.error(f"unknown implementations: {sorted(set(impls) - known)} (known: {sorted(known)})")
    if args.list:
        for r in rows(args.quick, impls):
            w = r.workload
            print(f"{w.name:14s} {w.params:>13,d} params {len(w.shapes):>6d} tensors "
                  f"{r.optimizer:6s} {r.impl}")  # fmt: skip
        return 0
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU is visible; nothing to measure", file=sys.stderr)
        return 0
    backends = fusedopt.backends()
    for impl in list(impls):
        if impl.startswith("fusedopt-") and not backends[impl.removeprefix("fusedopt-")].available:
            why = backends[impl.removeprefix("fusedopt-")].reason
            print(f"gpu_bench: skipping {impl}: {why}", file=sys.stderr)
            impls.remove(impl)
    t0 = time.time()
    name = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    torch.cuda.empty_cache()
    print(f"# {name}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"fusedopt {_commit()}; device-to-device copy: {bw / 1e9:.0f} GB/s")  # fmt: skip
    results: dict[tuple[str, str, str], float] = {}
    table = []
    for row in rows(args.quick, impls):
        w = row.workload
        gen = torch.Generator(device="cuda").manual_seed(1)
        grads = [torch.empty(s, device="cuda", dtype=w.dtype).normal_(0, 1e-2, generator=gen)
                 for s in w.shapes]  # fmt: skip
        secs = run_row(row, grads)
        del grads
        results[(w.name, row.optimizer, row.impl)] = secs
        table.append((row, secs))
        print(f"  {w.name} {row.optimizer} {row.impl}: {secs * 1e3:.3f} ms", file=sys.stderr)
    header = (f"{'workload':14s} {'dtype':5s} {'optimizer':9s} {'impl':16s} {'params':>13s} "
              f"{'tensors':>7s} {'ms/step':>9s} {'GB/s':>7s} {'%copy':>6s} {'vs fused':>8s} "
              f"{'vs foreach':>10s}")  # fmt: skip
    print(header)
    print("-" * len(header))
    csv_rows = []
    for row, secs in table:
        w = row.workload
        dtype = "bf16" if w.dtype == torch.bfloat16 else "fp32"
        gbs = w.params * BYTES[row.optimizer](w.dtype) / secs / 1e9
        fused = results.get((w.name, "AdamW", "torch-fused"))
        foreach = results.get((w.name, "AdamW", "torch-foreach"))
        vs_fused = f"{fused / secs:.2f}x" if fused and row.optimizer == "AdamW" else "-"
        vs_foreach = f"{foreach / secs:.2f}x" if foreach and row.optimizer == "AdamW" else "-"
        print(f"{w.name:14s} {dtype:5s} {row.optimizer:9s} {row.impl:16s} {w.params:>13,d} "
              f"{len(w.shapes):>7d} {secs * 1e3:>9.3f} {gbs:>7.0f} {gbs * 1e9 / bw:>6.1%} "
              f"{vs_fused:>8s} {vs_foreach:>10s}")  # fmt: skip
        csv_rows.append({
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _commit(), "gpu": name, "torch_version": torch.__version__,
            "workload": w.name, "dtype": dtype, "optimizer": row.optimizer, "impl": row.impl,
            "params": w.params, "tensors": len(w.shapes), "ms_median": secs * 1e3,
            "bytes_per_param": BYTES[row.optimizer](w.dtype), "gb_per_s": gbs,
            "copy_gb_per_s": bw / 1e9, "frac_copy": gbs * 1e9 / bw,
            "ratio_to_torch_fused": fused / secs if fused and row.optimizer == "AdamW" else "",
        })  # fmt: skip
    print(f"# {time.time() - t0:.0f} s; GB/s from the bytes model (AdamW 28 B/param fp32, "
          "14 B bf16; Lion 20 B fp32); vs fused/foreach: torch.optim.AdamW's time / this row's")  # fmt: skip
    if args.csv and not args.quick:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(csv_rows)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    sys.exit(main())
