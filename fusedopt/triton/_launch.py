"""The Triton implementations of the fusedopt ops: validate and stage (``_multi_tensor``), then
launch a fixed number of kernels per call, whatever the number of tensors:

  adam_, lion_, sophia_   increment the step counters (and SR seeds); the update   2 launches
  sgd_                    (increment the SR seeds;) the update                     1 (2)
  sophia_update_hessian_  the update                                               1
  lamb_                   steps and seeds; partial norms; trust ratios; update     4
      phase 1             steps; partial norms; sums of squares                    3
      phase 2             (seeds;) trust ratios; update                            2 (3)
  sum_sq                  partial sums; their total                                2 per dtype

Each has the signature of its fusedopt.reference definition (lr a Tensor), mixed precision
included (master_params, sr_seeds, state dtypes: Note [mixed dtypes] in _multi_tensor.py).
"""

from __future__ import annotations

import contextlib
import importlib

import torch
import triton
import triton.language as tl
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


def _mixed(master_params: list[Tensor] | None, sr_seeds: list[Tensor] | None):
    """(masters, seeds): None where not used (None or empty)."""
    return (master_params if master_params else None), (sr_seeds if sr_seeds else None)


def _lists(
    names: tuple[str, ...], lists: list[list[Tensor]], masters: list[Tensor] | None
) -> tuple[tuple[str, ...], list[list[Tensor]]]:
    """The table's lists: the params and states, then the masters (Note [mixed dtypes])."""
    if masters is None:
        return names, lists
    return (*names, "master_params"), [*lists, masters]


