from __future__ import annotations

from torch import Tensor

from ._common import (
    begin,
    check_like_params,
    inv_scale,
    load_param,
    opmath_dtype,
    scalar,
    skip_step,
    store_param,
)


def muon_momentum_(
    momentum_buffers: list[Tensor],
    grads: list[Tensor],
    updates: list[Tensor],
    momentum: float,
    nesterov: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    r"""Muon's momentum, as torch.optim.Muon computes it, and the matrix to orthogonalize:

    .. math::
        g &\leftarrow \nabla / s \qquad (s: \text{AMP grad scale}) \\
        b &\leftarrow \mathrm{lerp}(b, g, 1 - \mu) \\
        u &\leftarrow \mathrm{lerp}(g, b, \mu) \text{ if nesterov, else } b

    With nesterov, ``u`` is rounded to the grads' dtype (torch computes it as a tensor of that
    dtype), else it is the stored buffer; then it is rounded to the dtype of ``updates``, which
    is only written.
    """
    op = "fusedopt.muon_momentum_"
    check_like_params(op, momentum_buffers, grads=grads, updates=updates)
    if skip_step(found_inf):
        return
    s = inv_scale(grad_scale)
    for i, buf in enumerate(momentum_buffers):
        dt = opmath_dtype(grads[i].dtype)
        g = grads[i].to(dt) * s
        buf.copy_(buf.to(dt).lerp(g, 1 - momentum))
        if nesterov:  # reads the buffer as stored; a tensor of the grads' dtype in torch
            updates[i].copy_(g.lerp(buf.to(dt), momentum).to(grads[i].dtype))
        else:
            updates[i].copy_(buf)


def muon_(
    params: list[Tensor],
    grads: list[Tensor],
    lr: float | Tensor,
    weight_decay: float,
    lr_ratio: float,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
    r"""Muon's update with the orthogonalized momentum ``O`` (the ``grads``), as
    torch.optim.Muon applies it:

    .. math::
        \theta &\leftarrow \theta (1 - \gamma\lambda) \\
        \theta &\leftarrow \theta - \gamma r\, O / s

    with ``r`` = ``lr_ratio`` (the shape's learning-rate adjustment). torch.optim.Muon turns a
    Tensor lr into a Python float first, so both scalars are fp64 products here too.
    """
    mixed = begin("muon_", params, grads, lr, weight_decay, lr_ratio, grad_scale, found_inf,
                  master_params, sr_seeds)  # fmt: skip
    if mixed is None:
        return
    masters, seeds, s = mixed
    lr = scalar(lr)
    decay = 1 - lr * weight_decay
    step = lr * lr_ratio
    for i, param in enumerate(params):
        dt = opmath_dtype(param.dtype)
        p = load_param(param, masters[i], dt)
        o = grads[i].to(dt)
        if s != 1.0:
            o = o * s
        p = p.mul(decay).add(o, alpha=-step)
        store_param(param, masters[i], seeds[i], p)
