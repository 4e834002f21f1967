from __future__ import annotations

from typing import Any

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
    lr, momentum = scalar(a.lr), a.momentum
    for i, param in enumerate(a.params):
        dt, p, g = load_update(param, masters[i], a.grads[i], s, a.maximize)
        if a.weight_decay != 0:
            g = g.add(p, alpha=a.weight_decay)
        if momentum != 0:
            if a.is_first_step:
                buf = g.clone()
            else:
                buf = (a.momentum_buffers[i].to(dt) * momentum).add(g, alpha=1 - a.dampening)
            a.momentum_buffers[i].copy_(buf)
            g = g.add(buf, alpha=momentum) if a.nesterov else buf
        store_param(param, masters[i], seeds[i], p.add(g, alpha=-lr))
