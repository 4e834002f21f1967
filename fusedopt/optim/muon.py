from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import ParamsT

from .. import _dispatch
from .._opdefs import OPS
from ._base import FusedOptimizer, group_defaults
from ._plan import Bucket, Plan
from ._validate import check_args

# Keller Jordan's quintic coefficients and step count, torch.optim.Muon's defaults.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
_ADJUST_LR_FNS = ("original", "match_rms_adamw", "spectral_unclamped")


def newton_schulz(
    x: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> Tensor:
    r"""The quintic Newton-Schulz iteration of torch.optim.Muon on a stack of matrices at once.

    ``x`` is (B, m, n), in the dtype the iteration runs in (bfloat16, as torch's); it is
    normalized in place. Each iteration is three batched matmuls over the whole stack
    (:math:`A = XX^T`, :math:`B = bA + cA^2`, :math:`X = aX + BX`), where torch.optim.Muon makes
    the same three calls per matrix. Tall matrices are iterated transposed (on views, as
    torch does), so the Gram matrices are the small side's. Returns the (B, m, n) result,
    a transposed view for tall matrices.
    """
    a, b, c = coefficients
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    # Each matrix's Frobenius norm bounds its spectral norm: after this it is at most 1.
    x.div_(torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp_(min=eps))
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        gram = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, gram, x, beta=a)
    return x.mT if tall else x


