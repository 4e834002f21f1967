"""Adafactor: every backend against torch.optim.Adafactor's for-loop over many steps, the
compiled kernels against the fp64 reference element by element, checkpoints both ways, the
auxiliary (not param-shaped) state's checks. The OptimInfo entry (tests/optim_info.py) adds it
to the parity, checkpoint, validation and compile matrices."""

from __future__ import annotations

import copy

import pytest
import torch

import fusedopt
from helpers import TOL_VS_TORCH, adafactor_scalars
from optim_info import BACKENDS

HAS_TRITON = fusedopt.backends()["triton"].available
ALL_BACKENDS = [
    *BACKENDS,
    pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="no triton")),
]

# 1-D, odd 2-D, 3-D and 4-D (batched factoring), 0-d, a row and a column, empty ones.
SHAPES = [(37,), (13, 29), (3, 5, 17), (2, 2, 3, 9), (), (1, 40), (40, 1), (0, 5), (5, 0), (0,)]


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]
    # a transposed (non-contiguous) param
    out.append(torch.randn(11, 7, generator=g, dtype=torch.float64).to(dtype).t())
    return [p.requires_grad_() for p in out]


def _grads(params, step):
    out = []
    for i, p in enumerate(params):
        g = torch.Generator().manual_seed(1000 * step + i)
        x = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * (0.1 + i)
        if i == 1:  # a non-contiguous grad
            x = x.t().contiguous().t()
        out.append(x)
    return out


def _run(make, dtype, steps, params=None, keep=None):
    """``steps`` steps of ``make(params)`` with the grads of _grads; ``keep``: the indices of
    the params to step (of the full list), for torch's Adafactor, which cannot step an empty
    param (ZeroDivisionError)."""
    params = params if params is not None else _params(dtype)
    keep = keep if keep is not None else range(len(params))
    stepped = [params[i] for i in keep]
    opt = make(stepped)
    for s in range(steps):
        grads = _grads(params, s)
        for i in keep:
            params[i].grad = grads[i]
        opt.step()
    return params, opt


NONEMPTY = [i for i, p in enumerate(_params(torch.float32)) if p.numel()]


KWARGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"lr": 0.05, "weight_decay": 0.1, "maximize": True}, id="wd-maximize"),
    pytest.param({"eps": (1e-3, 1e-2), "d": 1.5, "beta2_decay": -0.6}, id="clip"),
]


@pytest.mark.parametrize("kwargs", KWARGS)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_matches_torch_forloop_over_many_steps(kwargs, backend, dtype):
    steps = 4 if backend == "triton" else 25
    ours_p, ours = _run(lambda ps: fusedopt.Adafactor(ps, backend=backend, **kwargs), dtype, steps)
    theirs_p, theirs = _run(
        lambda ps: torch.optim.Adafactor(ps, foreach=False, **kwargs), dtype, steps, keep=NONEMPTY
    )
    tol = {"rtol": 2e-5, "atol": 2e-6} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-13}
    for i, (a, b) in enumerate(zip(ours_p, theirs_p)):
        if i not in NONEMPTY:  # unchanged, its state all zeros, its step counted
            st = ours.state[a]
            assert st["step"].item() == steps
            assert all(not v.any() for k, v in st.items() if k != "step")
            continue
        torch.testing.assert_close(
            a, b, equal_nan=True, **tol, msg=lambda m, i=i: f"param {i}: {m}"
        )
        sa, sb = ours.state[a], theirs.state[b]
        assert list(sa) == list(sb), i
        for k in sb:
            torch.testing.assert_close(
                sa[k], sb[k], equal_nan=True, **tol, msg=lambda m, i=i, k=k: f"{i} {k}: {m}"
            )


def _op_args(dtype, seed):
    params = [p.detach().clone() for p in _params(dtype, seed)]
    grads = _grads(params, seed)
    rows, cols, variances = [], [], []
    g = torch.Generator().manual_seed(seed + 7)
    for p in params:
        if p.dim() >= 2:
            rows.append(torch.rand((*p.shape[:-1], 1), generator=g, dtype=dtype))
            cols.append(torch.rand((*p.shape[:-2], 1, p.shape[-1]), generator=g, dtype=dtype))
            variances.append(torch.empty(0, dtype=dtype))
        else:
            rows.append(torch.empty(0, dtype=dtype))
            cols.append(torch.empty(0, dtype=dtype))
            variances.append(torch.rand(p.shape, generator=g, dtype=dtype))
    steps = [torch.tensor(float(seed % 5)) for _ in params]
    return [params, grads, rows, cols, variances, steps]


def _call(fn, args, **kw):
    args = copy.deepcopy(args)
    fn(*args, *adafactor_scalars(**kw).values())
    return args


