from __future__ import annotations

from torch import Tensor

from ._common import begin, load_update, lr_arith, scalar, store_param


def lion_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
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
    mixed = begin("lion_", params, grads, exp_avgs, state_steps, lr, beta1, beta2, weight_decay,
                  maximize, grad_scale, found_inf, master_params, sr_seeds)  # fmt: skip
    if mixed is None:
        return
    masters, seeds, s = mixed
    decay = lr_arith(lr, lambda x: 1 - x * weight_decay)  # Note [Tensor lr arithmetic]
    lr = scalar(lr)
    for i, param in enumerate(params):
        state_steps[i] += 1
        dt, p, g = load_update(param, masters[i], grads[i], s, maximize)
        m = exp_avgs[i].to(dt)
        p = p * decay
        c = (m * beta1).add(g, alpha=1 - beta1)
        p = p.add(c.sign(), alpha=-lr)
        m = (m * beta2).add(g, alpha=1 - beta2)
        store_param(param, masters[i], seeds[i], p)
        exp_avgs[i].copy_(m)
