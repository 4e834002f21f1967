"""The Triton backend: parity with torch.optim and the reference, the CPU backend, the pointer-table
cache, launch counts, AMP flags, bf16 rounding, opcheck and torch.compile.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set for
this module only: Note [interpreter mode]). The interpreter costs milliseconds per tile, so the
matrix is smaller than the CPU backend's (3 steps, each dtype and each mode flag at least once)
on the same awkward parameter set (helpers.make_params). With a GPU, the interpreter tests are
skipped and the CUDA tests (Triton on CUDA tensors against the CPU backend) run instead.

Note [interpreter mode]
@triton.jit picks interpreter or compiler when it decorates a kernel, from TRITON_INTERPRET.
This module sets the variable while it imports fusedopt.triton and for its own tests only (a
module fixture), so other test modules see the environment they started with. If the kernels
were decorated in the other mode before (another module imported them first), fusedopt.triton
re-decorates them on the next call (_launch._k).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from typing import Any

import pytest
import torch

import fusedopt
from fusedopt import reference
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

finally:
    _restore_interpret(_old)

pytestmark = pytest.mark.triton

interp_only = pytest.mark.skipif(
    GPU, reason="CPU tensors in the interpreter: with a GPU, see the CUDA tests"
)
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

# -- the matrix: (id, fusedopt class, torch.optim class, kwargs, dtype) ------------------------
# Every dtype and every mode flag at least once; weight decay non-zero where it can be wrong.
TORCH_CONFIGS = [
    ("adam", fusedopt.Adam, torch.optim.Adam, {"lr": 1e-2}, torch.float32),
    (
        "adam-all",
        fusedopt.Adam,
        torch.optim.Adam,
        {"lr": 3e-2, "weight_decay": 0.05, "amsgrad": True, "maximize": True, "eps": 1e-6},
        torch.bfloat16,
    ),
    (
        "adam-lowbetas",  # 1 - beta1 >= 0.5: the other form of torch.lerp
        fusedopt.Adam,
        torch.optim.Adam,
        {"lr": 1e-2, "betas": (0.3, 0.6)},
        torch.float16,
    ),
    (
        "adam-tensor_lr",
        fusedopt.Adam,
        torch.optim.Adam,
        {"lr": torch.tensor(1e-2), "weight_decay": 0.1},
        torch.float32,
    ),
    (
        "adamw-wd-amsgrad",
        fusedopt.AdamW,
        torch.optim.AdamW,
        {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True},
        torch.float64,
    ),
    (
        "adamw-maximize",
        fusedopt.AdamW,
        torch.optim.AdamW,
        {"lr": 1e-2, "weight_decay": 0.1, "maximize": True},
        torch.float32,
    ),
    ("sgd", fusedopt.SGD, torch.optim.SGD, {"lr": 0.1}, torch.float16),
    (
        "sgd-wd-maximize",
        fusedopt.SGD,
        torch.optim.SGD,
        {"lr": 0.1, "weight_decay": 0.1, "maximize": True},
        torch.float32,
    ),
    ("sgd-momentum", fusedopt.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, torch.bfloat16),
    (
        "sgd-dampening",
        fusedopt.SGD,
        torch.optim.SGD,
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.01},
        torch.float64,
    ),
    (
        "sgd-nesterov",
        fusedopt.SGD,
        torch.optim.SGD,
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True},
        torch.float32,
    ),
]


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    """torch.optim's for-loop takes a float lr (a Tensor lr means capturable there)."""
    lr = kwargs.get("lr")
    return dict(kwargs, lr=float(lr)) if isinstance(lr, torch.Tensor) else kwargs


@interp_only
@pytest.mark.parametrize(
    "name,ours,theirs,kwargs,dtype",
    [pytest.param(*c, id=f"{c[0]}-{DTYPE_IDS[c[4]]}") for c in TORCH_CONFIGS],
)
def test_matches_torch_forloop(name, ours, theirs, kwargs, dtype):
    run_parity(
        lambda ps: ours(ps, backend="triton", **kwargs),
        lambda ps: theirs(ps, foreach=False, **_plain(kwargs)),
        dtype,
        steps=STEPS,
        make_ref64=lambda ps: ours(ps, backend="reference", **kwargs),
    )


class _SophiaH(fusedopt.Sophia):
    """Sophia whose every step first folds the step's grads into the Hessian EMA, so that the
    step runs with h != 0 (the clipped regime) and update_hessian's kernel is compared too."""

    def step(self, closure=None, bs: float = 5120):  # noqa: ANN001
        self.update_hessian()
        return super().step(closure, bs=bs)


