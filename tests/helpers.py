"""Shared test machinery: parameter sets with awkward layouts, the tolerance table, and the
step-by-step comparison against torch.optim and the fp64 reference.

Note [re-sync after every step]
Each step starts both implementations from the SAME state (params and every state tensor), so a
comparison measures the error of one step, not errors compounded over many; after comparing,
our optimizer is re-synced to the other's values. Grads are fresh non-zero random tensors every
step (zero grads would hide wrong updates).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fusedopt._ext import _C

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
DTYPE_IDS = {
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
}


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float
    why: str


# One tolerance table for comparisons with torch.optim's for-loop implementation in the same
# dtype. The update is a handful of flops per element in the same order as torch; the
# differences left are fused multiply-adds and, for fp16/bf16, torch rounding every
# intermediate to the storage dtype while we keep fp32 until the single final rounding.
TOL_VS_TORCH = {
    torch.float64: Tol(1e-12, 1e-14, "a few ulp of fp64: FMA contraction only"),
    torch.float32: Tol(1.3e-6, 1e-5, "a few ulp of fp32: FMA contraction only (issue 2)"),
    # torch's own fused-vs-for-loop tolerance; plus one storage ulp (see ulp_slack) because
    # torch double-rounds through the storage dtype and we round once.
    torch.bfloat16: Tol(5e-3, 5e-3, "torch's fused-vs-for-loop tolerance + 1 bf16 ulp"),
    torch.float16: Tol(5e-3, 5e-3, "torch's fused-vs-for-loop tolerance + 1 fp16 ulp"),
}

# Against the fp64 reference, our error may be at most this multiple of torch's own error in
# the same dtype (plus half an ulp of the value: the unavoidable rounding of the stored result).
ERR_FACTOR_VS_FP64 = 2.0


def ulp(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The spacing of `dtype` at |x| (x in any dtype), as float64."""
    x = x.double().abs()
    finfo = torch.finfo(dtype)
    exp = torch.floor(torch.log2(torch.clamp(x, min=finfo.tiny)))
    return torch.exp2(exp) * finfo.eps


def adafactor_scalars(**kw: object) -> dict[str, object]:
    """adafactor_'s arguments after its lists, in the schema's order, for the op-level tests
    (tests/test_adafactor.py, tests/test_cuda_planner.py); ``kw`` overrides them."""
    values = dict(
        lr=torch.tensor(0.02, dtype=torch.float64),
        beta2_decay=-0.8,
        eps1=1e-7,
        eps2=1e-3,
        d=1.0,
        weight_decay=0.05,
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )
    values.update(kw)
    return values


def _randn(dtype: torch.dtype, device: str, *shape: int) -> Tensor:
    return torch.randn(shape, dtype=torch.float64).to(dtype=dtype, device=device)


# (param factory, grad factory or None for a frozen param), one row per case the kernels must
# get right: sizes around and far above the SIMD width (16 fp32 lanes) and the parallel grain,
# a 0-d param, odd layouts, a frozen param, and an empty param LAST.
_CASES = [
    (lambda r: r(), lambda r: r()),  # 0-d
    (lambda r: r(1), lambda r: r(1)),
    (lambda r: r(15), lambda r: r(15)),
    (lambda r: r(16), lambda r: r(16)),
    (lambda r: r(17), lambda r: r(17)),
    (lambda r: r(33, 31), lambda r: r(33, 31)),
    (lambda r: r(40001), lambda r: r(40001)),  # spans the grain: two threads
    (lambda r: r(9, 17).t(), lambda r: r(17, 9)),  # transposed param, contiguous grad
    (lambda r: r(20, 20)[:, ::2], lambda r: r(20, 10)),  # sliced (non-dense) param
    (lambda r: r(8, 16), lambda r: r(1, 16).expand(8, 16)),  # expanded (stride-0) grad
    (lambda r: r(12, 5), lambda r: r(5, 12).t()),  # transposed grad
    (lambda r: r(7), None),  # frozen: no grad
    (lambda r: r(0), lambda r: r(0)),  # empty, last
]


def make_params(dtype: torch.dtype, device: str = "cpu") -> list[Tensor]:
    """Leaf params for every row of _CASES."""
    return [make(lambda *s: _randn(dtype, device, *s)).requires_grad_() for make, _ in _CASES]


