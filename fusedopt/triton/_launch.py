"""The Triton implementations of the fusedopt ops: validate and stage (``_multi_tensor``), then
launch a fixed number of kernels per call, whatever the number of tensors:

  adam_, lion_, sophia_   increment the step counters; the update        2 launches
  sgd_, sophia_update_hessian_   the update                               1
  lamb_                   steps; partial norms; trust ratios; update  4
  sum_sq                  partial sums; their total                      2 per dtype

Each has the signature of its fusedopt.reference definition (lr a Tensor).
"""

from __future__ import annotations

import contextlib
import importlib

import torch
import triton
from torch import Tensor

from . import _kernels
from . import _multi_tensor as mt
from ._multi_tensor import STEP_BLOCK

# Note [no FMA contraction]
# Triton lets LLVM fuse a*b + c into one fma by default. The kernels keep torch's two roundings
# instead, as the interpreter computes them (the CI tests run there): GPU results are then the
# tested ones bit for bit, and a contraction can't flip Lion's or Sophia's sign(.) near 0. The
# kernels are memory-bound: the fused multiply-adds would buy nothing.
_OPTS = {"enable_fp_fusion": False}

# The mode (interpreter or compiler) the kernels were decorated in: @triton.jit reads
# TRITON_INTERPRET when it runs, at import. If the variable changed since, re-decorate.
_kernels_interpret = mt.interpreting()


def _k():
    global _kernels_interpret
    mode = mt.interpreting()
    if mode != _kernels_interpret:
        importlib.reload(_kernels)
        _kernels_interpret = mode
    return _kernels