# Optimizers torch.optim lacks: against the reference backend in the same dtype (fp32 opmath,
# one rounding), and for fp16/bf16 the fp64 reference as the judge (helpers.run_parity).
REF_CONFIGS = [
    ("lion-wd", fusedopt.Lion, {"lr": 1e-3, "weight_decay": 0.1}, {}, torch.float32),
    (
        "lion-maximize",
        fusedopt.Lion,
        {"lr": 1e-3, "betas": (0.8, 0.95), "weight_decay": 0.5, "maximize": True},
        {},
        torch.bfloat16,
    ),
    ("lion-wd", fusedopt.Lion, {"lr": 1e-3, "weight_decay": 0.3}, {}, torch.float16),
    ("lion-wd", fusedopt.Lion, {"lr": 1e-3, "weight_decay": 0.3}, {}, torch.float64),
    ("lamb", fusedopt.LAMB, {"lr": 1e-2}, {}, torch.float32),
    (
        "lamb-wd-maximize",
        fusedopt.LAMB,
        {"lr": 1e-2, "weight_decay": 0.1, "maximize": True},
        {},
        torch.float16,
    ),
    ("lamb-trust_clip", fusedopt.LAMB, {"lr": 1e-2, "trust_clip": 0.5}, {}, torch.float64),
    (
        "lamb-no_bias_correction",
        fusedopt.LAMB,
        {"lr": 1e-2, "weight_decay": 0.0, "bias_correction": False},
        {},
        torch.bfloat16,
    ),
    (
        "lamb-max_grad_norm",  # sum_sq and grad_scale inside the step
        fusedopt.LAMB,
        {"lr": torch.tensor(1e-2), "max_grad_norm": 1.0},
        {},
        torch.float32,
    ),
    ("adamw-max_grad_norm", fusedopt.AdamW, {"lr": 1e-2, "max_grad_norm": 0.5}, {}, torch.bfloat16),
    ("sophia", _SophiaH, {"lr": 1e-3}, {}, torch.float32),
    (
        "sophia-maximize",
        _SophiaH,
        {"lr": 1e-3, "rho": 0.1, "weight_decay": 0.2, "maximize": True},
        {"bs": 1000},
        torch.float64,
    ),
    ("sophia-fp16", _SophiaH, {"lr": 2e-3, "betas": (0.9, 0.95)}, {"bs": 256}, torch.float16),
]


@interp_only
@pytest.mark.parametrize(
    "name,cls,kwargs,step_kwargs,dtype",
    [pytest.param(*c, id=f"{c[0]}-{DTYPE_IDS[c[4]]}") for c in REF_CONFIGS],
)
def test_matches_reference(name, cls, kwargs, step_kwargs, dtype):
    run_parity(
        lambda ps: cls(ps, backend="triton", **kwargs),
        lambda ps: cls(ps, backend="reference", **kwargs),
        dtype,
        steps=STEPS,
        step_kwargs=step_kwargs,
        make_ref64=lambda ps: cls(ps, backend="reference", **kwargs),
    )


# -- Triton == the CPU backend on the same inputs (on CUDA tensors where a GPU exists) ---------
CPU_CONFIGS = [
    ("adam-all", fusedopt.Adam, {"lr": 3e-2, "weight_decay": 0.05, "amsgrad": True}, {}),
    ("adamw-maximize", fusedopt.AdamW, {"lr": 1e-2, "weight_decay": 0.1, "maximize": True}, {}),
    ("sgd-nesterov", fusedopt.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}, {}),
    ("lion", fusedopt.Lion, {"lr": 1e-3, "weight_decay": 0.1}, {}),
    ("lamb", fusedopt.LAMB, {"lr": 1e-2, "weight_decay": 0.01, "trust_clip": 0.8}, {}),
    ("sophia", _SophiaH, {"lr": 1e-3, "weight_decay": 0.1}, {"bs": 512}),
]


def _like_on(p: torch.Tensor, device: str) -> torch.Tensor:
    """A leaf copy of p on `device` with p's exact layout, expanded (stride-0) ones too: a copy
    of its whole storage, viewed as p views its own."""
    n = p.untyped_storage().nbytes() // p.element_size()
    storage = torch.as_strided(p.detach(), (n,), (1,), 0).to(device, copy=True)
    c = storage.as_strided(p.size(), p.stride(), p.storage_offset())
    return c.requires_grad_(p.requires_grad)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "name,cls,kwargs,step_kwargs", CPU_CONFIGS, ids=[c[0] for c in CPU_CONFIGS]
)
def test_matches_cpu_backend(name, cls, kwargs, step_kwargs, dtype):
    """Same inputs, same function: element by element after every step, then re-synced."""
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


def _op_args(op: str, dtype=torch.float32, device=DEVICE) -> tuple[list, dict]:
    """(args, kwargs) of a direct call; the last param is transposed (staged for its grad)."""
    p = _tensors(SHAPES, dtype, device)
    p[-1] = p[-1].t()
    g = _tensors([tuple(x.shape) for x in p], dtype, device)
    m = [torch.randn_like(x) for x in p]
    v = [torch.rand_like(x) for x in p]
    steps = [torch.tensor(float(i + 1), device=device) for i in range(len(p))]
    lr = torch.tensor(1e-2, device=device)
    if op == "adam_":
        vmax = [torch.rand_like(x) for x in p]
        return [p, g, m, v, vmax, steps, lr, 0.9, 0.999, 0.1, 1e-8, True, True, False], {}
    if op == "sgd_":
        return [p, g, m, lr, 0.9, 0.1, 0.01, True, False, False], {}
    if op == "lion_":
        return [p, g, m, steps, lr, 0.9, 0.99, 0.1, True], {}
    if op == "lamb_":
        norms = torch.full((len(p), 2), -1.0, dtype=torch.float64, device=device)
        return [p, g, m, v, steps, lr, 0.9, 0.999, 0.01, 1e-6, True, 0.7, False], {
            "tensor_norms": norms
        }
    if op == "sophia_":
        return [p, g, m, v, steps, lr, 0.96, 0.04, 300.0, 0.1, False], {}
    if op == "sophia_update_hessian_":
        return [v, g, 0.99], {}
    raise AssertionError(op)


