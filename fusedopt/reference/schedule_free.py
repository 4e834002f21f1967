from __future__ import annotations

from torch import Tensor

from ._common import begin, load_param, opmath_dtype, scalar, store_param


def schedule_free_adamw_(
    params: list[Tensor],
    grads: list[Tensor],
    zs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    ckp1: Tensor,
    bias_correction2: Tensor,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
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
    mixed = begin("schedule_free_adamw_", params, grads, zs, exp_avg_sqs, lr, beta1, beta2, eps,
                  weight_decay, ckp1, bias_correction2, grad_scale, found_inf,
                  master_params, sr_seeds)  # fmt: skip
    if mixed is None:
        return
    masters, seeds, s = mixed
    lr, ckp1, bias_correction2 = scalar(lr), scalar(ckp1), scalar(bias_correction2)
    y_step = lr * (beta1 * (1 - ckp1) - 1)
    for i, param in enumerate(params):
        dt = opmath_dtype(param.dtype)
        y = load_param(param, masters[i], dt)
        g = grads[i].to(dt) * s
        z = zs[i].to(dt)
        v = (exp_avg_sqs[i].to(dt) * beta2).addcmul(g, g, value=1 - beta2)
        u = g / ((v / bias_correction2).sqrt() + eps)
        if weight_decay != 0:
            u = u.add(y, alpha=weight_decay)
        # Products, then sums (two roundings, as the compiled kernels): an ``alpha=`` of a
        # scalar read from a tensor cannot be traced by torch.compile (it branches on alpha).
        y = y.lerp(z, ckp1) + u * y_step
        z = z - u * lr
        store_param(param, masters[i], seeds[i], y)
        zs[i].copy_(z)
        exp_avg_sqs[i].copy_(v)


def schedule_free_swap_(
    params: list[Tensor],
    grads: list[Tensor],
    weight: float,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
    r"""Schedule-Free's train/eval swap, with the z states in the grads' place:

    .. math::
        \theta \leftarrow \mathrm{lerp}(\theta, z, w)

    as schedulefree's ``train()`` (:math:`w = 1 - \beta_1`: x to y) and ``eval()``
    (:math:`w = 1 - 1/\beta_1`: y to x) do it, torch.lerp with a Python float weight. grad_scale
    is not applied: z is not a grad.
    """
    mixed = begin(
        "schedule_free_swap_",
        params,
        grads,
        weight,
        grad_scale,
        found_inf,
        master_params,
        sr_seeds,
    )
    if mixed is None:
        return
    masters, seeds, _ = mixed
    for i, param in enumerate(params):
        dt = opmath_dtype(param.dtype)
        p = load_param(param, masters[i], dt).lerp(grads[i].to(dt), weight)
        store_param(param, masters[i], seeds[i], p)
