"""The Triton backend: every fusedopt op as multi-tensor Triton kernels.

Each function here has the signature and semantics of its plain-PyTorch definition in
:mod:`fusedopt.reference` (``lr`` may be a float or a one-element Tensor) and computes the same
function as the compiled CPU and CUDA kernels: csrc/include/fusedopt/math.h's per-element math in
the same operation order, fp32 math for fp16/bf16 storage (fp64 for fp64), and a fixed number of
launches per call however many tensors it updates (Note [pointer tables] in ``_kernels.py``).

The ops are registered as torch custom ops (``torch.ops.fusedopt_triton.<name>``) with fake
kernels, so torch.compile traces a step that uses them without a graph break; the launches run
at execution time, outside the traced graph.

GPU tensors need a GPU Triton supports; CPU tensors run in Triton's interpreter when
``TRITON_INTERPRET=1`` (slow: for tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _launch

_NS = "fusedopt_triton"

_MUTATES = {
    "adam_": ("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps"),
    "sgd_": ("params", "momentum_buffers"),
    "lion_": ("params", "exp_avgs", "state_steps"),
    "lamb_": ("params", "exp_avgs", "exp_avg_sqs", "state_steps", "tensor_norms"),
    "sophia_": ("params", "exp_avgs", "state_steps"),
    "sophia_update_hessian_": ("hessians",),
    "sum_sq": (),
}

for _name, _mutates in _MUTATES.items():
    _op = torch.library.custom_op(f"{_NS}::{_name}", getattr(_launch, _name), mutates_args=_mutates)
    if _name == "sum_sq":
        _op.register_fake(lambda tensors: torch.empty((), dtype=torch.float64))
    else:
        _op.register_fake(lambda *args, **kwargs: None)
del _name, _mutates, _op


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
) -> None:
    """LAMB: :func:`fusedopt.reference.lamb_` in Triton (trust ratios reduced on the device)."""
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
        )


def sophia_update_hessian_(
    hessians: list[Tensor],
    grads: list[Tensor],
    beta2: float,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Sophia's curvature EMA: :func:`fusedopt.reference.sophia_update_hessian_` in Triton."""
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
    "lamb_",
    "lion_",
    "sgd_",
    "sophia_",
    "sophia_update_hessian_",
    "sum_sq",
]