OPS = ["adam_", "sgd_", "lion_", "lamb_", "sophia_", "sophia_update_hessian_"]


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
    for name in ("_adam_kernel", "_increment_steps_kernel"):
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
        "_adam_kernel": 1,
        "_increment_steps_kernel": 1,
    }
    for p, q in zip(params, ref):
        assert_close_ulp(p.detach().cpu(), q.detach(), TOL_VS_TORCH[torch.float32], "param")


@interp_only
def test_many_chunks_and_tiles(monkeypatch):
    """Tensors spanning several programs and several full tiles each, with partial last ones."""
    monkeypatch.setattr(mt, "CHUNK", 4096)
    monkeypatch.setattr(mt, "INTERPRET_BLOCK", 1024)
    kwargs = {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}
    run_parity(
        lambda ps: fusedopt.AdamW(ps, backend="triton", **kwargs),
        lambda ps: torch.optim.AdamW(ps, foreach=False, **kwargs),
        torch.float32,
        steps=2,
    )
    x = [torch.randn(10001), torch.randn(4096), torch.randn(3)]
    torch.testing.assert_close(ft.sum_sq(x), reference.sum_sq(x), rtol=1e-13, atol=0)


def test_chunk_table_is_64_bit():
    """Chunk starts past 2^31 elements (PITFALLS: int32 indexing), empty tensors get none."""
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
for st in (tl.float32, tl.bfloat16, tl.float64):
    c = dict(ST=st, CT=tl.float64 if st == tl.float64 else tl.float32, ALIGNED=True,
             CHUNK=65536, BLOCK=1024, HAS_GRAD_SCALE=True, HAS_FOUND_INF=True)
    lr = dict(LR_FROM_PTR=True)
    hp = dict(beta1=F64, beta2=F64, log2_beta1=F64, log2_beta2=F64, weight_decay=F64, eps=F64)
    v4 = build(K._adam_kernel, dict(upd, **hp), dict(c, **lr, STEP_T=tl.float32, W=6,
               DECOUPLED=True, AMSGRAD=True, MAXIMIZE=True, WEIGHT_DECAY=True, LERP_LOW=True))
    assert v4 >= 5, f"adam {st}: {v4} vector loads"
    build(K._sgd_kernel, dict(upd, momentum=F64, dampening=F64, weight_decay=F64),
          dict(c, **lr, W=3, MOMENTUM=True, FIRST=False, NESTEROV=True, MAXIMIZE=True,
               WEIGHT_DECAY=True))
    build(K._lion_kernel, dict(upd, beta1=F64, beta2=F64, weight_decay=F64),
          dict(c, **lr, W=4, MAXIMIZE=True))
    build(K._sophia_kernel, dict(upd, beta1=F64, rho_bs=F64, weight_decay=F64, eps=F64),
          dict(c, **lr, W=5, MAXIMIZE=True))
    build(K._sophia_hessian_kernel, dict(table=P64, grads=P64, chunks=P64, beta2=F64, **amp),
          dict(c, W=2))
    lamb = dict(c, STEP_T=tl.float32, W=5, EXACT=st != tl.bfloat16, BIAS_CORRECTION=True,
                MAXIMIZE=True, WEIGHT_DECAY=True)
    base = dict(table=P64, grads=P64, chunks=P64, **amp, **hp)
    build(K._lamb_norms_kernel, dict(base, partials="*fp64"), lamb)
    build(K._lamb_apply_kernel, dict(base, neg_steps="*fp64"), lamb)
    build(K._sum_sq_kernel, dict(table=P64, chunks=P64, partials="*fp64"),
          dict(ST=st, CT=c["CT"], W=2, ALIGNED=True, CHUNK=65536, BLOCK=1024))
build(K._lamb_ratio_kernel, dict(ranges=P64, partials="*fp64", neg_steps="*fp64",
      norms_ptr="*fp32", norms_stride0="i64", norms_stride1="i64", lr_ptr="*fp64",
      found_inf_ptr="*fp32", lr_value=F64, trust_clip=F64),
      dict(LR_FROM_PTR=False, HAS_CLIP=True, WANT_NORMS=True, HAS_FOUND_INF=True, BLOCK=256))
build(K._increment_steps_kernel, dict(table=P64, n="i32", found_inf_ptr="*fp32"),
      dict(W=5, STEP_T=tl.float64, HAS_FOUND_INF=True, BLOCK=256))
build(K._sum_kernel, dict(x="*fp64", n="i32", out="*fp64"), dict(BLOCK=1024))
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