def make_matrices(dtype: torch.dtype, device: str = "cpu") -> list[Tensor]:
    """Leaf 2-D params for an optimizer of matrices only (Muon): odd sizes, wide and tall, and a
    transposed (strided) one; from torch's global generator, as make_params."""
    shapes = [(4, 3), (5, 17), (33, 31)]
    params = [_randn(dtype, device, *s) for s in shapes] + [_randn(dtype, device, 9, 17).t()]
    return [p.requires_grad_() for p in params]


def fresh_grads(params: list[Tensor]) -> list[Tensor | None]:
    """New non-zero random grads, each with its case's layout (None for the frozen param)."""
    out: list[Tensor | None] = []
    for p, (_, make) in zip(params, _CASES):
        if make is None:
            out.append(None)
        else:
            out.append(make(lambda *s, p=p: _randn(p.dtype, str(p.device), *s)))
    return out


def clone_params(params: list[Tensor]) -> list[Tensor]:
    """Leaf copies with each param's exact layout (size, strides, offset; sliced ones too)."""
    out = []
    for p in params:
        n = p.untyped_storage().nbytes() // p.element_size()
        base = torch.zeros(n, dtype=p.dtype, device=p.device)
        c = base.as_strided(p.size(), p.stride(), p.storage_offset())
        c.copy_(p.detach())
        out.append(c.requires_grad_(p.requires_grad))
    return out


def set_grads(params: list[Tensor], grads: list[Tensor | None]) -> None:
    """Both implementations get the same grad objects (neither may modify them)."""
    for p, g in zip(params, grads):
        p.grad = g


def copy_state(dst_opt, dst_params, src_opt, src_params) -> None:  # noqa: ANN001
    """Make dst's params and per-param state equal to src's (the re-sync)."""
    with torch.no_grad():
        for dp, sp in zip(dst_params, src_params):
            dp.copy_(sp)
            ss = src_opt.state.get(sp, {})
            ds = dst_opt.state.get(dp, {})
            for k, v in ss.items():
                if torch.is_tensor(v) and k in ds:
                    ds[k].copy_(v)


def state_tensors(opt, params: list[Tensor]) -> list[tuple[str, Tensor]]:  # noqa: ANN001
    out = []
    for i, p in enumerate(params):
        out.append((f"param[{i}]", p.detach()))
        for k, v in opt.state.get(p, {}).items():
            if torch.is_tensor(v):
                out.append((f"state[{i}][{k}]", v))
    return out


def assert_close_ulp(
    actual: Tensor, expected: Tensor, tol: Tol, what: str, scale: Tensor | None = None
) -> None:
    """|a - e| <= atol + rtol (|e| + scale) + one storage ulp (see TOL_VS_TORCH), element by
    element. ``scale``: the magnitudes the result was computed from (run_parity)."""
    a, e = actual.double(), expected.double()
    allowed = tol.atol + tol.rtol * (e.abs() if scale is None else e.abs() + scale)
    if actual.dtype in (torch.bfloat16, torch.float16):
        allowed = allowed + ulp(e, actual.dtype)
    bad = ~((a - e).abs() <= allowed) & ~(a.isnan() & e.isnan()) & ~(a == e)  # inf == inf
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{a.numel()} elements differ; first at {i}: "
            f"{a.flatten()[i].item()!r} vs {e.flatten()[i].item()!r} ({tol.why})"
        )


