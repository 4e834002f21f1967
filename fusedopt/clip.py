"""Gradient clipping by global norm, multi-tensor."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from . import _dispatch


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    r"""Clip the gradient norm of an iterable of parameters, as
    :func:`torch.nn.utils.clip_grad_norm_` (same signature, same result).

    The norm is computed over all gradients together, as if concatenated into one vector, and
    the gradients are scaled in place by :math:`\min(1, \text{max\_norm} / (\|g\| + 10^{-6}))`.
    For the L2 norm on CPU tensors the sum of squares is one fused multi-tensor reduction
    (fp64 accumulation) and the scaling one ``torch._foreach_mul_`` per (device, dtype); other
    norms and devices use torch's implementation. To clip without the extra pass over the
    gradients, give the optimizer ``max_grad_norm=`` instead.

    Args:
        parameters (Iterable[Tensor] or Tensor): tensors whose gradients are clipped.
        max_norm (float): max norm of the gradients.
        norm_type (float): type of the p-norm (default: 2.0).
        error_if_nonfinite (bool): raise if the total norm is nan or inf (default: False).
            Checking needs a host synchronisation, as in torch.
        foreach (bool, optional): accepted for compatibility.

    Returns:
        Total norm of the gradients (viewed as a single vector), in the gradients' dtype.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    params = list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    fused_ok = (
        float(norm_type) == 2.0
        and grads
        and all(g.device.type == "cpu" and not g.is_sparse for g in grads)
        and _dispatch._available("cpu")  # cached: this runs every step
    )
    if not fused_ok:
        return torch.nn.utils.clip_grad_norm_(
            params, max_norm, norm_type, error_if_nonfinite=error_if_nonfinite, foreach=foreach
        )
    total = _dispatch.kernel("cpu", "sum_sq")(grads).sqrt().to(grads[0].dtype)
    if error_if_nonfinite and bool(total.isnan() | total.isinf()):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from "
            "`parameters` is non-finite, so it cannot be clipped. To disable "
            "this error and scale the gradients by the non-finite norm anyway, "
            "set `error_if_nonfinite=False`"
        )
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        torch._foreach_mul_(group, coef)
    return total
