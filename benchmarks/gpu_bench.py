"""The GPU benchmark of benchmarks/gpu_check.sh: one optimizer step of every fusedopt optimizer on
its CUDA and Triton kernels, next to torch.optim's fused implementation where torch has one, in
achieved GB/s and as a fraction of a device copy measured in the same run.

    python -m benchmarks.gpu_bench                  # the table (about two minutes on an H200)
    python -m benchmarks.gpu_bench --quick          # small sizes: a smoke test
    python -m benchmarks.gpu_bench --dry-run        # no GPU: every row once on the CPU (Triton
                                                    # interpreted), no timings; same files
    python -m benchmarks.gpu_bench --list           # the rows, without running anything

Note [GPU timing]
Rows come in blocks: one workload, dtype and optimizer, with every implementation (each
stepping its own params and state; the grads are shared, no implementation writes them) and a
copy probe. After two untimed warm-up steps (Triton compiles there), each of `repeats` rounds
times one call of every member of the block with CUDA events, in an order rotated every round,
so that clock or thermal drift falls on all alike; the median over the rounds is reported. The
probe is `dst.copy_(src)` over 1 GiB, counting 2 bytes moved per byte copied (read + write): a
stream of reads and writes like a step's, so %copy is how close a step comes to what this GPU
delivers to such a stream (issue 13's target: 85% for fp32 AdamW on `flat`). GB/s use the bytes
models of benchmarks/optimizers.py (the bytes the work needs; bf16 rows keep bf16 state).
The CUDA kernels are built with --fmad=false (setup.py): that their rows sit at the copy's
bandwidth, beside torch's fused kernels (built with contraction), is the measure of its cost.
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

from . import optimizers
from .workloads import gpt_shapes

RESULTS = Path(__file__).resolve().parent / "results" / "gpu"
COPY_BYTES = 2**30
IMPLS = ("fusedopt-cuda", "fusedopt-triton", "torch-fused")


@dataclass(frozen=True)
class Opt:
    name: str
    kwargs: dict
    bytes_per_param: Callable[[torch.dtype], float]
    torch_fused: Callable[..., torch.optim.Optimizer] | None


def _torch_fused(name: str | None) -> Callable[..., torch.optim.Optimizer] | None:
    if name is None:
        return None
    return lambda ps, **kw: getattr(torch.optim, name)(ps, fused=True, **kw)


# A row per optimizer of the CPU benchmark's list (benchmarks/optimizers.py), weight decay on,
# that runs on the GPT-like list (its 1-D tensors rule out Muon, whose row is on gpt-2d).
OPTIMIZERS = [
    Opt(s.name, {**s.kwargs, "weight_decay": 0.1}, s.bytes_model, _torch_fused(s.torch_name))
    for s in optimizers.OPTIMIZERS
    if s.rows is None and "gpt" in s.workloads
] + [
    # The widest kernels (a fifth array), which the two-blocks-per-SM register bound makes
    # spill (benchmarks/check_registers.py): whether that costs bandwidth shows here.
    Opt(
        "AdamW-amsgrad",
        {"lr": 1e-3, "weight_decay": 0.1, "amsgrad": True},
        lambda dtype: optimizers.adamw_bytes(dtype) * 9 / 7,  # + read and write max_exp_avg_sq
        _torch_fused("AdamW"),
    ),
]


@dataclass(frozen=True)
class Workload:
    name: str
    shapes: list[tuple[int, ...]]

    @property
    def params(self) -> int:
        n = 0
        for s in self.shapes:
            k = 1
            for d in s:
                k *= d
            n += k
        return n


def workloads(size: str) -> list[Workload]:
    """size: "full" (the GPU table), "quick" (a smoke test on a GPU), "dry" (the CPU dry run)."""
    if size == "full":
        # flat: 256Mi fp32 params, 1 GiB per array, far beyond any L2; gpt: GPT-2 small (124M
        # params, 148 tensors); tiny: per-tensor overhead.
        return [
            Workload("flat", [(2**28,)]),
            Workload("gpt", gpt_shapes(n_layer=12, d_model=768, vocab=50304, ctx=1024)),
            Workload("tiny", [(1024,)] * 2000),
        ]
    if size == "quick":
        return [
            Workload("flat", [(2**22,)]),
            Workload("gpt", gpt_shapes(n_layer=2, d_model=128, vocab=2048, ctx=256)),
            Workload("tiny", [(1024,)] * 200),
        ]
    return [
        Workload("flat", [(4099,)]),
        Workload("gpt", gpt_shapes(n_layer=1, d_model=16, vocab=64, ctx=16)),
        Workload("tiny", [(64,)] * 20),
    ]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Block:
    workload: Workload
    dtype: str
    opt: Opt

    def impls(self) -> list[str]:
        return [i for i in IMPLS if i != "torch-fused" or self.opt.torch_fused is not None]


def blocks(size: str) -> list[Block]:
    """In order of importance: AdamW first (fp32 flat is the headline), then the others."""
    out = []
    for opt in OPTIMIZERS:
        for dtype in DTYPES:
            for w in workloads(size):
                out.append(Block(w, dtype, opt))
    return out


def make(impl: str, opt: Opt, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if impl == "torch-fused":
        return opt.torch_fused(params, **opt.kwargs)
    cls = getattr(fusedopt, opt.name.split("-")[0])
    o = cls(params, backend=impl.removeprefix("fusedopt-"), **opt.kwargs)
    if isinstance(o, fusedopt.ScheduleFreeAdamW):
        o.train()  # it steps only in train mode
    return o


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_calls(fns: dict[str, Callable[[], object]], repeats: int, timed: bool) -> dict:
    """Seconds per call of each fn: `repeats` rounds, each calling every fn once, in an order
    rotated every round (Note [GPU timing]); without `timed` (the dry run) each runs once."""
    names = list(fns)
    if not timed:
        for n in names:
            fns[n]()
        return {n: [] for n in names}
    times: dict[str, list] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fns[n]()
            end.record()
            times[n].append((start, end))
    torch.cuda.synchronize()
    return {n: [s.elapsed_time(e) / 1e3 for s, e in ts] for n, ts in times.items()}


def run_block(
    block: Block, device: str, repeats: int, timed: bool, probe, available: dict[str, str]
) -> list[dict]:
    dtype = DTYPES[block.dtype]
    gen = torch.Generator(device=device).manual_seed(0)
    grads = [
        torch.empty(s, device=device, dtype=dtype).normal_(0, 1e-2, generator=gen)
        for s in block.workload.shapes
    ]
    rows, fns, opts = [], {}, {}
    for impl in block.impls():
        row = {"impl": impl, "status": "ok"}
        rows.append(row)
        if impl in available:
            row["status"] = f"skipped: {available[impl]}"
            continue
        try:
            params = []
            for g in grads:
                p = torch.empty_like(g).normal_(0, 0.02, generator=gen).requires_grad_()
                p.grad = g
                params.append(p)
            o = make(impl, block.opt, params)
            for _ in range(2 if timed else 1):  # warm-up: state, plans, Triton compiles
                o.step()
            _sync(device)
            opts[impl] = (o, params)
            fns[impl] = o.step
        except Exception as e:  # noqa: BLE001 - a row's failure is a result, the rest still run
            row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    if probe is not None:
        fns["copy"] = probe
    try:
        times = time_calls(fns, repeats, timed)
    except Exception as e:  # noqa: BLE001
        for row in rows:
            if row["status"] == "ok":
                row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        times = {}
    copy_s = statistics.median(times["copy"]) if times.get("copy") else None
    n = block.workload.params
    bpp = block.opt.bytes_per_param(dtype)
    for row in rows:
        ts = times.get(row["impl"])
        row.update(
            workload=block.workload.name,
            dtype=block.dtype,
            optimizer=block.opt.name,
            params=n,
            tensors=len(block.workload.shapes),
            bytes_per_param=bpp,
        )
        if row["status"] == "ok" and ts:
            med = statistics.median(ts)
            q = statistics.quantiles(ts, n=10) if len(ts) > 1 else [med] * 9
            row.update(ms_median=med * 1e3, ms_p10=q[0] * 1e3, ms_p90=q[-1] * 1e3)
            row["gb_per_s"] = n * bpp / med / 1e9
            if copy_s:
                copy_gbs = 2 * COPY_BYTES / copy_s / 1e9
                row["copy_gb_per_s"] = copy_gbs
                row["frac_copy"] = row["gb_per_s"] / copy_gbs
    fused = next((r for r in rows if r["impl"] == "torch-fused" and "ms_median" in r), None)
    for row in rows:
        if fused and "ms_median" in row:
            row["vs_torch_fused"] = fused["ms_median"] / row["ms_median"]
    del opts, fns, grads
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent.parent), "describe", "--always"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


COLUMNS = [
    "timestamp", "git_commit", "device", "torch_version", "workload", "dtype", "optimizer",
    "impl", "params", "tensors", "ms_median", "ms_p10", "ms_p90", "bytes_per_param", "gb_per_s",
    "copy_gb_per_s", "frac_copy", "vs_torch_fused", "status",
]  # fmt: skip


def table(rows: list[dict], header: str) -> str:
    """One line per block: each implementation's ms/step and fraction of the copy."""
    lines = [header]
    cols = "".join(f" {i.removeprefix('fusedopt-'):>18s}" for i in IMPLS)
    lines.append(f"{'workload':8s} {'dtype':5s} {'optimizer':13s}{cols}   (ms/step  %copy)")
    seen: dict[tuple, dict] = {}
    for r in rows:
        seen.setdefault((r["workload"], r["dtype"], r["optimizer"]), {})[r["impl"]] = r
    for (w, d, o), by_impl in seen.items():
        cells = []
        for impl in IMPLS:
            r = by_impl.get(impl)
            if r is None:
                cells.append(f" {'-':>18s}")
            elif "ms_median" in r:
                frac = f"{r['frac_copy']:6.1%}" if "frac_copy" in r else "     ?"
                cells.append(f" {r['ms_median']:10.3f} {frac:>7s}")
            else:
                cells.append(f" {r['status'].split(':')[0]:>18s}")
        lines.append(f"{w:8s} {d:5s} {o:13s}{''.join(cells)}")
    errors = [r for r in rows if r["status"].startswith("error")]
    for r in errors[:5]:
        lines.append(f"  {r['workload']} {r['dtype']} {r['optimizer']} {r['impl']}: {r['status']}")
    if len(errors) > 5:
        lines.append(f"  ... {len(errors) - 5} more errors (CSV)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench", description=__doc__)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    mode.add_argument("--dry-run", action="store_true", help="no GPU: CPU, no timings")
    ap.add_argument("--list", action="store_true", help="print the blocks and exit")
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds per block")
    ap.add_argument("--budget-s", type=float, default=0, help="start no block after this (0: none)")
    ap.add_argument("--csv", default=str(RESULTS / "gpu_bench.csv"), help="write rows here")
    ap.add_argument("--table", default="", help="also write the table to this file")
    args = ap.parse_args(argv)
    size = "dry" if args.dry_run else ("quick" if args.quick else "full")
    if args.dry_run:  # before fusedopt.triton is first imported: its kernels are decorated then
        os.environ.setdefault("TRITON_INTERPRET", "1")
    todo = blocks(size)
    if args.list:
        for b in todo:
            print(f"{b.workload.name:6s} {b.workload.params:>12,d} params "
                  f"{len(b.workload.shapes):>5d} tensors {b.dtype} {b.opt.name:7s} "
                  f"{', '.join(b.impls())}")  # fmt: skip
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU is visible (--dry-run runs without one)", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    backends = fusedopt.backends()
    unavailable = {}
    for impl in IMPLS:
        if impl.startswith("fusedopt-"):
            info = backends[impl.removeprefix("fusedopt-")]
            if not info.available:
                unavailable[impl] = info.reason
    probe = None
    if not args.dry_run:
        src = torch.empty(COPY_BYTES // 4, device="cuda").normal_()
        dst = torch.empty_like(src)
        probe = lambda: dst.copy_(src)  # noqa: E731
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run: no timings)"
    header = (f"# {name}, torch {torch.__version__} (CUDA {torch.version.cuda}), fusedopt "
              f"{_commit()}; ms/step and % of a device copy measured alongside (Note [GPU timing])")  # fmt: skip
    t0 = time.time()
    rows: list[dict] = []
    for b in todo:
        if args.budget_s and time.time() - t0 > args.budget_s:
            for impl in b.impls():
                rows.append({"workload": b.workload.name, "dtype": b.dtype,
                             "optimizer": b.opt.name, "impl": impl,
                             "status": "not run: out of time"})  # fmt: skip
            continue
        got = run_block(b, device, args.repeats, not args.dry_run, probe, unavailable)
        for r in got:
            ms = f"{r['ms_median']:.3f} ms" if "ms_median" in r else r["status"]
            print(f"  {b.workload.name} {b.dtype} {b.opt.name} {r['impl']}: {ms}", file=sys.stderr)
        rows += got
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for r in rows:
        r.update(
            timestamp=stamp, git_commit=_commit(), device=name, torch_version=torch.__version__
        )
    text = table(rows, header) + f"\n# {time.time() - t0:.0f} s"
    print(text)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(text + "\n")
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    failed = [r for r in rows if r["status"].startswith("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    sys.exit(main())