def _impls():
    out = {"cpu": torch.ops.fusedopt.adafactor_}
    if hasattr(torch.ops, "fusedopt_sim"):
        out["cuda-sim"] = torch.ops.fusedopt_sim.adafactor_
    if HAS_TRITON:
        import fusedopt.triton

        out["triton"] = fusedopt.triton.adafactor_
    return out


@pytest.mark.parametrize("impl", list(_impls()))
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_backend_is_the_reference_element_by_element(impl, maximize, seed):
    """fp64: what the compiled kernels compute is the reference, up to the order of the sums."""
    args = _op_args(torch.float64, seed)
    grad_scale = torch.tensor(4.0, dtype=torch.float64)
    ref = _call(fusedopt.reference.adafactor_, args, maximize=maximize, grad_scale=grad_scale)
    out = _call(_impls()[impl], args, maximize=maximize, grad_scale=grad_scale)
    for lst_ref, lst_out in zip(ref, out):
        for x, y in zip(lst_ref, lst_out):
            torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-14, equal_nan=True)


def _edge_grads(case, step):
    g = torch.randn(6, 9, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
    if case == "zero-row-col":
        g[2], g[:, 3] = 0, 0
    elif case == "all-zero-then-small":  # mean(row_var) 0, then below eps1: the clamp
        g = g * 1e-4 if step else g * 0
    elif case in ("inf", "nan"):
        g[1, 4] = float(case)
    elif case.startswith("tiny"):  # subnormal statistics
        g = g * 1e-20
    elif case == "huge":
        g = g * 1e15
    return g


# (case, eps1, what fp32 must match): torch's fp32 for-loop, or its fp64 one where torch's
# fp32 (r c) / mean(r) underflows (to 0: rsqrt inf, the step NaN) or overflows (to inf:
# rsqrt 0, no step) and the factored direction does not (Note [factored direction]).
EDGE_CASES = [
    ("zero-row-col", None, torch.float32),
    ("zero-row-col-tiny-eps1", 1e-30, torch.float32),  # eps1^2 0 in fp32: no cap, u NaN
    ("all-zero-then-small", None, torch.float32),
    ("inf", None, torch.float32),
    ("nan", None, torch.float32),
    ("tiny", None, torch.float32),
    ("tiny-tiny-eps1", 1e-30, torch.float64),
    ("huge", None, torch.float64),
]


@pytest.mark.parametrize("impl", ["reference", *_impls()])
@pytest.mark.parametrize("case,eps1,expect", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_factored_direction_edge_cases_match_torch(impl, case, eps1, expect):
    """The factored update direction (Note [factored direction]) on zero rows and columns,
    inf and NaN grads, a row mean clamped at eps1, subnormal and huge statistics, eps1 = None
    (fp32's machine epsilon) and eps1^2 below fp32's range; two steps of the op against torch's
    for-loop, with a normal param beside the odd one."""
    fn = fusedopt.reference.adafactor_ if impl == "reference" else _impls()[impl]
    gen = torch.Generator().manual_seed(3)
    start = [
        torch.randn(6, 9, generator=gen, dtype=torch.float64),
        torch.randn(5, 7, generator=gen),
    ]
    ps = [p.float() for p in start]
    state = [[torch.zeros(*p.shape[:-1], 1) for p in ps], [torch.zeros(1, p.shape[-1]) for p in ps]]
    steps = [torch.tensor(0.0) for _ in ps]
    theirs = [p.detach().to(expect, copy=True).requires_grad_() for p in start]
    opt = torch.optim.Adafactor(theirs, lr=0.02, eps=(eps1, 1e-3), foreach=False)
    e1 = torch.finfo(torch.float32).eps if eps1 is None else eps1
    for step in range(2):
        grads = [_edge_grads(case, step), torch.randn(5, 7, generator=gen)]
        fn(ps, [g.float() for g in grads], *state, [torch.empty(0)] * 2, steps,
           *adafactor_scalars(eps1=e1, weight_decay=0.0).values())  # fmt: skip
        for p, g in zip(theirs, grads):
            p.grad = g.to(expect)
        opt.step()
    tol = TOL_VS_TORCH[torch.float32]
    for i, p in enumerate(theirs):
        st = opt.state[p]
        for name, a, b in (("param", ps[i], p), ("row_var", state[0][i], st["row_var"]),
                           ("col_var", state[1][i], st["col_var"])):  # fmt: skip
            torch.testing.assert_close(
                a, b.detach().float(), rtol=tol.rtol, atol=tol.atol, equal_nan=True,
                msg=lambda m, n=name: f"{case} {n}: {m}",
            )  # fmt: skip
    if expect == torch.float64:  # the case is one where torch's fp32 arithmetic fails
        fp32 = [p.float().requires_grad_() for p in start]
        opt = torch.optim.Adafactor(fp32, lr=0.02, eps=(eps1, 1e-3), foreach=False)
        for step in range(2):
            fp32[0].grad, fp32[1].grad = _edge_grads(case, step).float(), torch.zeros(5, 7)
            opt.step()
        assert not torch.allclose(fp32[0], ps[0], rtol=tol.rtol, atol=tol.atol, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_params_match_the_reference(dtype):
    # The statistics are stored in the param dtype; the estimate must read them back rounded
    # (as torch's in-place lerp_ leaves them). Reading the unrounded fp32 values instead moved
    # ~3% of a 70x600 bf16 matrix by one or two ulps after 5 steps; the fp64 sums leave a few.
    torch.manual_seed(0)
    base = [torch.randn(s).to(dtype) for s in ((70, 600), (33,), (5, 7, 9))]
    out = {}
    for backend in ("cpu", "reference"):
        ps = [torch.nn.Parameter(b.clone()) for b in base]
        opt = fusedopt.Adafactor(ps, lr=1e-2, backend=backend)
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            opt.step()
        out[backend] = ps
    eps = torch.finfo(dtype).eps  # one ulp at 1: the update's size (a param near 0 cancels)
    for a, b in zip(out["cpu"], out["reference"]):
        diff = a != b
        assert diff.sum() <= a.numel() // 1000, (dtype, tuple(a.shape), int(diff.sum()))
        torch.testing.assert_close(a, b, rtol=eps, atol=eps)


def test_found_inf_changes_nothing_and_bad_state_is_refused_first():
    args = _op_args(torch.float32, 4)
    out = _call(torch.ops.fusedopt.adafactor_, args, found_inf=torch.tensor(1.0))
    for a, b in zip(args, out):
        for x, y in zip(a, b):
            assert torch.equal(x, y) or (x.isnan() == y.isnan()).all()
    bad = copy.deepcopy(args)
    bad[2][1] = torch.zeros(13, 2)  # a wrong row_var shape for the 13 x 29 param
    for fn in (torch.ops.fusedopt.adafactor_, fusedopt.reference.adafactor_):
        before = copy.deepcopy(bad)
        with pytest.raises(RuntimeError, match=r"row_vars\[1\]"):
            _call(fn, bad)
        for a, b in zip(before, bad):
            for x, y in zip(a, b):
                assert torch.equal(x, y)


@pytest.mark.skipif(not fusedopt.backends()["cpu"].available, reason="no CPU kernels")
@pytest.mark.parametrize("eps1", [None, 1e-30], ids=["eps1-default", "eps1-tiny"])
@pytest.mark.parametrize("scale", [1.0, 1e-19], ids=["grads", "tiny-grads"])
def test_cpu_result_does_not_depend_on_threads(eps1, scale):
    """Fixed-order sums (Note [Adafactor passes]): the same bits on 1 and 2 threads. On 1 thread
    every param is stepped whole by it; on 2 threads the largest param is stepped by both, pass
    by pass. Tiny grads make subnormal statistics (and, with eps1 = 1e-30, no cap on u)."""
    g = torch.Generator().manual_seed(5)
    shapes = [(300, 257), (40, 33), (5, 7, 9), (129,)]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) * scale for s in shapes] for _ in range(3)]
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ps = [p.clone().requires_grad_() for p in start]
            opt = fusedopt.Adafactor(ps, backend="cpu", eps=(eps1, 1e-3))
            for step in grads:
                for p, gr in zip(ps, step):
                    p.grad = gr.clone()
                opt.step()
            out = [p.detach() for p in ps]
            out += [t for p in ps for k, t in opt.state[p].items() if k != "step"]
            results.append(out)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    if scale != 1.0:  # the estimates reach the subnormals
        c = torch.cat([t.flatten() for t in results[0][len(shapes) :]])
        assert ((c != 0) & (c.abs() < torch.finfo(torch.float32).tiny)).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_round_trip_is_bit_identical(backend):
    dtype = torch.float32
    a_p, a = _run(lambda ps: fusedopt.Adafactor(ps, backend=backend), dtype, 3)
    sd = copy.deepcopy(a.state_dict())
    b_p = [p.detach().clone().requires_grad_() for p in a_p]
    b = fusedopt.Adafactor(b_p, backend=backend)
    b.load_state_dict(sd)
    for s in range(3, 6):
        for pa, pb, g in zip(a_p, b_p, _grads(a_p, s)):
            pa.grad, pb.grad = g, g.clone()
        a.step()
        b.step()
    for pa, pb in zip(a_p, b_p):
        assert torch.equal(pa, pb) or torch.equal(pa.isnan(), pb.isnan())
        for k in a.state[pa]:
            x, y = a.state[pa][k], b.state[pb][k]
            assert torch.equal(x.nan_to_num(), y.nan_to_num()), k


