"""`python -m fusedopt bench`: optimizer-step throughput against torch.optim and the memory bandwidth.

For each workload (workloads.py) and optimizer (optimizers.py), every implementation -- fusedopt's
CPU kernels and torch.optim's for-loop, foreach and fused versions -- steps its own copy of the
same params and grads. Reported per row: ms/step (median and p10/p90 over repeats), params/s,
achieved GB/s from the optimizer's bytes model, that as a fraction of the memory bandwidth
measured in the same run, and the speed relative to torch's fused implementation. The
``train-loop`` rows time a whole AMP iteration's optimizer side instead of one ``step()``
(GradScaler unscale + gradient clipping + AdamW + lr schedule; Note [train loop] in optimizers.py).

Note [timing honesty]
This host's memory bandwidth drifts (up to 1.7x over minutes), so no number is compared with one
taken at another time: within a workload, each repeat times every implementation once, plus one
pass of the bandwidth probe, in an order rotated by one each repeat; medians are taken over the
repeats. Every implementation is warmed up first (its first step allocates state). The bandwidth
probe is an in-place read-modify-write (``buf.mul_(c)``: 8 B/element, at torch's thread count)
over one fp32 buffer of 256 MiB, far beyond the last-level cache: an optimizer step is also
in-place read-modify-write, so this is the bandwidth it can reach. A copy (STREAM-style) is the
wrong yardstick: the read-for-ownership of each destination line is traffic it does not count,
so it reports less than the memory delivers and a fraction of it would flatter us. Grads are
random and non-zero (fixed seed), so no kernel takes a shortcut.
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import fusedopt

from .optimizers import (
    BASELINE,
    OPTIMIZERS,
    OptimizerSpec,
    available,
    implementations,
    peer_rows,
    peer_status,
)
from .workloads import DTYPE_NAMES, Workload, workloads

COLUMNS = [
    "timestamp", "run_id", "git_commit", "machine", "threads", "torch_version",
    "fusedopt_version", "workload", "dtype", "optimizer", "impl", "params", "tensors",
    "ms_median", "ms_p10", "ms_p90", "params_per_s", "bytes_per_param", "gb_per_s",
    "bandwidth_gb_per_s", "frac_bandwidth", "ratio_to_torch_fused", "bytes_is_estimate",
    "other_cpu_share",
]  # fmt: skip
_OPTIONAL = {"bytes_is_estimate", "other_cpu_share"}
_INT_COLUMNS = {"threads", "params", "tensors", "bytes_is_estimate"}
_FLOAT_COLUMNS = {
    "ms_median", "ms_p10", "ms_p90", "params_per_s", "bytes_per_param", "gb_per_s",
    "bandwidth_gb_per_s", "frac_bandwidth", "ratio_to_torch_fused", "other_cpu_share",
}  # fmt: skip

# Repeats per workload, sized for a default run of 1-2 minutes on an idle 2-core machine (3 when
# it is busy). A repeat of the 64Mi flat tensor costs ~0.5 s there, most of it torch's for-loop
# and foreach AdamW (~230 and ~170 ms: one pass over 256 MiB arrays per arithmetic op).
DEFAULT_REPEATS = {"flat": 7, "gpt": 11, "tiny": 21, "tiny-flat": 21, "gpt-bf16": 9, "gpt-2d": 5}
QUICK_REPEATS = 5
WARMUP_STEPS = 2
BANDWIDTH_ELEMENTS = 64 * 2**20  # 256 MiB of fp32, 8x the 32 MiB L3 of the reference machine
SEED = 0
# Share of the machine's CPU time taken by other processes above which a block is flagged.
BUSY_SHARE = 0.10


# -- environment ----------------------------------------------------------------------------------
def _repo_root() -> Path | None:
    """The source checkout this module runs from (an editable install), else None."""
    here = Path(__file__).resolve().parent
    root = here.parent
    if here.name == "benchmarks" and (root / ".git").exists() and (root / "setup.py").exists():
        return root
    return None


def _git_commit(root: Path | None) -> str:
    if root is None:
        return "unknown"
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _simd() -> str:
    from fusedopt._ext import _C

    return _C.cpu_capability() if _C is not None else "no-extension"


def environment() -> dict[str, Any]:
    """The columns every CSV row of this run shares."""
    return {
        "run_id": datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2),
        "git_commit": _git_commit(_repo_root()),
        "machine": f"{platform.system()}-{platform.machine()} / {_cpu_model()} / {_simd()}",
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "fusedopt_version": fusedopt.__version__,
    }


def default_csv(quick: bool) -> Path:
    """benchmarks/results/ in a source checkout, else the current directory. Quick runs (small
    sizes, not comparable) go to their own file."""
    name = "bench-quick.csv" if quick else "bench.csv"
    root = _repo_root()
    return root / "benchmarks" / "results" / name if root is not None else Path.cwd() / name


# -- progress -------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on a terminal; a line per group otherwise (logs, CI)."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def group(self, text: str) -> None:
        if not self.tty:
            print(f"bench: {text}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line that stays, above the progress bar on a terminal."""
        clear = "\r" + " " * 100 + "\r" if self.tty else ""
        print(f"{clear}bench: {text}", file=self.stream, flush=True)

    def advance(self, text: str, n: int = 1) -> None:
        self.done += n
        if self.tty:
            frac = self.done / self.total
            bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
            elapsed = time.perf_counter() - self.start
            line = f"\r[{bar}] {100 * frac:3.0f}% {elapsed:5.0f}s  {text}"
            print(f"{line:<100.100}", end="", file=self.stream, flush=True)

    def close(self) -> None:
        elapsed = time.perf_counter() - self.start
        if self.tty:
            print("\r" + " " * 100 + "\r", end="", file=self.stream)
        print(f"bench: done in {elapsed:.0f}s", file=self.stream, flush=True)