def _common(entry: mt.Entry, lr, grad_scale, found_inf):
    """Kernel arguments every update kernel takes."""
    dev = entry.device
    gs = mt.device_scalar(grad_scale, "grad_scale", dev)
    fi = mt.device_scalar(found_inf, "found_inf", dev)
    args = {}
    consts = {
        "PT": mt.ST[entry.dtype],
        "ST": mt.ST[entry.state_dtype],
        "CT": mt.compute_type(entry.dtype),
        "MASTER": entry.master_col >= 0,
        "MASTER_COL": max(entry.master_col, 0),
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


def _sr(entry: mt.Entry) -> dict:
    return {"SR": entry.seed_col >= 0, "SEED_COL": max(entry.seed_col, 0)}


def _increment(
    entry: mt.Entry, found_inf: Tensor | None, steps: bool = True, seeds: bool = True
) -> None:
    """+1 on the step counters (``steps``) and SR seeds (``seeds``) the table has, in one
    launch; none if there are neither."""
    step_col = entry.step_col if steps else -1
    seed_col = entry.seed_col if seeds else -1
    if step_col < 0 and seed_col < 0:
        return
    _k()._increment_steps_kernel[(triton.cdiv(entry.n, STEP_BLOCK),)](
        entry.table,
        entry.n,
        entry.table if found_inf is None else found_inf,
        W=entry.width,
        STEP_COL=step_col,
        STEP_T=entry.step_type if step_col >= 0 else tl.float32,
        SEED_COL=seed_col,
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
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
    op = "fusedopt.adam_ (triton)"
    masters, seeds = _mixed(master_params, sr_seeds)
    names, lists = _lists(
        ("params", "exp_avgs", "exp_avg_sqs") + (("max_exp_avg_sqs",) if amsgrad else ()),
        [params, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else []),
        masters,
    )
    entry = mt.prepare(op, names, lists, state_steps, master=masters is not None, seeds=seeds)
    if entry is None:
        mt.validate_grads(op, params, grads)
        return
    grad_tab = mt.grad_table(op, entry, params, grads)
    with _device_ctx(entry.device):
        args, consts, fi = _common(entry, lr, grad_scale, found_inf)
        entry.stage_in(lists, grads)
        _increment(entry, fi)
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
                LR_T=mt.lr_type(lr),
                **_sr(entry),
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
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
    op = "fusedopt.sgd_ (triton)"
    masters, seeds = _mixed(master_params, sr_seeds)
    has_momentum = momentum != 0
    names, lists = _lists(
        ("params", "momentum_buffers") if has_momentum else ("params",),
        [params, momentum_buffers] if has_momentum else [params],
        masters,
    )
    entry = mt.prepare(op, names, lists, master=masters is not None, seeds=seeds)
    if entry is None:
        mt.validate_grads(op, params, grads)
        return
    grad_tab = mt.grad_table(op, entry, params, grads)
    with _device_ctx(entry.device):
        args, consts, fi = _common(entry, lr, grad_scale, found_inf)
        entry.stage_in(lists, grads)
        _increment(entry, fi)  # the seeds (SGD has no step counters)
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
                **_sr(entry),
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
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
    op = "fusedopt.lion_ (triton)"
    masters, seeds = _mixed(master_params, sr_seeds)
    names, lists = _lists(("params", "exp_avgs"), [params, exp_avgs], masters)
    entry = mt.prepare(op, names, lists, state_steps, master=masters is not None, seeds=seeds)
    if entry is None:
        mt.validate_grads(op, params, grads)
        return
    grad_tab = mt.grad_table(op, entry, params, grads)
    with _device_ctx(entry.device):
        args, consts, fi = _common(entry, lr, grad_scale, found_inf)
        entry.stage_in(lists, grads)
        _increment(entry, fi)
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
                LR_T=mt.lr_type(lr),
                **_sr(entry),
                MAXIMIZE=maximize,
                ALIGNED=entry.aligned and entry.grads_aligned,
                CHUNK=entry.chunk,
                BLOCK=mt.block(),
                **_OPTS,
            )
        entry.stage_out(lists, (True,) * len(lists))


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
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
) -> None:
    from ..reference.sophia import SOPHIA_EPS

    op = "fusedopt.sophia_ (triton)"
    masters, seeds = _mixed(master_params, sr_seeds)
    names, lists = _lists(("params", "exp_avgs", "hessians"), [params, exp_avgs, hessians], masters)
    entry = mt.prepare(op, names, lists, state_steps, master=masters is not None, seeds=seeds)
    if entry is None:
        mt.validate_grads(op, params, grads)
        return
    grad_tab = mt.grad_table(op, entry, params, grads)
    with _device_ctx(entry.device):
        args, consts, fi = _common(entry, lr, grad_scale, found_inf)
        entry.stage_in(lists, grads)
        _increment(entry, fi)
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
                LR_T=mt.lr_type(lr),
                **_sr(entry),
                MAXIMIZE=maximize,
                ALIGNED=entry.aligned and entry.grads_aligned,
                CHUNK=entry.chunk,
                BLOCK=mt.block(),
                **_OPTS,
            )
        entry.stage_out(lists, (True, True, False) + ((True,) if masters else ()))


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
    # The grads have the params' dtype, the hessians Sophia's state dtype (Note [mixed dtypes]).
    grad_dtype = grads[0].dtype if len(grads) == len(hessians) else entry.dtype
    if grad_dtype not in mt.ST or not mt.state_dtype_ok(grad_dtype, entry.dtype):
        raise RuntimeError(
            f"{op}: hessians of dtype {entry.dtype} do not go with grads of dtype {grad_dtype} "
            "(supported: the grads' dtype, or float32 / bfloat16 for float32, float16 and "
            "bfloat16 grads)"
        )
    grad_tab = mt.grad_table(op, entry, hessians, grads, grad_dtype)
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
                PT=mt.ST[grad_dtype],
                ST=mt.ST[entry.dtype],
                CT=mt.compute_type(grad_dtype),
                W=entry.width,
                HAS_GRAD_SCALE=consts["HAS_GRAD_SCALE"],
                HAS_FOUND_INF=consts["HAS_FOUND_INF"],
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
    master_params: list[Tensor] | None = None,
    sr_seeds: list[Tensor] | None = None,
    phase: int = 0,
    sq_sums: Tensor | None = None,
) -> None:
    op = "fusedopt.lamb_ (triton)"
    masters, seeds = _mixed(master_params, sr_seeds)
    names, lists = _lists(
        ("params", "exp_avgs", "exp_avg_sqs"), [params, exp_avgs, exp_avg_sqs], masters
    )
    entry = mt.prepare(op, names, lists, state_steps, master=masters is not None, seeds=seeds)
    n = len(params)
    device = None if entry is None else entry.device
    if tensor_norms is not None and not (
        tensor_norms.is_floating_point()
        and tensor_norms.dim() == 2
        and tuple(tensor_norms.shape) == (n, 2)
        and (device is None or tensor_norms.device == device)
    ):
        raise RuntimeError(
            f"{op}: tensor_norms must be a floating-point tensor of shape ({n}, 2) on the "
            f"params' device, got {tensor_norms.dtype} {list(tensor_norms.shape)} on "
            f"{tensor_norms.device}"
        )
    if phase not in (0, 1, 2):
        raise RuntimeError(f"{op}: phase must be 0, 1 or 2, got {phase}")
    if phase and not (
        sq_sums is not None
        and sq_sums.dtype == torch.float64
        and tuple(sq_sums.shape) == (n, 2)
        and (device is None or sq_sums.device == device)
    ):
        got = "None" if sq_sums is None else f"{sq_sums.dtype} {list(sq_sums.shape)}"
        raise RuntimeError(
            f"{op}: phase {phase} needs sq_sums of shape ({n}, 2), float64, on the params' "
            f"device; got {got}"
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
    # Note [LAMB passes]: with states in the compute dtype the norm pass stores the moments
    exact = entry.state_dtype == (torch.float64 if entry.dtype == torch.float64 else torch.float32)
    k = _k()
    with _device_ctx(entry.device):
        args, consts, fi = _common(entry, lr, grad_scale, found_inf)
        entry.stage_in(lists, grads)
        # Note [LAMB phases]: phase 1 counts the step, phase 2 advances the seeds
        _increment(entry, fi, steps=phase != 2, seeds=phase != 1)
        common = {
            "beta1": beta1,
            "beta2": beta2,
            "log2_beta1": mt.log2(beta1),
            "log2_beta2": mt.log2(beta2),
            "weight_decay": weight_decay,
            "eps": eps,
            "PT": consts["PT"],
            "ST": consts["ST"],
            "CT": consts["CT"],
            "MASTER": consts["MASTER"],
            "MASTER_COL": consts["MASTER_COL"],
            "STEP_T": entry.step_type,
            "W": entry.width,
            "EXACT": exact,
            "BIAS_CORRECTION": bias_correction,
            "MAXIMIZE": maximize,
            "WEIGHT_DECAY": _nonzero(weight_decay, entry.dtype),
            "HAS_GRAD_SCALE": consts["HAS_GRAD_SCALE"],
            "HAS_FOUND_INF": fi is not None,
            "ALIGNED": entry.aligned and entry.grads_aligned,
            "CHUNK": entry.chunk,
            "BLOCK": mt.block(),
        }
        if entry.programs and phase != 2:
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
        want_norms = tensor_norms is not None and phase != 1
        k._lamb_ratio_kernel[(n,)](
            entry.ranges,
            partials,
            neg_steps,
            tensor_norms if want_norms else partials,
            tensor_norms.stride(0) if want_norms else 0,
            tensor_norms.stride(1) if want_norms else 0,
            partials if sq_sums is None else sq_sums,
            0 if sq_sums is None else sq_sums.stride(0),
            0 if sq_sums is None else sq_sums.stride(1),
            args["lr_ptr"],
            args["found_inf_ptr"],
            lr_value=args["lr_value"],
            trust_clip=0.0 if trust_clip is None else trust_clip,
            PHASE=phase,
            LR_FROM_PTR=consts["LR_FROM_PTR"],
            HAS_CLIP=trust_clip is not None,
            WANT_NORMS=want_norms,
            HAS_FOUND_INF=fi is not None,
            BLOCK=256,
            **_OPTS,
        )
        if entry.programs and phase != 1:
            k._lamb_apply_kernel[(entry.programs,)](
                entry.table,
                grad_tab,
                entry.chunks,
                neg_steps,
                args["grad_scale_ptr"],
                args["found_inf_ptr"],
                **common,
                **_sr(entry),
                **_OPTS,
            )
        if phase == 1:  # the moments (EXACT) at most
            written = (False, exact, exact) + ((False,) if masters else ())
        else:
            written = (True,) * len(lists)
        entry.stage_out(lists, written)


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
