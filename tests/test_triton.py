"""The Triton backend: parity with torch.optim and the reference, the CPU backend, the pointer-table
cache, launch counts, AMP flags, bf16 rounding, mixed precision (state dtypes, master copies,
stochastic rounding, LAMB's phases), aligned and misaligned tensors, CUDA graphs, opcheck and
torch.compile.

With a GPU every test runs on CUDA tensors (DEVICE); without one, on CPU tensors in Triton's
interpreter (TRITON_INTERPRET=1, set for this module only: Note [interpreter mode]), and the
tests that need a GPU (CUDA graphs, streams, a second GPU, repeatability) are skipped. The
interpreter costs milliseconds per tile, so the matrix is smaller than the CPU backend's
(3 steps, each dtype and each mode flag at least once) on the same awkward parameter set
(helpers.make_params); it runs at the interpreter's tile size and, for test_matches_reference,
at the GPU's.

Note [interpreter mode]
@triton.jit picks interpreter or compiler when it decorates a kernel, from TRITON_INTERPRET.
This module sets the variable while it imports fusedopt.triton and for its own tests only (a
module fixture), so other test modules see the environment they started with. If the kernels
were decorated in the other mode before (another module imported them first), fusedopt.triton
re-decorates them on the next call (_launch._k).
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import os
import subprocess
import sys
import weakref
from typing import Any

import pytest
import torch

import fusedopt
from fusedopt import reference
from fusedopt.reference._common import sr_key, sr_round_bf16
from helpers import (
    DTYPE_IDS,
    TOL_VS_TORCH,
    assert_close_ulp,
    clone_params,
    copy_state,
    fresh_grads,
    make_params,
    run_parity,
    set_grads,
    state_tensors,
)
from optim_info import matrix

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"


def _set_interpret() -> str | None:
    old = os.environ.get("TRITON_INTERPRET")
    if not GPU:
        os.environ["TRITON_INTERPRET"] = "1"
    return old


def _restore_interpret(old: str | None) -> None:
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


_old = _set_interpret()
try:
    import triton
    import triton.language as tl

    import fusedopt.triton as ft
    from fusedopt.triton import _kernels
    from fusedopt.triton import _multi_tensor as mt

    @triton.jit
    def _roundtrip_kernel(x_ptr, y_ptr, z_ptr, n, BLOCK: tl.constexpr):
        """y = x stored as bf16 by the kernels' _store; z = y loaded back by _load (fp32)."""
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        _kernels._store(y_ptr.to(tl.pointer_type(tl.uint16)), offs, x, mask, tl.bfloat16)
        z = _kernels._load(
            y_ptr.to(tl.pointer_type(tl.uint16)), offs, mask, tl.bfloat16, tl.float32
        )
        tl.store(z_ptr + offs, z, mask=mask)

    @triton.jit
    def _sr_store_kernel(x_ptr, y_ptr, seed_table, base, n, BLOCK: tl.constexpr):
        """y[i] = x[i] rounded by the kernels' SR store as element base + i, keyed by the seed
        whose address is seed_table[0]."""
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        key = _kernels._sr_key(seed_table, tl.program_id(0).to(tl.int64), 1, 0, True)
        y = y_ptr.to(tl.pointer_type(tl.uint16)) - base
        _kernels._store_sr(y, base + offs.to(tl.int64), x, mask, key)

finally:
    _restore_interpret(_old)

pytestmark = pytest.mark.triton

interp_only = pytest.mark.skipif(
    GPU, reason="CPU tensors in the interpreter: with a GPU, see the CUDA tests"
)
# Where the kernels run: CUDA tensors with a GPU, else CPU tensors in the interpreter.
on_device = pytest.mark.parametrize("device", [DEVICE])
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (none here)")
needs_cpu = pytest.mark.skipif(
    not fusedopt.backends()["cpu"].available, reason="compiled CPU kernels unavailable"
)


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    """TRITON_INTERPRET=1 for this module's tests (Note [interpreter mode]), one torch thread:
    the interpreter is single-threaded, and on a loaded 2-core machine OpenMP's spinning made the
    small comparisons between steps ten times slower."""
    old = _set_interpret()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _restore_interpret(old)


STEPS = 3

# -- the matrix: tests/optim_info.py's "triton_torch" configs, each in one dtype ---------------
# Every dtype and every mode flag at least once; weight decay non-zero where it can be wrong.


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    """torch.optim's for-loop takes a float lr (a Tensor lr means capturable there)."""
    lr = kwargs.get("lr")
    return dict(kwargs, lr=float(lr)) if isinstance(lr, torch.Tensor) else kwargs


@on_device
@pytest.mark.parametrize(
    "ours,theirs,kwargs,dtype", matrix("triton_torch", "cls", "torch_cls", "kwargs", "dtype")
)
def test_matches_torch_forloop(ours, theirs, kwargs, dtype, device):
    run_parity(
        lambda ps: ours(ps, backend="triton", **kwargs),
        lambda ps: theirs(ps, foreach=False, **_plain(kwargs)),
        dtype,
        steps=STEPS,
        make_ref64=lambda ps: ours(ps, backend="reference", **kwargs),
        device=device,
    )


class _SophiaH(fusedopt.Sophia):
    """Sophia whose every step first folds the step's grads into the Hessian EMA, so that the
    step runs with h != 0 (the clipped regime) and update_hessian's kernel is compared too."""

    def step(self, closure=None, bs: float = 5120):  # noqa: ANN001
        self.update_hessian()
        return super().step(closure, bs=bs)


def _cls(info):  # noqa: ANN001, ANN202
    return _SophiaH if "update_hessian" in info.supports else info.cls


# Optimizers torch.optim lacks (and AdamW's in-step clipping): tests/optim_info.py's "triton_ref"
# configs against the reference backend in the same dtype (fp32 opmath, one rounding), and for
# fp16/bf16 the fp64 reference as the judge (helpers.run_parity).


@on_device
@pytest.mark.parametrize(
    "info,kwargs,step_kwargs,dtype", matrix("triton_ref", "info", "kwargs", "step", "dtype")
)
def test_matches_reference(info, kwargs, step_kwargs, dtype, device, monkeypatch):
    """At the GPU's tile size in the interpreter too (test_matches_torch_forloop keeps the
    interpreter's): tile tails and several tiles per program on the 40001-element param."""
    monkeypatch.setattr(mt, "INTERPRET_BLOCK", mt.BLOCK)
    cls = _cls(info)
    run_parity(
        lambda ps: cls(ps, backend="triton", **kwargs),
        lambda ps: cls(ps, backend="reference", **kwargs),
        dtype,
        steps=STEPS,
        step_kwargs=step_kwargs,
        make_ref64=lambda ps: cls(ps, backend="reference", **kwargs),
        device=device,
    )


# -- Triton == the CPU backend on the same inputs (on CUDA tensors where a GPU exists) ---------


def _like_on(p: torch.Tensor, device: str) -> torch.Tensor:
    """A leaf copy of p on `device` with p's exact layout, expanded (stride-0) ones too: a copy
    of its whole storage, viewed as p views its own."""
    n = p.untyped_storage().nbytes() // p.element_size()
    storage = torch.as_strided(p.detach(), (n,), (1,), 0).to(device, copy=True)
    c = storage.as_strided(p.size(), p.stride(), p.storage_offset())
    return c.requires_grad_(p.requires_grad)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("info,kwargs,step_kwargs", matrix("triton_cpu", "info", "kwargs", "step"))
def test_matches_cpu_backend(info, kwargs, step_kwargs, dtype):
    """Same inputs, same function: element by element after every step, then re-synced
    (tests/optim_info.py's "triton_cpu" configs)."""
    cls = _cls(info)
    params = make_params(dtype)
    theirs_p = clone_params(params)
    ours_p = [_like_on(p, DEVICE) for p in params]
    ours = cls(ours_p, backend="triton", **kwargs)
    theirs = cls(theirs_p, backend="cpu", **kwargs)
    tol = TOL_VS_TORCH[dtype]
    for step in range(STEPS):
        g = fresh_grads(params)
        set_grads(theirs_p, g)
        set_grads(ours_p, [None if x is None else _like_on(x, DEVICE) for x in g])
        ours.step(**step_kwargs)
        theirs.step(**step_kwargs)
        a, b = state_tensors(ours, ours_p), state_tensors(theirs, theirs_p)
        assert [k for k, _ in a] == [k for k, _ in b]
        for (what, x), (_, y) in zip(a, b):
            assert x.dtype == y.dtype and x.shape == y.shape, what
            assert_close_ulp(x.cpu(), y, tol, f"step {step + 1} {what}")
        copy_state(ours, ours_p, theirs, theirs_p)


# -- the ops called directly: AMP flags, norms, sums --------------------------------------------
def _tensors(shapes, dtype, device, positive=False):
    out = []
    for s in shapes:
        t = torch.randn(s, dtype=torch.float64)
        out.append((t.abs() if positive else t).to(dtype=dtype, device=device))
    return out


SHAPES = [(17,), (), (0,), (33, 5), (9, 8)]


# One seed per param for stochastic rounding: both halves of the 64 bits matter (sr_key).
SEEDS = [0, -1, 2**40 + 3, 12345, -(2**62) + 7, 2**32 - 1, 99]


