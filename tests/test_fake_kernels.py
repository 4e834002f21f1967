"""The fake (meta) kernels of every fusedopt op registration: torch.ops.fusedopt.* (the compiled
ops, fakes in fusedopt/_ops.py) and torch.ops.fusedopt_triton.* (fusedopt/triton/__init__.py).

torch.compile traces a step through these kernels, so an output they put on another device than
the real op does (a CPU tensor for GPU inputs) is traced into the graph. Each op is run here on
`meta` tensors and on fake CUDA tensors (FakeTensorMode needs no GPU): every output must be on
the inputs' device, with the dtype and shape of the real op's; the mutating ops return nothing.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fusedopt import _opdefs
from fusedopt._ext import _C

NAMESPACES = []
if _C is not None:
    NAMESPACES.append("fusedopt")
if importlib.util.find_spec("triton") is not None:
    import fusedopt.triton  # noqa: F401  (registers torch.ops.fusedopt_triton)

    NAMESPACES.append("fusedopt_triton")

OPS = list(_opdefs.OPS)
# What each op returns: (dtype, shape) of its one output, or None.
OUTPUTS = {"sum_sq": (torch.float64, ())}
SHAPES = [(3,), (2, 5), ()]


def _args(schema, device: str) -> list:
    """Valid-looking arguments for every parameter of the schema, tensors on `device`."""
    args = []
    for a in schema.arguments:
        t = str(a.type)
        if t == "List[Tensor]":
            args.append([torch.empty(s, device=device) for s in SHAPES])
        elif t == "Tensor":
            args.append(torch.empty((), dtype=torch.float64, device=device))
        elif t.startswith("Optional["):
            args.append(None)
        elif t == "float":
            args.append(0.5)
        elif t == "bool":
            args.append(False)
        elif t == "int":
            args.append(0)
        else:
            raise AssertionError(f"{schema.name}: no test value for {a.name}: {t}")
    return args


def _run(ns: str, op: str, device: str):
    overload = getattr(getattr(torch.ops, ns), op).default
    args = _args(overload._schema, device)
    return overload(*args), args


def _check(ns: str, op: str, out, device: str) -> None:
    want = OUTPUTS.get(op)
    if want is None:
        assert out is None, f"{ns}::{op} returned {out!r}"
        return
    assert isinstance(out, torch.Tensor), f"{ns}::{op} returned {type(out)}"
    assert out.device == torch.device(device), (
        f"{ns}::{op}: output on {out.device}, inputs on {device}"
    )
    assert (out.dtype, tuple(out.shape)) == want, f"{ns}::{op}: {out.dtype} {list(out.shape)}"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("ns", NAMESPACES)
def test_fake_kernel_on_meta_tensors(ns, op):
    out, _ = _run(ns, op, "meta")
    _check(ns, op, out, "meta")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("ns", NAMESPACES)
def test_fake_kernel_on_fake_cuda_tensors(ns, op):
    with FakeTensorMode():
        out, _ = _run(ns, op, "cuda")
        _check(ns, op, out, "cuda:0")


def test_every_op_is_covered():
    """A new op in either namespace needs a row here (and its output in OUTPUTS)."""
    registered = torch._C._dispatch_get_all_op_names()
    for ns in NAMESPACES:
        names = {n.split("::")[1].split(".")[0] for n in registered if n.startswith(ns + "::")}
        assert names == set(OPS), f"{ns}: ops {names}, tested {OPS}"
