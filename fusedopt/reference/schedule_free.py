from __future__ import annotations

from typing import Any

from ._common import load_param, opmath_dtype, scalar, spec, store_param


@spec("schedule_free_adamw_")
def schedule_free_adamw_(a: Any, masters: list, seeds: list, s: float) -> None:
    r"""Schedule-Free AdamW (Defazio et al., 2024), one parameter at a time; the params are y.

    .. math::
        g &\leftarrow \nabla / s \qquad (s: \text{AMP grad scale}) \\
        v &\leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        u &\leftarrow g / (\sqrt{v / b_2} + \epsilon) + \lambda y \\
        y &\leftarrow \mathrm{lerp}(y, z, c) + \gamma(\beta_1 (1 - c) - 1)\, u \\
        z &\leftarrow z - \gamma u

    with :math:`\gamma` = lr (the warmed-up one), :math:`c` = ckp1 and :math:`b_2` =
    bias_correction2 (one-element tensors the optimizer derives from its per-group counters). The
    operation order is schedulefree.AdamWScheduleFree's.
    """
    lr, ckp1, bias_correction2 = scalar(a.lr), scalar(a.ckp1), scalar(a.bias_correction2)
    beta2 = a.beta2
    y_step = lr * (a.beta1 * (1 - ckp1) - 1)
    for i, param in enumerate(a.params):
        dt = opmath_dtype(param.dtype)
        y = load_param(param, masters[i], dt)
        g = a.grads[i].to(dt) * s
        z = a.zs[i].to(dt)
        v = (a.exp_avg_sqs[i].to(dt) * beta2).addcmul(g, g, value=1 - beta2)
        u = g / ((v / bias_correction2).sqrt() + a.eps)
        if a.weight_decay != 0:
            u = u.add(y, alpha=a.weight_decay)
        # Products, then sums (two roundings, as the compiled kernels): an ``alpha=`` of a
        # scalar read from a tensor cannot be traced by torch.compile (it branches on alpha).
        y = y.lerp(z, ckp1) + u * y_step
        z = z - u * lr
        store_param(param, masters[i], seeds[i], y)
        a.zs[i].copy_(z)
        a.exp_avg_sqs[i].copy_(v)


@spec("schedule_free_swap_")
def schedule_free_swap_(a: Any, masters: list, seeds: list, _: float) -> None:
    r"""Schedule-Free's train/eval swap, with the z states in the grads' place:

    .. math::
        \theta \leftarrow \mathrm{lerp}(\theta, z, w)

    as schedulefree's ``train()`` (:math:`w = 1 - \beta_1`: x to y) and ``eval()``
    (:math:`w = 1 - 1/\beta_1`: y to x) do it, torch.lerp with a Python float weight. grad_scale
    is not applied: z is not a grad.
    """
    for i, param in enumerate(a.params):
        dt = opmath_dtype(param.dtype)
        p = load_param(param, masters[i], dt).lerp(a.grads[i].to(dt), a.weight)
        store_param(param, masters[i], seeds[i], p)
