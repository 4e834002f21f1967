"""What every plain-PyTorch definition shares: opmath, AMP, the Tensor-lr arithmetic, the
validation the compiled ops do (run before anything is written), and mixed precision."""

from __future__ import annotations

import functools
import inspect
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._opdefs import LR, MIXED, OPS, STATE


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: fp32 for half-precision storage, else the storage dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def skip_step(found_inf: Tensor | None) -> bool:
    """GradScaler found inf/NaN in the grads: the step must change nothing."""
    return found_inf is not None and bool(found_inf.item() != 0)


def inv_scale(grad_scale: Tensor | None) -> float:
    return 1.0 if grad_scale is None else 1.0 / float(grad_scale.item())


def scalar(x: float | Tensor) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def lr_arith(lr: float | Tensor, f: Callable[[Any], Any]) -> float:
    """Note [Tensor lr arithmetic]
    A scalar derived from the learning rate (AdamW's 1 - lr*wd, Adam's lr/bc1), computed as
    torch.optim computes it: torch keeps a Tensor lr as a 0-d tensor, so ``lr * wd`` and
    ``lr / bc1`` run in the lr's dtype (the Python float operand cast to it, the result rounded
    to it: float32 for an fp32 lr, fp32 math rounded to fp16/bf16 for those), while a float lr
    gives fp64 math. Matching it matters for fp64 params, where an fp32-rounded step size is 6e-8
    away from an fp64 one. ``f`` takes the lr (a CPU tensor or a float) and does the arithmetic.
    """
    if isinstance(lr, Tensor):
        return float(f(lr.detach().to("cpu")))
    return float(f(float(lr)))


def sum_sq(tensors: list[Tensor]) -> Tensor:
    """Sum of squares of every element of every tensor, accumulated in fp64."""
    total = torch.zeros((), dtype=torch.float64, device=tensors[0].device if tensors else "cpu")
    for t in tensors:
        total += t.double().square().sum().to(total.device)
    return total


def check_like_params(op: str, params: list[Tensor], **lists: list[Tensor]) -> None:
    """Each list has one tensor per param, of its shape, as the compiled ops require.

    Checked before anything is written, so that a bad call changes nothing (broadcasting would
    otherwise let some mismatches through silently).
    """
    for name, tensors in lists.items():
        if len(tensors) != len(params):
            raise RuntimeError(
                f"{op}: expected {name} to have {len(params)} tensors (one per param), "
                f"got {len(tensors)}"
            )
        for i, (p, t) in enumerate(zip(params, tensors)):
            if t.shape != p.shape:
                raise RuntimeError(
                    f"{op}: {name}[{i}] has shape {tuple(t.shape)} but its param has shape "
                    f"{tuple(p.shape)}"
                )


# --- mixed precision (Note [mixed precision] in csrc/include/fusedopt/math.h) -----------------
#
# Every backend computes the same function, bit for bit where the storage is dense:
#   * master_params: one fp32 tensor per fp16/bf16 param. The update reads theta from the master,
#     writes the new theta to the master, and rounds it (to nearest even) into the param; the
#     param itself is never read.
#   * sr_seeds: one int64 one-element tensor per bf16 param (no master). The seed is advanced
#     (seed + 1) first; theta is read from the param and the new theta is rounded into it
#     stochastically: its fp32 bit pattern plus 16 random bits, truncated to bf16. The random bits
#     of element j (its index in memory order, or in row-major order for a param that is not
#     dense) are sr_noise(sr_key(seed), j), counter-based hashes (murmur3's finalizer).
#   * states may have their own dtype (all state lists of a call share it): the math runs in the
#     params' opmath dtype; moments are rounded to nearest into the state dtype.

_M32 = 0xFFFFFFFF


