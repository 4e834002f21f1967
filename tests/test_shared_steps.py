"""A step counter shared by two params is rejected by every backend, before anything is written.

Each param's step counter is incremented once per step: one tensor named by two params would be
incremented twice, in an order that differs between backends (and on a GPU by racing threads),
so every op that takes ``state_steps`` refuses it, as it refuses a shared SR seed: the
reference, the CPU op, the CUDA op's host glue (through its simulation, fusedopt_sim) and Triton
(on the GPU, or in the interpreter without one).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fusedopt import _opdefs, reference
from fusedopt._ext import _C
from fusedopt.reference import quant

GPU = torch.cuda.is_available()

BACKENDS = [pytest.param("reference", id="reference")]
if _C is not None:
    BACKENDS += [pytest.param("cpu", id="cpu"), pytest.param("sim", id="cuda-sim")]
if importlib.util.find_spec("triton") is not None:
    BACKENDS.append(pytest.param("triton", id="triton", marks=pytest.mark.triton))

# every op that keeps per-param step counters
OPS = [n for n, d in _opdefs.OPS.items() if any(a.role == "step" for a in d.args)]
MESSAGE = r"state_steps\[2\] shares its memory with state_steps\[0\]: every param needs its own step counter"


def _device(backend: str) -> str:
    return "cuda" if backend == "triton" and GPU else "cpu"


def _op(backend: str, op: str):
    if backend == "reference":
        return getattr(reference, op)
    if backend == "cpu":
        return getattr(torch.ops.fusedopt, op)
    if backend == "sim":
        return getattr(torch.ops.fusedopt_sim, op)
    import fusedopt.triton as ft

    return getattr(ft, op)


def _args(op: str, device: str, steps: list[torch.Tensor]) -> list:
    """Positional arguments (the compiled ops' schema, optional ones included) for 3 params."""
    shapes = [(4,), (3, 2), (5,)]

    def ts(positive=False):
        return [
            (torch.rand(s) if positive else torch.randn(s)).to(device, torch.float32)
            for s in shapes
        ]

    p, g, m, v = ts(), ts(), ts(), ts(positive=True)
    lr = torch.tensor(1e-2, dtype=torch.float64, device=device)
    if op == "adam_":
        return [p, g, m, v, [], steps, lr, 0.9, 0.999, 0.1, 1e-8, False, False, True,
                None, None, None, None]  # fmt: skip
    if op == "adam8bit_":
        codes = [torch.zeros(s, dtype=torch.uint8, device=device) for s in shapes]
        absmax = [torch.zeros(1, device=device) for _ in shapes]
        qmaps = quant.QMAPS.to(device)
        return [p, g, codes, [c.clone() for c in codes], absmax, [a.clone() for a in absmax],
                steps, lr, 0.9, 0.999, 0.1, 1e-8, qmaps, False, True,
                None, None, None, None]  # fmt: skip
    if op == "lion_":
        return [p, g, m, steps, lr, 0.9, 0.99, 0.1, False, None, None, None, None]
    if op == "lion8bit_":
        codes = [torch.zeros(s, dtype=torch.uint8, device=device) for s in shapes]
        absmax = [torch.zeros(1, device=device) for _ in shapes]
        return [p, g, codes, absmax, steps, lr, 0.9, 0.99, 0.1, quant.QMAPS.to(device), False,
                None, None, None, None]  # fmt: skip
    if op == "lamb_":
        return [p, g, m, v, steps, lr, 0.9, 0.999, 0.01, 1e-6, True, None, False,
                None, None, None, None, None, 0, None]  # fmt: skip
    if op == "sophia_":
        return [p, g, m, v, steps, lr, 0.96, 0.04, 10.0, 0.1, False, None, None, None, None]
    if op == "adafactor_":
        rows = [torch.empty(0, device=device), torch.rand(3, 1, device=device)]
        cols = [torch.empty(0, device=device), torch.rand(1, 2, device=device)]
        var = [m[0].abs(), torch.empty(0, device=device), m[2].abs()]
        return [p, g, [rows[0], rows[1], rows[0]], [cols[0], cols[1], cols[0]], var, steps, lr,
                -0.8, 1e-30, 1e-3, 1.0, 0.1, False, None, None]  # fmt: skip
    raise AssertionError(op)


def _tensors(args) -> list[torch.Tensor]:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list):
            out.extend(a)
    return out


@pytest.mark.parametrize("shared", ["same-tensor", "view"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_step_counter_is_rejected_before_any_write(backend, op, shared):
    if op.endswith("8bit_") and backend in ("sim", "triton"):
        pytest.skip("no 8-bit kernel on this backend (tests/test_q8.py checks that it says so)")
    if backend == "cpu" and not _opdefs.OPS[op].cpu:
        pytest.skip("no CPU kernel: the optimizers run the reference (tests/test_q8_momentum.py)")
    device = _device(backend)
    fn = _op(backend, op)
    # a valid call first: caches (Triton) or plans nothing, and must still be accepted
    steps = [torch.tensor(float(i), device=device) for i in range(3)]
    fn(*_args(op, device, steps))
    assert [s.item() for s in steps] == [1.0, 2.0, 3.0]

    base = torch.tensor([5.0], device=device)
    other = base if shared == "same-tensor" else base.view(())  # another tensor, same memory
    args = _args(op, device, [base, torch.tensor(7.0, device=device), other])
    before = [t.clone() for t in _tensors(args)]
    with pytest.raises(RuntimeError, match=MESSAGE):
        fn(*args)
    for i, (a, b) in enumerate(zip(_tensors(args), before)):
        assert torch.equal(a, b), f"tensor {i} was written"