# -- measurement ----------------------------------------------------------------------------------
class CpuContention:
    """The share of the machine's CPU time that other processes (and the hypervisor: steal)
    took while a block was timed, from /proc/stat and this process's own CPU time. With 2
    threads on 2 cores, anything else running stalls every parallel region, so a block with a
    high share is not to be trusted. None where /proc/stat is missing."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy.
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick
        own = os.times()
        return time.perf_counter(), busy, own.user + own.system

    def other_share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = end[0] - self.start[0]
        other = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(0.0, other / (wall * (os.cpu_count() or 1))) if wall > 0 else None


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default."""
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_round_robin(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    progress: Progress,
    label: str,
    prepare: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each fn: each repeat calls every fn once, starting one further along
    each time, so drift and order effects fall on all of them alike (Note [timing honesty]).
    ``prepare[name]``, where given, runs untimed right before each call of ``fns[name]``."""
    names = list(fns)
    prepare = prepare or {}
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if name in prepare:
                prepare[name]()
            t0 = time.perf_counter_ns()
            fns[name]()
            samples[name].append((time.perf_counter_ns() - t0) / 1e9)
            progress.advance(f"{label} {name} repeat {r + 1}/{repeats}")
    return samples


BANDWIDTH = "bandwidth"


def _bandwidth_probe(buf: torch.Tensor) -> Callable[[], Any]:
    # 1 + 2^-23: the nearest fp32 above 1, so the values neither change appreciably nor become
    # subnormal over thousands of passes, and the multiply cannot be skipped.
    return lambda: buf.mul_(1.0000001)


def bench_group(
    w: Workload,
    spec: OptimizerSpec,
    repeats: int,
    buf: torch.Tensor,
    progress: Progress,
    env: dict[str, Any],
    peers: bool = False,
) -> list[dict[str, Any]]:
    """The rows of one optimizer on one workload, every implementation timed interleaved.

    An implementation that fails to build or to step (e.g. a dtype it does not support) is
    reported on stderr and left out; the others still run.
    """
    # torch's for-loop optimizers hold reference cycles: free the previous group's memory (over
    # 4 GiB for the flat workload) before allocating this one's.
    gc.collect()
    label = f"{w.name} {spec.name}"
    impls = {**implementations(spec), **peer_rows(spec, w.name, peers)}
    params, grads = w.make(SEED)
    fns: dict[str, Callable[[], Any]] = {}
    prepare: dict[str, Callable[[], Any]] = {}  # untimed, before each step (train-loop rows)
    setup: dict[str, float] = {}  # a peer's one-time JIT build or compile (Note [peers])
    for i, (name, factory) in enumerate(impls.items()):
        last = i == len(impls) - 1
        ps = params if last else w.copy(params)
        for p, g in zip(ps, grads if last else w.copy(grads)):
            p.grad = g
        try:
            opt = factory(ps)
            if getattr(opt, "setup_seconds", None) is not None:
                setup[name] = opt.setup_seconds
                progress.message(f"{label} {name}: set up in {opt.setup_seconds:.1f} s (untimed)")
            if spec.setup is not None:
                spec.setup(opt)
            prep = getattr(opt, "prepare", None)
            for _ in range(WARMUP_STEPS):
                if prep is not None:
                    prep()
                opt.step()
        except Exception as e:  # whatever the failure: report it and keep the other rows
            progress.message(f"{label} {name}: left out, {type(e).__name__}: {e}")
            continue
        finally:
            progress.advance(f"{label} {name} warm-up", WARMUP_STEPS)
        fns[name] = opt.step
        if prep is not None:
            prepare[name] = prep

    probe = _bandwidth_probe(buf)
    probe()
    fns[BANDWIDTH] = probe
    gc.collect()
    contention = CpuContention()
    samples = time_round_robin(fns, repeats, progress, label, prepare)
    other_cpu = contention.other_share()
    del fns, prepare

    bw = 8 * buf.numel() / statistics.median(samples.pop(BANDWIDTH)) / 1e9
    bpp = spec.bytes_model(w.dtype)
    base = statistics.median(samples[spec.baseline]) if spec.baseline in samples else None
    rows = []
    for name, ts in samples.items():
        med = statistics.median(ts)
        gbps = w.params * bpp / med / 1e9
        rows.append(
            {
                "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **env,
                "workload": w.name,
                "dtype": w.dtype_name,
                "optimizer": spec.name,
                "impl": name,
                "params": w.params,
                "tensors": w.tensors,
                "ms_median": med * 1e3,
                "ms_p10": percentile(ts, 10) * 1e3,
                "ms_p90": percentile(ts, 90) * 1e3,
                "params_per_s": w.params / med,
                "bytes_per_param": bpp,
                "gb_per_s": gbps,
                "bandwidth_gb_per_s": bw,
                "frac_bandwidth": gbps / bw,
                "ratio_to_torch_fused": base / med if base is not None else None,
                "bytes_is_estimate": int(spec.estimate),
                "other_cpu_share": other_cpu,
                "setup_s": setup.get(name),  # not a CSV column: noted under the table
            }
        )
    return rows


def run(
    selected: list[Workload],
    specs: list[OptimizerSpec],
    repeats: dict[str, int],
    env: dict[str, Any],
    peers: bool = False,
) -> list[dict[str, Any]]:
    groups = [(w, s) for s in specs for w in selected if w.name in s.workloads]
    total = sum(
        (len(implementations(s)) + len(peer_rows(s, w.name, peers)))
        * (WARMUP_STEPS + repeats[w.name])
        + repeats[w.name]
        for w, s in groups
    )
    progress = Progress(total)
    buf = torch.ones(BANDWIDTH_ELEMENTS, dtype=torch.float32)
    rows: list[dict[str, Any]] = []
    try:
        for i, (w, s) in enumerate(groups, 1):
            progress.group(
                f"[{i}/{len(groups)}] {s.name} on {w.name} ({w.description}, {w.dtype_name}, "
                f"{w.params / 1e6:.1f}M params): "
                f"{len(implementations(s)) + len(peer_rows(s, w.name, peers))} implementations x "
                f"{repeats[w.name]} repeats"
            )
            rows += bench_group(w, s, repeats[w.name], buf, progress, env, peers)
    finally:
        progress.close()
    return rows


# -- output ---------------------------------------------------------------------------------------
def _fmt_count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def format_table(rows: list[dict[str, Any]], peers: list[str] | None = None) -> str:
    """The human-readable table: one block per workload, the bandwidth measured alongside it.
    ``peers``: the lines of peers that have no rows (not installed, or not run)."""
    if not rows:
        return "(no rows)"
    env = rows[0]
    out = [
        f"fusedopt {env['fusedopt_version']} (commit {env['git_commit']}), torch "
        f"{env['torch_version']}, {env['threads']} threads, {env['machine']}, run {env['run_id']}",
        "",
    ]
    head = (
        f"{'workload':<9} {'dtype':<5} {'params':>7} {'tensors':>7}  {'optimizer':<10} "
        f"{'impl':<18} {'ms/step':>8} {'p10':>8} {'p90':>8} {'Mparam/s':>9} {'B/param':>7} "
        f"{'GB/s':>6} {'%bw':>5} {'vs fused':>8} {'bw GB/s':>7}"
    )
    out += [head, "-" * len(head)]
    last_group = None
    noisy = False
    for r in rows:
        group = (r["workload"], r["optimizer"])
        if group != last_group:
            if last_group is not None:
                out.append("")
            last_group = group
            share = r.get("other_cpu_share")
            if share is not None and share > BUSY_SHARE:
                noisy = True
                out.append(
                    f"(!) other processes took {100 * share:.0f}% of the CPUs while the next "
                    "block was timed: its numbers are not reliable"
                )
        ratio = r["ratio_to_torch_fused"]
        bpp = f"{'~' if r['bytes_is_estimate'] else ''}{r['bytes_per_param']:g}"
        out.append(
            f"{r['workload']:<9} {r['dtype']:<5} {_fmt_count(r['params']):>7} {r['tensors']:>7}  "
            f"{r['optimizer']:<10} {r['impl']:<18} {r['ms_median']:8.2f} {r['ms_p10']:8.2f} "
            f"{r['ms_p90']:8.2f} {r['params_per_s'] / 1e6:9.0f} {bpp:>7} "
            f"{r['gb_per_s']:6.1f} {100 * r['frac_bandwidth']:4.0f}% "
            f"{'' if ratio is None else f'{ratio:.2f}x':>8} {r['bandwidth_gb_per_s']:7.1f}"
        )
    bws = [r["bandwidth_gb_per_s"] for r in rows]
    out += [
        "",
        f"bw GB/s: memory bandwidth, in-place read-modify-write of {BANDWIDTH_ELEMENTS * 4 // 2**20}"
        f" MiB fp32 timed between the steps of each block (here {min(bws):.1f}-{max(bws):.1f}).",
        "GB/s = params x B/param (bytes model, ~ = estimate) / median ms; %bw = GB/s / bw GB/s.",
        f"vs fused = {BASELINE} ms / this ms (above 1.00x: faster than torch's fused). "
        "GB = 1e9 bytes.",
    ]
    out += _moved_notes(rows)
    out += [
        f"{s.name}: vs fused = {s.baseline} ms / this ms."
        for s in OPTIMIZERS
        if s.baseline != BASELINE and any(r["optimizer"] == s.name for r in rows)
    ]
    setups = [
        f"{r['impl']} on {r['workload']} {r['setup_s']:.1f} s" for r in rows if r.get("setup_s")
    ]
    if setups:
        out.append(
            "Setup before the warm-up, untimed (DeepSpeed's JIT build of its CPU op, "
            f"torch.compile's first step): {', '.join(setups)}."
        )
    if peers:
        out.append(f"Peers without rows: {'; '.join(peers)}.")
    out += _vs_torch_best(rows)
    if noisy:
        out.append(
            "(!) The machine was busy during this run (see the marked blocks): rerun on an idle "
            "machine before comparing."
        )
    return "\n".join(out)


def _blocks(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    blocks: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        blocks.setdefault((r["workload"], r["optimizer"]), []).append(r)
    return blocks


def _moved_notes(rows: list[dict[str, Any]]) -> list[str]:
    """For rows that move more than their bytes model by design (the train-loop rows, whose
    GradScaler and clip_grad_norm_ make passes of their own): what each one moves."""
    specs = {s.name: s for s in OPTIMIZERS}
    dtypes = {name: dtype for dtype, name in DTYPE_NAMES.items()}
    out = []
    for (workload, optimizer), block in _blocks(rows).items():
        spec = specs.get(optimizer)
        dtype = dtypes.get(block[0]["dtype"])
        moved = [
            f"{r['impl']} {spec.moved[r['impl']](dtype):g}"
            for r in block
            if spec is not None and dtype is not None and r["impl"] in spec.moved
        ]
        if moved:
            out.append(
                f"{optimizer} on {workload}: B/param is what the work needs "
                f"({block[0]['bytes_per_param']:g}); the rows move more, in B/param: "
                f"{', '.join(moved)} (benchmarks/optimizers.py, Note [train loop])."
            )
    return out


def _vs_torch_best(rows: list[dict[str, Any]]) -> list[str]:
    """Per block with a fusedopt row and torch rows: torch's fastest median / fusedopt's."""
    out = []
    for (workload, optimizer), block in _blocks(rows).items():
        ours = [r for r in block if r["impl"] in ("fusedopt", "fusedopt-reference")]
        torch_rows = [r for r in block if r["impl"].startswith("torch-")]
        if len(ours) != 1 or not torch_rows:
            continue
        best = min(torch_rows, key=lambda r: r["ms_median"])
        out.append(
            f"  {optimizer:<10} {workload:<9} {block[0]['dtype']:<5} "
            f"{best['ms_median'] / ours[0]['ms_median']:5.2f}x  ({ours[0]['impl']} "
            f"{ours[0]['ms_median']:.2f} ms, {best['impl']} {best['ms_median']:.2f} ms)"
        )
    if out:
        out.insert(0, "fusedopt vs torch's fastest row of each block, same run (its ms / ours):")
    return out


def check_csv(path: Path) -> str | None:
    """Why rows can't be appended to ``path`` (its columns differ), or None."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    if header != COLUMNS:
        return (
            f"{path} has other columns than this version writes (from an older version?); "
            "move it away or pass --csv NEW.csv"
        )
    return None


def append_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})


