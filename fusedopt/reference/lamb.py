from __future__ import annotations

from typing import Any

import torch

from ._common import begin, load_param, opmath_dtype, scalar, spec, store_param


def _begin(a: Any) -> tuple | None:
    """begin, after the checks of ``phase``; Note [LAMB phases]: phase 1 counts the step,
    phase 2 advances the seeds."""
    if a.phase not in (0, 1, 2):
        raise RuntimeError(f"fusedopt.lamb_: phase must be 0, 1 or 2, got {a.phase}")
    n = len(a.params)
    if a.phase and (a.sq_sums is None or tuple(a.sq_sums.shape) != (n, 2)):
        raise RuntimeError(f"fusedopt.lamb_: phase {a.phase} needs sq_sums of shape ({n}, 2)")
    return begin("lamb_", *a, advance=a.phase != 1)


@spec("lamb_", prologue=_begin)
def lamb_(a: Any, masters: list, seeds: list, s: float) -> None:
    r"""LAMB (You et al., 2020), one parameter at a time.

    .. math::
        t &\leftarrow t + 1 \\
        g &\leftarrow \pm \nabla / s \qquad (s: \text{AMP grad scale, which also carries the
            optimizer's max\_grad\_norm clip factor}) \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        u &\leftarrow \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon}
            + \lambda\theta \qquad (\text{no } 1-\beta^t \text{ without bias correction}) \\
        r &\leftarrow \|\theta\| / \|u\| \text{, or 1 if either norm is 0; }
            \min(r, \text{trust\_clip}) \text{ if set} \\
        \theta &\leftarrow \theta - \gamma r u

    u is computed from m and v in opmath precision, before they are stored (rounded) in the
    storage dtype. The norms are taken in fp64; ``tensor_norms``, if given, receives
    :math:`(\|\theta\|, \|u\|)` of each param (n x 2).

    ``phase`` splits the step for params sharded across ranks (FSDP2), whose norms need a
    reduction between the two passes: phase 1 increments the steps and writes each param's
    local sums of squares :math:`(\sum\theta^2, \sum u^2)` into ``sq_sums`` (n x 2, fp64); the
    caller all-reduces them; phase 2, with the same arguments, takes the norms from ``sq_sums``
    and updates params and moments (which phase 1 may or may not have stored already). Phase 0
    is both in one call. Mixed precision: see ``_common.check_mixed``.
    """
    beta1, beta2, phase, sq_sums = a.beta1, a.beta2, a.phase, a.sq_sums
    lr = scalar(a.lr)
    if phase != 2:
        for step in a.state_steps:
            step += 1
    for i, param in enumerate(a.params):
        step = float(a.state_steps[i].item())
        dt = opmath_dtype(param.dtype)
        g = a.grads[i].to(dt) * s
        if a.maximize:
            g = -g
        m = (a.exp_avgs[i].to(dt) * beta1).add(g, alpha=1 - beta1)
        v = (a.exp_avg_sqs[i].to(dt) * beta2).addcmul(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1**step if a.bias_correction else 1.0
        bias_correction2 = 1 - beta2**step if a.bias_correction else 1.0
        p = load_param(param, masters[i], dt)
        u = (m / bias_correction1) / ((v / bias_correction2).sqrt() + a.eps)
        if a.weight_decay != 0:
            u = u.add(p, alpha=a.weight_decay)
        if phase == 1:
            sq_sums[i, 0] = p.double().square().sum()
            sq_sums[i, 1] = u.double().square().sum()
            continue
        if phase == 2:
            p_norm = sq_sums[i, 0].double().sqrt()
            u_norm = sq_sums[i, 1].double().sqrt()
        else:
            p_norm = torch.linalg.vector_norm(p, dtype=torch.float64)
            u_norm = torch.linalg.vector_norm(u, dtype=torch.float64)
        ratio = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm, 1.0)
        if a.trust_clip is not None:
            ratio = ratio.clamp(max=a.trust_clip)
        if a.tensor_norms is not None:
            a.tensor_norms[i, 0] = p_norm
            a.tensor_norms[i, 1] = u_norm
        store_param(param, masters[i], seeds[i], p + (-lr * ratio).to(dt) * u)
        a.exp_avgs[i].copy_(m)
        a.exp_avg_sqs[i].copy_(v)
