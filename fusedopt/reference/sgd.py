from __future__ import annotations

from torch import Tensor

from ._common import begin, load_update, scalar, store_param


def sgd_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    is_first_step: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
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
    mixed = begin("sgd_", params, grads, momentum_buffers, lr, momentum, dampening, weight_decay,
                  nesterov, maximize, is_first_step, grad_scale, found_inf, master_params, sr_seeds,
                  like=False)  # fmt: skip
    if mixed is None:
        return
    masters, seeds, s = mixed
    lr = scalar(lr)
    for i, param in enumerate(params):
        dt, p, g = load_update(param, masters[i], grads[i], s, maximize)
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        if momentum != 0:
            if is_first_step:
                buf = g.clone()
            else:
                buf = (momentum_buffers[i].to(dt) * momentum).add(g, alpha=1 - dampening)
            momentum_buffers[i].copy_(buf)
            g = g.add(buf, alpha=momentum) if nesterov else buf
        store_param(param, masters[i], seeds[i], p.add(g, alpha=-lr))
