"""The CUDA backend on a GPU (marker `cuda`; skipped where no GPU is visible).

- the parity matrix of tests/test_parity.py with backend="cuda" on CUDA params;
- CPU kernels == CUDA kernels on the same inputs: every op and mode, odd sizes, misaligned
  starts, empty tensors, more tensors than one launch holds, host and device scalars; and every
  optimizer stepped on both backends;
- a tensor of more than 2^31 elements with non-zero grads, checked past index 2^31;
- found_inf/grad_scale from torch.amp.GradScaler, read on the device;
- a step captured in a CUDA graph and replayed == eager steps.

Without a GPU the same block bodies, planner and glue are tested by tests/test_cuda_planner.py.
"""

from __future__ import annotations

import pytest
import torch
from test_cuda_planner import BUILDERS, OP_CASES, OP_IDS, assert_matches, build, written
from test_parity import CONFIGS

import fusedopt
from fusedopt._ext import _C
from helpers import DTYPE_IDS, DTYPES, TOL_VS_TORCH, assert_close_ulp, run_parity

CUDA = fusedopt.backends()["cuda"]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA.available, reason=CUDA.reason)]


def test_backend_is_picked():
    assert fusedopt._dispatch.resolve("auto", torch.device("cuda")) == "cuda"
    assert _C.planner.device_arg_bytes(torch.cuda.current_device()) in (4096, 32764)


# -- the parity matrix --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("name,ours,theirs,kwargs", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_matches_torch_forloop(name, ours, theirs, kwargs, dtype):
    run_parity(
        lambda ps: ours(ps, backend="cuda", **kwargs),
        lambda ps: theirs(ps, foreach=False, **kwargs),
        dtype,
        make_ref64=lambda ps: ours(ps, backend="reference", **kwargs),
        device="cuda",
    )


# -- CPU kernels == CUDA kernels ----------------------------------------------------------------
def to_cuda(arg, scalars_on_device):
    """An op argument with the same values on the GPU: list tensors with their storage offsets
    (misaligned stays misaligned), step counters and LAMB's norms on the GPU, and the scalars
    (lr, grad_scale, found_inf) on the GPU or left on the CPU (then passed by value)."""
    if isinstance(arg, list):
        out = []
        for t in arg:
            if t.dim() == 0:  # a step counter
                out.append(t.cuda())
                continue
            off = t.storage_offset()
            buf = torch.zeros(off + t.numel() + 3, dtype=t.dtype, device="cuda")
            out.append(buf[off : off + t.numel()].view(t.shape).copy_(t))
        return out
    if not isinstance(arg, torch.Tensor):
        return arg
    if arg.dim() == 2:  # LAMB's tensor_norms
        return arg.cuda()
    return arg.cuda() if scalars_on_device else arg