def read_last_run(path: Path) -> list[dict[str, Any]]:
    """The rows of the last run appended to ``path``, with numbers parsed. Columns added after
    the first version (bytes_is_estimate, other_cpu_share) may be missing."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or []) and c not in _OPTIONAL]
        if missing:
            raise ValueError(f"{path} is not a benchmark CSV: no column {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        return []
    last = rows[-1]["run_id"]
    out = []
    for r in rows:
        if r["run_id"] != last:
            continue
        parsed: dict[str, Any] = dict(r)
        for k in _INT_COLUMNS:
            parsed[k] = int(r.get(k) or 0)
        for k in _FLOAT_COLUMNS:
            parsed[k] = float(r[k]) if r.get(k) else None
        out.append(parsed)
    return out


# -- command line ---------------------------------------------------------------------------------
def _parser(names: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fusedopt bench",
        description="Optimizer-step throughput of fusedopt against torch.optim's for-loop, "
        "foreach and fused implementations, as achieved GB/s against the memory bandwidth "
        "measured in the same run. Prints a table and appends the rows to a CSV.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"small sizes, {QUICK_REPEATS} repeats (seconds; tests and CI)",
    )
    p.add_argument(
        "--repeats", type=int, metavar="N", help="timed steps per implementation (default: per "
        f"workload, {', '.join(f'{k} {v}' for k, v in DEFAULT_REPEATS.items())}; --quick {QUICK_REPEATS})",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=int, metavar="N", help="torch threads (default: torch's, here "
        f"{torch.get_num_threads()})",
    )  # fmt: skip
    p.add_argument(
        "--workloads", metavar="A,B", help=f"comma-separated subset of: {', '.join(names)}"
    )
    p.add_argument(
        "--optimizers", metavar="A,B", help="comma-separated subset of: "
        f"{', '.join(s.name for s in available())} (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--csv", type=Path, metavar="PATH", help="append rows here (default: "
        "benchmarks/results/bench.csv in a source checkout, else ./bench.csv; "
        "bench-quick.csv with --quick)",
    )  # fmt: skip
    p.add_argument("--no-csv", action="store_true", help="do not write the CSV")
    p.add_argument(
        "--peers", action="store_true", help="also run the peers that are slow to set up: "
        "DeepSpeed's CPU Adam and Lion (JIT-built on first use) and torch.compile'd torch.optim "
        "steps (compiled on the first step); lion-pytorch runs whenever it is installed",
    )  # fmt: skip
    p.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="bar chart of achieved GB/s per "
        "implementation and workload, with the measured bandwidth",
    )  # fmt: skip
    p.add_argument(
        "--plot-only", action="store_true", help="do not run: print and plot the last run in "
        "the CSV (plot to --plot, default: the CSV's name with .png)",
    )  # fmt: skip
    return p


def _split(arg: str | None, valid: list[str], what: str, p: argparse.ArgumentParser) -> list[str]:
    if arg is None:
        return valid
    chosen = [a.strip() for a in arg.split(",") if a.strip()]
    bad = [a for a in chosen if a not in valid]
    if bad or not chosen:
        named = ", ".join(map(repr, bad)) or repr(arg)
        p.error(f"unknown {what} {named}; choose from {', '.join(valid)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    names = list(workloads())
    p = _parser(names)
    try:
        args = p.parse_args(argv)
        if args.repeats is not None and args.repeats < 1:
            p.error(f"--repeats must be at least 1, got {args.repeats}")
        max_threads = 4 * (os.cpu_count() or 1)
        if args.threads is not None and not 1 <= args.threads <= max_threads:
            p.error(f"--threads must be between 1 and {max_threads}, got {args.threads}")
        if args.no_csv and (args.csv is not None or args.plot_only):
            p.error("--no-csv cannot be combined with --csv or --plot-only")
        if args.plot is not None and args.plot.suffix.lower() != ".png":
            p.error(f"--plot writes a PNG: give a FILE.png, got {str(args.plot)!r}")
        plotting = args.plot is not None or args.plot_only
        if plotting and importlib.util.find_spec("matplotlib") is None:
            p.error("--plot needs matplotlib: pip install matplotlib")
        chosen_w = _split(args.workloads, names, "workload", p)
        specs_by_name = {s.name: s for s in available()}
        chosen_o = _split(args.optimizers, list(specs_by_name), "optimizer", p)
        csv_path = None if args.no_csv else (args.csv or default_csv(args.quick))
        if args.plot_only and (csv_path is None or not csv_path.exists()):
            p.error(f"--plot-only: no CSV at {csv_path} to plot from (run the benchmark first)")
        if csv_path is not None and not args.plot_only and (why := check_csv(csv_path)):
            p.error(why)
    except SystemExit as e:  # argparse exits on bad arguments and --help; return its status
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 2

    if args.plot_only:
        try:
            rows = read_last_run(csv_path)
        except (ValueError, KeyError, csv.Error) as e:
            print(f"fusedopt bench: {e}", file=sys.stderr)
            return 1
        if not rows:
            print(f"fusedopt bench: {csv_path} has no rows", file=sys.stderr)
            return 1
        print(format_table(rows))
        _plot(rows, args.plot or csv_path.with_suffix(".png"))
        return 0

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    wl = workloads(quick=args.quick)
    selected = [wl[n] for n in chosen_w]
    specs = [specs_by_name[n] for n in chosen_o]
    if not any(w.name in s.workloads for w in selected for s in specs):
        runs_on = "; ".join(f"{s.name} on {', '.join(s.workloads)}" for s in specs)
        why = f"no chosen optimizer runs on the chosen workloads ({runs_on})"
        print(f"fusedopt bench: {why}", file=sys.stderr)
        return 2
    repeats = {
        n: args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS[n]) for n in names
    }
    rows = run(selected, specs, repeats, environment(), args.peers)
    print(format_table(rows, peer_status(args.peers)))
    if csv_path is not None:
        append_csv(csv_path, rows)
        print(f"appended {len(rows)} rows to {csv_path}", file=sys.stderr)
    if args.plot is not None:
        _plot(rows, args.plot)
    return 0


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    from .plot import plot

    plot(rows, path)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