def adjusted_lr_ratio(adjust_lr_fn: str | None, shape: torch.Size | tuple[int, ...]) -> float:
    """torch.optim.Muon's learning-rate factor for a matrix of ``shape`` (A, B)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn == "spectral_unclamped":
        return math.sqrt(rows / cols)
    return 1.0


def _check_ns(coefficients: Any, steps: int) -> None:
    # torch.optim.Muon raises these inside its step, after it has updated the momentum of the
    # params before; fusedopt raises them before anything is written.
    if steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")


def _check_2d(params: Iterable[Tensor]) -> None:
    for p in params:
        if p.ndim != 2:
            raise ValueError(
                "Muon only supports 2D parameters whereas we found a parameter with size: "
                f"{p.size()}"
            )


class Muon(FusedOptimizer):
    r"""Muon (Jordan et al., 2024): momentum orthogonalized by a Newton-Schulz iteration, for the
    2-D weights of hidden layers. A drop-in for :class:`torch.optim.Muon`: same arguments,
    defaults, validation, param groups and ``state_dict`` layout (``momentum_buffer``; their
    checkpoints load both ways).

    .. math::
        \begin{aligned}
        &B_t \leftarrow \mathrm{lerp}(B_{t-1}, g_t, 1-\mu) \\
        &\widetilde B_t \leftarrow \mathrm{lerp}(g_t, B_t, \mu) \text{ if nesterov else } B_t \\
        &O_t \leftarrow \mathrm{NS}^{(a,b,c)}_k(\widetilde B_t; \varepsilon)
            \quad\text{(in bfloat16)} \\
        &\theta_t \leftarrow \theta_{t-1}(1 - \gamma\lambda) - \gamma\,
            \mathrm{AdjustLR}(\mathrm{shape}(\theta))\, O_t
        \end{aligned}

    A step per (device, dtype) group is: one fused kernel for the momentum of every param,
    which writes :math:`\widetilde B_t` straight into a bfloat16 stack per param shape; per
    shape, the Newton-Schulz iteration as three *batched* matmuls per iteration over the
    stack (:func:`newton_schulz`; torch.optim.Muon runs three matmuls per iteration per
    param); and per shape one fused kernel for the decay and the update. The result is
    torch.optim.Muon's up to the rounding of the bfloat16 iteration (a batched matmul may
    round differently from a single one).

    Muon is for 2-D hidden matrices only; :class:`MuonWithAuxAdam` runs it together with
    AdamW for the other params (embeddings, heads, norms, biases).

    Distributed: DDP needs nothing (the grads are all-reduced before the step). FSDP2's sharded
    DTensor params raise NotImplementedError at the first step: orthogonalizing needs each
    whole matrix (gathering it would cost an all-gather and a re-shard of every matrix, every
    step).

    Args:
        params (iterable): 2-D parameters or dicts defining parameter groups.
        lr (float, Tensor, optional): learning rate (default: 1e-3). As torch.optim.Muon
            does, a Tensor lr is read as a Python float each step.
        weight_decay (float, optional): decoupled weight decay :math:`\lambda` (default: 0.1).
        momentum (float, optional): momentum factor :math:`\mu` (default: 0.95).
        nesterov (bool, optional): Nesterov momentum (default: True).
        ns_coefficients (tuple of three floats, optional): the quintic's coefficients
            :math:`(a, b, c)` (default: (3.4445, -4.7750, 2.0315)).
        eps (float, optional): floor of the norm the matrix is divided by (default: 1e-7).
        ns_steps (int, optional): Newton-Schulz iterations :math:`k` (default: 5).
        adjust_lr_fn (str, optional): "original" (:math:`\sqrt{\max(1, A/B)}`),
            "match_rms_adamw" (:math:`0.2\sqrt{\max(A, B)}`) or "spectral_unclamped"
            (:math:`\sqrt{A/B}`) for an A x B matrix; None is "original" (default: None).
        backend (str, optional): "auto", "cpu", "cuda", "triton" or "reference" for the fused
            elementwise kernels (default: "auto"); the matmuls are torch's.
        max_grad_norm, master_weights, stochastic_rounding, state_dtype, fused_amp: as in
            :class:`fusedopt.Adam` (README "Mixed precision"); the Newton-Schulz iteration
            stays bfloat16 whatever the params' dtype, as torch's.
    """

    _op = "muon_"
    _sparse_error = "Muon does not support sparse gradients"

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = NS_EPS,
        ns_steps: int = NS_STEPS,
        adjust_lr_fn: str | None = None,
        **options: Any,
    ) -> None:
        _check_muon_args(lr, weight_decay, momentum, adjust_lr_fn)
        super().__init__(params, group_defaults(locals()), options)
        for group in self.param_groups:
            _check_2d(group["params"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",)

    def _build_plan(
        self, group: dict[str, Any], grads: list[Tensor | None], missing: list[int]
    ) -> Plan:
        plan = super()._build_plan(group, grads, missing)
        if any(b.sharded for b in plan.buckets):
            raise NotImplementedError(
                f"{self._where()}: sharded (FSDP2) DTensor params are not supported: "
                "Newton-Schulz needs each whole matrix (use DDP for Muon's params)"
            )
        return plan

    def _scalars(self, group: dict[str, Any]) -> dict[str, Any]:
        # The group itself rides along for _launch, which makes several calls from it.
        return {"_group": group}

    def _launch(self, b: Bucket, values: dict[str, Any]) -> None:
        group = values.pop("_group")
        self._muon_step(b, values, group)

    def _muon_step(self, b: Bucket, values: dict[str, Any], group: dict[str, Any]) -> None:
        coefficients, ns_steps = group["ns_coefficients"], group["ns_steps"]
        _check_ns(coefficients, ns_steps)
        params, grads = values["params"], values["grads"]
        shapes: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(params):
            shapes.setdefault(tuple(p.shape), []).append(i)
        stacks = {}
        updates: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
        # fp64 params: an fp64 stack, rounded to bf16 below (torch's grad.bfloat16() of its fp64
        # update), as the Triton tables have no (fp64 buffer, bf16 update) pair
        stack_dtype = (
            torch.float64 if params and params[0].dtype == torch.float64 else torch.bfloat16
        )
        for shape, idx in shapes.items():
            stack = torch.empty((len(idx), *shape), dtype=stack_dtype, device=b.device)
            stacks[shape] = stack
            for k, i in enumerate(idx):
                updates[i] = stack[k]
        momentum = OPS["muon_momentum_"].bind(
            momentum_buffers=b.lists["momentum_buffer"],
            grads=grads,
            updates=updates,
            momentum=float(group["momentum"]),
            nesterov=bool(group["nesterov"]),
            grad_scale=values["grad_scale"],
            found_inf=values["found_inf"],
        )
        _dispatch.kernel(b.backend, "muon_momentum_")(*momentum)
        masters, seeds = values.get("master_params"), values.get("sr_seeds")
        for shape, idx in shapes.items():
            o = newton_schulz(stacks[shape].bfloat16(), coefficients, ns_steps, float(group["eps"]))
            dtype = params[idx[0]].dtype
            if o.dtype != dtype or not o.is_contiguous():
                o = torch.empty(o.shape, dtype=dtype, device=o.device).copy_(o)
            self._call(
                "muon_",
                b,
                {
                    "params": [params[i] for i in idx],
                    "grads": list(o.unbind(0)),
                    "lr": values["lr"],
                    "weight_decay": float(group["weight_decay"]),
                    "lr_ratio": adjusted_lr_ratio(group["adjust_lr_fn"], shape),
                    "found_inf": values["found_inf"],
                    "master_params": None if masters is None else [masters[i] for i in idx],
                    "sr_seeds": None if seeds is None else [seeds[i] for i in idx],
                },
                plan=False,
            )


def _check_muon_args(
    lr: float | Tensor, weight_decay: float, momentum: float, adjust_lr_fn: str | None
) -> None:
    """torch.optim.Muon's constructor checks, in its order, with its messages."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not lr >= 0.0:
        raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    if not momentum >= 0.0:
        raise ValueError(f"momentum should be >= 0 but is: {momentum}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight decay should be >= 0 but is: {weight_decay}")
    if adjust_lr_fn is not None and adjust_lr_fn not in _ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")


