from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import FusedOptimizer, group_defaults
from ._validate import check_args


class Sophia(FusedOptimizer):
    r"""SophiaG (Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for
    Language Model Pre-training"), fused, as the authors' released code defines it.

    A momentum step preconditioned by an EMA of a diagonal Hessian estimate and clipped
    element-wise. The step reads param, grad, exp_avg and hessian and writes param and exp_avg
    (24 bytes per fp32 parameter); :meth:`update_hessian` reads grad and hessian and writes
    hessian (12 bytes), every k steps. State: ``step``, ``exp_avg``, ``hessian``, as the
    authors' SophiaG keeps it (its checkpoints load).

    .. math::
        \begin{aligned}
        &\textbf{step}(b):\\
        &\quad g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \;(- \text{ if maximize}) \\
        &\quad \theta_{t-1} \leftarrow \theta_{t-1}(1 - \gamma\lambda)
            \qquad \text{(decoupled weight decay)} \\
        &\quad m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        &\quad \theta_t \leftarrow \theta_{t-1} - \gamma\,\mathrm{sign}(m_t)
            \min\!\Big(\frac{|m_t|}{\rho\, b\, h + 10^{-15}},\, 1\Big) \\
        &\textbf{update\_hessian}():\quad h \leftarrow \beta_2 h + (1-\beta_2)\,\hat g \odot \hat g
        \end{aligned}

    **The training-loop recipe** (Gauss-Newton-Bartlett estimator, every k = 10 steps): after
    the regular step, run the model on the same inputs, sample labels from the model's own
    output distribution (not the data's labels), back-propagate the mean loss on those sampled
    labels, and call :meth:`update_hessian`: its grads :math:`\hat g` give
    :math:`b\,\hat g\odot\hat g`, an unbiased estimate of the Gauss-Newton diagonal, where
    :math:`b` is the number of sampled labels the loss averaged over (tokens, for a language
    model). The released code keeps :math:`\hat g\odot\hat g` in ``hessian`` and multiplies by
    :math:`b` in the step, which is why :meth:`step` takes the batch size ``bs``::

        optimizer = fusedopt.Sophia(model.parameters(), lr=2e-4, rho=0.05, weight_decay=0.2)
        for it, (x, y) in enumerate(loader):
            logits = model(x)
            F.cross_entropy(logits.flatten(0, -2), y.flatten()).backward()
            optimizer.step(bs=y.numel())
            optimizer.zero_grad(set_to_none=True)
            if it % k == k - 1:
                logits = model(x)
                y_hat = torch.distributions.Categorical(logits=logits).sample()
                F.cross_entropy(logits.flatten(0, -2), y_hat.flatten()).backward()
                optimizer.update_hessian()
                optimizer.zero_grad(set_to_none=True)

    Until the first :meth:`update_hessian`, ``hessian`` is 0 and the step is
    :math:`-\gamma\,\mathrm{sign}(m)` (Lion-like) wherever :math:`|m| > 10^{-15}`.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float, Tensor, optional): learning rate, the largest per-coordinate step
            (default: 1e-4). The decay factor :math:`1-\gamma\lambda` of a Tensor lr is
            computed in its dtype, as torch.optim's AdamW does.
        betas (Tuple[float, float], optional): coefficients of the running averages of the
            gradient (:math:`\beta_1`) and of the Hessian estimate (:math:`\beta_2`)
            (default: (0.965, 0.99)).
        rho (float, optional): the clipping scale :math:`\rho` (default: 0.04).
        weight_decay (float, optional): decoupled weight decay :math:`\lambda` (default: 0.1).
        maximize (bool, optional): maximize the objective (default: False).
        backend (str, optional): "auto", "cpu", "cuda", "triton" or "reference"
            (default: "auto"); see :func:`fusedopt.backends`.
        max_grad_norm (float, optional): clip the global grad norm inside :meth:`step` (not in
            :meth:`update_hessian`), as in :class:`fusedopt.Adam` (default: None).
        master_weights, stochastic_rounding, state_dtype, fused_amp: mixed precision and AMP
            inside the step, as in :class:`fusedopt.Adam` (README "Mixed precision").
    """

    _op = "sophia_"
    _sparse_error = "Sophia does not support sparse gradients"
    _group_fallbacks = {"maximize": False}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-4,
        betas: tuple[float | Tensor, float | Tensor] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 1e-1,
        *,
        maximize: bool = False,
        **options: Any,
    ) -> None:
        betas = check_args(lr, betas)
        if not rho >= 0.0:
            raise ValueError(f"Invalid rho value: {rho}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, group_defaults(locals()), options)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None, bs: float = 5120) -> float | None:  # type: ignore[override]
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
            bs (int, optional): the batch size :math:`b` of the Hessian estimate: the number of
                sampled labels its loss averaged over (default: 5120, the released code's).
        """
        if not bs > 0:
            raise ValueError(f"Invalid bs (batch size) value: {bs}")
        # The batch size of the step in progress, for _scalars (Note [what a step writes on
        # the optimizer] in _base.py).
        self._by_step["bs"] = bs
        return super().step(closure)

    @torch.no_grad()
    def update_hessian(self) -> None:
        r"""Fold the current grads into the Hessian EMA: :math:`h \leftarrow \beta_2 h +
        (1-\beta_2)\,g \odot g`, one fused kernel per (device, dtype) group.

        Call it after a backward pass on labels sampled from the model (see the class
        docstring), with grads that are not AMP-scaled. Params without a grad are skipped;
        state is created for params that have none yet. ``step`` counts are not changed.
        """
        op = "sophia_update_hessian_"
        for group, b, bgrads in self._plan_work():
            beta2 = float(group["betas"][1])
            self._call(op, b, {**self._lists(op, b, bgrads), "beta2": beta2}, plan=False)

    def _scalars(self, group: dict[str, Any]) -> dict[str, Any]:
        return {**super()._scalars(group), "bs": float(self._by_step.get("bs", 5120))}
