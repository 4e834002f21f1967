"""Where a Muon step's time goes, on the GPT-like list's matrices (``gpt-2d``).

    PYTHONPATH=. python benchmarks/muon_breakdown.py [--threads 2] [--repeats 5] [--quick]

Times, interleaved round-robin (medians over the repeats): the whole step of fusedopt.Muon and
of torch.optim.Muon; fusedopt's parts (the fused momentum kernel; the Newton-Schulz iteration
on the bf16 stacks; the conversion of O and the fused update kernel); and the iteration alone
four ways: batched (one stack per shape, torch.bmm/baddbmm) or per matrix (torch.mm/addmm, as
torch.optim.Muon does it), each in bf16 (torch's) and fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import fusedopt
from fusedopt.optim.muon import NS_COEFFICIENTS, NS_STEPS, adjusted_lr_ratio, newton_schulz

from .workloads import workloads


def _per_matrix(xs: list[torch.Tensor]) -> None:
    """torch.optim.Muon's iteration, one matrix at a time (its _zeropower_via_newtonschulz)."""
    a, b, c = NS_COEFFICIENTS
    for x in xs:
        if x.size(0) > x.size(1):
            x = x.T
        x = x / x.norm().clamp(min=1e-7)
        for _ in range(NS_STEPS):
            gram = x @ x.T
            gram = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, gram, x, beta=a)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    w = workloads(quick=args.quick)["gpt-2d"]
    params, grads = w.make(0)
    ours = [q.clone() for q in params]
    theirs = [q.clone() for q in params]
    for a, b, g in zip(ours, theirs, grads):
        a.grad, b.grad = g.clone(), g.clone()
    opt = fusedopt.Muon(ours, lr=0.02)
    ref = torch.optim.Muon(theirs, lr=0.02)

    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, q in enumerate(params):
        shapes.setdefault(tuple(q.shape), []).append(i)
    stacks = {s: torch.stack([grads[i] for i in idx]).bfloat16() for s, idx in shapes.items()}
    singles = [g.bfloat16() for g in grads]
    bufs = [torch.zeros_like(g) for g in grads]
    updates = [torch.empty_like(g, dtype=torch.bfloat16) for g in grads]
    lr = torch.tensor(0.02, dtype=torch.float64)

    def momentum() -> None:
        torch.ops.fusedopt.muon_momentum_(bufs, grads, updates, 0.95, True, None, None)

    def ns(dtype: torch.dtype) -> Callable[[], None]:
        def run() -> None:
            for x in stacks.values():
                newton_schulz(x.to(dtype), NS_COEFFICIENTS, NS_STEPS, 1e-7)

        return run

    def ns_single(dtype: torch.dtype) -> Callable[[], None]:
        return lambda: _per_matrix([x.to(dtype) for x in singles])

    outs = {s: x.float() for s, x in stacks.items()}

    def apply() -> None:
        for s, idx in shapes.items():
            o = torch.empty(outs[s].shape, dtype=torch.float32).copy_(stacks[s])
            torch.ops.fusedopt.muon_(
                [ours[i].detach() for i in idx],
                list(o.unbind(0)),
                lr,
                0.1,
                adjusted_lr_ratio(None, s),
                None,
                None,
                None,
                None,
            )

    fns = {
        "fusedopt.Muon step": opt.step,
        "torch.optim.Muon step": ref.step,
        "  momentum kernel": momentum,
        "  NS bf16 batched (fusedopt)": ns(torch.bfloat16),
        "  O -> fp32 + update kernel": apply,
        "NS bf16 per matrix (torch)": ns_single(torch.bfloat16),
        "NS fp32 batched": ns(torch.float32),
        "NS fp32 per matrix": ns_single(torch.float32),
    }
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    print(f"{w.description}, {w.params / 1e6:.1f}M params, {args.threads} threads, "
          f"medians of {args.repeats}")  # fmt: skip
    for k, ts in times.items():
        print(f"{k:32s} {statistics.median(ts) * 1e3:9.1f} ms")


if __name__ == "__main__":
    main()
