from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ..reference.adafactor import factored_shapes
from ._base import FusedOptimizer, group_defaults
from ._plan import Bucket


class Adafactor(FusedOptimizer):
    r"""Adafactor (Shazeer & Stern, 2018) as torch.optim.Adafactor computes it, fused.

    The same constructor, defaults, validation, param-group keys and state as
    ``torch.optim.Adafactor`` (``step``; ``row_var`` and ``col_var`` for params of 2 or more
    dims, factored over the last two; ``variance`` for the others), so checkpoints move both
    ways; the results are its for-loop's within fp32 rounding. A matrix's update direction is
    computed factored, rsqrt(R / mean(R)) rsqrt(C) per element instead of rsqrt of the estimate
    (no division per element; Note [factored direction] in csrc/include/fusedopt/math.h): the
    same value to rounding, and finite where torch's fp32 R C underflows or overflows.

    .. math::
        \begin{aligned}
        &t \leftarrow t + 1, \quad \hat\beta_{2} = 1 - t^{\tau}, \quad
            \rho_t = \min(\gamma, 1/\sqrt{t}), \quad
            \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t \\
        &\theta \leftarrow \theta (1 - \gamma\lambda) \\
        &R_t = \hat\beta_{2} R_{t-1} + (1-\hat\beta_{2})\,\mathrm{mean}_{\text{cols}}(G^2), \quad
         C_t = \hat\beta_{2} C_{t-1} + (1-\hat\beta_{2})\,\mathrm{mean}_{\text{rows}}(G^2), \quad
         \hat V_t = \frac{R_t C_t}{\max(\mathrm{mean}(R_t), \epsilon_1)} \\
        &\hat V_t = V_t = \hat\beta_{2} V_{t-1} + (1-\hat\beta_{2}) G^2 \quad
            \text{(params of fewer than 2 dims)} \\
        &U_t = G / \max(\sqrt{\hat V_t}, \epsilon_1), \quad
         \theta_t = \theta - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\,U_t
        \end{aligned}

    Per matrix and step the kernels make three passes: one read of param and grad for
    :math:`\mathrm{RMS}(\theta)` and both the row and the column sums of :math:`G^2`; one read
    of the grad for :math:`\mathrm{RMS}(U)`; one read of param and grad and a write of the param
    for the update (24 bytes per fp32 parameter; a vector: two passes, its variance updated in
    the first). benchmarks/optimizers.py has the bytes model.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float, Tensor, optional): the maximum relative step size :math:`\rho_t`, and the
            weight-decay factor (default: 1e-2).
        beta2_decay (float, optional): :math:`\tau`, the decay rate of :math:`\beta_2`
            (default: -0.8).
        eps (Tuple[float | None, float], optional): :math:`\epsilon_1` in the denominators
            (None: the param dtype's machine epsilon, per (device, dtype) group of params),
            :math:`\epsilon_2`, the least RMS of a param in its step size (default:
            (None, 1e-3)).
        d (float, optional): the update clipping threshold (default: 1.0).
        weight_decay (float, optional): decoupled weight decay :math:`\lambda` (default: 0).
        foreach (bool, optional): accepted for torch.optim compatibility; fusedopt always
            fuses.
        maximize (bool, optional): maximize the objective (default: False).
        backend, max_grad_norm, fused_amp: as in :class:`fusedopt.Adam`. The math runs in fp32
            for fp16/bf16 params (torch.optim.Adafactor computes in their dtype); the master
            weight, stochastic rounding and state dtype options are not offered.
    """

    _op = "adafactor_"
    _sparse_error = "Adafactor does not support sparse gradients"
    _group_fallbacks = {"foreach": None}
    _options = ("backend", "max_grad_norm", "fused_amp")  # no mixed-precision options

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        **options: Any,
    ) -> None:
        # torch.optim.Adafactor's checks and messages, in its order.
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr >= 0.0:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not beta2_decay <= 0.0:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not eps[0] >= 0.0:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not eps[1] >= 0.0:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not d >= 1.0:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        super().__init__(params, group_defaults(locals()), options)

    def _aux_shape(self, key: str, p: Tensor) -> tuple[int, ...] | None:
        shapes = factored_shapes(p)
        if key == "variance":
            return tuple(p.shape) if shapes is None else None
        if shapes is None:
            return None
        return shapes[0] if key == "row_var" else shapes[1]

    def _scalars(self, group: dict[str, Any]) -> dict[str, Any]:
        eps1, eps2 = group["eps"]
        return {
            **super()._scalars(group),
            "eps1": None if eps1 is None else float(eps1),
            "eps2": float(eps2),
        }

    def _launch(self, b: Bucket, values: dict[str, Any]) -> None:
        if values["eps1"] is None:
            values = {**values, "eps1": torch.finfo(b.params[0].dtype).eps}
        super()._launch(b, values)
