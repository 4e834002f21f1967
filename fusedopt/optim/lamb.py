from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT, _get_scalar_dtype

from ._base import FusedOptimizer, _Bucket
from ._validate import check_betas, check_lr


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
        master_weights, stochastic_rounding, state_dtype: mixed precision, as in
            :class:`fusedopt.Adam` (README "Mixed precision").
        fused_amp (bool, optional): AMP inside the step, as in :class:`fusedopt.Adam`
            (default: True).
    """

    _op = "lamb_"
    _sparse_error = "LAMB does not support sparse gradients"

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
        backend: str = "auto",
        max_grad_norm: float | None = None,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        fused_amp: bool = True,
    ) -> None:
        check_lr(lr)
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        betas = check_betas(betas)
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if trust_clip is not None and not trust_clip > 0.0:
            raise ValueError(f"Invalid trust_clip value: {trust_clip}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "bias_correction": bias_correction,
            "trust_clip": trust_clip,
            "maximize": maximize,
        }
        super().__init__(
            params,
            defaults,
            backend,
            max_grad_norm,
            master_weights=master_weights,
            stochastic_rounding=stochastic_rounding,
            state_dtype=state_dtype,
            fused_amp=fused_amp,
        )

    def _setstate_groups(self) -> None:
        for group in self.param_groups:
            group.setdefault("bias_correction", True)
            group.setdefault("maximize", False)
            # timm's Lamb keeps trust_clip as a bool meaning "clamp to 1".
            clip = group.get("trust_clip")
            if isinstance(clip, bool):
                group["trust_clip"] = 1.0 if clip else None
            group.setdefault("trust_clip", None)

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

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        for key in self._state_keys(group):
            if state.get(key) is None:
                state[key] = self._zeros_state(p, group)

    def _launch(
        self,
        fn: Callable[..., None],
        group: dict[str, Any],
        b: _Bucket,
        grads: list[Tensor],
        lr: Tensor,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
    ) -> None:
        beta1, beta2 = group["betas"]
        clip = group["trust_clip"]
        args = (
            b.params,
            grads,
            b.states[0],
            b.states[1],
            b.steps,
            lr,
            float(beta1),
            float(beta2),
            float(group["weight_decay"]),
            float(group["eps"]),
            bool(group["bias_correction"]),
            None if clip is None else float(clip),
            group["maximize"],
            None,
            grad_scale,
            found_inf,
            b.masters,
            b.seeds,
        )
        if b.mesh_dims is None or not b.mesh_dims[1]:
            plan = self._step_plan(b, [b.params, b.states[0], b.states[1], b.steps])
            if plan is not None:  # the same call, only the grads cross from Python
                plan.call(grads, *args[5:16], 0, None)
            else:
                fn(*args)
            return
        # Note [sharded LAMB]: a param sharded across ranks (FSDP2) has its trust ratio from
        # norms of the whole param: phase 1 returns each shard's sums of squares, which are
        # all-reduced over the ranks holding the other shards before phase 2 applies them.
        mesh, dims = b.mesh_dims
        sq_sums = torch.zeros((len(b.params), 2), dtype=torch.float64, device=b.device)
        fn(*args, 1, sq_sums)
        for d in dims:
            torch.distributed.all_reduce(sq_sums, group=mesh.get_group(d))
        fn(*args, 2, sq_sums)
