"""Typed wrappers for the fusedopt custom ops and their fake (meta) kernels.

The ops mutate their list arguments in place and return nothing, so the fake kernels only need
to exist (and check nothing the real kernels don't): torch.compile traces through them, and
functionalization handles the mutations declared in the schemas (csrc/ops.cpp).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._ext import _C

OPS_AVAILABLE = _C is not None


def adam_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    lr: Tensor,
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
    torch.ops.fusedopt.adam_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        lr,
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
    lr: Tensor,
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
    torch.ops.fusedopt.sgd_(
        params,
        grads,
        momentum_buffers,
        lr,
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


def sum_sq(tensors: list[Tensor]) -> Tensor:
    """Sum of squares of all elements of all tensors (fp64 0-d tensor); tensors non-empty."""
    return torch.ops.fusedopt.sum_sq(tensors)


def lion_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    lr: Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
    torch.ops.fusedopt.lion_(
        params,
        grads,
        exp_avgs,
        state_steps,
        lr,
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
    lr: Tensor,
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
    torch.ops.fusedopt.lamb_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        state_steps,
        lr,
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
    lr: Tensor,
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
    torch.ops.fusedopt.sophia_(
        params,
        grads,
        exp_avgs,
        hessians,
        state_steps,
        lr,
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
    torch.ops.fusedopt.sophia_update_hessian_(hessians, grads, beta2, grad_scale, found_inf)


if OPS_AVAILABLE:

    @torch.library.register_fake("fusedopt::sum_sq")
    def _sum_sq_fake(tensors):
        return tensors[0].new_empty((), dtype=torch.float64)

    @torch.library.register_fake("fusedopt::adam_")
    def _adam_fake(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        lr,
        beta1,
        beta2,
        weight_decay,
        eps,
        amsgrad,
        maximize,
        decoupled_weight_decay,
        grad_scale=None,
        found_inf=None,
        master_params=None,
        sr_seeds=None,
    ) -> None:
        return None

    @torch.library.register_fake("fusedopt::sgd_")
    def _sgd_fake(
        params,
        grads,
        momentum_buffers,
        lr,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
        is_first_step,
        grad_scale=None,
        found_inf=None,
        master_params=None,
        sr_seeds=None,
    ) -> None:
        return None

    @torch.library.register_fake("fusedopt::lion_")
    def _lion_fake(
        params,
        grads,
        exp_avgs,
        state_steps,
        lr,
        beta1,
        beta2,
        weight_decay,
        maximize,
        grad_scale=None,
        found_inf=None,
        master_params=None,
        sr_seeds=None,
    ) -> None:
        return None

    @torch.library.register_fake("fusedopt::lamb_")
    def _lamb_fake(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        state_steps,
        lr,
        beta1,
        beta2,
        weight_decay,
        eps,
        bias_correction,
        trust_clip,
        maximize,
        tensor_norms=None,
        grad_scale=None,
        found_inf=None,
        master_params=None,
        sr_seeds=None,
        phase=0,
        sq_sums=None,
    ) -> None:
        return None

    @torch.library.register_fake("fusedopt::sophia_")
    def _sophia_fake(
        params,
        grads,
        exp_avgs,
        hessians,
        state_steps,
        lr,
        beta1,
        rho,
        bs,
        weight_decay,
        maximize,
        grad_scale=None,
        found_inf=None,
        master_params=None,
        sr_seeds=None,
    ) -> None:
        return None

    @torch.library.register_fake("fusedopt::sophia_update_hessian_")
    def _sophia_update_hessian_fake(
        hessians, grads, beta2, grad_scale=None, found_inf=None
    ) -> None:
        return None