def _op_args(
    op: str,
    dtype=torch.float32,
    device=DEVICE,
    state_dtype: torch.dtype | None = None,
    mode: str = "",
    sliced: bool = False,
    misaligned: str = "",
) -> tuple[list, dict]:
    """(args, kwargs) of a direct call; the last param is transposed (staged for its grad).

    Mixed precision (Note [mixed precision] in csrc/include/fusedopt/math.h): the states (and
    Sophia's hessians) in ``state_dtype`` (default: the params'); ``mode`` "master" adds fp32
    master_params and fills the params with NaN (they must never be read), "sr" adds sr_seeds.
    ``sliced`` adds a param that is not dense (staged: row-major element indices).
    ``misaligned`` puts tensors at odd element offsets of larger buffers (_at_odd_offset):
    "params" the params, "grads" the grads, "all" every tensor of every list.
    """
    p = _tensors(SHAPES, dtype, device)
    p[-1] = p[-1].t()
    if sliced:
        p.append(torch.randn(6, 20, dtype=torch.float64).to(dtype=dtype, device=device)[:, ::2])
    g = _tensors([tuple(x.shape) for x in p], dtype, device)
    sd = dtype if state_dtype is None else state_dtype

    def state(x, positive=False):  # x's layout where it is dense
        t = torch.randn(x.shape, dtype=torch.float64)
        return torch.empty_like(x, dtype=sd).copy_(t.abs() if positive else t)

    m = [state(x) for x in p]
    v = [state(x, positive=True) for x in p]

    def odd(lst, k, which=("all",)):  # the list `k` of the call, moved if `misaligned` says so
        if misaligned not in which:
            return lst
        return [_at_odd_offset(t, i + k) for i, t in enumerate(lst)]

    p, g, m, v = odd(p, 0, ("all", "params")), odd(g, 1, ("all", "grads")), odd(m, 2), odd(v, 3)
    steps = [torch.tensor(float(i + 1), device=device) for i in range(len(p))]
    lr = torch.tensor(1e-2, device=device)
    kwargs: dict[str, Any] = {}
    if mode == "master":
        masters = []
        for x in p:
            masters.append(
                torch.empty_like(x, dtype=torch.float32).copy_(
                    torch.randn(x.shape, dtype=torch.float64)
                )
            )
            x.fill_(float("nan"))
        kwargs["master_params"] = odd(masters, 4)
    elif mode == "sr":
        kwargs["sr_seeds"] = [
            torch.tensor([SEEDS[i % len(SEEDS)]], dtype=torch.int64, device=device)
            for i in range(len(p))
        ]
    else:
        assert mode == "", mode
    if op == "adam_":
        vmax = odd([state(x, positive=True) for x in p], 5)
        return [p, g, m, v, vmax, steps, lr, 0.9, 0.999, 0.1, 1e-8, True, True, False], kwargs
    if op == "sgd_":
        return [p, g, m, lr, 0.9, 0.1, 0.01, True, False, False], kwargs
    if op == "lion_":
        return [p, g, m, steps, lr, 0.9, 0.99, 0.1, True], kwargs
    if op == "lamb_":
        norms = torch.full((len(p), 2), -1.0, dtype=torch.float64, device=device)
        return [p, g, m, v, steps, lr, 0.9, 0.999, 0.01, 1e-6, True, 0.7, False], {
            "tensor_norms": norms,
            **kwargs,
        }
    if op == "sophia_":
        return [p, g, m, v, steps, lr, 0.96, 0.04, 300.0, 0.1, False], kwargs
    if op == "sophia_update_hessian_":
        assert not kwargs, "the op has no master_params / sr_seeds"
        return [v, g, 0.99], {}
    if op == "muon_momentum_":
        assert not kwargs, "the op has no master_params / sr_seeds"
        updates = odd([torch.zeros(x.shape, dtype=torch.bfloat16, device=device) for x in p], 3)
        return [m, g, updates, 0.95, True], {}
    if op == "muon_":
        return [p, g, lr, 0.1, 1.7], kwargs
    if op == "schedule_free_swap_":
        return [p, g, 1 - 1 / 0.9], kwargs
    raise AssertionError(op)


OPS = ["adam_", "sgd_", "lion_", "lamb_", "sophia_", "sophia_update_hessian_", "muon_momentum_",
       "muon_", "schedule_free_swap_"]  # fmt: skip


def _at_odd_offset(t: torch.Tensor, k: int) -> torch.Tensor:
    """t (values, shape, strides) at the odd element offset 2 (k % 3) + 1 of a larger buffer: not
    16-byte aligned whatever the dtype (the CUDA simulation's misaligned layouts). A tensor that
    is not dense is returned as it is (it is staged in an aligned buffer)."""
    if not mt._is_dense(t):
        return t
    off = 2 * (k % 3) + 1
    buf = torch.zeros(off + t.numel() + 3, dtype=t.dtype, device=t.device)
    return buf.as_strided(t.shape, t.stride(), off).copy_(t)


def _clone_args(args, kwargs):
    def c(x):
        if isinstance(x, torch.Tensor):
            return x.clone()
        if isinstance(x, list):
            return [c(t) for t in x]
        return x

    return [c(a) for a in args], {k: c(v) for k, v in kwargs.items()}


def _flat(args, kwargs) -> list[torch.Tensor]:
    out = []
    for a in [*args, *kwargs.values()]:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list):
            out.extend(a)
    return out


@pytest.mark.parametrize("op", OPS)
def test_found_inf_changes_nothing(op):
    """GradScaler found inf/NaN: not params, not state, not the step counts, not the norms."""
    args, kwargs = _op_args(op)
    before = [t.clone() for t in _flat(args, kwargs)]
    getattr(ft, op)(*args, **kwargs, found_inf=torch.ones((), device=DEVICE))
    for i, (a, b) in enumerate(zip(_flat(args, kwargs), before)):
        assert torch.equal(a, b), f"tensor {i} changed on a skipped step"


@pytest.mark.parametrize("op", OPS)
def test_grad_scale_matches_reference(op):
    """Grads divided by grad_scale inside the kernel; found_inf = 0 steps normally."""
    args, kwargs = _op_args(op)
    ref_args, ref_kwargs = _clone_args(args, kwargs)
    ref_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in ref_args]
    ref_args = [[t.cpu() for t in a] if isinstance(a, list) else a for a in ref_args]
    ref_kwargs = {k: v.cpu() for k, v in ref_kwargs.items()}
    scale = torch.tensor(1024.0, device=DEVICE)
    zero = torch.zeros((), device=DEVICE)
    getattr(ft, op)(*args, **kwargs, grad_scale=scale, found_inf=zero)
    getattr(reference, op)(*ref_args, **ref_kwargs, grad_scale=scale.cpu(), found_inf=zero.cpu())
    for i, (a, b) in enumerate(zip(_flat(args, kwargs), _flat(ref_args, ref_kwargs))):
        assert_close_ulp(a.cpu(), b, TOL_VS_TORCH[torch.float32], f"{op} tensor {i}")


def test_lamb_tensor_norms():
    """(||p||, ||u||) per param, empty ones 0, as the reference computes them in fp64."""
    args, kwargs = _op_args("lamb_", torch.float64)
    ref_args, ref_kwargs = _clone_args(args, kwargs)
    ft.lamb_(*args, **kwargs)
    reference.lamb_(*ref_args, **ref_kwargs)
    norms = kwargs["tensor_norms"]
    torch.testing.assert_close(norms.cpu(), ref_kwargs["tensor_norms"].cpu(), rtol=1e-12, atol=0)
    assert norms[SHAPES.index((0,))].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_sum_sq(dtype):
    """fp64 sum of squares over tensors of every layout and size, mixed dtypes, deterministic."""
    x = _tensors([(70001,), (), (0,), (33, 31)], dtype, DEVICE)  # 70001: two chunks
    x.append(torch.randn(31, 33, dtype=torch.float64).to(dtype=dtype, device=DEVICE).t())
    x.append(torch.randn(20, 20, device=DEVICE).to(dtype)[:, ::2])  # not dense
    x.append(torch.randn(1, 16, device=DEVICE).to(dtype).expand(8, 16))  # stride 0
    x.append(torch.randn(5, device=DEVICE, dtype=torch.float16))  # another dtype
    got = ft.sum_sq(x)
    want = reference.sum_sq([t.cpu() for t in x])
    assert got.dtype == torch.float64 and got.shape == () and got.device == x[0].device
    torch.testing.assert_close(got.cpu(), want, rtol=1e-13, atol=0)
    assert torch.equal(ft.sum_sq(x), got), "not deterministic"
    assert ft.sum_sq([]).item() == 0


def test_empty_lists_and_empty_tensors():
    ft.adam_([], [], [], [], [], [], 1e-3, 0.9, 0.999, 0.0, 1e-8, False, False, True)
    p = [torch.zeros(0, device=DEVICE), torch.zeros(0, 3, device=DEVICE)]
    steps = [torch.tensor(0.0, device=DEVICE), torch.tensor(5.0, device=DEVICE)]
    ft.adam_(p, [t.clone() for t in p], [t.clone() for t in p], [t.clone() for t in p], [],
             steps, 1e-3, 0.9, 0.999, 0.0, 1e-8, False, False, True)  # fmt: skip
    assert [s.item() for s in steps] == [1.0, 6.0], "empty params still count their steps"


def test_validation_before_any_write():
    p = [torch.randn(4, device=DEVICE), torch.randn(6, device=DEVICE)]
    before = [t.clone() for t in p]
    m = [torch.zeros(4, device=DEVICE), torch.zeros(5, device=DEVICE)]  # wrong shape
    v = [torch.zeros(4, device=DEVICE), torch.zeros(6, device=DEVICE)]
    steps = [torch.tensor(0.0, device=DEVICE), torch.tensor(0.0, device=DEVICE)]
    with pytest.raises(RuntimeError, match=r"exp_avgs\[1\] has shape \[5\] but its param"):
        ft.adam_(p, [t.clone() for t in p], m, v, [], steps, 1e-3, 0.9, 0.999, 0.0, 1e-8,
                 False, False, True)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"expected grads to have 2 tensors"):
        ft.adam_(p, p[:1], [t.clone() for t in p], [t.clone() for t in p], [], steps, 1e-3,
                 0.9, 0.999, 0.0, 1e-8, False, False, True)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"share a device and dtype"):
        ft.sgd_([p[0], p[1].double()], p, [], 0.1, 0.0, 0.0, 0.0, False, False, False)
    assert all(torch.equal(a, b) for a, b in zip(p, before))
    assert all(s.item() == 0 for s in steps)


@interp_only
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    p = [torch.randn(3)]
    with pytest.raises(RuntimeError, match="need GPU tensors"):
        ft.sgd_(p, [torch.randn(3)], [], 0.1, 0.0, 0.0, 0.0, False, False, False)


def test_lr_by_value_equals_lr_by_pointer(monkeypatch):
    """A learning rate on the CPU for GPU params is passed by value: the same bits as reading
    it in the kernel (forced here on whatever device the tests run)."""
    args, _ = _op_args("adam_")
    args2, _ = _clone_args(args, {})
    ft.adam_(*args)
    monkeypatch.setattr(mt, "lr_arg", lambda lr, device: (None, float(lr.item()), False))
    ft.adam_(*args2)
    for a, b in zip(_flat(args, {}), _flat(args2, {})):
        assert torch.equal(a, b)


