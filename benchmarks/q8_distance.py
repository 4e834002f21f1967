"""How far 8-bit AdamW states take the params from an fp32-state AdamW run, for fusedopt and the
peers installed (bitsandbytes' AdamW8bit, torchao's AdamW8bit): issue 15's accuracy evidence.

    python -m benchmarks.q8_distance [--steps 100] [--seeds 5]

The same params, grads and hyperparameters for every optimizer; the distance is the relative L2
norm of (params - fp32 AdamW's params) over all params after ``--steps`` steps, per seed. The
params are sized so that every one is quantized by all three: at least 4,096 elements (the
8-bit threshold of fusedopt and bitsandbytes) and a multiple of 256 (torchao keeps fp32 states
for any other size), plus two small ones that all keep in fp32.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from collections.abc import Callable

import torch

import fusedopt

SHAPES = [(96, 64), (8192,), (64, 80), (300,), (7, 3)]
HP = {"lr": 1e-3, "weight_decay": 0.1}


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in SHAPES]


def _run(make: Callable, seed: int, steps: int) -> list[torch.nn.Parameter]:
    params = _params(seed)
    opt = make(params)
    g = torch.Generator().manual_seed(1000 + seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * 0.01 + p.detach() * 0.1
        opt.step()
    return params


def _distance(params: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    num = sum(float((p - q).detach().double().square().sum()) for p, q in zip(params, ref))
    den = sum(float(q.detach().double().square().sum()) for q in ref)
    return (num / den) ** 0.5


def optimizers() -> dict[str, Callable | str]:
    out: dict[str, Callable | str] = {
        "fusedopt": lambda ps: fusedopt.AdamW(ps, **HP, state_dtype="int8_blockwise"),
    }
    if importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes as bnb

        out["bitsandbytes"] = lambda ps: bnb.optim.AdamW8bit(ps, **HP)
    else:
        out["bitsandbytes"] = "not installed"
    if importlib.util.find_spec("torchao") is not None:
        from torchao.optim import AdamW8bit

        out["torchao"] = lambda ps: AdamW8bit(ps, **HP)
    else:
        out["torchao"] = "not installed"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    opts = optimizers()
    dist: dict[str, list[float]] = {name: [] for name, make in opts.items() if callable(make)}
    for seed in range(args.seeds):
        ref = _run(lambda ps: torch.optim.AdamW(ps, **HP), seed, args.steps)
        for name in dist:
            dist[name].append(_distance(_run(opts[name], seed, args.steps), ref))
    print(f"relative L2 distance from fp32 AdamW after {args.steps} steps, {args.seeds} seeds")
    for name, make in opts.items():
        if not callable(make):
            print(f"  {name:13s} {make}")
            continue
        d = dist[name]
        cells = " ".join(f"{x * 100:.4f}%" for x in d)
        print(f"  {name:13s} mean {statistics.mean(d) * 100:.4f}%   per seed {cells}")


if __name__ == "__main__":
    main()
