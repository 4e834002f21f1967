from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT, _get_scalar_dtype

from ._base import FusedOptimizer, group_defaults
from ._validate import check_args


class LAMB(FusedOptimizer):
    r"""LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning"), fused.

    Adam's direction, rescaled per tensor by the trust ratio :math:`\|\theta\| / \|u\|`. The
    per-tensor norms are reduced inside the fused kernels (fp64 accumulation, no Python loop
    over tensors, no host synchronisation), in two passes over memory: 40 bytes per fp32
    parameter, 22 per bf16 one (Note [LAMB passes] in csrc/cpu/lamb.cpp). Grads are not
    modified. State: ``step``, ``exp_avg``, ``exp_avg_sq``, as timm's and apex's LAMB keep them.

    .. math::
        \begin{aligned}
        &g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \cdot
            \min\!\Big(1, \frac{\text{max\_grad\_norm}}{\|\nabla\|_{\text{global}} + 10^{-6}}\Big)
            \;(- \text{ if maximize}) \\
        &m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \qquad
         v_t \leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        &u_t \leftarrow \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}
            + \lambda\theta_{t-1} \\
        &r_t \leftarrow \|\theta_{t-1}\| / \|u_t\| \text{ per tensor } (1 \text{ if either norm
            is } 0), \text{ clamped to } [0, \text{trust\_clip}] \text{ if set} \\
        &\theta_t \leftarrow \theta_{t-1} - \gamma r_t u_t
        \end{aligned}

    Without bias correction the :math:`1-\beta^t` factors are 1. The global norm is over all
    grads of the optimizer (every group), after AMP unscaling; it is kept in
    ``optimizer.last_grad_norm``. The trust ratio is applied to every tensor, biases and norm
    weights included (unlike timm's default, which skips it where weight_decay is 0).

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float, Tensor, optional): learning rate (default: 1e-3).
        betas (Tuple[float, float], optional): coefficients of the running averages of the
            gradient and its square (default: (0.9, 0.999)).
        eps (float, optional): added to the denominator for numerical stability (default: 1e-6).
        weight_decay (float, optional): weight decay :math:`\lambda`, added to the direction
            before the trust ratio (default: 0.01).
        bias_correction (bool, optional): divide the moments by :math:`1-\beta^t`
            (default: True).
        trust_clip (float, optional): clamp the trust ratio to [0, trust_clip] (default: None,
            no clamp).
        maximize (bool, optional): maximize the objective (default: False).
        backend (str, optional): "auto", "cpu", "cuda", "triton" or "reference"
            (default: "auto"); see :func:`fusedopt.backends`.
        max_grad_norm (float, optional): scale the grads by
            :math:`\min(1, \text{max\_grad\_norm} / (\text{global norm} + 10^{-6}))` first
            (default: None, no clipping).
        master_weights, stochastic_rounding, state_dtype, fused_amp: mixed precision and AMP
            inside the step, as in :class:`fusedopt.Adam` (README "Mixed precision").
    """

    _op = "lamb_"
    _sparse_error = "LAMB does not support sparse gradients"
    _group_fallbacks = {"bias_correction": True, "maximize": False, "trust_clip": None}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        *,
        bias_correction: bool = True,
        trust_clip: float | None = None,
        maximize: bool = False,
        **options: Any,
    ) -> None:
        betas = check_args(lr, betas, eps, weight_decay)
        if trust_clip is not None and not trust_clip > 0.0:
            raise ValueError(f"Invalid trust_clip value: {trust_clip}")
        super().__init__(params, group_defaults(locals()), options)

    def _setstate_groups(self) -> None:
        for group in self.param_groups:
            # timm's Lamb keeps trust_clip as a bool meaning "clamp to 1".
            if isinstance(group["trust_clip"], bool):
                group["trust_clip"] = 1.0 if group["trust_clip"] else None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load torch.optim's state_dict layout, or timm's Lamb's, which keeps the step count
        in each param group (``param_groups[i]["step"]``) instead of each param's state: a
        state without its own ``step`` takes its group's, and the group key is dropped (the
        state's count is the one that advances). The state_dict passed in is not changed."""
        groups = state_dict.get("param_groups", [])
        if any(isinstance(g, dict) and "step" in g for g in groups):
            state = dict(state_dict.get("state", {}))
            new_groups = []
            for g in groups:
                g = dict(g)
                step = g.pop("step", None)
                for pid in g["params"] if step is not None else ():
                    s = state.get(pid)
                    if isinstance(s, dict) and s and "step" not in s:
                        step_t = torch.tensor(float(step), dtype=_get_scalar_dtype())
                        state[pid] = {**s, "step": step_t}
                new_groups.append(g)
            state_dict = {**state_dict, "state": state, "param_groups": new_groups}
        super().load_state_dict(state_dict)
