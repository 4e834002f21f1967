"""Typed wrappers for the fusedopt custom ops and their fake (meta) kernels, derived from the op
registry (Note [op registry] in fusedopt/_opdefs.py): ``_ops.adam_`` etc. call
``torch.ops.fusedopt.<op>`` with the registry's signature, defaults and documentation.

The in-place ops return nothing, so their fake kernels only need to exist (and check nothing the
real kernels don't): torch.compile traces through them, and functionalization handles the
mutations the schemas declare. An op that returns a tensor has its fake result in
``FAKE_RESULTS``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._ext import _C
from ._opdefs import OPS, OpDef

OPS_AVAILABLE = _C is not None


def _sum_sq_fake(tensors: list[Tensor]) -> Tensor:
    # on the first tensor's device, as the op (CPU for no tensors)
    device = tensors[0].device if tensors else "cpu"
    return torch.empty((), dtype=torch.float64, device=device)


#: The fake kernel of every op that returns a tensor (the others return None).
FAKE_RESULTS: dict[str, Callable[..., Tensor]] = {"sum_sq": _sum_sq_fake}


def fake_kernel(op: OpDef) -> Callable[..., Any]:
    """The fake kernel of ``op``, for ``fusedopt::`` and ``fusedopt_triton::`` alike."""
    if op.returns == "()":
        return lambda *args, **kwargs: None
    return FAKE_RESULTS[op.name]


def signature(op: OpDef, **annotations: str) -> inspect.Signature:
    """The Python signature of ``op``: the registry's names, order and defaults (``None`` or
    an int); ``annotations`` replaces the annotations of the arguments it names."""
    params = [
        inspect.Parameter(
            a.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty if a.default is None else a.py_default,
            annotation=annotations.get(a.name, a.py_type),
        )
        for a in op.args
    ]
    return inspect.Signature(params, return_annotation="None" if op.returns == "()" else "Tensor")


def wrapper(
    op: OpDef,
    body: str,
    namespace: dict[str, Any],
    doc: str,
    exprs: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> Callable[..., Any]:
    """A function named ``op.name`` with ``op``'s signature (``annotations`` as in
    :func:`signature`) and the body ``body``, in which ``{args}`` stands for the arguments,
    positionally in registry order (an argument named in ``exprs`` as that expression of it),
    and ``{name}`` for the op's name; ``namespace`` holds the names the body uses (and
    ``__name__``, the function's module).

    Generated as source, so that a call costs what a hand-written wrapper costs (no argument
    binding at run time)."""
    exprs = exprs or {}
    params = ", ".join(
        a.name if a.default is None else f"{a.name}={a.py_default!r}" for a in op.args
    )
    source = f"def {op.name}({params}):\n" + body.format(
        args=", ".join(exprs.get(n, n) for n in op.names), name=op.name
    )
    scope = dict(namespace)
    exec(source, scope)
    fn = scope[op.name]
    fn.__doc__ = doc
    fn.__signature__ = signature(op, **(annotations or {}))
    fn.__module__ = namespace.get("__name__", __name__)
    return fn


for _op in OPS.values():
    globals()[_op.name] = wrapper(
        _op, "    return torch.ops.fusedopt.{name}({args})\n", {"torch": torch}, _op.doc
    )
    if OPS_AVAILABLE:
        torch.library.register_fake(f"fusedopt::{_op.name}")(fake_kernel(_op))
del _op

__all__ = ["OPS_AVAILABLE", *OPS]
