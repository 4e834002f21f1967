from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import FusedOptimizer, _Bucket
from ._validate import check_fused_flags, check_lr


class SGD(FusedOptimizer):
    r"""Stochastic gradient descent with optional momentum, fused.

    A drop-in for :class:`torch.optim.SGD`: same arguments, defaults, param groups and
    ``state_dict`` layout (``momentum_buffer`` when momentum is non-zero; no ``step``).

    .. math::
        \begin{aligned}
        &g_t \leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) + \lambda\theta_{t-1} \\
        &\textbf{if } \mu \neq 0:\; b_t \leftarrow g_t \text{ if } t = 1
            \text{ else } \mu b_{t-1} + (1-\tau) g_t;\;
            g_t \leftarrow g_t + \mu b_t \text{ if nesterov else } b_t \\
        &\theta_t \leftarrow \theta_{t-1} - \gamma g_t
        \end{aligned}

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float, Tensor, optional): learning rate (default: 1e-3).
        momentum (float, optional): momentum factor (default: 0).
        dampening (float, optional): dampening for momentum (default: 0).
        weight_decay (float, optional): weight decay, L2 penalty (default: 0).
        nesterov (bool, optional): Nesterov momentum (default: False).
        maximize (bool, optional): maximize the objective (default: False).
        foreach (bool, optional): accepted for compatibility; fusedopt is always fused.
        differentiable (bool, optional): not supported; True raises (default: False).
        fused (bool, optional): accepted for compatibility; fusedopt is always fused.
        backend (str, optional): "auto", "cpu", "cuda", "triton" or "reference"
            (default: "auto").
        max_grad_norm (float, optional): clip the global grad norm inside the step, as in
            :class:`fusedopt.Adam` (default: None).
        master_weights, stochastic_rounding, state_dtype: mixed precision, as in
            :class:`fusedopt.Adam` (README "Mixed precision").
        fused_amp (bool, optional): AMP inside the step, as in :class:`fusedopt.Adam`
            (default: True).
    """

    _op = "sgd_"
    _sparse_error = "`_fused_sgd` does not support sparse gradients"
    _has_step = False

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        fused_amp: bool = True,
    ) -> None:
        check_lr(lr)
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        check_fused_flags(foreach, differentiable, fused)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
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
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _required_state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ()  # a missing momentum_buffer starts from the grad, as in torch.optim.SGD

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        # Filled by the kernel on this first step (is_first_step): buffer = grad, as torch clones.
        # Zeros, not empty_like as torch's fused SGD: see Note [skipped first SGD step].
        state["momentum_buffer"] = self._zeros_state(p, group)

    def _launch(
        self,
        fn: Callable[..., None],
        group: dict[str, Any],
        b: _Bucket,
        grads: list[Tensor],
        lr: Tensor,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
    ) -> bool:
        """Note [skipped first SGD step]
        The step that creates momentum buffers sets them to the grad (is_first_step). If
        GradScaler skips that step (found_inf), the buffers must stay "not yet created": torch's
        fused SGD leaves them as empty_like garbage that the next step then reads. Here they are
        zeros, and the step keeps them fresh (returns True) when it knows it was skipped. It
        knows for free when found_inf is on the CPU; on a GPU it reads found_inf (one sync, on
        this first step only) when dampening != 0, and otherwise need not know: with dampening 0,
        updating a zero buffer (momentum * 0 + grad) is the first step's buffer = grad.
        """
        args = (
            float(group["momentum"]),
            float(group["dampening"]),
            float(group["weight_decay"]),
            group["nesterov"],
            group["maximize"],
        )
        bufs = b.states[0] if b.states else []
        if b.fresh is None or not bufs:
            scalars = (lr, *args, False)
            self._call(fn, b, [b.params, bufs], grads, scalars, grad_scale, found_inf)
            return False
        # The step that creates some buffers: those take the grad, the others update.
        for first in (False, True):
            sel = [i for i, f in enumerate(b.fresh) if f == first]
            if sel:
                fn(
                    [b.params[i] for i in sel],
                    [grads[i] for i in sel],
                    [bufs[i] for i in sel],
                    lr,
                    *args,
                    first,
                    grad_scale,
                    found_inf,
                    *b.select(sel),
                )
        if found_inf is None:
            return False
        if found_inf.device.type != "cpu" and float(group["dampening"]) == 0.0:
            return False  # zero buffers make a skipped first step harmless
        return bool(found_inf)
