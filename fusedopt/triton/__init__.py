"""The Triton backend: every fusedopt op as multi-tensor Triton kernels.

Each function here has the signature and semantics of its plain-PyTorch definition in
:mod:`fusedopt.reference` (``lr`` may be a float or a one-element Tensor) and computes the same
function as the compiled CPU and CUDA kernels: csrc/include/fusedopt/math.h's per-element math in
the same operation order, fp32 math for fp16/bf16 storage (fp64 for fp64), and a fixed number of
launches per call however many tensors it updates (Note [pointer tables] in ``_kernels.py``).
Mixed precision as the reference specifies it (Note [mixed precision] in
csrc/include/fusedopt/math.h): states in their own dtype, fp32 ``master_params``, stochastic
rounding with ``sr_seeds`` (bit for bit the reference's on dense params), and LAMB's ``phase`` /
``sq_sums`` for sharded params.

The ops are registered as torch custom ops (``torch.ops.fusedopt_triton.<name>``) with fake
kernels, so torch.compile traces a step that uses them without a graph break; the launches run
at execution time, outside the traced graph.

GPU tensors need a GPU Triton supports; CPU tensors run in Triton's interpreter when
``TRITON_INTERPRET=1`` (slow: for tests).

LAMB's ``phase`` 1 and 2 (Note [LAMB phases] in ``_kernels.py``) must both run in this backend:
with states in the compute dtype, phase 1 stores the new moments, which phase 2 reads back.

The ops may be captured in CUDA graphs: the device tables a graph reads are kept until
:func:`clear_cache` (Note [CUDA graphs] in ``_multi_tensor.py``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.torch_version import TorchVersion

from .._opdefs import OPS
from .._ops import fake_kernel, wrapper
from . import _launch
from ._multi_tensor import clear_cache

_NS = "fusedopt_triton"


def _version_bumps_tolerating_omitted_args(op: Any) -> None:
    """torch < 2.13: custom_op's ADInplaceOrView kernel bumps the version counters of the
    written arguments by schema position (``args[idx]``), but the dispatcher drops trailing
    arguments equal to their defaults before calling it, so a call that leaves a trailing
    mutated optional argument (``sr_seeds``, ``sq_sums``) as None raises IndexError
    (pytorch/pytorch#176078, fixed in 2.13). This kernel does the same bumps for the arguments
    that are there, then redispatches below ADInplaceOrView as torch 2.14's own kernel does."""
    overload = op._opoverload
    written = [
        i
        for i, a in enumerate(overload._schema.arguments)
        if a.alias_info and a.alias_info.is_write
    ]
    below = torch._C._after_ADInplaceOrView_keyset

    def kernel(keyset: Any, *args: Any, **kwargs: Any) -> Any:
        for i in written:
            if i < len(args):
                value = args[i]
                for t in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(t, Tensor):
                        torch.autograd.graph.increment_version(t)
        return overload.redispatch(keyset & below, *args, **kwargs)

    with warnings.catch_warnings():
        # The C++ dispatcher's note that a kernel replaces another one (the point here).
        warnings.filterwarnings("ignore", message="Warning only once for all operators")
        op._lib.impl(
            overload._schema.name.split("::")[1],
            kernel,
            "ADInplaceOrView",
            with_keyset=True,
            allow_override=True,
        )


def _lr(lr: float | Tensor) -> Tensor:
    return lr if isinstance(lr, Tensor) else torch.tensor(lr, dtype=torch.float64)


# The schemas are the registry's (torch.library.infer_schema does not take the mixed-precision
# lists' type, an optional list of tensors); each wrapper runs under no_grad and takes ``lr`` as
# a float or a Tensor.
_WRAPPER = """\
    with torch.no_grad():
        return torch.ops.fusedopt_triton.{name}({args})
"""
for _def in OPS.values():
    if not hasattr(_launch, _def.name):
        continue  # not implemented in Triton: tests/test_registry.py says so
    _op = torch.library.custom_op(
        f"{_NS}::{_def.name}",
        getattr(_launch, _def.name),
        mutates_args=_def.written,
        schema=_def.schema(with_name=False),
    )
    if _def.written and TorchVersion(torch.__version__) < (2, 13):
        _version_bumps_tolerating_omitted_args(_op)
    _op.register_fake(fake_kernel(_def))
    globals()[_def.name] = wrapper(
        _def,
        _WRAPPER,
        {"torch": torch, "_lr": _lr, "__name__": __name__},
        f"{_def.doc}\n\n:func:`fusedopt.reference.{_def.name}` in Triton.",
        exprs={"lr": "_lr(lr)"},
        annotations={"lr": "float | Tensor"},
    )
del _def, _op

__all__ = ["clear_cache", *OPS]
