from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import FusedOptimizer, group_defaults
from ._q8 import States8bit
from ._validate import check_args, check_fused_flags


class Adam(States8bit, FusedOptimizer):
    r"""Adam (Kingma & Ba, 2015), fused: one kernel per (device, dtype) group and step.

    A drop-in for :class:`torch.optim.Adam`: same arguments, defaults, param groups and
    ``state_dict`` layout (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``).

    .. math::
        \begin{aligned}
        &g_t \leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) \;(- \text{ if maximize}) \\
        &\textbf{if } \lambda \neq 0:\; \textbf{if } \textit{decoupled}:
            \theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma\lambda)
            \;\textbf{else}\; g_t \leftarrow g_t + \lambda\theta_{t-1} \\
        &m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        &v_t \leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        &\hat v_t \leftarrow \max(\hat v_{t-1}, v_t) \text{ if amsgrad else } v_t \\
        &\theta_t \leftarrow \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}
            \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}
        \end{aligned}

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float, Tensor, optional): learning rate (default: 1e-3). A Tensor lr never causes a
            torch.compile recompilation when its value changes; as in torch.optim, the scalars
            derived from it (:math:`1-\gamma\lambda`, :math:`\gamma/(1-\beta_1^t)`) are computed
            in its dtype (a float lr: in float64).
        betas (Tuple[float, float], optional): coefficients of the running averages of the
            gradient and its square (default: (0.9, 0.999)).
        eps (float, optional): added to the denominator for numerical stability (default: 1e-8).
        weight_decay (float, optional): weight decay, L2 penalty (default: 0).
        amsgrad (bool, optional): use the AMSGrad variant (default: False).
        foreach (bool, optional): accepted for compatibility; fusedopt is always fused.
        maximize (bool, optional): maximize the objective (default: False).
        capturable (bool, optional): accepted for compatibility (default: False).
        differentiable (bool, optional): not supported; True raises (default: False).
        fused (bool, optional): accepted for compatibility; fusedopt is always fused.
        decoupled_weight_decay (bool, optional): AdamW-style decay (default: False).
        backend (str, optional): "auto", "cpu", "cuda", "triton" or "reference"
            (default: "auto"); see :func:`fusedopt.backends`.
        max_grad_norm (float, optional): clip the global L2 norm of all grads (of all groups,
            after AMP unscaling) to this value inside the step, as
            ``torch.nn.utils.clip_grad_norm_`` would before it, without a separate pass; the
            norm is kept in ``optimizer.last_grad_norm`` (default: None, no clipping).
        master_weights (bool, optional): keep an fp32 copy of each float16/bfloat16 param in
            its state (``master_param``), update it and round it into the param in the same
            pass (default: False). fp32/fp64 params need none.
        stochastic_rounding (bool, optional): round the fp32 update into bfloat16 params
            stochastically (unbiased), with a per-param seed in state (``sr_seed``); exclusive
            with master_weights; float16 params raise (default: False).
        state_dtype (torch.dtype or str, optional): the dtype of the moments: torch.float32 or
            torch.bfloat16; None keeps the params' dtype, or float32 for half-precision params
            with master_weights/stochastic_rounding (default: None). The math is fp32.
            ``"int8_blockwise"``: 8-bit moments (uint8 codes and one fp32 absmax per block of
            256 elements, bitsandbytes' dynamic maps) for params of ``min_8bit_size`` elements
            or more, fp32 moments for the others; not with amsgrad (Note [8-bit optimizer
            states] in fusedopt/optim/_q8.py).
        min_8bit_size (int, optional): with ``state_dtype="int8_blockwise"``, the smallest
            param (in elements) whose moments are kept in 8 bits (default: 4096).
        fused_amp (bool, optional): True: ``torch.amp.GradScaler`` hands the step its scale
            and inf flag, the grads are unscaled inside the kernel and an inf/NaN step changes
            nothing (``optimizer.step_skipped``), as with torch's ``fused=True``. False:
            GradScaler unscales the grads itself and does not call ``step()`` on an inf/NaN
            step (so ``step_skipped`` stays False), as with torch.optim's default optimizers;
            what Lightning's gradient clipping
            under mixed precision and accelerate's ``step_was_skipped`` (the HF Trainer's lr
            schedule) expect (default: True; README "Training frameworks").
    """

    _op = "adam_"
    _op_8bit = "adam8bit_"
    _sparse_error = "Adam does not support sparse gradients, please consider SparseAdam instead"
    _group_fallbacks = {
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "decoupled_weight_decay": False,
        "fused": None,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        **options: Any,
    ) -> None:
        betas = check_args(lr, betas, eps, weight_decay)
        check_fused_flags(foreach, differentiable, fused)
        defaults = group_defaults(locals())
        # torch.optim.Adam's groups list maximize before foreach (its signature does not): the
        # same key order keeps a state_dict's layout torch's.
        order = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
        super().__init__(params, {**dict.fromkeys(order), **defaults}, options)


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019), fused: Adam with decoupled weight decay.

    A drop-in for :class:`torch.optim.AdamW`: same arguments, defaults (``weight_decay=1e-2``),
    param groups and ``state_dict`` layout. The update is :class:`fusedopt.Adam`'s with
    :math:`\theta \leftarrow \theta(1-\gamma\lambda)` applied before the moment updates.

    Args: as :class:`fusedopt.Adam`, without ``decoupled_weight_decay`` (always True).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        **options: Any,
    ) -> None:
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__", "options")}
        super().__init__(**args, **options, decoupled_weight_decay=True)

    def _setstate_groups(self) -> None:
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