def _mul32(h: Tensor, c: int) -> Tensor:
    """(h * c) mod 2^32 for int64 h in [0, 2^32), without int64 overflow."""
    lo = h * (c & 0xFFFF)
    hi = ((h * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _fmix32(h: Tensor) -> Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def sr_key(seed: int) -> int:
    """The per-(tensor, step) key of the stochastic-rounding noise."""
    t = torch.tensor([seed & _M32, (seed >> 32) & _M32], dtype=torch.int64)
    inner = _fmix32((t[1:] + 0x9E3779B9) & _M32)
    return int(_fmix32(t[:1] ^ inner).item())


def sr_noise(key: int, j: Tensor) -> Tensor:
    """16 random bits (0..65535) for element indices ``j`` (int64)."""
    h = _mul32(j & _M32, 0x9E3779B1) ^ key ^ _mul32((j >> 32) & _M32, 0x85EBCA77)
    return _fmix32(h) >> 16


def memory_index(t: Tensor) -> Tensor:
    """Each element's index in memory order (row-major if ``t`` is not dense), int64."""
    from torch._prims_common import is_non_overlapping_and_dense_or_false

    n = t.numel()
    j = torch.arange(n, dtype=torch.int64, device=t.device)
    if n and is_non_overlapping_and_dense_or_false(t):
        return j.as_strided(t.shape, t.stride())
    return j.view(t.shape)


def sr_round_bf16(x: Tensor, key: int, layout: Tensor | None = None) -> Tensor:
    """fp32 ``x`` rounded stochastically to bf16: its bits plus 16 random bits, truncated.

    Element indices are memory positions in ``layout`` (default ``x``), the param written.

    Unbiased: x rounds up (in magnitude) with probability (its low 16 bits) / 2^16. inf stays
    inf and NaN becomes 0x7FC0, as in c10::BFloat16.
    """
    u = x.float().view(torch.int32).to(torch.int64) & _M32
    j = memory_index(x if layout is None else layout)
    bits = ((u + sr_noise(key, j)) >> 16) & 0xFFFF
    bits = bits - (bits >= 0x8000).to(torch.int64) * 0x10000  # as int16
    rounded = bits.to(torch.int16).view(torch.bfloat16)
    finite = (u & 0x7F800000) != 0x7F800000
    # inf stays inf; NaN becomes the quiet NaN 0x7FC0 (c10::BFloat16's; torch's vectorized
    # conversion may keep the sign and payload instead).
    nan = torch.tensor(0x7FC0, dtype=torch.int16).view(torch.bfloat16)
    special = torch.where(x.isnan(), nan, x.to(torch.bfloat16))
    return torch.where(finite, rounded, special)


def load_param(param: Tensor, master: Tensor | None, dt: torch.dtype) -> Tensor:
    """theta in the opmath dtype: from the fp32 master if there is one."""
    return (master if master is not None else param).to(dt)


def load_update(
    param: Tensor, master: Tensor | None, grad: Tensor, s: float, maximize: bool
) -> tuple[torch.dtype, Tensor, Tensor]:
    """(opmath dtype, theta, g) of one param: g the grad times 1 / grad_scale ``s``, negated
    with ``maximize``."""
    dt = opmath_dtype(param.dtype)
    g = grad.to(dt) * s
    return dt, load_param(param, master, dt), -g if maximize else g


def load_step(
    a: Any, i: int, masters: list[Tensor | None], s: float
) -> tuple[torch.dtype, Tensor, Tensor]:
    """load_update of param ``i`` of an op's arguments ``a`` (spec), its step counted first."""
    a.state_steps[i] += 1
    return load_update(a.params[i], masters[i], a.grads[i], s, a.maximize)


def store_param(param: Tensor, master: Tensor | None, seed: Tensor | None, p: Tensor) -> None:
    """Writes the new theta: master + rounded param, stochastically rounded param, or param."""
    if master is not None:
        master.copy_(p)
        param.copy_(p)
    elif seed is not None:
        # bf16 params only (checked by check_mixed); the seed was advanced by check_mixed's caller.
        param.copy_(sr_round_bf16(p, sr_key(int(seed.item())), param))
    else:
        param.copy_(p)


#: The supported (param dtype, state dtype, ParamMode) combinations as torch dtypes, from the one
#: definition, fusedopt._opdefs.MIXED (also FUSEDOPT_FOR_EACH_MIXED, which the kernels are built
#: for).
MIXED_DTYPES = frozenset((getattr(torch, p), getattr(torch, s), m) for p, s, m in MIXED)
_PAIRS = frozenset((p, s) for p, s, _ in MIXED_DTYPES)
#: The param dtypes of each ParamMode but "plain" (fp32 master copies, stochastic rounding).
MODE_PARAMS = {
    mode: frozenset(p for p, _, m in MIXED_DTYPES if m == mode) for mode in ("master", "stochastic")
}


def state_dtype_ok(param: torch.dtype, state: torch.dtype) -> bool:
    """The supported (param dtype, state dtype) pairs (MIXED_DTYPES)."""
    return (param, state) in _PAIRS


def check_mixed(
    op: str,
    params: list[Tensor],
    master_params: list[Tensor] | None,
    sr_seeds: list[Tensor] | None,
    **states: list[Tensor],
) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """Validates the mixed-precision arguments as the compiled ops do, before any write.

    Returns per-param (masters, seeds), None where absent.
    """
    n = len(params)
    masters = master_params if master_params else None
    seeds = sr_seeds if sr_seeds else None
    if masters is not None and seeds is not None:
        raise RuntimeError(f"{op}: master_params and sr_seeds are exclusive")
    state_dtype = None
    for name, lst in states.items():
        for i, t in enumerate(lst):
            if state_dtype is None:
                state_dtype = t.dtype
            elif t.dtype != state_dtype:
                raise RuntimeError(
                    f"{op}: {name}[{i}] has dtype {t.dtype} but the first state tensor has "
                    f"dtype {state_dtype} (all state tensors of a call share one dtype)"
                )
    if n and state_dtype is not None:
        pd = params[0].dtype
        if not state_dtype_ok(pd, state_dtype):
            raise RuntimeError(
                f"{op}: state dtype {state_dtype} is not supported with param dtype {pd}"
            )
    if masters is not None:
        if len(masters) != n:
            raise RuntimeError(
                f"{op}: expected master_params to have {n} tensors (one per param), "
                f"got {len(masters)}"
            )
        for i, (p, m) in enumerate(zip(params, masters)):
            if p.dtype not in MODE_PARAMS["master"]:
                raise RuntimeError(
                    f"{op}: master_params need float16 or bfloat16 params; params[{i}] is {p.dtype}"
                )
            if m.dtype != torch.float32 or m.shape != p.shape:
                raise RuntimeError(
                    f"{op}: master_params[{i}] must be float32 of shape {tuple(p.shape)}, got "
                    f"{m.dtype} {tuple(m.shape)}"
                )
    if seeds is not None:
        if len(seeds) != n:
            raise RuntimeError(
                f"{op}: expected sr_seeds to have {n} tensors (one per param), got {len(seeds)}"
            )
        for i, (p, s) in enumerate(zip(params, seeds)):
            if p.dtype not in MODE_PARAMS["stochastic"]:
                raise RuntimeError(
                    f"{op}: stochastic rounding (sr_seeds) needs bfloat16 params; params[{i}] "
                    f"is {p.dtype}"
                )
            if s.dtype != torch.int64 or s.numel() != 1:
                raise RuntimeError(
                    f"{op}: sr_seeds[{i}] must be a one-element int64 tensor, got {s.dtype} "
                    f"with {s.numel()} elements"
                )
        check_unshared(op, "sr_seeds", seeds, "seed")
    return (
        list(masters) if masters is not None else [None] * n,
        list(seeds) if seeds is not None else [None] * n,
    )


def check_unshared(op: str, name: str, tensors: list[Tensor], what: str) -> None:
    """No two entries of ``tensors`` (step counters, SR seeds: one per param) at one address: such
    an entry would be incremented once per param that names it, in an order that differs between
    backends (and on a GPU, by racing threads).

    Not while torch.compile traces a step on this (plain PyTorch) backend: addresses are not
    values of the graph, and dynamo before torch 2.13 cannot even hash them ("Dynamo cannot
    determine whether the underlying object is hashable", a graph break). The compiled kernels
    and the eager reference still check; the optimizers make one counter and one seed per param,
    so sharing needs a hand-edited state."""
    if torch.compiler.is_compiling():
        return
    seen: dict[int, int] = {}
    for i, t in enumerate(tensors):
        ptr = t.data_ptr()
        if ptr in seen:
            raise RuntimeError(
                f"{op}: {name}[{i}] shares its memory with {name}[{seen[ptr]}]: every param "
                f"needs its own {what}"
            )
        seen[ptr] = i


def check_steps(op: str, params: list[Tensor], state_steps: list[Tensor]) -> None:
    """One step counter per param, each its own (check_unshared)."""
    if len(state_steps) != len(params):
        raise RuntimeError(
            f"{op}: expected state_steps to have {len(params)} tensors (one per param), "
            f"got {len(state_steps)}"
        )
    check_unshared(op, "state_steps", state_steps, "step counter")


def advance_seeds(seeds: list[Tensor | None]) -> None:
    for s in seeds:
        if s is not None:
            s += 1


def check_call(
    op: str, args: dict[str, Any], like: bool = True
) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """The checks of :func:`begin`, which write nothing and read no tensor's values, on the
    update's arguments by name: per param (masters, seeds), None where absent."""
    d = OPS[op]
    label = f"fusedopt.{op}"
    params = args["params"]
    lists = {a.name: args[a.name] for a in d.role(STATE) if a.when is None or args[a.when]}
    if like:
        check_like_params(label, params, grads=args["grads"], **lists)
    masters, seeds = check_mixed(label, params, args["master_params"], args["sr_seeds"], **lists)
    if "state_steps" in args:
        check_steps(label, params, args["state_steps"])
    return masters, seeds


def begin(
    op: str, *values: Any, like: bool = True, advance: bool = True
) -> tuple[list[Tensor | None], list[Tensor | None], float] | None:
    """The prologue of every update, in the compiled ops' order, from the update's arguments
    ``values`` (all of them, in the order of the registry's OPS[op], whose names they get:
    not ``locals()``, which torch 2.11's dynamo cannot trace): with ``like``, the grads and the
    state lists against the params (check_like_params); the mixed-precision arguments and the
    states' dtype (check_mixed); one step counter per param, for an op with ``state_steps``
    (check_steps). A state list with a ``when`` scalar counts only when that is true. Then None
    if GradScaler found inf/NaN (the step changes nothing), else the SR seeds advanced
    (``advance``) and (masters, seeds, 1 / grad_scale), per param."""
    args = dict(zip(OPS[op].names, values))
    masters, seeds = check_call(op, args, like)
    if skip_step(args["found_inf"]):
        return None
    if advance:
        advance_seeds(seeds)
    return masters, seeds, inv_scale(args["grad_scale"])


def begin_unmixed(op: str, a: Any) -> tuple[float] | None:
    """The prologue of an op without params (muon_momentum_, sophia_update_hessian_): its other
    lists against its first (check_like_params); then None if GradScaler found inf/NaN, else
    (1 / grad_scale,)."""
    lists = [x.name for x in OPS[op].args if x.is_list]
    others = {name: getattr(a, name) for name in lists[1:]}
    check_like_params(f"fusedopt.{op}", getattr(a, lists[0]), **others)
    return None if skip_step(a.found_inf) else (inv_scale(a.grad_scale),)


def spec(
    op: str, prologue: Callable[[Any], tuple | None] | None = None, **options: bool
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Note [reference functions]
    The reference function of ``op`` from its math ``body(a, *prologue's result)``: the function
    takes the registry's arguments (OPS[op]: names, order, defaults; its ``__signature__`` says
    so), binds them into ``a``, a named tuple of them, and runs the prologue, by default
    ``begin(op, *a, **options)`` (``begin_unmixed`` for an op without mixed-precision
    arguments); ``body`` runs unless that returned None (GradScaler found inf/NaN)."""
    d = OPS[op]
    names = d.names
    defaults = [a.py_default for a in d.args if a.default is not None]
    Args = namedtuple(op.rstrip("_") + "_args", names, defaults=defaults)
    if prologue is None and "master_params" in names:
        prologue = lambda a: begin(op, *a, **options)  # noqa: E731
    elif prologue is None:
        prologue = functools.partial(begin_unmixed, op)
    signature = inspect.Signature(
        [
            inspect.Parameter(
                a.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=inspect.Parameter.empty if a.default is None else a.py_default,
                annotation="float | Tensor" if a.role == LR else a.py_type,
            )
            for a in d.args
        ],
        return_annotation="None",
    )

    def wrap(body: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(body)
        def run(*args: Any, **kwargs: Any) -> None:
            a = Args(*args, **kwargs)
            ready = prologue(a)
            if ready is not None:
                body(a, *ready)

        run.__signature__ = signature  # type: ignore[attr-defined]
        return run

    return wrap
