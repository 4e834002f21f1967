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
    )


if OPS_AVAILABLE:

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
    ) -> None:
        return None