# -- mixed precision (Note [mixed precision] in csrc/include/fusedopt/math.h) -------------------
# fusedopt.reference is the judge: the same calls on clones, step by step, re-synced after each
# step (the fp32 math may differ from torch's by an ulp, so the comparison measures one step).
# Where the reference rounds in the same precision, the roundings are compared bit for bit:
# a master-copy param is its master rounded to nearest; a stochastically rounded param is
# sr_round_bf16 of the fp32 theta (tests below), and Lion's update is exact in fp32, so its
# rounded params equal the reference's outright.
UPDATE_OPS = ["adam_", "sgd_", "lion_", "lamb_", "sophia_", "muon_", "schedule_free_swap_"]
BF16, FP16, FP32, FP64 = torch.bfloat16, torch.float16, torch.float32, torch.float64

# (id, param dtype, state dtype, mode)
MIXED_CONFIGS = [
    ("bf16-master", BF16, FP32, "master"),
    ("bf16-master-bf16states", BF16, BF16, "master"),
    ("fp16-master", FP16, FP32, "master"),
    ("fp16-master-bf16states", FP16, BF16, "master"),
    ("bf16-sr", BF16, FP32, "sr"),
    ("bf16-sr-bf16states", BF16, BF16, "sr"),
    ("fp32-bf16states", FP32, BF16, ""),
    ("bf16-fp32states", BF16, FP32, ""),
    ("fp16-fp32states", FP16, FP32, ""),
]
# one step of fp32 math (TOL_VS_TORCH's), then one rounding to the storage dtype (assert_close_ulp
# adds one ulp of fp16/bf16)
MIXED_TOL = TOL_VS_TORCH[torch.float32]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """t's bit patterns (NaN == NaN), as integers of its element size."""
    if not t.is_floating_point():
        return t
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _snapshot(args, kwargs) -> list[torch.Tensor]:
    return [t.clone() for t in _flat(args, kwargs)]


def _unchanged(args, kwargs, before, what: str) -> None:
    for i, (a, b) in enumerate(zip(_flat(args, kwargs), before)):
        assert _same_bits(a, b), f"{what}: tensor {i} ({a.dtype} {list(a.shape)}) changed"


def _assert_sr_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Stochastically rounded bf16 params from fp32 thetas that may differ by an ulp of fp32 (the
    operation order): the same bits, except where such an ulp crosses the noise threshold
    (about 1 in 2^16 elements), and there the neighbouring bf16 value."""
    a, b = _bits(ours).long().flatten(), _bits(ref).long().flatten()
    differ = a != b
    assert int(differ.sum()) <= max(1, a.numel() // 100), f"{what}: {int(differ.sum())} differ"
    assert ((a - b).abs()[differ] == 1).all(), f"{what}: more than one bf16 ulp apart"


def _refill_grads(args_list, dtype) -> None:
    """New random grads, the same in every copy of the arguments."""
    grads = [a[1] for a in args_list]  # (the hessian op's grads are args[1] too)
    for i in range(len(grads[0])):
        g = torch.randn(grads[0][i].shape, dtype=torch.float64).to(dtype)
        for gs in grads:
            gs[i].copy_(g)


def _check_mixed_step(op, args, kwargs, ref_args, ref_kwargs, mode, what) -> None:
    params, ref_params = args[0], ref_args[0]
    for i, (a, b) in enumerate(zip(_flat(args, kwargs), _flat(ref_args, ref_kwargs))):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: tensor {i}"
        if not a.is_floating_point():  # the seeds
            assert torch.equal(a, b), f"{what}: tensor {i} (seed) {a.tolist()} != {b.tolist()}"
        elif mode == "sr" and any(a is p for p in params):
            continue  # below
        else:
            assert_close_ulp(a.cpu(), b.cpu(), MIXED_TOL, f"{what}: tensor {i}")
    if mode == "master":  # the param is its master rounded to nearest, bit for bit
        for i, (p, w) in enumerate(zip(params, kwargs["master_params"])):
            assert _same_bits(p, w.to(p.dtype)), f"{what}: params[{i}] is not its master rounded"
    if mode == "sr":
        for i, (p, q) in enumerate(zip(params, ref_params)):
            _assert_sr_close(p.cpu(), q.cpu(), f"{what}: params[{i}]")


@pytest.mark.parametrize(
    "name,pdtype,sdtype,mode", MIXED_CONFIGS, ids=[c[0] for c in MIXED_CONFIGS]
)
@pytest.mark.parametrize("op", UPDATE_OPS)
def test_mixed_matches_reference(op, name, pdtype, sdtype, mode):
    """Every op in every mixed-precision configuration, 3 steps, against the reference: odd
    sizes, a 0-d, an empty, a transposed and a sliced (staged) param."""
    args, kwargs = _op_args(op, pdtype, state_dtype=sdtype, mode=mode, sliced=True)
    ref_args, ref_kwargs = _clone_args(args, kwargs)
    for step in range(STEPS):
        _refill_grads([args, ref_args], pdtype)
        getattr(ft, op)(*args, **kwargs)
        getattr(reference, op)(*ref_args, **ref_kwargs)
        _check_mixed_step(op, args, kwargs, ref_args, ref_kwargs, mode, f"{op} step {step + 1}")
        with torch.no_grad():  # re-sync (helpers: Note [re-sync after every step])
            for a, b in zip(_flat(args, kwargs), _flat(ref_args, ref_kwargs)):
                a.copy_(b)
            if mode == "master":  # still never read
                for p, q in zip(args[0], ref_args[0]):
                    p.fill_(float("nan"))
                    q.fill_(float("nan"))
    if mode == "sr":
        assert [int(s) for s in kwargs["sr_seeds"]] == [s + STEPS for s in SEEDS[: len(args[0])]]


@pytest.mark.parametrize("mode", ["master", "sr"])
def test_sgd_without_momentum_mixed(mode):
    """No state lists at all: the table is params (+ masters), the state dtype the params'."""
    args, kwargs = _op_args("sgd_", BF16, mode=mode, sliced=True)
    args[2], args[4] = [], 0.0  # no momentum buffers, momentum 0
    ref_args, ref_kwargs = _clone_args(args, kwargs)
    ft.sgd_(*args, **kwargs)
    reference.sgd_(*ref_args, **ref_kwargs)
    _check_mixed_step("sgd_", args, kwargs, ref_args, ref_kwargs, mode, f"sgd {mode}")


@pytest.mark.parametrize("mode", ["master", "sr"])
def test_lion_rounding_is_the_reference_bit_for_bit(mode):
    """Lion's update, theta*(1 - lr*wd) - lr*sign(c), is computed exactly alike in fp32 (the
    product with a sign is exact), so the rounded params equal the reference's outright."""
    args, kwargs = _op_args("lion_", BF16, state_dtype=FP32, mode=mode, sliced=True)
    ref_args, ref_kwargs = _clone_args(args, kwargs)
    for _ in range(STEPS):
        _refill_grads([args, ref_args], BF16)
        ft.lion_(*args, **kwargs)
        reference.lion_(*ref_args, **ref_kwargs)
        for i, (p, q) in enumerate(zip(args[0], ref_args[0])):
            assert _same_bits(p, q), f"params[{i}]"
        for i, (w, x) in enumerate(zip(kwargs.get("master_params", []), ref_kwargs.get(
            "master_params", []))):  # fmt: skip
            assert _same_bits(w, x), f"master_params[{i}]"


@pytest.mark.parametrize("sdtype", [FP32, BF16], ids=["fp32states", "bf16states"])
@pytest.mark.parametrize("op", UPDATE_OPS)
def test_sr_rounds_the_fp32_update_bit_for_bit(op, sdtype):
    """With the same inputs, the SR param is sr_round_bf16 (the reference's function, keyed by
    the advanced seed, indexed in the param's memory order) of the fp32 theta that the master
    mode computes (theta read from a master equal to the bf16 param), and the states are equal."""
    args, kwargs = _op_args(op, BF16, state_dtype=sdtype, mode="sr", sliced=True)
    m_args, m_kwargs = _clone_args(args, kwargs)
    del m_kwargs["sr_seeds"]
    m_kwargs["master_params"] = [p.float() for p in m_args[0]]
    seeds = [int(s) for s in kwargs["sr_seeds"]]
    getattr(ft, op)(*args, **kwargs)
    getattr(ft, op)(*m_args, **m_kwargs)
    assert [int(s) for s in kwargs["sr_seeds"]] == [s + 1 for s in seeds], "seeds not advanced"
    rounded_differently = 0
    for i, (p, w, seed) in enumerate(zip(args[0], m_kwargs["master_params"], seeds)):
        want = sr_round_bf16(w, sr_key(seed + 1), p)
        assert _same_bits(p, want), f"{op} params[{i}]: not sr_round_bf16 of the fp32 update"
        rounded_differently += int((_bits(p) != _bits(w.to(BF16))).sum())
    assert rounded_differently > 0, "SR gave round-to-nearest everywhere"
    for i, (a, b) in enumerate(zip(_flat(args[1:], {}), _flat(m_args[1:], {}))):
        assert _same_bits(a, b), f"{op} state tensor {i}"


@pytest.mark.parametrize("base", [0, 2**32 - 100], ids=["j0", "j2^32"])
@pytest.mark.parametrize("seed", [0, -1, 2**40 + 3, -(2**62) + 7])
def test_sr_store_matches_the_reference_primitives(seed, base):
    """The kernels' hash and SR store against fusedopt.reference's sr_key / sr_noise, bit for
    bit: random values, exact bf16 values (never moved), values that round up to inf, inf, NaN,
    -0, subnormals; element indices past 2^32 (the high word of j)."""
    from fusedopt.reference._common import sr_noise

    big = torch.finfo(torch.float32).max  # rounds up to inf unless its noise is 0
    special = [float("inf"), -float("inf"), float("nan"), -0.0, 0.0, 1e-40, -3e-39, 1.0, -2.5,
               big, -big, 2.0**-133]  # fmt: skip
    x = torch.cat([torch.tensor(special), torch.randn(500) * 10.0, torch.randn(11).exp2()])
    x = x.float().to(DEVICE)
    y = torch.empty(x.numel(), dtype=BF16, device=DEVICE)
    s = torch.tensor([seed], dtype=torch.int64, device=DEVICE)
    table = torch.tensor([s.data_ptr()], dtype=torch.int64, device=DEVICE)
    _sr_store_kernel[(1,)](x, y, table, base, x.numel(), BLOCK=1024)
    key = sr_key(seed)
    u = x.cpu().view(torch.int32).long() & 0xFFFFFFFF
    j = torch.arange(x.numel(), dtype=torch.int64) + base
    bits = ((u + sr_noise(key, j)) >> 16) & 0xFFFF
    finite = (u & 0x7F800000) != 0x7F800000
    nearest = _bits(x.cpu().to(BF16)).long() & 0xFFFF
    # NaN becomes 0x7FC0 (math.h, as c10::BFloat16); torch's vectorized conversion, which the
    # reference uses, may give another NaN (0xFFFF on AVX-512)
    nearest = torch.where(x.cpu().isnan(), 0x7FC0, nearest)
    want = torch.where(finite, bits, nearest)
    got = _bits(y.cpu()).long() & 0xFFFF
    assert torch.equal(got, want), f"{int((got != want).sum())} of {x.numel()} differ"
    assert torch.isinf(y[9:11]).all(), "the largest finite values did not round up to inf"