@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
def test_torch_checkpoints_load_both_ways(direction):
    dtype = torch.float32
    make_src = (
        (lambda ps: torch.optim.Adafactor(ps, foreach=False))
        if direction == "torch->ours"
        else (lambda ps: fusedopt.Adafactor(ps))
    )
    src_p, src = _run(make_src, dtype, 3, keep=NONEMPTY)
    src_p = [src_p[i] for i in NONEMPTY]
    dst_p = [p.detach().clone().requires_grad_() for p in src_p]
    dst = (
        fusedopt.Adafactor(dst_p)
        if direction == "torch->ours"
        else torch.optim.Adafactor(dst_p, foreach=False)
    )
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    assert dst.state_dict()["param_groups"] == src.state_dict()["param_groups"]
    for s in range(3, 6):
        grads = _grads(_params(dtype), s)
        for ps, pd, i in zip(src_p, dst_p, NONEMPTY):
            ps.grad, pd.grad = grads[i], grads[i].clone()
        src.step()
        dst.step()
    for ps, pd in zip(src_p, dst_p):
        torch.testing.assert_close(pd, ps, rtol=2e-5, atol=2e-6, equal_nan=True)


def test_damaged_checkpoints_are_refused():
    p_list, opt = _run(lambda ps: fusedopt.Adafactor(ps), torch.float32, 2)
    sd = opt.state_dict()
    for key, pid in (("row_var", 1), ("col_var", 2), ("variance", 0)):
        bad = copy.deepcopy(sd)
        del bad["state"][pid][key]
        with pytest.raises(KeyError, match=rf"parameter {pid} has no '{key}'"):
            opt.load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["state"][1]["row_var"] = torch.zeros(13, 29)
    with pytest.raises(ValueError, match=r"'row_var' has shape \(13, 29\), but .* \(13, 1\)"):
        opt.load_state_dict(bad)
    # nothing was loaded: the state is the trained one
    for k, v in opt.state_dict()["state"][1].items():
        assert torch.equal(v, sd["state"][1][k])


