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

The ops may be captured in CUDA graphs: the device tables a graph reads are kept until
:func:`clear_cache` (Note [CUDA graphs] in ``_multi_tensor.py``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.torch_version import TorchVersion

from . import _launch
from ._multi_tensor import clear_cache

_NS = "fusedopt_triton"

# The schemas of csrc/ops.cpp (tests/test_triton.py checks they stay the same): written out
# because torch.library.infer_schema does not take the mixed-precision lists' type, an optional
# list of tensors (Tensor[]?). The (x!) annotations are the mutated arguments.
_SCHEMAS = {
    "adam_": "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
    "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, "
    "Tensor lr, float beta1, float beta2, float weight_decay, float eps, bool amsgrad, "
    "bool maximize, bool decoupled_weight_decay, Tensor? grad_scale=None, "
    "Tensor? found_inf=None, "
    "Tensor(m!)[]? master_params=None, Tensor(n!)[]? sr_seeds=None) -> ()",
    "sgd_": "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, Tensor lr, "
    "float momentum, float dampening, float weight_decay, bool nesterov, bool maximize, "
    "bool is_first_step, Tensor? grad_scale=None, Tensor? found_inf=None, "
    "Tensor(m!)[]? master_params=None, Tensor(n!)[]? sr_seeds=None) -> ()",
    "lion_": "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
    "Tensor(c!)[] state_steps, Tensor lr, float beta1, float beta2, float weight_decay, "
    "bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
    "Tensor(m!)[]? master_params=None, Tensor(n!)[]? sr_seeds=None) -> ()",
    "lamb_": "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
    "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] state_steps, Tensor lr, float beta1, float beta2, "
    "float weight_decay, float eps, bool bias_correction, float? trust_clip, bool maximize, "
    "Tensor(e!)? tensor_norms=None, Tensor? grad_scale=None, Tensor? found_inf=None, "
    "Tensor(m!)[]? master_params=None, Tensor(n!)[]? sr_seeds=None, int phase=0, "
    "Tensor(o!)? sq_sums=None) -> ()",
    "sophia_": "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor[] hessians, "
    "Tensor(c!)[] state_steps, Tensor lr, float beta1, float rho, float bs, "
    "float weight_decay, bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
    "Tensor(m!)[]? master_params=None, Tensor(n!)[]? sr_seeds=None) -> ()",
    "sophia_update_hessian_": "(Tensor(a!)[] hessians, Tensor[] grads, float beta2, "
    "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()",
    "sum_sq": "(Tensor[] tensors) -> Tensor",
}


def _mutated(schema: str) -> tuple[str, ...]:
    """The names of the arguments a schema annotates as written."""
    args = schema[1 : schema.rindex(") ->")].split(", ")
    return tuple(a.split(" ")[1].split("=")[0] for a in args if "!)" in a.split(" ")[0])


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


for _name, _schema in _SCHEMAS.items():
    _op = torch.library.custom_op(
        f"{_NS}::{_name}", getattr(_launch, _name), mutates_args=_mutated(_schema), schema=_schema
    )
    if "!" in _schema and TorchVersion(torch.__version__) < (2, 13):
        _version_bumps_tolerating_omitted_args(_op)
    if _name == "sum_sq":
        # on the first tensor's device, as the op (CPU for no tensors)
        _op.register_fake(
            lambda tensors: torch.empty(
                (), dtype=torch.float64, device=tensors[0].device if tensors else "cpu"
            )
        )
    else:
        _op.register_fake(lambda *args, **kwargs: None)
del _name, _schema, _op


def _lr(lr: float | Tensor) -> Tensor:
    return lr if isinstance(lr, Tensor) else torch.tensor(lr, dtype=torch.float64)


def adam_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
    """Adam / AdamW: :func:`fusedopt.reference.adam_` in Triton."""
    with torch.no_grad():
        torch.ops.fusedopt_triton.adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            state_steps,
            _lr(lr),
            beta1,
            beta2,
            weight_decay,
            eps,
            amsgrad,
            maximize,
            decoupled_weight_decay,
            grad_scale,
            found_inf,
            master_params,
            sr_seeds,
        )


def sgd_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    is_first_step: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
    """SGD with momentum: :func:`fusedopt.reference.sgd_` in Triton."""
    with torch.no_grad():
        torch.ops.fusedopt_triton.sgd_(
            params,
            grads,
            momentum_buffers,
            _lr(lr),
            momentum,
            dampening,
            weight_decay,
            nesterov,
            maximize,
            is_first_step,
            grad_scale,
            found_inf,
            master_params,
            sr_seeds,
        )


def lion_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
    """Lion: :func:`fusedopt.reference.lion_` in Triton."""
    with torch.no_grad():
        torch.ops.fusedopt_triton.lion_(
            params,
            grads,
            exp_avgs,
            state_steps,
            _lr(lr),
            beta1,
            beta2,
            weight_decay,
            maximize,
            grad_scale,
            found_inf,
            master_params,
            sr_seeds,
        )


def lamb_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    bias_correction: bool,
    trust_clip: float | None,
    maximize: bool,
    tensor_norms: Tensor | None = None,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
    phase: int = 0,
    sq_sums: Tensor | None = None,
) -> None:
    """LAMB: :func:`fusedopt.reference.lamb_` in Triton (trust ratios reduced on the device).

    With ``phase`` 1 and 2 (Note [LAMB phases] in ``_kernels.py``), both phases must run in this
    backend: with states in the compute dtype, phase 1 stores the new moments, which phase 2
    reads back."""
    with torch.no_grad():
        torch.ops.fusedopt_triton.lamb_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            state_steps,
            _lr(lr),
            beta1,
            beta2,
            weight_decay,
            eps,
            bias_correction,
            trust_clip,
            maximize,
            tensor_norms,
            grad_scale,
            found_inf,
            master_params,
            sr_seeds,
            phase,
            sq_sums,
        )


def sophia_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    lr: float | Tensor,
    beta1: float,
    rho: float,
    bs: float,
    weight_decay: float,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
    """SophiaG: :func:`fusedopt.reference.sophia_` in Triton."""
    with torch.no_grad():
        torch.ops.fusedopt_triton.sophia_(
            params,
            grads,
            exp_avgs,
            hessians,
            state_steps,
            _lr(lr),
            beta1,
            rho,
            bs,
            weight_decay,
            maximize,
            grad_scale,
            found_inf,
            master_params,
            sr_seeds,
        )


def sophia_update_hessian_(
    hessians: list[Tensor],
    grads: list[Tensor],
    beta2: float,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Sophia's curvature EMA: :func:`fusedopt.reference.sophia_update_hessian_` in Triton.

    The hessians may be stored in another dtype than the grads (Sophia's state dtype); the math
    runs in the grads' compute dtype."""
    with torch.no_grad():
        torch.ops.fusedopt_triton.sophia_update_hessian_(
            hessians, grads, beta2, grad_scale, found_inf
        )


def sum_sq(tensors: list[Tensor]) -> Tensor:
    """Sum of squares of every element of every tensor, accumulated in fp64 (0-d fp64 tensor on
    the first tensor's device): :func:`fusedopt.reference.sum_sq` in Triton."""
    with torch.no_grad():
        return torch.ops.fusedopt_triton.sum_sq(tensors)


__all__ = [
    "adam_",
    "clear_cache",
    "lamb_",
    "lion_",
    "sgd_",
    "sophia_",
    "sophia_update_hessian_",
    "sum_sq",
]
