from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from .._opdefs import OPS
from ._base import FusedOptimizer, group_defaults
from ._plan import Bucket
from ._q8 import States8bit
from ._validate import check_fused_flags, check_lr

#: Per op, its lists: one tensor per param.
_LISTS = {op: {a.name for a in OPS[op].args if a.is_list} for op in ("sgd_", "sgd8bit_")}


class SGD(States8bit, FusedOptimizer):
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
        backend, max_grad_norm, master_weights, stochastic_rounding, state_dtype,
            min_8bit_size, fused_amp: as in :class:`fusedopt.Adam` (README "Mixed precision",
            "Training frameworks"); ``state_dtype="int8_blockwise"`` keeps ``momentum_buffer``
            in 8 bits through the signed map, the first step's buffer the quantized grad
            (Note [8-bit optimizer states] in fusedopt/optim/_q8.py).
    """

    _op = "sgd_"
    _op_8bit = "sgd8bit_"
    _sparse_error = "`_fused_sgd` does not support sparse gradients"
    _group_fallbacks = {
        "nesterov": False,
        "maximize": False,
        "foreach": None,
        "differentiable": False,
        "fused": False,
    }
    # A missing momentum_buffer starts from the grad, as in torch.optim.SGD; an fp32 one has
    # no absmax.
    _may_lack = ("momentum_buffer", "momentum_buffer_absmax")

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
        **options: Any,
    ) -> None:
        check_lr(lr)
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        check_fused_flags(foreach, differentiable, fused)
        super().__init__(params, group_defaults(locals()), options)

    def _has_moments(self, group: dict[str, Any]) -> bool:
        return group["momentum"] != 0

    def _scalars(self, group: dict[str, Any]) -> dict[str, Any]:
        return {**super()._scalars(group), "is_first_step": False}

    def _launch(self, b: Bucket, values: dict[str, Any]) -> None:
        """Note [skipped first SGD step]
        The step that creates momentum buffers (zeros, not empty_like as torch's fused SGD)
        sets them to the grad (is_first_step), as torch clones it. If GradScaler skips that
        step (found_inf), the buffers must stay "not yet created": torch's fused SGD leaves
        them as empty_like garbage that the next step then reads. Here they are zeros, and the
        bucket keeps them fresh when the step knows it was skipped. It knows for free when
        found_inf is on the CPU; on a GPU it reads found_inf (one sync, on this first step
        only) when dampening != 0, and otherwise need not know: with dampening 0, updating a
        zero buffer (momentum * 0 + grad) is the first step's buffer = grad.
        """
        if b.fresh is None or not values["momentum_buffers"]:
            self._call(b.op, b, values)
            b.fresh = None
            return
        # The step that creates some buffers: those take the grad, the others update.
        for first in (False, True):
            sel = [i for i, f in enumerate(b.fresh) if f == first]
            if sel:
                part = {
                    k: [v[i] for i in sel] if k in _LISTS[b.op] and v else v
                    for k, v in values.items()
                }
                self._call(b.op, b, {**part, "is_first_step": first}, plan=False)
        found_inf = values["found_inf"]
        if (
            found_inf is None
            or (found_inf.device.type != "cpu" and values["dampening"] == 0.0)
            or not bool(found_inf)
        ):
            b.fresh = None