@on_device
def test_sr_is_unbiased_and_depends_on_the_seed(device):
    """theta = 1 + 2^-9 lies a quarter of the way from 1 to the next bf16 (1 + 2^-7): about a
    quarter of the elements round up, and another seed picks other ones."""
    n = 4096
    outs = []
    for seed in (5, 6):
        p = [torch.ones(n, dtype=BF16, device=device)]
        g = [torch.full((n,), -(2.0**-9), dtype=BF16, device=device)]
        seeds = [torch.tensor([seed], device=device)]
        ft.sgd_(p, g, [], 1.0, 0.0, 0.0, 0.0, False, False, False, sr_seeds=seeds)
        assert seeds[0].item() == seed + 1
        up = p[0] == 1 + 2.0**-7
        assert torch.all(up | (p[0] == 1.0))
        assert 0.2 < up.float().mean().item() < 0.3, up.float().mean().item()
        outs.append(up)
    assert not torch.equal(outs[0], outs[1]), "the seed does not change the noise"


@pytest.mark.parametrize("hdtype", [FP32, BF16], ids=["fp32h", "bf16h"])
@pytest.mark.parametrize("gdtype", [BF16, FP16, FP32], ids=["bf16g", "fp16g", "fp32g"])
def test_sophia_hessian_in_its_own_dtype(gdtype, hdtype):
    """update_hessian with the hessians in Sophia's state dtype and the grads in the params'."""
    args, _ = _op_args("sophia_update_hessian_", gdtype, state_dtype=hdtype, sliced=True)
    ref_args, _ = _clone_args(args, {})
    for step in range(2):
        _refill_grads([args, ref_args], gdtype)
        ft.sophia_update_hessian_(*args, grad_scale=torch.tensor(4.0, device=DEVICE))
        reference.sophia_update_hessian_(*ref_args, grad_scale=torch.tensor(4.0))
        for i, (a, b) in enumerate(zip(args[0], ref_args[0])):
            assert a.dtype == hdtype
            assert_close_ulp(a.cpu(), b, MIXED_TOL, f"step {step + 1} hessians[{i}]")


@pytest.mark.parametrize(
    "op,mode,phase",
    [(op, m, 0) for op in UPDATE_OPS for m in ("master", "sr")]
    + [("lamb_", "sr", 1), ("lamb_", "sr", 2), ("lamb_", "master", 1)],
)
def test_found_inf_changes_nothing_mixed(op, mode, phase):
    """GradScaler found inf/NaN: not params, masters, states, steps, seeds, norms, sq_sums."""
    args, kwargs = _op_args(op, BF16, state_dtype=BF16, mode=mode)
    if phase:
        kwargs.update(phase=phase, sq_sums=torch.rand(len(args[0]), 2, dtype=FP64, device=DEVICE))
    before = _snapshot(args, kwargs)
    getattr(ft, op)(*args, **kwargs, found_inf=torch.ones((), device=DEVICE))
    _unchanged(args, kwargs, before, f"{op} {mode} phase {phase}")


# (id, param dtype, state dtype, mode): EXACT (moments stored by phase 1) and not
LAMB_PHASE_CONFIGS = [("fp32", FP32, FP32, "")] + [
    c
    for c in MIXED_CONFIGS
    if c[0] in ("bf16-master", "bf16-sr-bf16states", "fp16-master-bf16states", "fp32-bf16states")
]


@pytest.mark.parametrize(
    "name,pdtype,sdtype,mode", LAMB_PHASE_CONFIGS, ids=[c[0] for c in LAMB_PHASE_CONFIGS]
)
def test_lamb_phases(name, pdtype, sdtype, mode):
    """Phase 1 counts the step and writes each param's (sum p^2, sum u^2), as the reference
    does, and no param, master, norm or seed; phase 2 advances the seeds and not the steps; the
    two give phase 0's result bit for bit; and phase 2 takes the norms from sq_sums."""
    args, kwargs = _op_args("lamb_", pdtype, state_dtype=sdtype, mode=mode, sliced=True)
    split_args, split_kwargs = _clone_args(args, kwargs)
    ref_args, ref_kwargs = _clone_args(args, kwargs)
    n = len(args[0])
    steps = [s.item() for s in args[4]]
    ft.lamb_(*args, **kwargs)  # phase 0

    before = _snapshot(split_args, split_kwargs)
    sq = torch.full((n, 2), -1.0, dtype=FP64, device=DEVICE)
    ft.lamb_(*split_args, **split_kwargs, phase=1, sq_sums=sq)
    assert [s.item() for s in split_args[4]] == [s + 1 for s in steps]
    written = {id(t) for t in [*split_args[2], *split_args[3], *split_args[4]]}  # moments, steps
    for i, (a, b) in enumerate(zip(_flat(split_args, split_kwargs), before)):
        if id(a) not in written:
            assert _same_bits(a, b), f"phase 1 wrote tensor {i}"
    ref_sq = torch.full((n, 2), -1.0, dtype=FP64)
    reference.lamb_(*ref_args, **ref_kwargs, phase=1, sq_sums=ref_sq)
    torch.testing.assert_close(sq.cpu(), ref_sq, rtol=1e-6, atol=0)
    assert sq[SHAPES.index((0,))].eq(0).all()

    kept = _clone_args(split_args, split_kwargs)
    ft.lamb_(*split_args, **split_kwargs, phase=2, sq_sums=sq)
    for i, (a, b) in enumerate(zip(_flat(split_args, split_kwargs), _flat(args, kwargs))):
        assert _same_bits(a, b), f"phase 1 + phase 2 != phase 0: tensor {i}"

    # phase 2 with other (say all-reduced) sums: the norms are theirs, and so is the update
    other_args, other_kwargs = kept
    other_sq = sq * torch.tensor([1e-4, 1.0], dtype=FP64, device=DEVICE)  # ratios / 100
    ft.lamb_(*other_args, **other_kwargs, phase=2, sq_sums=other_sq)
    norms = other_kwargs["tensor_norms"]
    assert torch.equal(norms, other_sq.sqrt()), "the norms are not sqrt(sq_sums)"
    ref_other = _clone_args(ref_args, ref_kwargs)
    reference.lamb_(*ref_other[0], **ref_other[1], phase=2, sq_sums=other_sq.cpu())
    _check_mixed_step("lamb_", other_args, other_kwargs, *ref_other, mode, "phase 2")
    theta = "master_params" if mode == "master" else None  # (a bf16 param may not move)
    a_theta = other_kwargs[theta] if theta else other_args[0]
    b_theta = split_kwargs[theta] if theta else split_args[0]
    moved = [not _same_bits(a, b) for a, b in zip(a_theta, b_theta) if a.numel()]
    assert all(moved), f"sq_sums had no effect: {moved}"


def test_lamb_phase_launches(monkeypatch):
    """Phase 1 runs no update pass, phase 2 no norm pass and (without seeds) no increment."""
    names = ("_increment_steps_kernel", "_lamb_norms_kernel", "_lamb_ratio_kernel",
             "_lamb_apply_kernel")  # fmt: skip
    counters = {k: _Counting(getattr(_kernels, k)) for k in names}
    for k, c in counters.items():
        monkeypatch.setattr(_kernels, k, c)
    for mode, phase, want in [("", 1, (1, 1, 1, 0)), ("", 2, (0, 0, 1, 1)),
                              ("sr", 2, (1, 0, 1, 1)), ("sr", 0, (1, 1, 1, 1))]:  # fmt: skip
        args, kwargs = _op_args("lamb_", BF16, mode=mode)
        sq = torch.rand(len(args[0]), 2, dtype=FP64, device=DEVICE)
        for c in counters.values():
            c.launches = 0
        ft.lamb_(*args, **kwargs, phase=phase, sq_sums=sq)
        assert tuple(counters[k].launches for k in names) == want, (mode, phase)


# Invalid combinations: (id, op, params, states, mode, how to break the call, message)
def _seeds(n, dtype=torch.int64):
    return [torch.zeros(1, dtype=dtype, device=DEVICE) for _ in range(n)]


def _set(lst, i, t):
    lst[i] = t


