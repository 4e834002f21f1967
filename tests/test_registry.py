"""The op registry (fusedopt/_opdefs.py) against what is still written by hand or registered
elsewhere: the reference functions (the specification), the registered schemas of
``torch.ops.fusedopt`` and ``torch.ops.fusedopt_triton``, and that every op has all its backends
and a fake kernel.

Each check is a function returning its problems; the ``*_catches_*`` tests feed it a deliberately
broken input, so a check that stopped looking would fail here too.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch._library.simple_registry import singleton

from fusedopt import _dispatch, _ops, reference
from fusedopt._ext import _C
from fusedopt._opdefs import OPS, OpDef

HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON:
    import fusedopt.triton  # noqa: F401  (registers torch.ops.fusedopt_triton)
    from fusedopt.triton import _launch

needs_ext = pytest.mark.skipif(_C is None, reason="the compiled extension is not built")
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


def signature_problems(op: OpDef, fn: Callable[..., Any]) -> list[str]:
    """Where ``fn``'s parameters differ from the registry's: names, order, defaults."""
    want = [
        (a.name, inspect.Parameter.empty if a.default is None else a.py_default) for a in op.args
    ]
    got = [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]
    if got == want:
        return []
    return [f"{op.name}: {getattr(fn, '__module__', '?')} has {got}, the registry {want}"]


def _arguments(schema: torch.FunctionSchema) -> list[tuple]:
    # Alias letters are names only: the written arguments are what counts.
    return [
        (a.name, str(a.type), a.default_value, bool(a.alias_info and a.alias_info.is_write))
        for a in schema.arguments
    ]


def schema_problems(op: OpDef, got: torch.FunctionSchema) -> list[str]:
    """Where a registered schema differs from ``op.schema()``: arguments (name, type, default,
    written) and returns."""
    want = torch._C.parse_schema(f"fusedopt::{op.schema()}")
    problems = []
    if _arguments(got) != _arguments(want):
        problems.append(f"{got.name}: arguments {_arguments(got)} != {_arguments(want)}")
    if [str(r.type) for r in got.returns] != [str(r.type) for r in want.returns]:
        problems.append(f"{got.name}: returns {got.returns} != {want.returns}")
    return problems


def has_fake(qualname: str) -> bool:
    return singleton.find(qualname).fake_impl.kernel is not None


def missing_backends(op: str) -> list[str]:
    """The implementations ``op`` lacks: reference, CPU kernel (where its registry entry says
    it has one; one it says it lacks is listed as "undeclared CPU kernel": the optimizers would
    not use it), Triton kernel, fake kernels."""
    missing = []
    if not callable(getattr(reference, op, None)):
        missing.append("reference")
    if _C is not None:
        has_cpu = hasattr(
            torch.ops.fusedopt, op
        ) and torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedopt::{op}", "CPU")
        declared = op not in OPS or OPS[op].cpu
        if has_cpu != declared:
            missing.append("CPU kernel" if declared else "undeclared CPU kernel")
        if not has_fake(f"fusedopt::{op}"):
            missing.append("fake kernel (fusedopt)")
    if HAS_TRITON:
        if not callable(getattr(_launch, op, None)) or not hasattr(torch.ops.fusedopt_triton, op):
            missing.append("Triton kernel")
        elif not has_fake(f"fusedopt_triton::{op}"):
            missing.append("fake kernel (fusedopt_triton)")
    return missing


# -- the checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_reference_signature_is_the_registry(op):
    assert signature_problems(OPS[op], getattr(reference, op)) == []


@pytest.mark.parametrize("op", OPS)
def test_wrapper_signatures_are_the_registry(op):
    """The wrappers every backend is called through (_dispatch.kernel)."""
    backends = ["cpu", "reference"] + (["triton"] if HAS_TRITON else [])
    for backend in backends:
        fn = _dispatch.kernel(backend, op)
        assert signature_problems(OPS[op], fn) == [], backend
        assert fn.__name__ == op, backend
    assert _ops.__dict__[op].__doc__ == OPS[op].doc


@needs_ext
@pytest.mark.parametrize("op", OPS)
def test_compiled_schema_is_the_registry(op):
    assert schema_problems(OPS[op], getattr(torch.ops.fusedopt, op).default._schema) == []


@needs_triton
@pytest.mark.parametrize("op", OPS)
def test_triton_schema_is_the_registry(op):
    assert schema_problems(OPS[op], getattr(torch.ops.fusedopt_triton, op).default._schema) == []


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_every_backend(op):
    assert missing_backends(op) == []


@needs_ext
def test_compiled_ops_are_the_registry():
    """No compiled op outside the registry (one would have no wrapper, fake or reference)."""
    registered = {
        name.split("::")[1].split(".")[0]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("fusedopt::")
    }
    assert registered == set(OPS)


# -- the checks catch what they check -----------------------------------------------------------


def test_signature_check_catches_names_order_and_defaults():
    op = OPS["sophia_update_hessian_"]

    def renamed(hessians, grad, beta2, grad_scale=None, found_inf=None):
        pass

    def reordered(grads, hessians, beta2, grad_scale=None, found_inf=None):
        pass

    def no_default(hessians, grads, beta2, grad_scale, found_inf=None):
        pass

    def other_default(hessians, grads, beta2, grad_scale=None, found_inf=0):
        pass

    def one_more(hessians, grads, beta2, grad_scale=None, found_inf=None, x=None):
        pass

    for fn in (renamed, reordered, no_default, other_default, one_more):
        assert signature_problems(op, fn), fn.__name__
    assert signature_problems(op, reference.sophia_update_hessian_) == []


def test_schema_check_catches_types_defaults_writes_and_returns():
    op = OPS["sophia_update_hessian_"]
    head = "fusedopt::sophia_update_hessian_"
    right = "(Tensor(a!)[] hessians, Tensor[] grads, float beta2, Tensor? grad_scale=None, "
    right += "Tensor? found_inf=None) -> ()"
    assert schema_problems(op, torch._C.parse_schema(head + right)) == []
    for old, new in (
        ("Tensor(a!)[] hessians", "Tensor[] hessians"),  # not written
        ("float beta2", "int beta2"),  # a type
        ("float beta2", "float beta2=0.5"),  # a default
        ("Tensor[] grads", "Tensor[] grad"),  # a name
        ("-> ()", "-> Tensor"),  # the return
    ):
        got = torch._C.parse_schema(head + right.replace(old, new))
        assert schema_problems(op, got), new


def test_backend_check_catches_a_missing_backend(monkeypatch):
    monkeypatch.delattr(reference, "lion_")
    assert "reference" in missing_backends("lion_")
    if HAS_TRITON:
        monkeypatch.delattr(_launch, "sgd_")
        assert "Triton kernel" in missing_backends("sgd_")
    if _C is not None:
        assert "CPU kernel" in missing_backends("no_such_op_")
        assert not has_fake("fusedopt::no_such_op_")