@pytest.mark.parametrize("scalars", ["host", "device"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("op,kw", OP_CASES, ids=OP_IDS)
def test_cuda_kernels_match_cpu_kernels(op, kw, dtype, scalars):
    on_dev = scalars == "device"
    kw = dict(kw, grad_scale=torch.tensor(8.0), found_inf=torch.tensor([0.0]))
    a, idx = build(op, kw, dtype)
    b = [to_cuda(x, on_dev) for x in build(op, kw, dtype)[0]]
    getattr(torch.ops.fusedopt, op)(*a)
    getattr(torch.ops.fusedopt, op)(*b)
    ours = [x.cpu() for x in written(b, idx)]
    assert_matches(ours, written(a, idx), dtype, f"{op} {kw}", lamb_norms=op == "lamb_")


@pytest.mark.parametrize("op", list(BUILDERS))
def test_many_tensors_and_empties(op):
    """More tensors than one launch holds (and than one step-counter launch), empties anywhere."""
    sizes = [(i * 37) % 300 if i % 7 else 0 for i in range(5000)]
    a, idx = build(op, {}, torch.float32, "mixed", sizes)
    b = [to_cuda(x, True) for x in build(op, {}, torch.float32, "mixed", sizes)[0]]
    getattr(torch.ops.fusedopt, op)(*a)
    getattr(torch.ops.fusedopt, op)(*b)
    assert_matches([x.cpu() for x in written(b, idx)], written(a, idx), torch.float32, op)


def test_sum_sq_mixed_dtypes():
    xs = [
        torch.randn(n, dtype=d)
        for n, d in [
            (1000, torch.float32),
            (0, torch.float32),
            (77777, torch.bfloat16),
            (3, torch.float64),
        ]
    ]
    xs.append(torch.randn(60, 50).t())
    cpu = torch.ops.fusedopt.sum_sq(xs)
    gpu = torch.ops.fusedopt.sum_sq([x.cuda() for x in xs])
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float64
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=0)


OPTIMIZERS = [
    pytest.param(fusedopt.AdamW, {"lr": 1e-2, "weight_decay": 0.1}, id="adamw"),
    pytest.param(fusedopt.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}, id="sgd"),
    pytest.param(fusedopt.Lion, {"lr": 1e-3, "weight_decay": 0.1}, id="lion"),
    pytest.param(fusedopt.LAMB, {"lr": 1e-2, "max_grad_norm": 1.0}, id="lamb"),
    pytest.param(fusedopt.Sophia, {"lr": 1e-3, "weight_decay": 0.1}, id="sophia"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_optimizers_cpu_equals_cuda(cls, kwargs, dtype):
    """Every optimizer, both backends, same grads; re-synced to the CPU after every step."""
    torch.manual_seed(0)
    shapes = [(1,), (17,), (40007,), (), (33, 31), (0,)]
    cpu = [torch.randn(s, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    gpu = [p.detach().cuda().requires_grad_() for p in cpu]
    a = cls(cpu, backend="cpu", **kwargs)
    b = cls(gpu, backend="cuda", **kwargs)
    for t in range(4):
        for p, q in zip(cpu, gpu):
            p.grad = torch.randn(p.shape, dtype=torch.float64).to(dtype)
            q.grad = p.grad.cuda()
        if cls is fusedopt.Sophia and t % 2:
            a.update_hessian()
            b.update_hessian()
        a.step()
        b.step()
        for p, q in zip(cpu, gpu):
            assert_close_ulp(q.detach().cpu(), p.detach(), TOL_VS_TORCH[dtype], f"step {t}")
            for k, v in a.state[p].items():
                if not torch.is_tensor(v):
                    continue
                w = b.state[q][k]
                assert w.device == q.device, k  # state, `step` included, on the GPU
                assert_close_ulp(w.cpu(), v, TOL_VS_TORCH[v.dtype], f"step {t} {k}")
        with torch.no_grad():
            for p, q in zip(cpu, gpu):
                q.copy_(p)
                for k, v in a.state[p].items():
                    if torch.is_tensor(v):
                        b.state[q][k].copy_(v)


# -- more than 2^31 elements --------------------------------------------------------------------
@pytest.mark.slow
def test_tensor_past_2_pow_31_elements():
    """AdamW on 2^31 + 1027 fp32 elements (34 GB of params and state), non-zero grads: windows
    at the start, around 2^31 and at the end are checked against the reference backend."""
    n = 2**31 + 1027
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip(f"needs 40 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    torch.manual_seed(0)
    p = torch.randn(n, device="cuda")
    g = torch.randn(n, device="cuda")
    windows = [slice(0, 4096), slice(2**31 - 5000, 2**31 + 1027), slice(n - 4099, n)]
    kw = {"lr": 1e-2, "weight_decay": 0.1}
    big = fusedopt.AdamW([p], backend="cuda", **kw)
    refs = []
    for w in windows:
        q = p[w].clone().requires_grad_()
        q.grad = g[w].clone()
        refs.append((q, fusedopt.AdamW([q], backend="reference", **kw)))
    p.grad = g
    for _ in range(2):
        big.step()
        for _, opt in refs:
            opt.step()
    for w, (q, opt) in zip(windows, refs):
        assert_close_ulp(p[w], q.detach(), TOL_VS_TORCH[torch.float32], f"param {w}")
        m = big.state[p]["exp_avg"][w]
        assert_close_ulp(m, opt.state[q]["exp_avg"], TOL_VS_TORCH[torch.float32], f"m {w}")
    assert big.state[p]["step"].item() == 2
    total = torch.ops.fusedopt.sum_sq([g]).item()
    expect = sum(float(c.double().square().sum()) for c in g.split(2**28))
    assert abs(total - expect) <= 1e-9 * expect
    del big, p, g
    torch.cuda.empty_cache()


# -- AMP and CUDA graphs ------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_grad_scaler_found_inf_on_device(cls, kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 16).cuda()
    opt = cls(model.parameters(), backend="cuda", **kwargs)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    x = torch.randn(8, 32, device="cuda")
    for poison in (False, True, False):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        states = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
        opt.zero_grad()
        scaler.scale(model(x).square().mean()).backward()
        if poison:
            model.weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        changed = any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        assert changed != poison
        if poison:
            assert bool(opt.step_skipped)
            for p, s in opt.state.items():
                for k, v in s.items():
                    assert torch.equal(v, states[id(p)][k]), k  # `step` too


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS[:4])
def test_cuda_graph_replay_equals_eager(cls, kwargs):
    """A captured step (device lr and step counters, LAMB's device reductions and clipping)
    replayed with new grads == the same optimizer stepped eagerly, bit for bit."""
    torch.manual_seed(0)
    kwargs = dict(kwargs, lr=torch.tensor(kwargs["lr"], device="cuda"))
    shapes = [(1000,), (17, 3), (0,), (65537,)]
    ps = [torch.randn(s, device="cuda", requires_grad=True) for s in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    graphed = cls(ps, backend="cuda", **kwargs)
    eager = cls(qs, backend="cuda", **kwargs)
    for p, q in zip(ps, qs):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture: creates the state
        graphed.step()
    torch.cuda.current_stream().wait_stream(side)
    eager.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed.step()
    for _ in range(5):
        for p, q in zip(ps, qs):
            p.grad.normal_()
            q.grad.copy_(p.grad)
        graph.replay()
        eager.step()
        torch.cuda.synchronize()
        for p, q in zip(ps, qs):
            assert torch.equal(p, q)
            for k, v in graphed.state[p].items():
                assert torch.equal(v, eager.state[q][k]), k
    assert graphed.state[ps[0]]["step"].item() == 6
