"""The mixed-precision options of an optimizer: master weights, stochastic rounding, state dtype.

Note [mixed-precision options]
The options ``master_weights``, ``stochastic_rounding`` and ``state_dtype`` are optimizer-wide
attributes (not param-group keys, so that ``state_dict()["param_groups"]`` stays torch.optim's).
They add state keys only when on: ``master_param`` (fp32 copy of a float16/bfloat16 param) and
``sr_seed`` (int64, advanced by every step). The dtype of a param's state tensors:
``state_dtype`` if set; float32 for float16/bfloat16 params with ``master_weights`` or
``stochastic_rounding``; else the param's own dtype (as torch.optim). A combination the kernels
are not built for (fusedopt._opdefs.MIXED: float64 params) keeps the param's dtype; float32
params with either option need no master (they are their own).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..reference._common import MIXED_DTYPES, MODE_PARAMS, state_dtype_ok
from . import _dtensor

#: The params that can have an fp32 master copy (and fp32 state by default with either option).
HALF = MODE_PARAMS["master"]
#: Half-precision params stochastic rounding cannot round to (float16): ValueError at the step.
NO_SR = HALF - MODE_PARAMS["stochastic"]
#: The state dtypes a ``state_dtype`` option may name: those the kernels pair with params of
#: another dtype (wider first, as the error message lists them).
_STATE_DTYPES = sorted({s for p, s, _ in MIXED_DTYPES if s != p}, key=lambda d: -d.itemsize)
#: The ``state_dtype`` of 8-bit blockwise moments (Note [8-bit optimizer states] in _q8.py).
INT8 = "int8_blockwise"


def check_options(
    master_weights: bool, stochastic_rounding: bool, sd: torch.dtype | None, where: str
) -> None:
    if sd is not None and sd != INT8 and sd not in _STATE_DTYPES:
        raise ValueError(
            f"{where}: Invalid state_dtype: {sd!r} (supported: None for the params' dtype, "
            f"{', '.join(map(str, _STATE_DTYPES))}, {INT8!r})"
        )
    if master_weights and stochastic_rounding:
        raise ValueError(
            f"{where}: master_weights and stochastic_rounding are exclusive: stochastic "
            "rounding replaces the fp32 master copy"
        )


def state_dtype(opt: Any, p: Tensor) -> torch.dtype:
    """The dtype of p's state tensors under ``opt``'s options (Note [mixed-precision options])."""
    want = opt.state_dtype
    if want == INT8:  # the params that keep fp32 moments (below the 8-bit size threshold)
        want = torch.float32
    if want is None:
        mixed = p.dtype in HALF and (opt.master_weights or opt.stochastic_rounding)
        want = torch.float32 if mixed else p.dtype
    return want if state_dtype_ok(p.dtype, want) else p.dtype


def check_sr_params(opt: Any, groups: list[tuple[dict[str, Any], list[Tensor | None]]]) -> None:
    """Every param with a grad can be rounded stochastically: checked for every group before
    any plan creates state (or draws a seed)."""
    for group, grads in groups:
        for i, p in enumerate(group["params"]):
            if grads[i] is not None and p.dtype in NO_SR:
                raise ValueError(
                    f"fusedopt.{type(opt).__name__}: stochastic_rounding rounds to "
                    f"bfloat16, but parameter {i} is {p.dtype}; use "
                    "master_weights=True for float16 params"
                )


def mode_key(opt: Any, dtype: torch.dtype) -> str | None:
    """The state key of a param's mode: "master_param", "sr_seed", or None (plain)."""
    if dtype not in HALF:
        return None
    if opt.master_weights:
        return "master_param"
    return "sr_seed" if opt.stochastic_rounding else None


def new_master(p: Tensor) -> Tensor:
    """The update runs on this copy from now on (Note [mixed precision] in math.h)."""
    return p.detach().to(torch.float32, memory_format=torch.preserve_format, copy=True)


def new_seed(p: Tensor, mesh: Any) -> Tensor:
    """A stochastic-rounding seed for p, drawn from torch's default generator, so
    torch.manual_seed makes a run reproducible. Every rank holding a replica of a param must
    round it the same way: for DTensor params the seed is broadcast over the mesh (all shards
    and replicas share it); for plain params under DDP, seed torch identically on every rank
    (as DDP's identical initialisation usually does already)."""
    device = p.device if mesh is None else _dtensor.local(p).device
    seed = torch.randint(0, 2**62, (), dtype=torch.int64).to(device)
    if mesh is not None:
        _dtensor.broadcast(seed, mesh)
    return seed


def sync_masters(params: list[Tensor], masters: list[Tensor]) -> None:
    """Note [stale master weights]
    The fp32 master is the param's value only while nothing else writes the param: a model
    checkpoint loaded into the params, ``p.data`` edits, or an optimizer checkpoint that went
    through torch.optim (which keeps our ``master_param`` but never updates it) leave masters
    that no longer round to their params. Whenever a plan is built (the first step, and after
    ``load_state_dict``, ``add_param_group`` or ``invalidate_plans()``), every element whose
    master does not round to the param takes the param's value, so the param wins; elements
    that do round to it keep the master's extra bits. One elementwise pass, no host sync. Params
    written by hand between steps need ``opt.invalidate_plans()`` (as do replaced state tensors),
    else the next step continues from the masters.
    """
    for p, m in zip(params, masters):
        m.copy_(torch.where(m.to(p.dtype) == p, m, p.to(m.dtype)))