# The group options of MuonWithAuxAdam, as the Muon reference repository's MuonWithAuxAdam sets
# them (its AdamW groups: lr 3e-4, betas (0.9, 0.95), eps 1e-10, no decay; its Muon groups:
# lr 0.02, momentum 0.95, no decay), the other Muon options torch.optim.Muon's.
_MUON_GROUP = {
    "lr": 0.02,
    "momentum": 0.95,
    "weight_decay": 0.0,
    "nesterov": True,
    "ns_coefficients": NS_COEFFICIENTS,
    "eps": NS_EPS,
    "ns_steps": NS_STEPS,
    "adjust_lr_fn": None,
}
_ADAM_GROUP = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-10, "weight_decay": 0.0}


class MuonWithAuxAdam(Muon):
    r"""Muon for the hidden matrices and AdamW for every other param, in one optimizer.

    Each param group says which it gets with ``use_muon=True`` (2-D hidden weights) or
    ``use_muon=False`` (embeddings, the output head, norms, biases). Muon groups take
    :class:`Muon`'s options (default lr 0.02, momentum 0.95, weight_decay 0, nesterov,
    ns_coefficients, eps 1e-7, ns_steps 5, adjust_lr_fn); AdamW groups take ``lr`` (3e-4),
    ``betas`` ((0.9, 0.95)), ``eps`` (1e-10) and ``weight_decay`` (0, decoupled) and run
    fusedopt's fused AdamW kernel. :func:`muon_param_groups` splits a model the usual way::

        groups = fusedopt.muon_param_groups(
            model, muon={"lr": 0.02, "weight_decay": 0.01}, adam={"lr": 3e-4, "weight_decay": 0.01}
        )
        optimizer = fusedopt.MuonWithAuxAdam(groups)
        for x, y in loader:
            loss_fn(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    State: ``momentum_buffer`` for Muon params; ``step``, ``exp_avg``, ``exp_avg_sq`` for AdamW
    ones (torch.optim's keys). Keyword options (backend, max_grad_norm, mixed precision, AMP)
    are :class:`Muon`'s and apply to both kinds of group.
    """

    def __init__(
        self,
        param_groups: Iterable[dict[str, Any]],
        **options: Any,
    ) -> None:
        groups = []
        for g in param_groups:
            if not isinstance(g, dict) or "use_muon" not in g:
                raise ValueError(
                    "MuonWithAuxAdam takes param groups, each with use_muon=True/False"
                )
            g = dict(g)
            g["use_muon"] = bool(g["use_muon"])
            allowed = {
                **(_MUON_GROUP if g["use_muon"] else _ADAM_GROUP),
                "params": 0,
                "use_muon": 0,
            }
            unknown = set(g) - set(allowed)
            if unknown:
                kind = "Muon" if g["use_muon"] else "AdamW"
                raise ValueError(f"unknown options for a {kind} group: {sorted(unknown)}")
            for k, v in (_MUON_GROUP if g["use_muon"] else _ADAM_GROUP).items():
                g.setdefault(k, v)
            if g["use_muon"]:
                _check_muon_args(g["lr"], g["weight_decay"], g["momentum"], g["adjust_lr_fn"])
            else:
                _check_adam_group(g)
            groups.append(g)
        FusedOptimizer.__init__(self, groups, {}, options)
        for group in self.param_groups:
            if group["use_muon"]:
                _check_2d(group["params"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["use_muon"] else ("exp_avg", "exp_avg_sq")

    def _group_has_step(self, group: dict[str, Any]) -> bool:
        return not group["use_muon"]

    def _launch(self, b: Bucket, values: dict[str, Any]) -> None:
        group = values.pop("_group")
        if group["use_muon"]:
            self._muon_step(b, values, group)
            return
        beta1, beta2 = group["betas"]
        adam = {
            **self._lists("adam_", b, values["grads"]),
            "lr": values["lr"],
            "beta1": float(beta1),
            "beta2": float(beta2),
            "weight_decay": float(group["weight_decay"]),
            "eps": float(group["eps"]),
            "amsgrad": False,
            "maximize": False,
            "decoupled_weight_decay": True,
            "grad_scale": values["grad_scale"],
            "found_inf": values["found_inf"],
        }
        self._call("adam_", b, adam, plan=False)


def _check_adam_group(g: dict[str, Any]) -> None:
    g["betas"] = check_args(g["lr"], g["betas"])
    if not g["eps"] >= 0.0:
        raise ValueError(f"Invalid epsilon value: {g['eps']}")
    if not g["weight_decay"] >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {g['weight_decay']}")


def muon_param_groups(
    model: nn.Module,
    muon: dict[str, Any] | None = None,
    adam: dict[str, Any] | None = None,
    exclude: tuple[str, ...] = ("embed", "lm_head", "wte", "wpe"),
) -> list[dict[str, Any]]:
    """Splits ``model``'s trainable params for :class:`MuonWithAuxAdam`: 2-D weights of hidden
    layers to Muon; embeddings (``nn.Embedding`` params, and a weight tied to one), params whose
    name contains one of ``exclude`` (the output head by its usual names) and every param that
    is not 2-D (norms, biases) to AdamW. ``muon`` and ``adam`` are the two groups' options.
    Returns ``[{"params": ..., "use_muon": True, **muon}, {"params": ..., "use_muon": False,
    **adam}]`` (a group with no params is left out)."""
    embedding = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    hidden, rest, seen = [], [], set()
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        excluded = id(p) in embedding or any(e in name for e in exclude)
        (hidden if p.ndim == 2 and not excluded else rest).append(p)
    groups = [
        {"params": hidden, "use_muon": True, **(muon or {})},
        {"params": rest, "use_muon": False, **(adam or {})},
    ]
    return [g for g in groups if g["params"]]
