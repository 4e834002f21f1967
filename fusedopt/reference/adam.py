from __future__ import annotations

import math

from torch import Tensor

from ._common import begin, load_update, lr_arith, store_param


def adam_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
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
    mixed = begin("adam_", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr,
                  beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
                  grad_scale, found_inf, master_params, sr_seeds, like=False)  # fmt: skip
    if mixed is None:
        return
    masters, seeds, s = mixed
    # Note [Tensor lr arithmetic] in _common.py
    decay = lr_arith(lr, lambda x: 1 - x * weight_decay)
    for i, param in enumerate(params):
        state_steps[i] += 1
        step = float(state_steps[i].item())
        dt, p, g = load_update(param, masters[i], grads[i], s, maximize)
        m = exp_avgs[i].to(dt)
        v = exp_avg_sqs[i].to(dt)
        if decoupled_weight_decay:
            p = p * decay
        elif weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        m = m.lerp(g, 1 - beta1)
        v = (v * beta2).addcmul(g, g, value=1 - beta2)
        if amsgrad:
            vmax = max_exp_avg_sqs[i].to(dt).maximum(v)
            max_exp_avg_sqs[i].copy_(vmax)
            denom_src = vmax
        else:
            denom_src = v
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        denom = denom_src.sqrt() / bias_correction2_sqrt + eps
        p = p.addcdiv(m, denom, value=-lr_arith(lr, lambda x, bc1=bias_correction1: x / bc1))
        store_param(param, masters[i], seeds[i], p)
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