def test_aux_state_replaced_with_a_wrong_shape_is_refused():
    p = torch.randn(4, 6, requires_grad=True)
    opt = fusedopt.Adafactor([p])
    p.grad = torch.randn(4, 6)
    opt.step()
    opt.state[p]["col_var"] = torch.zeros(4, 1)
    opt.invalidate_plans()
    with pytest.raises(RuntimeError, match=r"state 'col_var' of parameter 0 has shape \(4, 1\)"):
        opt.step()


def test_validation_matches_torch():
    p = [torch.randn(3, requires_grad=True)]
    for kw in ({"lr": -1.0}, {"beta2_decay": 0.1}, {"eps": (-1.0, 1e-3)}, {"eps": (None, -1.0)},
               {"d": 0.9}, {"weight_decay": -1.0}, {"lr": torch.tensor([1.0, 2.0])}):  # fmt: skip
        with pytest.raises(ValueError) as theirs:
            torch.optim.Adafactor(p, **kw)
        with pytest.raises(ValueError) as ours:
            fusedopt.Adafactor(p, **kw)
        assert str(ours.value) == str(theirs.value)


def test_no_params_with_grads_and_sparse_and_complex():
    p = torch.randn(3, requires_grad=True)
    fusedopt.Adafactor([p]).step()  # no grad: nothing happens
    p.grad = torch.randn(3).to_sparse()
    with pytest.raises(RuntimeError, match="Adafactor does not support sparse gradients"):
        fusedopt.Adafactor([p]).step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_grad_norm_is_torchs_clipping_then_the_step(backend):
    # fp32: the optimizers' clip factor is an fp32 value (Note [clipping inside the step])
    ours_p, ours = _run(
        lambda ps: fusedopt.Adafactor(ps, backend=backend, max_grad_norm=0.5),
        torch.float32,
        4,
        keep=NONEMPTY,
    )
    theirs_p = _params(torch.float32)
    theirs = torch.optim.Adafactor([theirs_p[i] for i in NONEMPTY], foreach=False)
    for s in range(4):
        grads = _grads(theirs_p, s)
        for i in NONEMPTY:
            theirs_p[i].grad = grads[i]
        torch.nn.utils.clip_grad_norm_([theirs_p[i] for i in NONEMPTY], 0.5)
        theirs.step()
    for i in NONEMPTY:
        torch.testing.assert_close(ours_p[i], theirs_p[i], rtol=2e-5, atol=2e-6)