BAD_MIXED = [
    ("exclusive", "adam_", BF16, FP32, "master",
     lambda a, k: k.update(sr_seeds=_seeds(len(a[0]))), "master_params and sr_seeds are exclusive"),
    ("master-fp32-params", "sgd_", FP32, FP32, "",
     lambda a, k: k.update(master_params=[p.clone() for p in a[0]]),
     "master_params need float16 or bfloat16 params"),
    ("master-dtype", "lion_", BF16, FP32, "master",
     lambda a, k: _set(k["master_params"], 1, k["master_params"][1].to(BF16)),
     r"master_params\[1\] has dtype torch.bfloat16, expected torch.float32"),
    ("master-shape", "sophia_", FP16, FP32, "master",
     lambda a, k: _set(k["master_params"], 3, k["master_params"][3].reshape(-1)),
     r"master_params\[3\] has shape"),
    ("master-count", "lamb_", BF16, BF16, "master",
     lambda a, k: k["master_params"].pop(), "expected master_params to have 5 tensors"),
    ("sr-fp16", "adam_", FP16, FP32, "",
     lambda a, k: k.update(sr_seeds=_seeds(len(a[0]))), r"sr_seeds\) needs bfloat16 params"),
    ("sr-dtype", "sophia_", BF16, BF16, "sr",
     lambda a, k: _set(k["sr_seeds"], 2, k["sr_seeds"][2].int()),
     r"sr_seeds\[2\] must be a one-element int64 tensor"),
    ("sr-numel", "sgd_", BF16, FP32, "sr",
     lambda a, k: _set(k["sr_seeds"], 0, torch.zeros(2, dtype=torch.int64)),
     r"sr_seeds\[0\] must be a one-element int64 tensor"),
    ("sr-count", "lion_", BF16, FP32, "sr",
     lambda a, k: k["sr_seeds"].pop(), "expected sr_seeds to have 5 tensors"),
    ("states-differ", "adam_", BF16, FP32, "",
     lambda a, k: _set(a[3], 1, a[3][1].to(BF16)),
     r"exp_avg_sqs\[1\] has dtype torch.bfloat16 but the first state tensor has dtype"),
    ("states-fp16-for-fp32", "lion_", FP32, FP16, "", None,
     "state dtype torch.float16 is not supported with param dtype torch.float32"),
    ("states-fp32-for-fp64", "sgd_", FP64, FP32, "", None,
     "state dtype torch.float32 is not supported with param dtype torch.float64"),
    ("grads-dtype", "adam_", BF16, FP32, "master",
     lambda a, k: _set(a[1], 0, a[1][0].float()), r"grads\[0\] has dtype torch.float32"),
    ("lamb-phase", "lamb_", BF16, FP32, "sr",
     lambda a, k: k.update(phase=3), "phase must be 0, 1 or 2"),
    ("lamb-no-sq_sums", "lamb_", FP32, FP32, "",
     lambda a, k: k.update(phase=1), r"phase 1 needs sq_sums of shape \(5, 2\)"),
    ("lamb-sq_sums-shape", "lamb_", BF16, BF16, "master",
     lambda a, k: k.update(phase=2, sq_sums=torch.zeros(6, 2, dtype=FP64)),
     "phase 2 needs sq_sums"),
    ("lamb-sq_sums-dtype", "lamb_", BF16, FP32, "",
     lambda a, k: k.update(phase=1, sq_sums=torch.zeros(5, 2)), "phase 1 needs sq_sums"),
    ("hessian-fp64-for-fp32", "sophia_update_hessian_", FP32, FP64, "", None,
     "hessians of dtype torch.float64 do not go with grads of dtype torch.float32"),
    ("hessian-grads-differ", "sophia_update_hessian_", BF16, FP32, "",
     lambda a, k: _set(a[1], 2, a[1][2].half()), r"grads\[2\] has dtype torch.float16"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,op,pdtype,sdtype,mode,breaks,match", BAD_MIXED, ids=[c[0] for c in BAD_MIXED]
)
def test_bad_mixed_calls_raise_before_any_write(name, op, pdtype, sdtype, mode, breaks, match):
    """Each invalid combination raises (as the reference's check_mixed and the compiled ops do)
    and changes nothing, seeds and steps included; also after a valid call on the same tensors
    cached their table (the call is validated again because its tensors or lists differ)."""
    args, kwargs = _op_args(op, pdtype, state_dtype=sdtype, mode=mode)
    if breaks is not None:  # a valid call first (skipped: it changes nothing) caches a table
        getattr(ft, op)(*args, **kwargs, found_inf=torch.ones((), device=DEVICE))
        breaks(args, kwargs)
    before = _snapshot(args, kwargs)
    with pytest.raises(RuntimeError, match=match):
        getattr(ft, op)(*args, **kwargs)
    _unchanged(args, kwargs, before, name)


def test_mixed_lists_are_part_of_the_cache_key():
    """The same tensors in other roles, or seen as another dtype, get their own table: a master
    list where another call has max_exp_avg_sqs, new seeds, fp16 buffers viewed as bf16."""
    args, kwargs = _op_args("adam_", BF16, state_dtype=FP32, mode="master")
    args[11] = False  # no amsgrad: [params, exp_avgs, exp_avg_sqs, master_params]
    ref_args, ref_kwargs = _clone_args(args, kwargs)
    ft.adam_(*args, **kwargs)
    reference.adam_(*ref_args, **ref_kwargs)
    # amsgrad, the masters as max_exp_avg_sqs: [params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs]
    args[4], args[11] = kwargs.pop("master_params"), True
    ref_args[4], ref_args[11] = ref_kwargs.pop("master_params"), True
    ft.adam_(*args, **kwargs)
    reference.adam_(*ref_args, **ref_kwargs)
    for i, (a, b) in enumerate(zip(_flat(args, kwargs), _flat(ref_args, ref_kwargs))):
        assert_close_ulp(a.cpu(), b.cpu(), MIXED_TOL, f"amsgrad after master: tensor {i}")

    args, kwargs = _op_args("sgd_", BF16, mode="sr")
    first = kwargs["sr_seeds"]
    ft.sgd_(*args, **kwargs)
    kwargs["sr_seeds"] = [s.clone() + 10 for s in first]
    ft.sgd_(*args, **kwargs)
    assert [int(s) for s in first] == [s + 1 for s in SEEDS[:5]], "the old seeds were advanced"
    assert [int(s) for s in kwargs["sr_seeds"]] == [s + 12 for s in SEEDS[:5]]

    args, kwargs = _op_args("sgd_", FP16)
    ft.sgd_(*args, **kwargs, found_inf=torch.ones((), device=DEVICE))  # caches fp16 buffers
    args[2] = [b.view(BF16) for b in args[2]]  # same addresses, strides and sizes
    ref_args, ref_kwargs = _clone_args(args, kwargs)
    ft.sgd_(*args, **kwargs)
    reference.sgd_(*ref_args, **ref_kwargs)
    for i, (a, b) in enumerate(zip(_flat(args, kwargs), _flat(ref_args, ref_kwargs))):
        assert_close_ulp(a.cpu(), b.cpu(), MIXED_TOL, f"bf16 view of the buffers: tensor {i}")


MIXED_OPCHECK = [
    ("adam_", BF16, FP32, "master", {}),
    ("sgd_", BF16, BF16, "sr", {}),
    ("lion_", FP16, BF16, "master", {}),
    ("sophia_", BF16, FP32, "sr", {}),
    ("lamb_", BF16, FP32, "sr", {"phase": 1}),
    ("lamb_", BF16, BF16, "master", {"phase": 2}),
]


@pytest.mark.parametrize(
    "op,pdtype,sdtype,mode,extra",
    MIXED_OPCHECK,
    ids=[f"{c[0]}-{c[3]}-{c[4].get('phase', 0)}" for c in MIXED_OPCHECK],
)
def test_opcheck_mixed(op, pdtype, sdtype, mode, extra):
    """The schemas' mutated mixed-precision lists (Tensor(m!)[]?) are the ones written."""
    args, kwargs = _op_args(op, pdtype, state_dtype=sdtype, mode=mode)
    kwargs = dict(kwargs, grad_scale=None, found_inf=None, **extra)
    if "phase" in extra:
        kwargs["sq_sums"] = torch.rand(len(args[0]), 2, dtype=FP64, device=DEVICE)
    torch.library.opcheck(getattr(torch.ops.fusedopt_triton, op).default, tuple(args), kwargs)


def test_compiles_with_mixed_lists():
    """torch.compile(fullgraph=True) traces the ops with master_params / sr_seeds (optional
    mutated tensor lists) and computes the eager result bit for bit."""
    for op, mode in [("adam_", "master"), ("sgd_", "sr")]:
        args, kwargs = _op_args(op, BF16, state_dtype=FP32, mode=mode)
        args2, kwargs2 = _clone_args(args, kwargs)

        def fn(a, k, op=op):
            getattr(ft, op)(*a, **k)

        fn(args, kwargs)
        torch.compile(fn, backend="aot_eager", fullgraph=True)(args2, kwargs2)
        for i, (a, b) in enumerate(zip(_flat(args, kwargs), _flat(args2, kwargs2))):
            assert _same_bits(a, b), f"{op}: tensor {i}"


# -- launches and chunks ------------------------------------------------------------------------
class _Counting:
    """Stands in for a kernel: counts launches, forwards them."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def test_one_launch_for_many_tensors(monkeypatch):
    """100 parameters, one update launch (and one for the step counters): not one per tensor."""
    counters = {}
    for name in ("_update_kernel", "_increment_steps_kernel"):
        counters[name] = _Counting(getattr(_kernels, name))
        monkeypatch.setattr(_kernels, name, counters[name])
    params = [torch.randn(1 + i % 3, device=DEVICE, requires_grad=True) for i in range(100)]
    ref = [p.detach().cpu().clone().requires_grad_() for p in params]
    ours = fusedopt.AdamW(params, lr=1e-2, backend="triton")
    theirs = torch.optim.AdamW(ref, lr=1e-2, foreach=False)
    for p, q in zip(params, ref):
        q.grad = torch.randn_like(q)
        p.grad = q.grad.to(DEVICE)
    ours.step()
    theirs.step()
    assert {k: c.launches for k, c in counters.items()} == {
        "_update_kernel": 1,
        "_increment_steps_kernel": 1,
    }
    for p, q in zip(params, ref):
        assert_close_ulp(p.detach().cpu(), q.detach(), TOL_VS_TORCH[torch.float32], "param")


@on_device
def test_many_chunks_and_tiles(monkeypatch, device):
    """Tensors spanning several programs and several full tiles each, with partial last ones."""
    monkeypatch.setattr(mt, "CHUNK", 4096)
    monkeypatch.setattr(mt, "INTERPRET_BLOCK", 1024)
    kwargs = {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}
    run_parity(
        lambda ps: fusedopt.AdamW(ps, backend="triton", **kwargs),
        lambda ps: torch.optim.AdamW(ps, foreach=False, **kwargs),
        torch.float32,
        steps=2,
        device=device,
    )
    x = [torch.randn(n, device=device) for n in (10001, 4096, 3)]
    torch.testing.assert_close(ft.sum_sq(x), reference.sum_sq(x), rtol=1e-13, atol=0)


# -- alignment: the kernels' ALIGNED variant (16-byte vector accesses) and the other --------
class _Recording(_Counting):
    """Also records the ALIGNED argument of every launch."""

    def __init__(self, kernel):
        super().__init__(kernel)
        self.aligned: list[bool] = []

    def __getitem__(self, grid):
        launch = super().__getitem__(grid)

        def run(*args, **kwargs):
            self.aligned.append(kwargs["ALIGNED"])
            return launch(*args, **kwargs)

        return run


ALIGNED_KERNELS = ["_update_kernel", "_lamb_norms_kernel", "_lamb_apply_kernel",
                   "_muon_momentum_kernel", "_sum_sq_kernel"]  # fmt: skip


def _record_aligned(monkeypatch) -> list[_Recording]:
    recs = [_Recording(getattr(_kernels, k)) for k in ALIGNED_KERNELS]
    for k, r in zip(ALIGNED_KERNELS, recs):
        monkeypatch.setattr(_kernels, k, r)
    return recs


# (op, param dtype, state dtype, mode, misaligned): every op aligned and not (all its tensors,
# or only the grads), the mixed-precision lists (masters, seeds), every element size
ALIGN_CASES = (
    [(op, FP32, FP32, "", m) for op in OPS for m in ("", "all", "grads")]
    + [(op, BF16, FP32, "master", "all") for op in UPDATE_OPS]
    + [(op, BF16, BF16, "sr", "params") for op in UPDATE_OPS]
    + [("adam_", FP64, FP64, "", "all"), ("sgd_", FP16, FP16, "", "params"),
       ("lamb_", BF16, BF16, "", "grads"), ("lion_", FP16, FP32, "", "all")]
)  # fmt: skip


@pytest.mark.parametrize(
    "op,pdtype,sdtype,mode,misaligned",
    ALIGN_CASES,
    ids=[f"{c[0]}-{DTYPE_IDS[c[1]]}-{c[3] or 'plain'}-{c[4] or 'aligned'}" for c in ALIGN_CASES],
)
def test_alignment_variant_and_result(op, pdtype, sdtype, mode, misaligned, monkeypatch):
    """The host picks the ALIGNED kernels only when every address of the call is 16-byte
    aligned (params, states, masters, grads), and both variants compute the reference's step:
    tensors at odd element offsets, as in the CUDA simulation's tests."""
    recs = _record_aligned(monkeypatch)
    args, kwargs = _op_args(op, pdtype, state_dtype=sdtype, mode=mode, misaligned=misaligned)
    ref_args, ref_kwargs = _clone_args(args, kwargs)
    _refill_grads([args, ref_args], pdtype)
    getattr(ft, op)(*args, **kwargs)
    getattr(reference, op)(*ref_args, **ref_kwargs)
    _check_mixed_step(op, args, kwargs, ref_args, ref_kwargs, mode, f"{op} {misaligned}")
    flags = [a for r in recs for a in r.aligned]
    assert flags and all(f == (not misaligned) for f in flags), flags


@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
def test_sum_sq_alignment(misaligned, monkeypatch):
    recs = _record_aligned(monkeypatch)
    x = _tensors([(70001,), (), (33, 31), (3,)], torch.float32, DEVICE)
    if misaligned:
        x = [_at_odd_offset(t, i) for i, t in enumerate(x)]
    got = ft.sum_sq(x)
    torch.testing.assert_close(
        got.cpu(), reference.sum_sq([t.cpu() for t in x]), rtol=1e-13, atol=0
    )
    assert recs[-1].aligned == [not misaligned]


def test_chunk_table_is_64_bit():
    """Chunk starts past 2^31 elements (int32 offsets would wrap), empty tensors get none."""
    big = 2**31 + 5
    chunks, ranges = mt.chunk_table([3, 0, big, 1], chunk=2**30)
    assert chunks.dtype == torch.int64
    assert chunks.tolist() == [[0, 0], [2, 0], [2, 2**30], [2, 2**31], [3, 0]]
    assert ranges.tolist() == [[0, 1], [1, 0], [1, 3], [4, 1]]


# -- the table cache ----------------------------------------------------------------------------
def _pair(dtype=torch.float32):
    """Triton and reference AdamW on equal params: a 2-D one, a transposed one, a 0-d one."""
    base = [torch.randn(5, 3), torch.randn(4, 6).t(), torch.randn(())]
    ours = [_like_on(p.requires_grad_(), DEVICE) for p in base]
    ref = [p.detach().clone().requires_grad_() for p in base]
    kw = {"lr": 1e-2, "weight_decay": 0.1}
    return (
        ours,
        ref,
        fusedopt.AdamW(ours, backend="triton", **kw),
        torch.optim.AdamW(ref, foreach=False, **kw),
    )


def _step_and_compare(ours, ref, o_opt, r_opt, what):
    for p, q in zip(ours, ref):
        q.grad = torch.randn_like(q)
        p.grad = q.grad.to(DEVICE)
    o_opt.step()
    r_opt.step()
    a, b = state_tensors(o_opt, ours), state_tensors(r_opt, ref)
    for (name, x), (_, y) in zip(a, b):
        assert_close_ulp(x.cpu(), y, TOL_VS_TORCH[torch.float32], f"{what}: {name}")


def test_table_is_reused_while_tensors_are_the_same():
    ours, ref, o_opt, r_opt = _pair()
    _step_and_compare(ours, ref, o_opt, r_opt, "first")
    builds = mt.stats["builds"]
    grads_before = mt.stats["grad_builds"]
    _step_and_compare(ours, ref, o_opt, r_opt, "second")
    assert mt.stats["builds"] == builds, "rebuilt the table for the same tensors"
    assert mt.stats["grad_builds"] == grads_before + 1, "new grads need a new grad table"


def _mutate(kind, ours, ref, o_opt, r_opt):
    if kind == "add_param_group":
        extra = torch.randn(7, 2)
        o_opt.add_param_group({"params": [_like_on(extra.requires_grad_(), DEVICE)]})
        r_opt.add_param_group({"params": [extra.detach().clone().requires_grad_()]})
        ours.append(o_opt.param_groups[-1]["params"][0])
        ref.append(r_opt.param_groups[-1]["params"][0])
    elif kind == "load_state_dict":
        sd = r_opt.state_dict()  # torch.optim's own checkpoint, perturbed
        for st in sd["state"].values():
            st["exp_avg"] = st["exp_avg"] * 0.5 + 0.01
        r_opt.load_state_dict(copy.deepcopy(sd))  # (a load may alias the dict's tensors)
        o_opt.load_state_dict(copy.deepcopy(sd))
        with torch.no_grad():
            for p, q in zip(ours, ref):
                p.copy_(q)
    elif kind == "replace_storage":
        for i, (p, q) in enumerate(zip(ours, ref)):
            new = torch.randn(q.shape)
            if i == 1:  # a transposed param becomes contiguous: other strides, other staging
                new = new.contiguous()
            q.data = new.clone()
            p.data = new.to(DEVICE)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["add_param_group", "load_state_dict", "replace_storage"])
