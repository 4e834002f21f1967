from __future__ import annotations

from typing import Any

from ._common import load_step, lr_arith, opmath_dtype, scalar, spec, store_param

# The authors' constant keeping |m| / (rho*bs*h + eps) finite where h = 0 (kSophiaEps in C++).
SOPHIA_EPS = 1e-15


@spec("sophia_")
def sophia_(a: Any, masters: list, seeds: list, s: float) -> None:
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
    beta1 = a.beta1
    decay = lr_arith(a.lr, lambda x: 1 - x * a.weight_decay)  # Note [Tensor lr arithmetic]
    lr = scalar(a.lr)
    for i, param in enumerate(a.params):
        dt, p, g = load_step(a, i, masters, s)
        m = a.exp_avgs[i].to(dt)
        h = a.hessians[i].to(dt)
        p = p * decay
        m = (m * beta1).add(g, alpha=1 - beta1)
        ratio = (m.abs() / (h * (a.rho * a.bs) + SOPHIA_EPS)).clamp(max=1)
        p = p.addcmul(m.sign(), ratio, value=-lr)
        store_param(param, masters[i], seeds[i], p)
        a.exp_avgs[i].copy_(m)


@spec("sophia_update_hessian_")
def sophia_update_hessian_(a: Any, s: float) -> None:
    r"""Sophia's curvature EMA, :math:`h \leftarrow \beta_2 h + (1-\beta_2)\, g \odot g`, on the
    grads of whatever backward pass the caller ran (the Gauss-Newton-Bartlett estimator's, in
    the authors' recipe). The step counters are not touched.
    """
    beta2 = a.beta2
    for i, hessian in enumerate(a.hessians):
        dt = opmath_dtype(a.grads[i].dtype)  # the params' opmath (hessians may be stored apart)
        g = a.grads[i].to(dt) * s
        h = (hessian.to(dt) * beta2).addcmul(g, g, value=1 - beta2)
        hessian.copy_(h)
