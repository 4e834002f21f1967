from __future__ import annotations

from typing import Any

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
    beta1, beta2 = a.beta1, a.beta2
    decay = lr_arith(a.lr, lambda x: 1 - x * a.weight_decay)  # Note [Tensor lr arithmetic]
    lr = scalar(a.lr)
    for i, param in enumerate(a.params):
        dt, p, g = load_step(a, i, masters, s)
        m = a.exp_avgs[i].to(dt)
        p = p * decay
        c = (m * beta1).add(g, alpha=1 - beta1)
        p = p.add(c.sign(), alpha=-lr)
        m = (m * beta2).add(g, alpha=1 - beta2)
        store_param(param, masters[i], seeds[i], p)
        a.exp_avgs[i].copy_(m)
