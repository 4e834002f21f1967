from __future__ import annotations

from torch import Tensor

from ._common import (
    begin,
    check_like_params,
    inv_scale,
    load_update,
    lr_arith,
    opmath_dtype,
    scalar,
    skip_step,
    store_param,
)

# The authors' constant keeping |m| / (rho*bs*h + eps) finite where h = 0 (kSophiaEps in C++).
SOPHIA_EPS = 1e-15


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
    r"""SophiaG (Liu et al., 2023), one parameter at a time, as the authors' released code.

    .. math::
        t &\leftarrow t + 1 \\
        g &\leftarrow \pm \nabla / s \qquad (s: \text{AMP grad scale}, - \text{ if maximize}) \\
        \theta &\leftarrow \theta (1 - \gamma\lambda) \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g \\
        \theta &\leftarrow \theta - \gamma\,\mathrm{sign}(m)
            \min\!\Big(\frac{|m|}{\rho\, b\, h + 10^{-15}},\, 1\Big)

    with ``b`` the batch size ``bs``; ``hessians`` (h) is only read (see
    :func:`sophia_update_hessian_`).
    """
    mixed = begin("sophia_", params, grads, exp_avgs, hessians, state_steps, lr, beta1, rho,
                  bs, weight_decay, maximize, grad_scale, found_inf, master_params,
                  sr_seeds)  # fmt: skip
    if mixed is None:
        return
    masters, seeds, s = mixed
    decay = lr_arith(lr, lambda x: 1 - x * weight_decay)  # Note [Tensor lr arithmetic]
    lr = scalar(lr)
    for i, param in enumerate(params):
        state_steps[i] += 1
        dt, p, g = load_update(param, masters[i], grads[i], s, maximize)
        m = exp_avgs[i].to(dt)
        h = hessians[i].to(dt)
        p = p * decay
        m = (m * beta1).add(g, alpha=1 - beta1)
        ratio = (m.abs() / (h * (rho * bs) + SOPHIA_EPS)).clamp(max=1)
        p = p.addcmul(m.sign(), ratio, value=-lr)
        store_param(param, masters[i], seeds[i], p)
        exp_avgs[i].copy_(m)


def sophia_update_hessian_(
    hessians: list[Tensor],
    grads: list[Tensor],
    beta2: float,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    r"""Sophia's curvature EMA, :math:`h \leftarrow \beta_2 h + (1-\beta_2)\, g \odot g`, on the
    grads of whatever backward pass the caller ran (the Gauss-Newton-Bartlett estimator's, in
    the authors' recipe). The step counters are not touched.
    """
    check_like_params("fusedopt.sophia_update_hessian_", hessians, grads=grads)
    if skip_step(found_inf):
        return
    s = inv_scale(grad_scale)
    for i, hessian in enumerate(hessians):
        dt = opmath_dtype(grads[i].dtype)  # the params' opmath (hessians may be stored apart)
        g = grads[i].to(dt) * s
        h = (hessian.to(dt) * beta2).addcmul(g, g, value=1 - beta2)
        hessian.copy_(h)