def test_stale_table_is_never_used(kind):
    """Each change of the tensors behind a step rebuilds the table, and the step is right."""
    ours, ref, o_opt, r_opt = _pair()
    _step_and_compare(ours, ref, o_opt, r_opt, "before")
    old_storage = [p.detach().clone() for p in ours]
    old_refs = [p.data for p in ours]
    builds = mt.stats["builds"]
    _mutate(kind, ours, ref, o_opt, r_opt)
    _step_and_compare(ours, ref, o_opt, r_opt, f"after {kind}")
    assert mt.stats["builds"] > builds, f"{kind} did not rebuild the table"
    if kind == "replace_storage":
        for a, b in zip(old_refs, old_storage):
            assert torch.equal(a, b), "the old storage was written through a stale table"


def test_direct_calls_with_new_tensors_of_the_same_shapes():
    """The cache is keyed by addresses and layouts, not by shapes or call site."""
    args_a, _ = _op_args("lion_")
    args_b, _ = _op_args("lion_")
    kept_a = [t.clone() for t in _flat(args_a, {})]
    ft.lion_(*args_a)
    after_a = [t.clone() for t in _flat(args_a, {})]
    ref_b, _ = _clone_args([[t.cpu() for t in a] if isinstance(a, list) else a for a in args_b], {})
    ref_b[4] = ref_b[4].cpu()
    ft.lion_(*args_b)
    reference.lion_(*ref_b)
    assert any(not torch.equal(x, y) for x, y in zip(after_a, kept_a))
    for x, y in zip(_flat(args_a, {}), after_a):
        assert torch.equal(x, y), "the first call's tensors were touched by the second"
    for x, y in zip(_flat(args_b, {}), _flat(ref_b, {})):
        assert_close_ulp(x.cpu(), y, TOL_VS_TORCH[torch.float32], "second call")


# -- CUDA graphs (Note [CUDA graphs] in fusedopt/triton/_multi_tensor.py) -----------------------
# Without a GPU the capture is simulated: mt.capturing says a capture is under way, and the
# entry bookkeeping (what is kept, what is copied when) is checked; the CUDA test below captures
# and replays for real.
@pytest.fixture
def fresh_cache():
    """An empty table cache before and after (captured entries are never evicted)."""
    mt.clear_cache()
    yield
    mt.clear_cache()


def _last_entry() -> mt.Entry:
    """The entry of the latest prepare() call (inserted or moved last)."""
    return next(reversed(mt._cache.values()))


def _entry_tensors(e: mt.Entry) -> list[torch.Tensor]:
    out = [e.table, e.chunks, e.ranges, *e.scratch.values(), *(b for _, _, b in e.staged)]
    if e.grad_table is not None:
        out += [e.grad_table, *(b for _, b in e.grad_staged)]
    return out


def test_captured_entries_are_never_evicted(monkeypatch, fresh_cache):
    monkeypatch.setattr(mt, "MAX_ENTRIES", 2)
    capture = [True]
    monkeypatch.setattr(mt, "capturing", lambda device: capture[0])
    captured = []
    for op in ("adam_", "lamb_"):  # lamb_: scratch tensors too
        args, kwargs = _op_args(op, sliced=True)  # staged param and grads
        getattr(ft, op)(*args, **kwargs)
        captured.append(_last_entry())
    ft.sum_sq(_tensors([(5,), (3, 2)], torch.float32, DEVICE))
    captured.append(_last_entry())
    assert all(e.captured for e in captured)
    assert all(e.staged and e.grad_staged for e in captured[:2]), "no staging buffers to keep"
    alive = [weakref.ref(t) for e in captured for t in _entry_tensors(e)]
    capture[0] = False
    others = []
    for _ in range(4):
        args, kwargs = _op_args("lion_")
        ft.lion_(*args, **kwargs)
        others.append(weakref.ref(_last_entry().table))
    del args, kwargs
    gc.collect()
    assert all(any(c is e for e in mt._cache.values()) for c in captured)
    assert all(r() is not None for r in alive), "a captured entry's tensor was freed"
    assert [r() is None for r in others] == [True, True, False, False], "LRU of the others"


