from __future__ import annotations

from typing import Any

from ._common import load_param, opmath_dtype, scalar, spec, store_param


@spec("muon_momentum_")
def muon_momentum_(a: Any, s: float) -> None:
    r"""Muon's momentum, as torch.optim.Muon computes it, and the matrix to orthogonalize:

    .. math::
        g &\leftarrow \nabla / s \qquad (s: \text{AMP grad scale}) \\
        b &\leftarrow \mathrm{lerp}(b, g, 1 - \mu) \\
        u &\leftarrow \mathrm{lerp}(g, b, \mu) \text{ if nesterov, else } b

    With nesterov, ``u`` is rounded to the grads' dtype (torch computes it as a tensor of that
    dtype), else it is the stored buffer; then it is rounded to the dtype of ``updates``, which
    is only written.
    """
    grads, momentum = a.grads, a.momentum
    for i, buf in enumerate(a.momentum_buffers):
        dt = opmath_dtype(grads[i].dtype)
        g = grads[i].to(dt) * s
        buf.copy_(buf.to(dt).lerp(g, 1 - momentum))
        if a.nesterov:  # reads the buffer as stored; a tensor of the grads' dtype in torch
            a.updates[i].copy_(g.lerp(buf.to(dt), momentum).to(grads[i].dtype))
        else:
            a.updates[i].copy_(buf)


@spec("muon_")
def muon_(a: Any, masters: list, seeds: list, s: float) -> None:
    r"""Muon's update with the orthogonalized momentum ``O`` (the ``grads``), as
    torch.optim.Muon applies it:

    .. math::
        \theta &\leftarrow \theta (1 - \gamma\lambda) \\
        \theta &\leftarrow \theta - \gamma r\, O / s

    with ``r`` = ``lr_ratio`` (the shape's learning-rate adjustment). torch.optim.Muon turns a
    Tensor lr into a Python float first, so both scalars are fp64 products here too.
    """
    lr = scalar(a.lr)
    decay = 1 - lr * a.weight_decay
    step = lr * a.lr_ratio
    for i, param in enumerate(a.params):
        dt = opmath_dtype(param.dtype)
        p = load_param(param, masters[i], dt)
        o = a.grads[i].to(dt)
        if s != 1.0:
            o = o * s
        p = p.mul(decay).add(o, alpha=-step)
        store_param(param, masters[i], seeds[i], p)
