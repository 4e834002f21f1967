from __future__ import annotations

from typing import Any

from torch import Tensor

from . import quant
from ._common import load_step, lr_arith, scalar, spec, store_param


@spec("lion_")
def lion_(a: Any, masters: list, seeds: list, s: float) -> None:
    r"""Lion (Chen et al., 2023), one parameter at a time, with decoupled weight decay.

    .. math::
        t &\leftarrow t + 1 \\
        g &\leftarrow \pm \nabla / s \qquad (s: \text{AMP grad scale}, - \text{ if maximize}) \\
        \theta &\leftarrow \theta (1 - \gamma\lambda) \\
        c &\leftarrow \beta_1 m + (1-\beta_1) g \\
        \theta &\leftarrow \theta - \gamma\,\mathrm{sign}(c) \qquad (\mathrm{sign}(0) = 0) \\
        m &\leftarrow \beta_2 m + (1-\beta_2) g

    The operation order is lion-pytorch's. ``torch.sign`` maps NaN to 0.
    """
    for i in range(len(a.params)):
        a.exp_avgs[i].copy_(_step(a, i, masters, seeds, s, a.exp_avgs[i]))


def _step(
    a: Any, i: int, masters: list, seeds: list, s: float, m: Tensor, rounded: bool = False
) -> Tensor:
    """Lion's update of param ``i`` from its momentum ``m``: the param written, the new
    momentum returned in the opmath dtype. ``rounded``: the momentum's arithmetic rounded
    after every operation, as the kernels' (fusedopt/math.h) does, where torch's CPU
    add(alpha=) fuses a multiply-add (Note [8-bit states] in quant.py)."""
    beta1, beta2 = a.beta1, a.beta2
    decay = lr_arith(a.lr, lambda x: 1 - x * a.weight_decay)  # Note [Tensor lr arithmetic]
    dt, p, g = load_step(a, i, masters, s)
    m = m.to(dt)
    p = p * decay
    if rounded:
        c = m * beta1 + g * (1 - beta1)
    else:
        c = (m * beta1).add(g, alpha=1 - beta1)
    p = p.add(c.sign(), alpha=-scalar(a.lr))  # exact products: no rounding to tell apart
    m = m * beta2 + g * (1 - beta2) if rounded else (m * beta2).add(g, alpha=1 - beta2)
    store_param(a.params[i], masters[i], seeds[i], p)
    return m


@spec("lion8bit_", prologue=quant.prologue("lion8bit_"))
def lion8bit_(a: Any, masters: list, seeds: list, s: float) -> None:
    r"""Lion with an 8-bit blockwise momentum: each param's momentum decoded through the
    signed map ``qmaps[0]`` (Note [8-bit states] in quant.py), updated as in :func:`lion_`
    in fp32, and encoded again with each block's new absmax."""
    signed = a.qmaps[0]
    for i in range(len(a.params)):
        m = quant.dequantize(a.exp_avgs[i], a.exp_avg_absmaxs[i], signed)
        m = _step(a, i, masters, seeds, s, m, rounded=True)
        quant.update(a.exp_avgs[i], a.exp_avg_absmaxs[i], m, signed)