def run_parity(
    make_ours: Callable,
    make_torch: Callable,
    dtype: torch.dtype,
    steps: int = 7,
    step_kwargs: dict | None = None,
    make_ref64: Callable | None = None,
    device: str = "cpu",
) -> None:
    """Ours vs torch.optim's for-loop, element by element after every step, re-synced.

    ``device``: where the params live (both implementations run there; tests/test_cuda.py).

    For fp16/bf16, torch.optim's for-loop rounds every intermediate to the storage dtype, so its
    own error can exceed any sensible tolerance (e.g. ``buf.mul_(momentum)`` rounded before a
    cancelling ``add_``). There the judge is the fp64 reference (``make_ref64``, our reference
    backend on fp64 copies, started from the same state): per tensor, our max error may be at
    most ERR_FACTOR_VS_FP64 x torch's max error plus half an ulp of the largest value, and
    element by element we must match torch within TOL_VS_TORCH wherever torch itself is within
    that tolerance of the fp64 result.
    """
    params = make_params(dtype, device)
    ours_p = clone_params(params)
    theirs_p = clone_params(params)
    ours = make_ours(ours_p)
    theirs = make_torch(theirs_p)
    half = dtype in (torch.float16, torch.bfloat16)
    if half:
        assert make_ref64 is not None, "fp16/bf16 parity needs the fp64 reference"
        ref_p = [p.detach().double().requires_grad_() for p in params]
        ref = make_ref64(ref_p)
    tol = TOL_VS_TORCH[dtype]
    # fp32/fp64 params: the error may be a few ulp of the largest term of the update (the value
    # before, the result, the change), no absolute tolerance, which (1e-5 for fp32) would hide
    # an lr 1% too large at lr 1e-3. State tensors also get a few ulp of the tensor's largest
    # value: their inputs may cancel before the rounding (Adam's g + wd*p, then squared).
    exact_tol = Tol(tol.rtol, 0.0, tol.why + ", relative to |before| + |result| + |change|")
    for step in range(steps):
        g = fresh_grads(params)
        set_grads(ours_p, g)
        set_grads(theirs_p, g)
        before = {k: v.detach().double().clone() for k, v in state_tensors(theirs, theirs_p)}
        ours.step(**(step_kwargs or {}))
        theirs.step(**(step_kwargs or {}))
        a = state_tensors(ours, ours_p)
        b = state_tensors(theirs, theirs_p)
        assert [k for k, _ in a] == [k for k, _ in b], "state keys differ from torch.optim's"
        if half:
            set_grads(ref_p, [None if x is None else x.double() for x in g])
            ref.step(**(step_kwargs or {}))
            c = state_tensors(ref, ref_p)
        for j, ((name, x), (_, y)) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype and x.shape == y.shape, name
            y = y.to(x.device)  # torch.optim's for-loop keeps `step` on the CPU, we on the GPU
            what = f"step {step + 1} {name}"
            if not half:
                x0 = before.get(name, torch.zeros((), dtype=torch.float64)).to(x.device)
                scale = x0.abs() + (y.double() - x0).abs()
                if not name.startswith("param") and y.numel():
                    scale = scale + y.double().abs().max()
                assert_close_ulp(x, y, exact_tol, what, scale)
                continue
            r = c[j][1].double().to(x.device)
            finite = r.isfinite() & y.isfinite()
            err_ours = (x.double() - r).abs()[finite]
            err_torch = (y.double() - r).abs()[finite]
            if err_ours.numel():
                bound = ERR_FACTOR_VS_FP64 * err_torch.max() + 0.5 * ulp(
                    r[finite].abs().max(), dtype
                )
                assert err_ours.max() <= bound, (
                    f"{what}: max error vs fp64 {err_ours.max().item():.3g} > {bound.item():.3g} "
                    f"({ERR_FACTOR_VS_FP64}x torch's {err_torch.max().item():.3g} + half an ulp)"
                )
            torch_ok = (y.double() - r).abs() <= tol.atol + tol.rtol * r.abs()
            assert_close_ulp(x[torch_ok], y[torch_ok], tol, what + " (where torch is accurate)")
        copy_state(ours, ours_p, theirs, theirs_p)
        if half:
            copy_state(ref, ref_p, theirs, theirs_p)


def flagged_fractions(monkeypatch, module, checker: str, pattern: str, run) -> dict[str, float]:  # noqa: ANN001
    """For the tests that a checker catches a wrong update with margin: runs ``run`` with
    ``module.<checker>`` recording instead of raising. Returns {what: fraction of the elements
    flagged} per comparison it flagged (``pattern`` parses (bad, total) from its message)."""
    real = getattr(module, checker)
    sig = inspect.signature(real)
    out: dict[str, float] = {}

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            return real(*args, **kwargs)
        except AssertionError as e:
            bad, total = re.search(pattern, str(e)).groups()  # type: ignore[union-attr]
            out[sig.bind(*args, **kwargs).arguments["what"]] = int(bad) / int(total)
            return 0

    monkeypatch.setattr(module, checker, recording)
    run()
    return out


def cpu_levels() -> list[str]:
    if _C is None:
        return []
    order = ["default", "avx2", "avx512"]
    top = order.index(_C.cpu_capability_detected())
    return order[: top + 1]
