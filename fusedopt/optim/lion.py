from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import FusedOptimizer, group_defaults
from ._q8 import States8bit
from ._validate import check_args


class Lion(States8bit, FusedOptimizer):
    r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"), fused.

    One kernel per (device, dtype) group and step, moving 20 bytes per fp32 parameter (read
    param, grad, exp_avg; write param, exp_avg). State: ``step``, ``exp_avg``, as lion-pytorch
    keeps it (its checkpoints load; ``step`` is created when missing).

    .. math::
        \begin{aligned}
        &g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \;(- \text{ if maximize}) \\
        &\theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma\lambda)
            \qquad \text{(decoupled weight decay)} \\
        &c_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        &\theta_t \leftarrow \theta_{t-1} - \gamma\,\mathrm{sign}(c_t)
            \qquad (\mathrm{sign}(0) = 0) \\
        &m_t \leftarrow \beta_2 m_{t-1} + (1-\beta_2) g_t
        \end{aligned}

    The update has the same magnitude :math:`\gamma` in every coordinate, so Lion wants a
    learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger for the same
    effective decay :math:`\gamma\lambda`.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float, Tensor, optional): learning rate (default: 1e-4). A Tensor lr never causes a
            torch.compile recompilation when its value changes; the decay factor
            :math:`1-\gamma\lambda` is computed in its dtype, as torch.optim's AdamW does.
        betas (Tuple[float, float], optional): :math:`\beta_1` interpolates the update
            direction, :math:`\beta_2` the momentum (default: (0.9, 0.99)).
        weight_decay (float, optional): decoupled weight decay :math:`\lambda` (default: 0).
        maximize (bool, optional): maximize the objective (default: False).
        backend, max_grad_norm, master_weights, stochastic_rounding, state_dtype,
            min_8bit_size, fused_amp: as in :class:`fusedopt.Adam` (README "Mixed precision",
            "Training frameworks"); ``state_dtype="int8_blockwise"`` keeps ``exp_avg`` in 8
            bits through the signed map (Note [8-bit optimizer states] in
            fusedopt/optim/_q8.py).
    """

    _op = "lion_"
    _op_8bit = "lion8bit_"
    _sparse_error = "Lion does not support sparse gradients"
    _group_fallbacks = {"maximize": False}
    # lion-pytorch's and timm's checkpoints have no step; an fp32 checkpoint has no absmax
    _may_lack = ("step", "exp_avg_absmax")

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-4,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        **options: Any,
    ) -> None:
        betas = check_args(lr, betas, weight_decay=weight_decay)
        super().__init__(params, group_defaults(locals()), options)
