"""The Triton implementations of the fusedopt ops: validate and stage (``_multi_tensor``), then
launch a fixed number of kernels per call, whatever the number of tensors:

  adam_, lion_, sophia_   increment the step counters (and SR seeds); the update   2 launches
  sgd_, schedule_free_adamw_  (increment the SR seeds;) the update                 1 (2)
  sophia_update_hessian_  the update                                               1
  muon_, muon_momentum_   (increment the SR seeds;) the update                     1 (2)
  schedule_free_swap_     (increment the SR seeds;) the update                     1 (2)
  lamb_                   steps and seeds; partial norms; trust ratios; update     4
      phase 1             steps; partial norms; sums of squares                    3
      phase 2             (seeds;) trust ratios; update                            2 (3)
  sum_sq                  partial sums; their total                                2 per dtype

Each has the signature of its fusedopt.reference definition (lr a Tensor), mixed precision
included (master_params, sr_seeds, state dtypes: Note [mixed dtypes] in _multi_tensor.py).

Note [generic launch]
What is common to the ops is read from their registry entries (fusedopt/_opdefs.py), by role:
the table's lists (the params, or sophia_update_hessian_'s hessians, then the state lists the
call has (a list with a ``when`` scalar only when that is true), then the masters), the step
counters and SR seeds (incremented in one launch before the update), the lr, GradScaler's
grad_scale / found_inf and the mixed-precision columns: validation, staging and these kernel
arguments are handled once (:func:`_stage`). Every op but LAMB and sum_sq (written out below)
is an elementwise update: one launch of _kernels._update_kernel (Note [update kernel]) with
the op's tile and scalars functions (``_<name>_tile``, ``_<name>_scalars``), its float scalars
as the hyperparameters and its bool scalars as the tile's flags, unless an :class:`Update` in
``_UPDATES`` says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._opdefs import AMP, LR, MASTER, OPS, PARAM, SCALAR, SEED, STATE, STEP, OpDef
from .._ops import wrapper
from ..reference import quant
from ..reference._common import check_call
from ..reference.sophia import SOPHIA_EPS
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


@dataclass(eq=False)
class _Call:
    """A validated call with params: its table entry, lists and grads' table, and the kernel
    arguments every update kernel of the op takes (Note [generic launch])."""

    name: str
    values: dict[str, Any]
    entry: mt.Entry
    names: tuple[str, ...]
    lists: list[list[Tensor]]
    grad_table: Tensor
    grad_dtype: torch.dtype
    found_inf: Tensor | None = None
    kernel_args: dict[str, Any] | None = None

    def written(self) -> tuple[bool, ...]:
        """Which lists the op writes (the registry's), for stage_out."""
        return tuple(OPS[self.name].arg(n).write for n in self.names)


def _stage(
    name: str,
    values: dict[str, Any],
    states: tuple[str, ...] | None = None,
    grad_dtype: Callable[[str, dict[str, Any], mt.Entry], torch.dtype] | None = None,
    check: Callable[[str, mt.Entry | None], None] | None = None,
) -> _Call | None:
    """Validates and prepares a call of op ``name`` (Note [generic launch]): ``states`` are the
    state lists it has (default: all of the op's), ``grad_dtype`` the grads' dtype (default:
    the params'), ``check`` further validation once the table is known. None if there are no
    params (the grads validated)."""
    d = OPS[name]
    op = f"fusedopt.{name} (triton)"
    first = (d.role(PARAM) or d.role(STATE))[0].name
    if states is None:
        states = tuple(a.name for a in d.role(STATE) if a.name != first)
    masters = values.get("master_params") or None
    seeds = values.get("sr_seeds") or None
    names = (first, *states) + (("master_params",) if masters is not None else ())
    lists = [values[n] for n in names]
    steps = values["state_steps"] if d.role(STEP) else None
    entry = mt.prepare(op, names, lists, steps, master=masters is not None, seeds=seeds)
    if check is not None:
        check(op, entry)
    if entry is None:
        mt.validate_grads(op, values[first], values["grads"])
        return None
    dtype = entry.dtype if grad_dtype is None else grad_dtype(op, values, entry)
    grad_tab = mt.grad_table(op, entry, values[first], values["grads"], dtype)
    return _Call(name, values, entry, names, lists, grad_tab, dtype)


def _kernel_args(d: OpDef, call: _Call) -> None:
    """The arguments of the op's roles (Note [kernel dtypes], Note [mixed dtypes]) into
    call.kernel_args, and GradScaler's found_inf on the device into call.found_inf: on the
    params' device (in _device_ctx)."""
    entry = call.entry
    args: dict[str, Any] = {
        "PT": mt.ST[call.grad_dtype],
        "ST": mt.ST[entry.state_dtype],
        "CT": mt.compute_type(call.grad_dtype),
        "W": entry.width,
        "ALIGNED": entry.aligned and entry.grads_aligned,
        "CHUNK": entry.chunk,
        "BLOCK": mt.block(),
    }
    if d.role(AMP):
        gs = mt.device_scalar(call.values["grad_scale"], "grad_scale", entry.device)
        fi = mt.device_scalar(call.values["found_inf"], "found_inf", entry.device)
        args["grad_scale_ptr"] = entry.table if gs is None else gs
        args["found_inf_ptr"] = entry.table if fi is None else fi
        args["HAS_GRAD_SCALE"] = gs is not None
        args["HAS_FOUND_INF"] = fi is not None
        call.found_inf = fi
    if d.role(LR):
        lr_ptr, lr_value, from_ptr = mt.lr_arg(call.values["lr"], entry.device)
        args["lr_ptr"] = entry.table if lr_ptr is None else lr_ptr
        args["lr_value"] = lr_value
        args["LR_FROM_PTR"] = from_ptr
    if d.role(MASTER):
        args["MASTER"] = entry.master_col >= 0
        args["MASTER_COL"] = max(entry.master_col, 0)
    if d.role(SEED):
        args["SR"] = entry.seed_col >= 0
        args["SEED_COL"] = max(entry.seed_col, 0)
    call.kernel_args = args


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


@dataclass(frozen=True)
class Update:
    """What an elementwise update op adds to the generic launch (Note [generic launch]), where
    the registry does not say it: ``hp``, the names of its hyperparameters in the order its
    SCALARS function in _kernels.py reads them (default: its float scalars); ``flags``, its
    tile's flags after MASTER, SR and HAS_GRAD_SCALE (default: its bool scalars); ``args(values,
    call)``, the values of the names in ``hp`` and ``flags`` that are not its arguments;
    ``grad_dtype``, the grads' dtype when it is not the params' (see _stage)."""

    hp: tuple[str, ...] | None = None
    flags: tuple[str, ...] | None = None
    args: Callable[[dict[str, Any], _Call], dict[str, Any]] | None = None
    grad_dtype: Callable[[str, dict[str, Any], mt.Entry], torch.dtype] | None = None


def _adam_args(v: dict[str, Any], call: _Call) -> dict[str, Any]:
    """What Adam's and LAMB's kernels derive from their moments' arguments."""
    return dict(
        log2_beta1=mt.log2(v["beta1"]),
        log2_beta2=mt.log2(v["beta2"]),
        WEIGHT_DECAY=_nonzero(v["weight_decay"], call.entry.dtype),
        LERP_LOW=mt.in_compute_type(1.0 - v["beta1"], call.entry.dtype) < 0.5,
    )


def _hessian_grad_dtype(op: str, v: dict[str, Any], entry: mt.Entry) -> torch.dtype:
    """The grads have the params' dtype, the hessians Sophia's state dtype (Note [mixed
    dtypes])."""
    grads = v["grads"]
    grad_dtype = grads[0].dtype if len(grads) == len(v["hessians"]) else entry.dtype
    if grad_dtype not in mt.ST or not mt.state_dtype_ok(grad_dtype, entry.dtype):
        raise RuntimeError(
            f"{op}: hessians of dtype {entry.dtype} do not go with grads of dtype {grad_dtype} "
            "(supported: the grads' dtype, or float32 / bfloat16 for float32, float16 and "
            "bfloat16 grads)"
        )
    return grad_dtype


def _muon_momentum_grad_dtype(op: str, v: dict[str, Any], entry: mt.Entry) -> torch.dtype:
    """The grads have the params' dtype, the buffers Muon's state dtype (the table's first
    list) and the updates bf16 or the grads' dtype (its second)."""
    grads, bufs = v["grads"], v["momentum_buffers"]
    grad_dtype = grads[0].dtype if len(grads) == len(bufs) else entry.dtype
    if grad_dtype not in mt.ST or not mt.state_dtype_ok(grad_dtype, entry.dtype):
        raise RuntimeError(
            f"{op}: momentum_buffers of dtype {entry.dtype} do not go with grads of dtype "
            f"{grad_dtype} (supported: the grads' dtype, or float32 / bfloat16 for float32, "
            "float16 and bfloat16 grads)"
        )
    if entry.state_dtype not in (torch.bfloat16, grad_dtype):
        raise RuntimeError(
            f"{op}: updates must be bfloat16 or the grads' dtype, got {entry.state_dtype}"
        )
    return grad_dtype


def _muon_momentum_states(v: dict[str, Any]) -> tuple[str, ...]:
    """The updates, the table's second list; their dtype checked first, with the compiled
    ops' message."""
    updates, grads = v["updates"], v["grads"]
    if updates and grads and updates[0].dtype not in (torch.bfloat16, grads[0].dtype):
        raise RuntimeError(
            "fusedopt.muon_momentum_ (triton): updates must be bfloat16 or the grads' dtype, "
            f"got {updates[0].dtype}"
        )
    return ("updates",)


def _muon_momentum_args(v: dict[str, Any], call: _Call) -> dict[str, Any]:
    return dict(
        momentum=v["momentum"],
        BT=mt.ST[call.entry.dtype],
        NESTEROV=v["nesterov"],
        OMM_LOW=mt.in_compute_type(1.0 - v["momentum"], call.grad_dtype) < 0.5,
        MU_LOW=mt.in_compute_type(v["momentum"], call.grad_dtype) < 0.5,
    )


_UPDATES = {
    "adam_": Update(
        hp=("beta1", "beta2", "log2_beta1", "log2_beta2", "weight_decay", "eps"),
        flags=("decoupled_weight_decay", "amsgrad", "maximize", "WEIGHT_DECAY", "LERP_LOW"),
        args=_adam_args,
    ),
    "sgd_": Update(
        flags=("MOMENTUM", "is_first_step", "nesterov", "maximize", "WEIGHT_DECAY"),
        args=lambda v, call: dict(
            MOMENTUM=v["momentum"] != 0, WEIGHT_DECAY=_nonzero(v["weight_decay"], call.entry.dtype)
        ),
    ),
    # ckp1 and bias_correction2 are one-element tensors, read on the host (one sync each on a
    # GPU): the lerp's form is a flag of the tile.
    "schedule_free_adamw_": Update(
        hp=("beta1", "beta2", "eps", "weight_decay", "ckp1", "bias_correction2"),
        flags=("WEIGHT_DECAY", "LERP_LOW"),
        args=lambda v, call: dict(
            WEIGHT_DECAY=_nonzero(v["weight_decay"], call.entry.dtype),
            LERP_LOW=mt.in_compute_type(float(v["ckp1"]), call.entry.dtype) < 0.5,
        ),
    ),
    "schedule_free_swap_": Update(
        flags=("LERP_LOW",),
        args=lambda v, call: dict(
            LERP_LOW=abs(mt.in_compute_type(v["weight"], call.entry.dtype)) < 0.5,
        ),
    ),
    "sophia_": Update(
        hp=("beta1", "rho_bs", "weight_decay", "eps"),
        args=lambda v, call: dict(rho_bs=v["rho"] * v["bs"], eps=SOPHIA_EPS),
    ),
    "sophia_update_hessian_": Update(grad_dtype=_hessian_grad_dtype),
}
_8BIT = ("adam8bit_", "lion8bit_", "sgd8bit_")  # 8-bit states: _q8, _Q8_OPS
# The ops with passes of their own (below); every other op is an elementwise update.
_OWN = ("lamb_", "sum_sq", "adafactor_", "muon_momentum_", *_8BIT)
_HP_SLOTS = 8  # h0..h7 of _update_kernel


def _update(name: str, values: dict[str, Any]) -> None:
    """An elementwise update op (Note [generic launch]): steps and seeds +1, then the update."""
    d = OPS[name]
    spec = _UPDATES.get(name, Update())
    first = (d.role(PARAM) or d.role(STATE))[0].name
    # a state list with a `when` scalar is passed only when that scalar is nonzero
    states = tuple(
        a.name for a in d.role(STATE) if a.name != first and (a.when is None or values[a.when])
    )
    call = _stage(name, values, states, spec.grad_dtype)
    if call is None:
        return
    entry = call.entry
    with _device_ctx(entry.device):
        _kernel_args(d, call)
        args = dict(call.kernel_args)
        named = {**values, **(spec.args(values, call) if spec.args else {})}
        scalars = [a.name for a in d.role(SCALAR)]
        hp = spec.hp or tuple(n for n in scalars if d.arg(n).type == "float")
        flags = spec.flags or tuple(n for n in scalars if d.arg(n).type == "bool")
        assert len(hp) <= _HP_SLOTS, f"{name}: more hyperparameters than _update_kernel takes"
        hp_values = [float(named[n]) for n in hp] + [0.0] * (_HP_SLOTS - len(hp))
        if not d.role(LR):
            args.update(lr_ptr=entry.table, lr_value=0.0, LR_FROM_PTR=False)
        args.setdefault("MASTER", False)
        args.setdefault("MASTER_COL", 0)
        args.setdefault("SR", False)
        args.setdefault("SEED_COL", 0)
        short = name.rstrip("_")
        k = _k()
        entry.stage_in(call.lists, values["grads"])
        _increment(entry, call.found_inf)
        if entry.programs:
            k._update_kernel[(entry.programs,)](
                entry.table,
                call.grad_table,
                entry.chunks,
                **args,
                **{f"h{i}": x for i, x in enumerate(hp_values)},
                STEP_T=entry.step_type if d.role(STEP) else tl.float32,
                LR_T=mt.lr_type(values["lr"]) if d.role(LR) else tl.float32,
                PARAMS=bool(d.role(PARAM)),
                STATES=len(states),
                STEPS=bool(d.role(STEP)),
                F=(args["MASTER"], args["SR"], args["HAS_GRAD_SCALE"])
                + tuple(bool(named[n]) for n in flags),
                SCALARS=getattr(k, f"_{short}_scalars"),
                TILE=getattr(k, f"_{short}_tile"),
                **_OPTS,
            )
        entry.stage_out(call.lists, call.written())


def _muon_momentum(values: dict[str, Any]) -> None:
    """Muon's momentum: a pass of its own, its three lists in three dtypes (the buffers, the
    grads and the updates: _muon_momentum_grad_dtype)."""
    call = _stage(
        "muon_momentum_", values, _muon_momentum_states(values), _muon_momentum_grad_dtype
    )
    if call is None:
        return
    entry = call.entry
    with _device_ctx(entry.device):
        _kernel_args(OPS["muon_momentum_"], call)
        entry.stage_in(call.lists, values["grads"])
        if entry.programs:
            _k()._muon_momentum_kernel[(entry.programs,)](
                entry.table,
                call.grad_table,
                entry.chunks,
                **call.kernel_args,
                **_muon_momentum_args(values, call),
                **_OPTS,
            )
        entry.stage_out(call.lists, call.written())


def _lamb_check(values: dict[str, Any]) -> Callable[[str, mt.Entry | None], None]:
    """LAMB's own arguments: tensor_norms, phase, sq_sums (Note [LAMB phases])."""

    def check(op: str, entry: mt.Entry | None) -> None:
        n = len(values["params"])
        device = None if entry is None else entry.device
        tensor_norms, phase, sq_sums = values["tensor_norms"], values["phase"], values["sq_sums"]
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

    return check


def _lamb(values: dict[str, Any]) -> None:
    """LAMB: steps and seeds; partial norms; trust ratios; update (Note [LAMB passes], Note
    [LAMB phases] in _kernels.py)."""
    call = _stage("lamb_", values, check=_lamb_check(values))
    if call is None:
        return
    entry, v = call.entry, values
    phase, tensor_norms, sq_sums, trust_clip = (
        v["phase"],
        v["tensor_norms"],
        v["sq_sums"],
        v["trust_clip"],
    )
    n = entry.n
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
        _kernel_args(OPS["lamb_"], call)
        args = dict(call.kernel_args)
        fi = call.found_inf
        entry.stage_in(call.lists, v["grads"])
        # Note [LAMB phases]: phase 1 counts the step, phase 2 advances the seeds
        _increment(entry, fi, steps=phase != 2, seeds=phase != 1)
        lr_ptr, lr_value, lr_from_ptr = (
            args.pop("lr_ptr"),
            args.pop("lr_value"),
            args.pop("LR_FROM_PTR"),
        )
        sr = {"SR": args.pop("SR"), "SEED_COL": args.pop("SEED_COL")}
        common = dict(
            args,
            **{k: v[k] for k in ("beta1", "beta2", "weight_decay", "eps")},
            **_adam_args(v, call),
            STEP_T=entry.step_type,
            EXACT=exact,
            BIAS_CORRECTION=v["bias_correction"],
            MAXIMIZE=v["maximize"],
        )
        del common["LERP_LOW"]  # (LAMB's moments are not a torch.lerp)
        if entry.programs and phase != 2:
            k._lamb_norms_kernel[(entry.programs,)](
                entry.table, call.grad_table, entry.chunks, partials, **common, **_OPTS
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
            lr_ptr,
            args["found_inf_ptr"],
            lr_value=lr_value,
            trust_clip=0.0 if trust_clip is None else trust_clip,
            PHASE=phase,
            LR_FROM_PTR=lr_from_ptr,
            HAS_CLIP=trust_clip is not None,
            WANT_NORMS=want_norms,
            HAS_FOUND_INF=fi is not None,
            BLOCK=256,
            **_OPTS,
        )
        if entry.programs and phase != 1:
            k._lamb_apply_kernel[(entry.programs,)](
                entry.table, call.grad_table, entry.chunks, neg_steps, **common, **sr, **_OPTS
            )
        written = call.written()
        if phase == 1:  # the moments (EXACT) at most
            written = tuple(exact and name in ("exp_avgs", "exp_avg_sqs") for name in call.names)
        entry.stage_out(call.lists, written)


def _sum_sq(tensors: list[Tensor]) -> Tensor:
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


# Rows and columns of a tile of the matrix kernels, elements of a block of the vector ones.
_AF_ROWS, _AF_COLS, _AF_BLOCK = 8, 128, 1024


def _dense(t: Tensor, dt: torch.dtype) -> Tensor:
    """t in the compute dtype, dense: t itself if it is (the kernels write it in place), else a
    copy the caller writes back."""
    return t if t.dtype == dt and t.is_contiguous() else t.to(dt).contiguous()


def _adafactor(values: dict[str, Any]) -> None:
    """Note [Adafactor in Triton]
    Per param the passes of the CPU kernel (Note [Adafactor passes] in csrc/cpu/adafactor.cpp):
    a matrix (batched over its leading dims) is 3 launches, a vector 2; the O(m + n) row and
    column statistics between them, and the per-tensor scalars, are torch ops on the device
    (the host reads the lr, grad_scale and found_inf once per call, as the reference does, and
    nothing per param). fp16/bf16 params are computed on fp32 copies (one more read and write),
    so their rounding is torch's."""
    from ..reference._common import opmath_dtype, scalar
    from ..reference.adafactor import begin_adafactor

    op = "fusedopt.adafactor_ (triton)"
    params, grads, steps = values["params"], values["grads"], values["state_steps"]
    rows_l, cols_l, vars_l = values["row_vars"], values["col_vars"], values["variances"]
    lists = (params, grads, rows_l, cols_l, vars_l, steps)
    s = begin_adafactor(op, lists, values["grad_scale"], values["found_inf"])
    if s is None:
        return
    lr = scalar(values["lr"])
    eps1, eps2, d = values["eps1"], values["eps2"], values["d"]
    eps1_sq = eps1 * eps1
    wd = values["weight_decay"]
    decay = 1 - lr * wd if wd != 0 else 1.0
    gs = -s if values["maximize"] else s
    k = _k()
    for i, param in enumerate(params):
        steps[i] += 1
        n = param.numel()
        if n == 0:
            continue  # it only counts its step
        dt = opmath_dtype(param.dtype)
        ct = tl.float64 if dt == torch.float64 else tl.float32
        step = steps[i].to(param.device, torch.float64)
        w = step ** values["beta2_decay"]
        rho = torch.clamp(1 / step.sqrt(), max=lr)
        p = _dense(param, dt)
        g = _dense(grads[i], dt)
        with _device_ctx(param.device):
            if param.dim() >= 2:
                m_, n_ = param.shape[-2], param.shape[-1]
                b_ = math.prod(param.shape[:-2])
                rb = triton.cdiv(m_, _AF_ROWS)
                programs = b_ * rb
                rowsum = torch.zeros(b_ * m_, dtype=dt, device=param.device)
                colpart = torch.zeros(programs, n_, dtype=dt, device=param.device)
                pp_part = torch.zeros(programs, dtype=dt, device=param.device)
                uu_part = torch.zeros(programs, dtype=dt, device=param.device)
                tile = {"CT": ct, "BR": _AF_ROWS, "BC": _AF_COLS, **_OPTS}
                k._adafactor_sums_kernel[(programs,)](
                    p, g, rowsum, colpart, pp_part, s, m_, n_, rb, **tile
                )
                # the statistics, as the CPU kernel computes them (fp64 sums, one rounding)
                colsum = colpart.double().view(b_, rb, n_).sum(1)
                wt = w.to(dt)
                r = rows_l[i].to(dt).lerp((rowsum.double() / n_).to(dt).view(rows_l[i].shape), wt)
                c = cols_l[i].to(dt).lerp((colsum / m_).to(dt).view(cols_l[i].shape), wt)
                rows_l[i].copy_(r)
                cols_l[i].copy_(c)
                r = _dense(rows_l[i], dt)
                c = _dense(cols_l[i], dt)
                rmean = (r.double().view(b_, m_).sum(1) / m_).to(dt).clamp(min=eps1)
                # Note [factored direction] (csrc/include/fusedopt/math.h)
                rf = (1 / (r.double().view(b_, m_) / rmean.double()[:, None]).sqrt()).to(dt)
                cf = (1 / c.double().sqrt()).to(dt)
                e1 = torch.tensor(eps1_sq, dtype=dt, device=param.device)
                cap = (1 / e1.double().sqrt()).to(dt)  # a tensor: a float arg would be fp32
                k._adafactor_norm_kernel[(programs,)](
                    g, rf, cf, uu_part, gs, cap, m_, n_, rb, **tile
                )
            else:
                v = _dense(vars_l[i], dt)
                programs = triton.cdiv(n, _AF_BLOCK)
                pp_part = torch.zeros(programs, dtype=dt, device=param.device)
                uu_part = torch.zeros(programs, dtype=dt, device=param.device)
                block = {"CT": ct, "BLOCK": _AF_BLOCK, **_OPTS}
                k._adafactor_vector_kernel[(programs,)](
                    p, g, v, pp_part, uu_part, gs, w.to(dt), eps1_sq, n, **block
                )
                if v is not vars_l[i]:
                    vars_l[i].copy_(v)
            sq_n = math.sqrt(n)
            rms = pp_part.double().sum().sqrt() / sq_n
            alpha = torch.where(rms > eps2, rms, eps2) * rho
            clip = uu_part.double().sum().sqrt() / (sq_n * d)
            neg_step = -alpha / torch.where(clip > 1, clip, 1.0)
            if param.dim() >= 2:
                k._adafactor_apply_kernel[(programs,)](
                    p, g, rf, cf, gs, cap, decay, neg_step, m_, n_, rb, **tile
                )
            else:
                k._adafactor_vector_apply_kernel[(programs,)](
                    p, g, v, gs, eps1_sq, decay, neg_step, n, **block
                )
        if p is not param:
            param.copy_(p)


# Blocks of 256 per program of _q8_kernel (tiles of 1,024 elements; 32 under the interpreter,
# where each program costs milliseconds of Python whatever its size).
Q8_ROWS = 4
Q8_INTERPRET_ROWS = 32


@dataclass(frozen=True)
class Q8:
    """An op with 8-bit moments (Note [8-bit kernel]): its (codes, absmax) lists per moment,
    its hyperparameters in its SCALARS function's order, and its tile flags after MASTER, SR
    and HAS_GRAD_SCALE; ``_{name}_scalars`` and ``_{name}8bit_math`` in _kernels.py."""

    name: str
    moments: tuple[tuple[str, str], ...]
    hp: Callable[[dict[str, Any]], tuple[float, ...]]
    flags: Callable[[dict[str, Any]], tuple[bool, ...]]


def _adam_q8_flags(v: dict[str, Any]) -> tuple[bool, ...]:
    return (
        bool(v["decoupled_weight_decay"]),
        False,  # AMSGrad: none with 8-bit states
        bool(v["maximize"]),
        _nonzero(v["weight_decay"], torch.float32),
        mt.in_compute_type(1.0 - v["beta1"], torch.float32) < 0.5,
    )


_Q8_OPS = {
    "adam8bit_": Q8(
        "adam",
        (("exp_avgs", "exp_avg_absmaxs"), ("exp_avg_sqs", "exp_avg_sq_absmaxs")),
        lambda v: (
            v["beta1"],
            v["beta2"],
            mt.log2(v["beta1"]),
            mt.log2(v["beta2"]),
            v["weight_decay"],
            v["eps"],
        ),
        _adam_q8_flags,
    ),
    "lion8bit_": Q8(
        "lion",
        (("exp_avgs", "exp_avg_absmaxs"),),
        lambda v: (v["beta1"], v["beta2"], v["weight_decay"]),
        lambda v: (bool(v["maximize"]),),
    ),
    # the step that creates the buffers decodes them (zeros) and ignores them: buf = g
    "sgd8bit_": Q8(
        "sgd",
        (("momentum_buffers", "momentum_buffer_absmaxs"),),
        lambda v: (v["momentum"], v["dampening"], v["weight_decay"]),
        lambda v: (
            True,  # MOMENTUM: sgd8bit_ runs only with momentum
            bool(v["is_first_step"]),
            bool(v["nesterov"]),
            bool(v["maximize"]),
            _nonzero(v["weight_decay"], torch.float32),
        ),
    ),
}


def _q8(name: str, values: dict[str, Any]) -> None:
    """An update with 8-bit moments (Note [8-bit states] in fusedopt/reference/quant.py): the
    reference's checks, then per param one launch of _q8_kernel over its blocks. A param (or
    grad, or master) that is not contiguous is staged in a contiguous copy: the blocks are
    row-major."""
    spec = _Q8_OPS[name]
    label = f"fusedopt.{name}"
    quant.check_8bit(name, argparse.Namespace(**values))
    masters, seeds = check_call(name, values)  # the reference's checks (begin's), no sync
    params, grads = values["params"], values["grads"]
    steps = values.get("state_steps")
    if not params:
        return
    device = params[0].device
    lists = ("params", "grads", *(n for m in spec.moments for n in m))
    for list_name in (*lists, "state_steps", "master_params", "sr_seeds"):
        for i, t in enumerate(values.get(list_name) or []):
            if t.device != device:
                raise RuntimeError(
                    f"{label} (triton): {list_name}[{i}] is on {t.device}, the params on {device}"
                )
    found_inf = mt.device_scalar(values["found_inf"], "found_inf", device)
    grad_scale = mt.device_scalar(values["grad_scale"], "grad_scale", device)
    lr_ptr, lr_value, lr_from_ptr = mt.lr_arg(values["lr"], device)
    qmaps = values["qmaps"].to(device)
    maps = torch.cat([qmaps, quant.midpoints(qmaps[0])[None], quant.midpoints(qmaps[1])[None]])
    hp = spec.hp(values)
    hp = dict(zip((f"h{i}" for i in range(6)), (*hp, *(0.0,) * (6 - len(hp)))))
    flags = (masters[0] is not None, seeds[0] is not None, grad_scale is not None)
    k = _k()
    with _device_ctx(device):
        # the steps and seeds count, but not where GradScaler found inf
        counters = [*(steps or []), *(s for s in seeds if s is not None)]
        if found_inf is None:
            if counters:  # SGD keeps no steps
                torch._foreach_add_(counters, 1)
        else:
            keep = found_inf == 0
            for c in counters:
                c.add_(keep)
        rows = Q8_INTERPRET_ROWS if mt.interpreting() else Q8_ROWS
        codes = [values[c] for c, _ in spec.moments]
        absmax = [values[a] for _, a in spec.moments]
        for i, param in enumerate(params):
            n = param.numel()
            if n == 0:
                continue
            p = param.contiguous()
            w = masters[i].contiguous() if masters[i] is not None else p
            g = grads[i].contiguous()
            one = steps[i] if steps is not None else g  # a placeholder for unused pointers
            k._q8_kernel[(triton.cdiv(quant.num_blocks(n), rows),)](
                p.view(torch.uint16) if p.dtype == torch.bfloat16 else p,
                w,
                g.view(torch.uint16) if g.dtype == torch.bfloat16 else g,
                codes[0][i],
                codes[-1][i],
                absmax[0][i],
                absmax[-1][i],
                maps,
                one,
                seeds[i] if seeds[i] is not None else one,
                one if lr_ptr is None else lr_ptr,
                one if grad_scale is None else grad_scale,
                one if found_inf is None else found_inf,
                lr_value,
                n=n,
                PT=mt.ST[param.dtype],
                LR_FROM_PTR=lr_from_ptr,
                LR_T=mt.lr_type(values["lr"]),
                HAS_FOUND_INF=found_inf is not None,
                STEPS=steps is not None,
                MOMENTS=len(spec.moments),
                F=flags + spec.flags(values),
                SCALARS=getattr(k, f"_{spec.name}_scalars"),
                MATH=getattr(k, f"_{spec.name}8bit_math"),
                ROWS=rows,
                **hp,
                **_OPTS,
            )
            if p is not param:
                param.copy_(p)
            if masters[i] is not None and w is not masters[i]:
                masters[i].copy_(w)


_RUN: dict[str, Callable[..., Any]] = {
    **{name: (lambda values, name=name: _update(name, values)) for name in OPS if name not in _OWN},
    "lamb_": _lamb,
    "adafactor_": _adafactor,
    "muon_momentum_": _muon_momentum,
    **{name: (lambda values, name=name: _q8(name, values)) for name in _Q8_OPS},
    "sum_sq": lambda values: _sum_sq(values["tensors"]),
}

for _name in _RUN:
    # with the registry's signature: torch.library.custom_op calls it with the schema's arguments
    globals()[_name] = wrapper(
        OPS[_name],
        "    return _run[{name!r}](locals())\n",
        {"_run": _RUN, "__name__": __name__},
        OPS[_name].doc,
    )
del _name

__all__ = list(_RUN)
