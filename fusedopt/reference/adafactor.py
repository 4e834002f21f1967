from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._common import (
    check_like_params,
    check_mixed,
    check_steps,
    inv_scale,
    opmath_dtype,
    scalar,
    skip_step,
    spec,
)


def factored_shapes(p: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The shapes of Adafactor's (row_var, col_var) for param ``p``: the mean of g^2 over its
    last dim and over the one before it; None for a param of fewer than 2 dims (it keeps a
    param-shaped ``variance``)."""
    if p.dim() < 2:
        return None
    s = tuple(p.shape)
    return (*s[:-1], 1), (*s[:-2], 1, s[-1])


def check_aux_state(
    op: str,
    params: list[Tensor],
    row_vars: list[Tensor],
    col_vars: list[Tensor],
    variances: list[Tensor],
) -> None:
    """One (row_var, col_var, variance) per param, as the compiled ops require: for a param of
    2 or more dims a row_var and a col_var of factored_shapes (its variance is a placeholder,
    never read), else a param-shaped variance (its row_var and col_var are placeholders); each
    in the param's dtype, on its device."""
    lists = {"row_vars": row_vars, "col_vars": col_vars, "variances": variances}
    for name, lst in lists.items():
        if len(lst) != len(params):
            raise RuntimeError(
                f"{op}: expected {name} to have {len(params)} tensors (one per param), "
                f"got {len(lst)}"
            )
    for i, p in enumerate(params):
        shapes = factored_shapes(p)
        wants = (
            {"variances": tuple(p.shape)}
            if shapes is None
            else {"row_vars": shapes[0], "col_vars": shapes[1]}
        )
        for name, shape in wants.items():
            t = lists[name][i]
            if tuple(t.shape) != shape or t.dtype != p.dtype or t.device != p.device:
                raise RuntimeError(
                    f"{op}: {name}[{i}] must be {p.dtype} of shape {shape} on {p.device}, got "
                    f"{t.dtype} {tuple(t.shape)} on {t.device}"
                )


def begin_adafactor(
    op: str, lists: tuple[list[Tensor], ...], grad_scale: Tensor | None, found_inf: Tensor | None
) -> float | None:
    """The checks of every backend's adafactor_ (begin's, then check_aux_state) on ``lists``
    (params, grads, row_vars, col_vars, variances, state_steps), before any write; then None
    if GradScaler found inf/NaN (the step changes nothing), else 1 / grad_scale."""
    params, grads, row_vars, col_vars, variances, state_steps = lists
    # the checks of _common.begin (whose preamble needs the mixed-precision arguments this op
    # has not), then the auxiliary states'
    check_like_params(op, params, grads=grads)
    check_mixed(op, params, None, None)
    check_steps(op, params, state_steps)
    check_aux_state(op, params, row_vars, col_vars, variances)
    return None if skip_step(found_inf) else inv_scale(grad_scale)


def _begin(a: Any) -> tuple[float] | None:
    lists = (a.params, a.grads, a.row_vars, a.col_vars, a.variances, a.state_steps)
    s = begin_adafactor("fusedopt.adafactor_", lists, a.grad_scale, a.found_inf)
    return None if s is None else (s,)


@spec("adafactor_", prologue=_begin)
def adafactor_(a: Any, s: float) -> None:
    r"""Adafactor as torch.optim.Adafactor's for-loop computes it, one parameter at a time.

    .. math::
        t &\leftarrow t + 1, \quad w = t^{\tau}\ (\tau: \text{beta2\_decay}), \quad
            \rho = \min(\gamma, 1/\sqrt{t}) \\
        g &\leftarrow \pm \nabla / s \qquad (s: \text{AMP grad scale}, - \text{ if maximize}) \\
        \alpha &= \max(\epsilon_2, \mathrm{RMS}(\theta))\,\rho \qquad (\theta \text{ before
            the decay}) \\
        \theta &\leftarrow \theta (1 - \gamma\lambda) \\
        R &\leftarrow \mathrm{lerp}(R, \mathrm{mean}_{-1}(g^2), w), \quad
        C \leftarrow \mathrm{lerp}(C, \mathrm{mean}_{-2}(g^2), w), \quad
        \hat V = (R C) / \max(\mathrm{mean}_{-2}(R), \epsilon_1) \quad (\ge 2 \text{ dims}) \\
        \hat V &= V \leftarrow \mathrm{lerp}(V, g^2, w) \quad (\text{fewer dims}) \\
        u &= g / \sqrt{\max(\hat V, \epsilon_1^2)}, \quad
        \theta \leftarrow \theta - \frac{\alpha}{\max(1, \mathrm{RMS}(u) / d)}\, u

    In the for-loop's operation order (torch/optim/_adafactor.py) but for a matrix's u, which is
    computed factored, g min(rsqrt(R / mean(R)) rsqrt(C), rsqrt(eps1^2)): the same value up to
    rounding, without a division per element (Note [factored direction] in
    csrc/include/fusedopt/math.h). The math in opmath (fp32 for fp16/bf16 params; torch computes
    in the param dtype) and the per-tensor scalars (w, rho, alpha, the clipping) in fp64 as
    torch's Python floats are. ``eps1`` is a number: the optimizer resolves torch's None (the
    param dtype's machine epsilon). A param with no elements only counts its step
    (torch.optim.Adafactor raises ZeroDivisionError on it).
    """
    params, grads, state_steps = a.params, a.grads, a.state_steps
    row_vars, col_vars, variances = a.row_vars, a.col_vars, a.variances
    beta2_decay, eps1, eps2, d = a.beta2_decay, a.eps1, a.eps2, a.d
    weight_decay, maximize = a.weight_decay, a.maximize
    lr = scalar(a.lr)
    for i, param in enumerate(params):
        state_steps[i] += 1
        if param.numel() == 0:
            continue  # no RMS to take (torch.optim.Adafactor divides by the zero size)
        step = state_steps[i].double()
        dt = opmath_dtype(param.dtype)
        p = param.to(dt)
        g = grads[i].to(dt) * s
        if maximize:
            g = -g
        w = (step**beta2_decay).to(dt)
        rho = torch.clamp(1 / step.sqrt(), max=lr)
        n = p.numel()
        alpha = torch.clamp(torch.linalg.vector_norm(p).double() / math.sqrt(n), min=eps2) * rho
        if weight_decay != 0:
            p = p * (1 - lr * weight_decay)
        if p.dim() > 1:
            row_mean = torch.linalg.vector_norm(g, dim=-1, keepdim=True).square() / g.size(-1)
            r = row_vars[i].to(dt).lerp(row_mean, w)
            col_mean = torch.linalg.vector_norm(g, dim=-2, keepdim=True).square() / g.size(-2)
            c = col_vars[i].to(dt).lerp(col_mean, w)
            # The estimate reads the statistics as stored, rounded to the param dtype, as
            # torch's in-place lerp_ leaves them (and the kernels read them back).
            r = row_vars[i].copy_(r).to(dt)
            c = col_vars[i].copy_(c).to(dt)
            rmean = r.mean(dim=-2, keepdim=True).clamp(min=eps1)
            # rsqrt(max((r c) / rmean, eps1^2)) factored (Note [factored direction] in
            # csrc/include/fusedopt/math.h): per row and per column in fp64, rounded once.
            a = (1 / (r.double() / rmean.double()).sqrt()).to(dt)
            b = (1 / c.double().sqrt()).to(dt)
            cap = (1 / torch.tensor(eps1 * eps1, dtype=dt).double().sqrt()).to(dt)
            u = (a * b).clamp(max=cap) * g
        else:
            var = variances[i].copy_(variances[i].to(dt).lerp(g * g, w)).to(dt)
            u = var.clamp(min=eps1 * eps1).rsqrt() * g
        rms = torch.linalg.vector_norm(u).double() / (math.sqrt(n) * d)
        coef = -alpha / torch.clamp(rms, min=1.0)
        param.copy_(p + u * coef.to(dt))
