from __future__ import annotations

from typing import Any

from torch import Tensor

from . import quant
from ._common import load_update, scalar, spec, store_param


@spec("sgd_", like=False)
def sgd_(a: Any, masters: list, seeds: list, s: float) -> None:
    r"""SGD with momentum (Polyak, 1964; Sutskever et al., 2013), as torch.optim.SGD.

    .. math::
        g &\leftarrow \pm \nabla / s + \lambda\theta \\
        b &\leftarrow g \text{ on the first step, else } \mu b + (1-\tau) g \\
        g &\leftarrow g + \mu b \text{ (Nesterov), else } b \\
        \theta &\leftarrow \theta - \gamma g

    ``momentum_buffers`` is empty when momentum is 0; on the step that creates the buffers
    (``is_first_step``) their old contents are ignored. Mixed precision: see
    ``_common.check_mixed``.
    """
    for i in range(len(a.params)):
        buf = a.momentum_buffers[i] if a.momentum != 0 else None
        buf = _step(a, i, masters, seeds, s, buf)
        if buf is not None:
            a.momentum_buffers[i].copy_(buf)


def _step(
    a: Any, i: int, masters: list, seeds: list, s: float, buf: Tensor | None, rounded: bool = False
) -> Tensor | None:
    """SGD's update of param ``i`` with momentum buffer ``buf`` (None: no momentum): the param
    written, the new buffer returned in the opmath dtype. ``rounded``: the arithmetic rounded
    after every operation, as the kernels' (fusedopt/math.h) does, where torch's CPU
    add(alpha=) fuses a multiply-add (Note [8-bit states] in quant.py)."""
    lr, momentum = scalar(a.lr), a.momentum
    param = a.params[i]
    dt, p, g = load_update(param, masters[i], a.grads[i], s, a.maximize)
    if a.weight_decay != 0:
        g = g + p * a.weight_decay if rounded else g.add(p, alpha=a.weight_decay)
    if buf is not None:
        if a.is_first_step:
            buf = g.clone()
        elif rounded:
            buf = buf.to(dt) * momentum + g * (1 - a.dampening)
        else:
            buf = (buf.to(dt) * momentum).add(g, alpha=1 - a.dampening)
        if not a.nesterov:
            g = buf
        else:
            g = g + buf * momentum if rounded else g.add(buf, alpha=momentum)
    store_param(param, masters[i], seeds[i], p + g * -lr if rounded else p.add(g, alpha=-lr))
    return buf


@spec("sgd8bit_", prologue=quant.prologue("sgd8bit_"))
def sgd8bit_(a: Any, masters: list, seeds: list, s: float) -> None:
    r"""SGD with 8-bit blockwise momentum buffers: each param's buffer decoded through the
    signed map ``qmaps[0]`` (Note [8-bit states] in quant.py), updated as in :func:`sgd_` in
    fp32, and encoded again with each block's new absmax; the step that creates the buffers
    (``is_first_step``) encodes the grad (after weight decay), as torch.optim.SGD copies it."""
    signed = a.qmaps[0]
    for i in range(len(a.params)):
        buf = quant.dequantize(a.momentum_buffers[i], a.momentum_buffer_absmaxs[i], signed)
        buf = _step(a, i, masters, seeds, s, buf, rounded=True)
        quant.update(a.momentum_buffers[i], a.momentum_buffer_absmaxs[i], buf, signed)