def test_captured_grad_tables_are_kept_when_grads_change(monkeypatch, fresh_cache):
    capture = [True]
    monkeypatch.setattr(mt, "capturing", lambda device: capture[0])
    args, kwargs = _op_args("adam_")  # the transposed param's grad is staged
    ft.adam_(*args, **kwargs)
    e = _last_entry()
    old = [weakref.ref(e.grad_table)] + [weakref.ref(b) for _, b in e.grad_staged]
    assert len(old) == 2
    capture[0] = False
    ref_args, ref_kwargs = _clone_args(args, kwargs)
    for step in range(2):  # new grads (new addresses), outside the capture
        args[1] = [g.clone() for g in args[1]]
        ref_args[1] = [g.clone() for g in args[1]]
        ft.adam_(*args, **kwargs)
        reference.adam_(*ref_args, **ref_kwargs)
        _check_mixed_step("adam_", args, kwargs, ref_args, ref_kwargs, "", f"step {step + 2}")
        if step == 0:
            assert e.grad_table is not old[0]()
            uncaptured = weakref.ref(e.grad_table)
    gc.collect()
    assert all(r() is not None for r in old), "the captured grad table or its buffers were freed"
    assert uncaptured() is None, "a grad table never captured was kept"


def _scramble(entry: mt.Entry) -> None:
    """What the device holds of tables built during a capture before the graph runs: here every
    row is the first one (addresses that stay valid, results that are wrong)."""
    for _, dev in entry.pending:
        dev.copy_(dev[:1].clone().expand_as(dev))


def test_tables_built_during_a_capture_are_copied_before_use(monkeypatch, fresh_cache):
    """Their copy to the device runs only when the graph does: a later capture copies them again
    into its own graph, the first call outside a capture copies them itself."""
    capture = [True]
    monkeypatch.setattr(mt, "capturing", lambda device: capture[0])
    args, kwargs = _op_args("lamb_")
    ref_args, ref_kwargs = _clone_args(args, kwargs)
    for step, (in_capture, pending_after) in enumerate([(True, 4), (True, 4), (False, 0)]):
        capture[0] = in_capture
        _refill_grads([args, ref_args], torch.float32)
        ft.lamb_(*args, **kwargs)
        reference.lamb_(*ref_args, **ref_kwargs)
        e = _last_entry()
        _check_mixed_step("lamb_", args, kwargs, ref_args, ref_kwargs, "", f"step {step + 1}")
        assert len(e.pending) == pending_after  # table, chunks, ranges, grad table
        if step == 0:
            copies = list(e.pending)
        _scramble(e)
    for host, dev in copies:
        assert torch.equal(dev.cpu(), host), "not copied outside the capture"


@pytest.mark.cuda
@needs_gpu
def test_cuda_graph_capture_replay_and_eviction(monkeypatch, fresh_cache):
    """Ops captured in a CUDA graph, then run once eagerly (tables built during the capture are
    copied then) and replayed after their cache entries would have been evicted (other calls,
    memory churn), against the reference step by step: plain, master, stochastic rounding,
    misaligned tensors, LAMB's scratch, sum_sq."""
    monkeypatch.setattr(mt, "MAX_ENTRIES", 2)
    cases = [
        ("adam_", FP32, FP32, "", ""),
        ("lamb_", BF16, FP32, "master", "all"),
        ("sgd_", BF16, BF16, "sr", "grads"),
    ]

    def sq_inputs():
        return _tensors([(70001,), (33, 31)], torch.float32, DEVICE)

    # warm-up on the same layouts: Triton compiles each kernel variant outside the capture
    for op, pdtype, sdtype, mode, misaligned in cases:
        a, k = _op_args(op, pdtype, state_dtype=sdtype, mode=mode, misaligned=misaligned)
        getattr(ft, op)(*a, **k)
    ft.sum_sq(sq_inputs())
    calls = []
    for op, pdtype, sdtype, mode, misaligned in cases:
        a, k = _op_args(op, pdtype, state_dtype=sdtype, mode=mode, misaligned=misaligned)
        calls.append((op, pdtype, mode, a, k, *_clone_args(a, k)))
    sq_in = sq_inputs()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for op, _, _, a, k, _, _ in calls:
            getattr(ft, op)(*a, **k)
        sq_out = ft.sum_sq(sq_in)
    entries = [e for e in mt._cache.values() if e.captured]
    assert len(entries) == len(calls) + 1
    for _ in range(4):  # evicts every entry that is not captured
        a, k = _op_args("lion_")
        ft.lion_(*a, **k)
    junk = [torch.full((n,), float("nan"), device=DEVICE) for n in (1 << 8, 1 << 12, 1 << 20)]
    assert all(any(c is e for e in mt._cache.values()) for c in entries)
    for step in range(4):
        for _, pdtype, _, a, _, ra, _ in calls:
            _refill_grads([a, ra], pdtype)
        with torch.no_grad():
            for x in sq_in:
                x.normal_()
        if step == 0:
            for op, _, _, a, k, _, _ in calls:
                getattr(ft, op)(*a, **k)
            sq = ft.sum_sq(sq_in)
        else:
            graph.replay()
            sq = sq_out
        torch.cuda.synchronize()
        for op, _, mode, a, k, ra, rk in calls:
            getattr(reference, op)(*ra, **rk)
            _check_mixed_step(op, a, k, ra, rk, mode, f"{op} step {step + 1}")
            with torch.no_grad():  # re-sync in place: the graph keeps the addresses
                for x, y in zip(_flat(a, k), _flat(ra, rk)):
                    x.copy_(y)
                if mode == "master":
                    for p, q in zip(a[0], ra[0]):
                        p.fill_(float("nan"))
                        q.fill_(float("nan"))
        want = reference.sum_sq([x.cpu() for x in sq_in])
        torch.testing.assert_close(sq.cpu(), want, rtol=1e-13, atol=0)
    del junk


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", [FP32, BF16], ids=["fp32", "bf16"])
def test_lamb_and_sum_sq_repeat_bit_for_bit(dtype):
    """20 runs from the same inputs give the same bits: LAMB's norms and sum_sq reduce across
    programs (a 300001-element param spans 5) in a fixed order, without atomics."""
    shapes = [(300001,), (70001,), (1000, 33), (), (0,)]
    p = _tensors(shapes, dtype, DEVICE)
    g = _tensors(shapes, dtype, DEVICE)
    m = _tensors(shapes, dtype, DEVICE)
    v = _tensors(shapes, dtype, DEVICE, positive=True)
    steps = [torch.tensor(3.0, device=DEVICE) for _ in shapes]
    norms = torch.zeros(len(shapes), 2, dtype=FP64, device=DEVICE)
    lists = [p, m, v, steps, [norms]]
    start = [[t.clone() for t in lst] for lst in lists]
    runs = []
    for _ in range(20):
        with torch.no_grad():
            for lst, init in zip(lists, start):
                for t, t0 in zip(lst, init):
                    t.copy_(t0)
        ft.lamb_(p, g, m, v, steps, torch.tensor(1e-2, device=DEVICE), 0.9, 0.999, 0.01, 1e-6,
                 True, 0.9, False, tensor_norms=norms)  # fmt: skip
        runs.append([_bits(t).clone() for lst in lists for t in lst] + [_bits(ft.sum_sq(p + g))])
    for i, run in enumerate(runs[1:], 2):
        for j, (a, b) in enumerate(zip(run, runs[0])):
            assert torch.equal(a, b), f"run {i}, tensor {j} differs from run 1"


def _steps_match_reference(device: str, stream: torch.cuda.Stream | None) -> None:
    """AdamW and LAMB with max_grad_norm (sum_sq in the step) on `device`, each step enqueued on
    `stream` after it waits for the grads' producer, against the reference on the CPU."""
    for cls, kw in [(fusedopt.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
                    (fusedopt.LAMB, {"lr": 1e-2, "max_grad_norm": 1.0})]:  # fmt: skip
        params = make_params(torch.float32)
        ours_p = [_like_on(p, device) for p in params]
        ref_p = clone_params(params)
        ours = cls(ours_p, backend="triton", **kw)
        ref = cls(ref_p, backend="reference", **kw)
        for step in range(3):
            g = fresh_grads(params)
            set_grads(ref_p, g)
            set_grads(ours_p, [None if x is None else _like_on(x, device) for x in g])
            if stream is None:
                ours.step()
            else:
                stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(stream):
                    ours.step()
                torch.cuda.current_stream(device).wait_stream(stream)
            ref.step()
            for (what, x), (_, y) in zip(state_tensors(ours, ours_p), state_tensors(ref, ref_p)):
                assert_close_ulp(x.cpu(), y, TOL_VS_TORCH[torch.float32], f"step {step + 1} {what}")


@pytest.mark.cuda
@needs_gpu
def test_step_on_a_side_stream():
    _steps_match_reference("cuda", torch.cuda.Stream())


@pytest.mark.cuda
@pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason=f"needs two GPUs, found {torch.cuda.device_count()}",
)
def test_step_on_the_second_gpu():
    """Params on cuda:1 while cuda:0 is the current device: tables, launches and the stream are
    those of the params' device."""
    assert torch.cuda.current_device() == 0
    _steps_match_reference("cuda:1", None)
    _steps_match_reference("cuda:1", torch.cuda.Stream("cuda:1"))
    assert torch.cuda.current_device() == 0


# -- bf16 rounding ------------------------------------------------------------------------------
def test_bf16_store_rounds_like_torch():
    """Round to nearest even, ties to even, overflow to inf, NaN stays NaN (the interpreter's own
    fp32->bf16 conversion truncates: Note [exact rounding])."""
    tie = 2.0**-8
    vals = [1 + tie, 1 + 3 * tie, -(1 + tie), 1.9999, 3.4e38, -3.4e38, float("inf"), -0.0, 0.0,
            1e-40, -1e-39, 2.0**-133, float("nan"), 65519.0, 1 + tie / 2, 1 + 1.5 * tie]  # fmt: skip
    x = torch.tensor(vals, dtype=torch.float32, device=DEVICE)
    y = torch.empty(len(vals), dtype=torch.bfloat16, device=DEVICE)
    z = torch.empty(len(vals), dtype=torch.float32, device=DEVICE)
    _roundtrip_kernel[(1,)](x, y, z, len(vals), BLOCK=32)
    want = x.to(torch.bfloat16)
    nan = want.isnan()  # (NaN payloads may differ: CUDA's conversion gives 0x7FFF)
    assert torch.equal(y.isnan(), nan) and torch.equal(z.isnan(), nan)
    assert torch.equal(y[~nan].view(torch.int16), want[~nan].view(torch.int16))
    assert torch.equal(z[~nan], want[~nan].float())


