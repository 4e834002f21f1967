from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import quant
from ._common import load_step, lr_arith, spec, store_param


@spec("adam_", like=False)
def adam_(a: Any, masters: list, seeds: list, s: float) -> None:
    r"""Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019), one parameter at a time.

    .. math::
        t &\leftarrow t + 1 \\
        g &\leftarrow \pm \nabla / s \qquad (s: \text{AMP grad scale}, - \text{ if maximize}) \\
        \theta &\leftarrow \theta (1 - \gamma\lambda) \quad\text{(AdamW)} \qquad
            g \leftarrow g + \lambda\theta \quad\text{(Adam)} \\
        m &\leftarrow m + (1-\beta_1)(g - m) \\
        v &\leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \hat v &\leftarrow \max(\hat v, v) \text{ if amsgrad, else } v \\
        \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    The operation order is torch.optim's single-tensor implementation's. Mixed precision
    (``master_params``, ``sr_seeds``, state dtypes): see ``_common.check_mixed``.
    """
    for i in range(len(a.params)):
        m, v = _step(a, i, masters, seeds, s, a.amsgrad, a.exp_avgs[i], a.exp_avg_sqs[i])
        a.exp_avgs[i].copy_(m)
        a.exp_avg_sqs[i].copy_(v)


def _step(
    a: Any,
    i: int,
    masters: list,
    seeds: list,
    s: float,
    amsgrad: bool,
    m: Tensor,
    v: Tensor,
    rounded: bool = False,
) -> tuple[Tensor, Tensor]:
    """Adam's update of param ``i`` from its moments ``m`` and ``v``: the param (and its
    AMSGrad maximum) written, the new moments returned in the opmath dtype. ``rounded``: the
    moments' arithmetic rounded after every operation, as the kernels' (fusedopt/math.h)
    does, where torch's CPU lerp and add(alpha=) fuse a multiply-add: 8-bit states need the
    kernels' moments bit for bit (Note [8-bit states] in quant.py)."""
    beta1, beta2 = a.beta1, a.beta2
    # Note [Tensor lr arithmetic] in _common.py
    decay = lr_arith(a.lr, lambda x: 1 - x * a.weight_decay)
    dt, p, g = load_step(a, i, masters, s)
    step = float(a.state_steps[i].item())
    m = m.to(dt)
    v = v.to(dt)
    if a.decoupled_weight_decay:
        p = p * decay
    elif a.weight_decay != 0:
        g = g + p * a.weight_decay if rounded else g.add(p, alpha=a.weight_decay)
    if rounded:
        w = float(torch.tensor(1 - beta1, dtype=torch.float32))
        m = m + (g - m) * w if abs(w) < 0.5 else g - (g - m) * (1 - w)
        v = v * beta2 + g * (1 - beta2) * g
    else:
        m = m.lerp(g, 1 - beta1)
        v = (v * beta2).addcmul(g, g, value=1 - beta2)
    if amsgrad:
        vmax = a.max_exp_avg_sqs[i].to(dt).maximum(v)
        a.max_exp_avg_sqs[i].copy_(vmax)
        denom_src = vmax
    else:
        denom_src = v
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    denom = denom_src.sqrt() / bias_correction2_sqrt + a.eps
    p = p.addcdiv(m, denom, value=-lr_arith(a.lr, lambda x, bc1=bias_correction1: x / bc1))
    store_param(a.params[i], masters[i], seeds[i], p)
    return m, v


@spec("adam8bit_", prologue=quant.prologue("adam8bit_"))
def adam8bit_(a: Any, masters: list, seeds: list, s: float) -> None:
    r"""Adam / AdamW with 8-bit blockwise moments: each param's moments decoded (Note [8-bit
    states] in quant.py), updated as in :func:`adam_` in fp32, and encoded again, each block
    with its new absmax; the first moment through the signed map ``qmaps[0]``, the second
    through the unsigned one ``qmaps[1]``."""
    signed, unsigned = a.qmaps[0], a.qmaps[1]
    for i in range(len(a.params)):
        m = quant.dequantize(a.exp_avgs[i], a.exp_avg_absmaxs[i], signed)
        v = quant.dequantize(a.exp_avg_sqs[i], a.exp_avg_sq_absmaxs[i], unsigned)
        m, v = _step(a, i, masters, seeds, s, False, m, v, rounded=True)
        quant.update(a.exp_avgs[i], a.exp_avg_absmaxs[i], m, signed)
        quant.update(a.exp_avg_sqs[i], a.exp_avg_sq_absmaxs[i], v, unsigned)