def _device_ctx(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _nonzero(x: float, dtype: torch.dtype) -> bool:
    return mt.in_compute_type(x, dtype) != 0.0


def _common(entry: mt.Entry, lr, grad_scale, found_inf):
    """Kernel arguments every update kernel takes."""
    dev = entry.device
    gs = mt.device_scalar(grad_scale, "grad_scale", dev)
    fi = mt.device_scalar(found_inf, "found_inf", dev)
    args = {}
    consts = {
        "ST": mt.ST[entry.dtype],
        "CT": mt.compute_type(entry.dtype),
        "W": entry.width,
        "HAS_GRAD_SCALE": gs is not None,
        "HAS_FOUND_INF": fi is not None,
    }
    if lr is not None:
        lr_ptr, lr_value, from_ptr = mt.lr_arg(lr, dev)
        args["lr_ptr"] = entry.table if lr_ptr is None else lr_ptr
        args["lr_value"] = lr_value
        consts["LR_FROM_PTR"] = from_ptr
    args["grad_scale_ptr"] = entry.table if gs is None else gs
    args["found_inf_ptr"] = entry.table if fi is None else fi
    return args, consts, fi


def _increment_steps(entry: mt.Entry, found_inf: Tensor | None) -> None:
    _k()._increment_steps_kernel[(triton.cdiv(entry.n, STEP_BLOCK),)](
        entry.table,
        entry.n,
        entry.table if found_inf is None else found_inf,
        W=entry.width,
        STEP_T=entry.step_type,
        HAS_FOUND_INF=found_inf is not None,
        BLOCK=STEP_BLOCK,
        **_OPTS,
    )


def adam_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    lr: Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    op = "fusedopt.adam_ (triton)"
    names = ("params", "exp_avgs", "exp_avg_sqs") + (("max_exp_avg_sqs",) if amsgrad else ())
    lists = [params, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    entry = mt.prepare(op, names, lists, state_steps)
    if entry is None:
        mt.validate_grads(op, params, grads)
        return
    grad_tab = mt.grad_table(op, entry, params, grads)
    with _device_ctx(entry.device):
        args, consts, fi = _common(entry, lr, grad_scale, found_inf)
        entry.stage_in(lists, grads)
        _increment_steps(entry, fi)
        if entry.programs:
            _k()._adam_kernel[(entry.programs,)](
                entry.table,
                grad_tab,
                entry.chunks,
                **args,
                beta1=beta1,
                beta2=beta2,
                log2_beta1=mt.log2(beta1),
                log2_beta2=mt.log2(beta2),
                weight_decay=weight_decay,
                eps=eps,
                **consts,
                STEP_T=entry.step_type,
                DECOUPLED=decoupled_weight_decay,
                AMSGRAD=amsgrad,
                MAXIMIZE=maximize,
                WEIGHT_DECAY=_nonzero(weight_decay, entry.dtype),
                LERP_LOW=mt.in_compute_type(1.0 - beta1, entry.dtype) < 0.5,
                ALIGNED=entry.aligned and entry.grads_aligned,
                CHUNK=entry.chunk,
                BLOCK=mt.block(),
                **_OPTS,
            )
        entry.stage_out(lists, (True,) * len(lists))


def sgd_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    lr: Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    is_first_step: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    op = "fusedopt.sgd_ (triton)"
    has_momentum = momentum != 0
    names = ("params", "momentum_buffers") if has_momentum else ("params",)
    lists = [params, momentum_buffers] if has_momentum else [params]
    entry = mt.prepare(op, names, lists)
    if entry is None:
        mt.validate_grads(op, params, grads)
        return
    grad_tab = mt.grad_table(op, entry, params, grads)
    with _device_ctx(entry.device):
        args, consts, _ = _common(entry, lr, grad_scale, found_inf)
        entry.stage_in(lists, grads)
        if entry.programs:
            _k()._sgd_kernel[(entry.programs,)](
                entry.table,
                grad_tab,
                entry.chunks,
                **args,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                **consts,
                MOMENTUM=has_momentum,
                FIRST=is_first_step,
                NESTEROV=nesterov,
                MAXIMIZE=maximize,
                WEIGHT_DECAY=_nonzero(weight_decay, entry.dtype),
                ALIGNED=entry.aligned and entry.grads_aligned,
                CHUNK=entry.chunk,
                BLOCK=mt.block(),
                **_OPTS,
            )
        entry.stage_out(lists, (True,) * len(lists))


def lion_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    state_steps: list[Tensor],
    lr: Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    op = "fusedopt.lion_ (triton)"
    lists = [params, exp_avgs]
    entry = mt.prepare(op, ("params", "exp_avgs"), lists, state_steps)
    if entry is None:
        mt.validate_grads(op, params, grads)
        return
    grad_tab = mt.grad_table(op, entry, params, grads)
    with _device_ctx(entry.device):
        args, consts, fi = _common(entry, lr, grad_scale, found_inf)
        entry.stage_in(lists, grads)
        _increment_steps(entry, fi)
        if entry.programs:
            _k()._lion_kernel[(entry.programs,)](
                entry.table,
                grad_tab,
                entry.chunks,
                **args,
                beta1=beta1,
                beta2=beta2,
                weight_decay=weight_decay,
                **consts,
                MAXIMIZE=maximize,
                ALIGNED=entry.aligned and entry.grads_aligned,
                CHUNK=entry.chunk,
                BLOCK=mt.block(),
                **_OPTS,
            )
        entry.stage_out(lists, (True, True))


def sophia_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    state_steps: list[Tensor],
    lr: Tensor,
    beta1: float,
    rho: float,
    bs: float,
    weight_decay: float,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    from ..reference.sophia import SOPHIA_EPS

    op = "fusedopt.sophia_ (triton)"
    lists = [params, exp_avgs, hessians]
    entry = mt.prepare(op, ("params", "exp_avgs", "hessians"), lists, state_steps)
    if entry is None:
        mt.validate_grads(op, params, grads)
        return
    grad_tab = mt.grad_table(op, entry, params, grads)
    with _device_ctx(entry.device):
        args, consts, fi = _common(entry, lr, grad_scale, found_inf)
        entry.stage_in(lists, grads)
        _increment_steps(entry, fi)
        if entry.programs:
            _k()._sophia_kernel[(entry.programs,)](
                entry.table,
                grad_tab,
                entry.chunks,
                **args,
                beta1=beta1,
                rho_bs=rho * bs,
                weight_decay=weight_decay,
                eps=SOPHIA_EPS,
                **consts,
                MAXIMIZE=maximize,
                ALIGNED=entry.aligned and entry.grads_aligned,
                CHUNK=entry.chunk,
                BLOCK=mt.block(),
                **_OPTS,
            )
        entry.stage_out(lists, (True, True, False))


def sophia_update_hessian_(
    hessians: list[Tensor],
    grads: list[Tensor],
    beta2: float,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    op = "fusedopt.sophia_update_hessian_ (triton)"
    lists = [hessians]
    entry = mt.prepare(op, ("hessians",), lists)
    if entry is None:
        mt.validate_grads(op, hessians, grads)
        return
    grad_tab = mt.grad_table(op, entry, hessians, grads)
    with _device_ctx(entry.device):
        args, consts, _ = _common(entry, None, grad_scale, found_inf)
        entry.stage_in(lists, grads)
        if entry.programs:
            _k()._sophia_hessian_kernel[(entry.programs,)](
                entry.table,
                grad_tab,
                entry.chunks,
                **args,
                beta2=beta2,
                **consts,
                ALIGNED=entry.aligned and entry.grads_aligned,
                CHUNK=entry.chunk,
                BLOCK=mt.block(),
                **_OPTS,
            )
        entry.stage_out(lists, (True,))


def lamb_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    lr: Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    bias_correction: bool,
    trust_clip: float | None,
    maximize: bool,
    tensor_norms: Tensor | None = None,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    op = "fusedopt.lamb_ (triton)"
    lists = [params, exp_avgs, exp_avg_sqs]
    entry = mt.prepare(op, ("params", "exp_avgs", "exp_avg_sqs"), lists, state_steps)
    n = len(params)
    if tensor_norms is not None and not (
        tensor_norms.is_floating_point()
        and tensor_norms.dim() == 2
        and tuple(tensor_norms.shape) == (n, 2)
        and (entry is None or tensor_norms.device == entry.device)
    ):
        raise RuntimeError(
            f"{op}: tensor_norms must be a floating-point tensor of shape ({n}, 2) on the "
            f"params' device, got {tensor_norms.dtype} {list(tensor_norms.shape)} on "
            f"{tensor_norms.device}"
        )
    if entry is None:
        mt.validate_grads(op, params, grads)
        return
    grad_tab = mt.grad_table(op, entry, params, grads)
    partials = entry.scratch.get("partials")
    if partials is None:
        partials = entry.scratch["partials"] = torch.empty(
            (max(entry.programs, 1), 2), dtype=torch.float64, device=entry.device
        )
        entry.scratch["neg_steps"] = torch.empty(n, dtype=torch.float64, device=entry.device)
    neg_steps = entry.scratch["neg_steps"]
    k = _k()
    with _device_ctx(entry.device):
        args, consts, fi = _common(entry, lr, grad_scale, found_inf)
        entry.stage_in(lists, grads)
        _increment_steps(entry, fi)
        common = {
            "beta1": beta1,
            "beta2": beta2,
            "log2_beta1": mt.log2(beta1),
            "log2_beta2": mt.log2(beta2),
            "weight_decay": weight_decay,
            "eps": eps,
            "ST": consts["ST"],
            "CT": consts["CT"],
            "STEP_T": entry.step_type,
            "W": entry.width,
            # Note [LAMB passes]: with fp32/fp64 storage the norm pass stores the moments
            "EXACT": entry.dtype in (torch.float32, torch.float64),
            "BIAS_CORRECTION": bias_correction,
            "MAXIMIZE": maximize,
            "WEIGHT_DECAY": _nonzero(weight_decay, entry.dtype),
            "HAS_GRAD_SCALE": consts["HAS_GRAD_SCALE"],
            "HAS_FOUND_INF": fi is not None,
            "ALIGNED": entry.aligned and entry.grads_aligned,
            "CHUNK": entry.chunk,
            "BLOCK": mt.block(),
        }
        if entry.programs:
            k._lamb_norms_kernel[(entry.programs,)](
                entry.table,
                grad_tab,
                entry.chunks,
                partials,
                args["grad_scale_ptr"],
                args["found_inf_ptr"],
                **common,
                **_OPTS,
            )
        want_norms = tensor_norms is not None
        k._lamb_ratio_kernel[(n,)](
            entry.ranges,
            partials,
            neg_steps,
            tensor_norms if want_norms else partials,
            tensor_norms.stride(0) if want_norms else 0,
            tensor_norms.stride(1) if want_norms else 0,
            args["lr_ptr"],
            args["found_inf_ptr"],
            lr_value=args["lr_value"],
            trust_clip=0.0 if trust_clip is None else trust_clip,
            LR_FROM_PTR=consts["LR_FROM_PTR"],
            HAS_CLIP=trust_clip is not None,
            WANT_NORMS=want_norms,
            HAS_FOUND_INF=fi is not None,
            BLOCK=256,
            **_OPTS,
        )
        if entry.programs:
            k._lamb_apply_kernel[(entry.programs,)](
                entry.table,
                grad_tab,
                entry.chunks,
                neg_steps,
                args["grad_scale_ptr"],
                args["found_inf_ptr"],
                **common,
                **_OPTS,
            )
        entry.stage_out(lists, (True, True, True))


def sum_sq(tensors: list[Tensor]) -> Tensor:
    op = "fusedopt.sum_sq (triton)"
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    device = tensors[0].device
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    total: Tensor | None = None
    for (dev, _), group in groups.items():
        entry = mt.prepare(op, ("tensors",), [group])
        assert entry is not None
        partials = entry.scratch.get("partials")
        if partials is None:
            partials = entry.scratch["partials"] = torch.empty(
                max(entry.programs, 1), dtype=torch.float64, device=dev
            )
        out = torch.zeros((), dtype=torch.float64, device=dev)
        with _device_ctx(dev):
            entry.stage_in([group], None)
            if entry.programs:
                _k()._sum_sq_kernel[(entry.programs,)](
                    entry.table,
                    entry.chunks,
                    partials,
                    ST=mt.ST[entry.dtype],
                    CT=mt.compute_type(entry.dtype),
                    W=entry.width,
                    ALIGNED=entry.aligned,
                    CHUNK=entry.chunk,
                    BLOCK=mt.block(),
                    **_OPTS,
                )
                _k()._sum_kernel[(1,)](partials, entry.programs, out, BLOCK=1024, **_OPTS)
        out = out.to(device)
        total = out if total is None else total + out
    assert total is not None
    return total


__all__ = [
    "adam_",
    "lamb_",
    "lion_",
    "sgd_",
    "sophia_",
    "sophia_update_hessian_",
    "sum_sq",
]