# -- registration: opcheck, torch.compile, the dispatcher ---------------------------------------
@pytest.mark.parametrize("op", [*OPS, "sum_sq"])
def test_opcheck(op):
    if op == "sum_sq":
        args, kwargs = [_tensors([(5,), (3, 2)], torch.float32, DEVICE)], {}
    else:
        args, kwargs = _op_args(op)
        kwargs = dict(kwargs, grad_scale=None, found_inf=None)
    torch.library.opcheck(getattr(torch.ops.fusedopt_triton, op).default, tuple(args), kwargs)


@pytest.mark.parametrize("mode", ["", "master"])
@pytest.mark.parametrize("op", OPS)
def test_op_bumps_the_versions_of_what_it_writes(op, mode):
    """A direct call that leaves the trailing optional arguments out (some of them written:
    sr_seeds, LAMB's sq_sums) works and bumps the version counter of every tensor passed in
    a written argument, and of no other (torch < 2.13 indexed the written arguments by
    position there and raised IndexError)."""
    if mode and op in ("sophia_update_hessian_", "muon_momentum_"):
        pytest.skip("the op has no master_params")
    args, kwargs = _op_args(op, BF16 if mode else FP32, state_dtype=FP32, mode=mode)
    schema = getattr(torch.ops.fusedopt_triton, op).default._schema
    written = {a.name for a in schema.arguments if a.alias_info and a.alias_info.is_write}
    passed = dict(zip([a.name for a in schema.arguments], args), **kwargs)
    before = {name: [t._version for t in _flat([value], {})] for name, value in passed.items()}
    getattr(torch.ops.fusedopt_triton, op)(*args, **kwargs)
    for name, value in passed.items():
        for t, v in zip(_flat([value], {}), before[name]):
            assert (t._version > v) == (name in written), (name, t._version, v)


def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) traces the ops (fake kernels, declared mutations) and the
    compiled function computes what the eager one does."""
    args, _ = _op_args("adam_")
    args2, _ = _clone_args(args, {})

    def fn(*a):
        ft.adam_(*a)
        return ft.sum_sq(a[0])

    eager = fn(*args)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)(*args2)
    assert torch.equal(eager, compiled) or torch.allclose(eager, compiled, rtol=1e-12)
    for a, b in zip(_flat(args, {}), _flat(args2, {})):
        assert torch.equal(a, b)


def test_compiled_optimizer_step():
    """opt.step() compiles to one graph (fullgraph=True), and a changing Tensor lr neither
    recompiles nor goes stale: the compiled step equals the eager one bit for bit."""
    torch.manual_seed(1)
    models = [torch.nn.Linear(8, 4).to(DEVICE) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [
        fusedopt.AdamW(m.parameters(), lr=torch.tensor(1e-2), backend="triton", amsgrad=True)
        for m in models
    ]
    steps = [opts[0].step, torch.compile(opts[1].step, backend="aot_eager", fullgraph=True)]
    x = torch.randn(16, 8, device=DEVICE)
    for i in range(3):
        for m, o, step in zip(models, opts, steps):
            m(x).square().mean().backward()
            step()
            o.zero_grad()
            o.param_groups[0]["lr"].fill_(1e-2 / (i + 2))
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(p, q)


# Compiles every kernel for an sm_90 GPU in a fresh interpreter-free process: the interpreter
# runs the Python of the kernels, not Triton's compiler, so this is what catches compile-only
# errors (and lost vectorization or approximate division) on a machine without a GPU.
_COMPILE_SCRIPT = r"""
import re
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedopt.triton import _kernels as K, _launch

P64, F64 = "*i64", "fp64"
def build(fn, sig, consts):
    sig = dict(sig, **{k: "constexpr" for k in consts})
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    opts = dict(_launch._OPTS)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["ptx"]
    assert not re.search(r"(div|sqrt)\.(approx|full)\.f32", ptx), fn.__name__ + ": inexact"
    assert "fma.rn.f32" not in ptx, fn.__name__ + ": contracted"
    return len(re.findall(r"ld\.global\.v[24]", ptx))  # 16-byte vectors

amp = dict(grad_scale_ptr="*fp32", found_inf_ptr="*fp32")
upd = dict(table=P64, grads=P64, chunks=P64, lr_ptr="*fp64", lr_value=F64, **amp)
hp = dict(beta1=F64, beta2=F64, log2_beta1=F64, log2_beta2=F64, weight_decay=F64, eps=F64)
# (params, states, mode): the plain dtypes, then the mixed-precision combinations
F32, BF16, F16, F64T = tl.float32, tl.bfloat16, tl.float16, tl.float64
CASES = [(F32, F32, ""), (BF16, BF16, ""), (F64T, F64T, ""), (F32, BF16, ""),
         (BF16, F32, ""), (F16, F32, ""), (BF16, F32, "master"), (F16, F32, "master"),
         (F16, BF16, "master"), (BF16, BF16, "sr"), (BF16, F32, "sr")]
LR_TYPES = [F32, BF16, F16, F64T]  # the Tensor lr's dtype (Note [Tensor lr arithmetic])
for i, (pt, st, mode) in enumerate(CASES):
    ct = F64T if pt == F64T else F32
    lrt = dict(LR_T=LR_TYPES[i % len(LR_TYPES)])
    c = dict(PT=pt, ST=st, CT=ct, ALIGNED=True, CHUNK=65536, BLOCK=1024, HAS_GRAD_SCALE=True,
             HAS_FOUND_INF=True)
    master = dict(MASTER=mode == "master", MASTER_COL=4 if mode == "master" else 0)
    sr = dict(SR=mode == "sr", SEED_COL=4 if mode == "sr" else 0)
    lr = dict(LR_FROM_PTR=True)
    m3 = dict(MASTER=mode == "master", MASTER_COL=3 if mode == "master" else 0)
    s3 = dict(SR=mode == "sr", SEED_COL=3 if mode == "sr" else 0)
    # the update kernel with every tile: (tile, states, W, steps, op flags); W counts list 0,
    # the states, a master or seed column, the step and numel
    for name, states, steps, flags in (("adam", 3, True, 5), ("sgd", 1, False, 5),
                                       ("lion", 1, True, 1), ("sophia", 2, True, 1),
                                       ("sophia_update_hessian", 0, False, 0)):  # fmt: skip
        params = name != "sophia_update_hessian"
        col = 1 + states if params else 0
        width = 2 + states + steps + (bool(mode) and params)
        mm = dict(MASTER=params and mode == "master", MASTER_COL=col if mode == "master" else 0)
        ss = dict(SR=params and mode == "sr", SEED_COL=col if mode == "sr" else 0)
        f = (mm["MASTER"], ss["SR"], True) + (True,) * flags
        v = build(K._update_kernel, dict(upd, **{f"h{i}": F64 for i in range(8)}),
                  dict(c, **lr, **lrt, **mm, **ss, STEP_T=F32, W=width, PARAMS=params,
                       STATES=states, STEPS=steps, F=f, SCALARS=getattr(K, f"_{name}_scalars"),
                       TILE=getattr(K, f"_{name}_tile")))
        if name == "adam":
            # 5 streams (4 with a master copy: the param is not read) of 16-byte vectors
            assert v >= 5 - (mode == "master"), f"adam {pt} {st} {mode}: {v} vector loads"
    lamb = dict(c, **m3, STEP_T=F32, W=6 if mode else 5, EXACT=st == ct, BIAS_CORRECTION=True,
                MAXIMIZE=True, WEIGHT_DECAY=True)
    base = dict(table=P64, grads=P64, chunks=P64, **amp, **hp)
    build(K._lamb_norms_kernel, dict(base, partials="*fp64"), lamb)
    build(K._lamb_apply_kernel, dict(base, neg_steps="*fp64"), dict(lamb, **s3))
    if not mode:
        build(K._sum_sq_kernel, dict(table=P64, chunks=P64, partials="*fp64"),
              dict(ST=pt, CT=ct, W=2, ALIGNED=True, CHUNK=65536, BLOCK=1024))
for phase, fi in ((0, True), (1, True), (2, True), (0, False), (1, False)):
    build(K._lamb_ratio_kernel, dict(ranges=P64, partials="*fp64", neg_steps="*fp64",
          norms_ptr="*fp32", norms_stride0="i64", norms_stride1="i64", sq_ptr="*fp64",
          sq_stride0="i64", sq_stride1="i64", lr_ptr="*fp64", found_inf_ptr="*fp32",
          lr_value=F64, trust_clip=F64),
          dict(PHASE=phase, LR_FROM_PTR=False, HAS_CLIP=True, WANT_NORMS=True,
               HAS_FOUND_INF=fi, BLOCK=256))
for step_col, seed_col in ((3, -1), (-1, 2), (3, 2)):
    build(K._increment_steps_kernel, dict(table=P64, n="i32", found_inf_ptr="*fp32"),
          dict(W=5, STEP_COL=step_col, STEP_T=tl.float64, SEED_COL=seed_col,
               HAS_FOUND_INF=True, BLOCK=256))
build(K._sum_kernel, dict(x="*fp64", n="i32", out="*fp64"), dict(BLOCK=1024))
for pt, mode in ((F32, ""), (BF16, "master"), (F16, "master"), (BF16, "sr")):
    p = {F32: "*fp32", BF16: "*u16", F16: "*fp16"}[pt]
    q8 = dict(p_ptr=p, w_ptr="*fp32" if mode == "master" else p, g_ptr=p, c1_ptr="*u8",
              c2_ptr="*u8", a1_ptr="*fp32", a2_ptr="*fp32", maps_ptr="*fp32", step_ptr="*fp32",
              seed_ptr="*i64", lr_ptr="*fp32", lr_value=F64, n="i32", **amp,
              **{f"h{i}": F64 for i in range(6)})
    build(K._q8_kernel, q8, dict(PT=pt, LR_FROM_PTR=True, LR_T=F32, HAS_FOUND_INF=True,
          STEPS=True, MOMENTS=2, F=(mode == "master", mode == "sr", True, True, False, True,
          True, True), SCALARS=K._adam_scalars, MATH=K._adam8bit_math, ROWS=4))
print("compiled")
"""


def test_kernels_compile_for_sm90():
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("Triton's NVIDIA toolchain (ptxas) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]


def test_dispatch_reports_and_uses_triton():
    info = fusedopt.backends()["triton"]
    assert info.available, info.reason
    assert fusedopt._dispatch.kernel("triton", "adam_") is ft.adam_
    assert fusedopt._dispatch.kernel("triton", "sum_sq") is ft.sum_sq
