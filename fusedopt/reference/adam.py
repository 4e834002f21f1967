from __future__ import annotations

import math
from typing import Any

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
    beta1, beta2 = a.beta1, a.beta2
    # Note [Tensor lr arithmetic] in _common.py
    decay = lr_arith(a.lr, lambda x: 1 - x * a.weight_decay)
    for i, param in enumerate(a.params):
        dt, p, g = load_step(a, i, masters, s)
        step = float(a.state_steps[i].item())
        m = a.exp_avgs[i].to(dt)
        v = a.exp_avg_sqs[i].to(dt)
        if a.decoupled_weight_decay:
            p = p * decay
        elif a.weight_decay != 0:
            g = g.add(p, alpha=a.weight_decay)
        m = m.lerp(g, 1 - beta1)
        v = (v * beta2).addcmul(g, g, value=1 - beta2)
        if a.amsgrad:
            vmax = a.max_exp_avg_sqs[i].to(dt).maximum(v)
            a.max_exp_avg_sqs[i].copy_(vmax)
            denom_src = vmax
        else:
            denom_src = v
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        denom = denom_src.sqrt() / bias_correction2_sqrt + a.eps
        p = p.addcdiv(m, denom, value=-lr_arith(a.lr, lambda x, bc1=bias_correction1: x / bc1))
        store_param(param, masters[i], seeds[i], p)
        a.exp_avgs[i].copy_(m)
        a.exp_avg_sqs[i].copy_(v)
