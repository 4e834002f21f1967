"""The CUDA backend on a GPU (marker `cuda`; skipped where no GPU is visible).

- the parity matrix of tests/test_parity.py with backend="cuda" on CUDA params;
- CPU kernels == CUDA kernels on the same inputs: every op and mode, odd sizes, misaligned
  starts, empty tensors, more tensors than one launch holds, host and device scalars; and every
  optimizer stepped on both backends;
- a tensor of more than 2^31 elements with non-zero grads, checked past index 2^31;
- found_inf/grad_scale from torch.amp.GradScaler, read on the device;
- a step captured in a CUDA graph and replayed == eager steps;
- mixed precision (master copies, stochastic rounding, states in their own dtype, LAMB's phases)
  against fusedopt.reference, stochastic rounding bit for bit, seeds advanced on the device;
- the 8-bit ops (Note [8-bit CUDA kernel]): codes and absmax the reference's bit for bit, params
  as tests/test_cuda_q8.py checks them on the simulation, NaN/inf/zero/tie/tiny blocks;
- what the simulation cannot catch: reductions repeated 20 times give the same bits, a step on a
  non-default stream and on a second GPU, the runtime's view of the kernel images.

Without a GPU the same block bodies, planner and glue are tested by tests/test_cuda_planner.py.
"""

from __future__ import annotations

import re

import pytest
import torch
from test_cuda_planner import (
    BUILDERS,
    LAMB_STORAGE,
    MIXED,
    OP_CASES,
    OP_IDS,
    OPTIMIZERS,
    _exact_sgd_args,
    _lamb,
    _with_phase,
    arg_index,
    assert_matches,
    assert_mixed_matches,
    build,
    cpu_equals_other,
    resync,
    written,
)
from test_cuda_q8 import Q8_CASES, Q8_IDS, run_against_reference

import fusedopt
from fusedopt import reference
from fusedopt._dispatch import image_for, parse_images
from fusedopt._ext import _C
from helpers import DTYPE_IDS, DTYPES, TOL_VS_TORCH, assert_close_ulp, run_parity
from optim_info import matrix

CUDA = fusedopt.backends()["cuda"]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA.available, reason=CUDA.reason)]


def test_backend_is_picked():
    assert fusedopt._dispatch.resolve("auto", torch.device("cuda")) == "cuda"
    assert _C.planner.device_arg_bytes(torch.cuda.current_device()) in (4096, 32764)


# -- the parity matrix --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("ours,theirs,kwargs", matrix("parity", "cls", "torch_cls", "kwargs"))
def test_matches_torch_forloop(ours, theirs, kwargs, dtype):
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
    ulps = 1 if dtype == torch.float64 else 0  # Note [CPU and CUDA bits]
    assert_matches(ours, written(a, idx), dtype, f"{op} {kw}", op, ulps)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_optimizers_cpu_equals_cuda(cls, kwargs, dtype):
    """Every optimizer, both backends, same grads, re-synced after every step: equal bits
    (Note [CPU and CUDA bits] in tests/test_cuda_planner.py)."""
    cpu_equals_other(cls, kwargs, dtype, "cuda", "cuda")


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


@pytest.mark.parametrize("cls,kwargs", matrix("cuda_graph", "cls", "kwargs"))
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


# -- mixed precision ----------------------------------------------------------------------------
def strided_cuda(t):
    """A GPU copy with t's exact layout (sizes, strides, storage offset): a transposed or sliced
    param keeps its memory order, which is the stochastic-rounding noise counter."""
    n = t.untyped_storage().nbytes() // t.element_size()
    base = torch.zeros(n, dtype=t.dtype, device="cuda")
    return base.as_strided(t.size(), t.stride(), t.storage_offset()).copy_(t)


def cuda_args(args, scalars_on_device=True):
    out = []
    for a in args:
        if isinstance(a, list):
            out.append([strided_cuda(t) for t in a])
        elif isinstance(a, torch.Tensor):
            out.append(a.cuda() if scalars_on_device or a.dim() == 2 else a)
        else:
            out.append(a)
    return tuple(out)


@pytest.mark.parametrize("scalars", ["host", "device"])
@pytest.mark.parametrize("dtype,state_dtype,mode", MIXED)
@pytest.mark.parametrize("op,kw", OP_CASES, ids=OP_IDS)
def test_mixed_precision_matches_reference(op, kw, dtype, state_dtype, mode, scalars):
    """Every op mode in every mixed combination, two steps, against the reference on the CPU."""
    if op == "sophia_update_hessian_" and mode != "plain":
        pytest.skip("no params")
    kw = dict(kw, grad_scale=torch.tensor(8.0), found_inf=torch.tensor([0.0]))
    theirs, idx = build(op, kw, dtype, state_dtype=state_dtype, mode=mode)
    ours = cuda_args(
        build(op, kw, dtype, state_dtype=state_dtype, mode=mode)[0], scalars == "device"
    )
    for step in range(2):
        getattr(torch.ops.fusedopt, op)(*ours)
        getattr(reference, op)(*theirs)
        got = [x.cpu() for x in written(ours, idx)]
        assert_mixed_matches(got, written(theirs, idx), f"{op} step {step}", op == "lion_")
        resync(ours, theirs, idx, step)


@pytest.mark.parametrize(
    "dtype,mode",
    [(torch.bfloat16, "sr"), (torch.bfloat16, "master"), (torch.float16, "master")],
    ids=["bf16-sr", "bf16-master", "fp16-master"],
)
def test_exact_updates_equal_the_reference_bits(dtype, mode):
    """Where theta - lr*g has a single rounding (tests/test_cuda_planner.py _exact_sgd_args), the
    GPU's stochastically rounded (or master-rounded) params are the reference's bit for bit:
    the device noise (sr_key, sr_noise, __float_as_uint) and element indices, transposed and
    non-dense params included."""
    theirs = _exact_sgd_args(dtype, mode, 0)
    ours = cuda_args(_exact_sgd_args(dtype, mode, 0))
    for step in range(3):
        torch.ops.fusedopt.sgd_(*ours)
        reference.sgd_(*theirs)
        for k in (0, 12, 13):
            for i, (x, y) in enumerate(zip(ours[k] or [], theirs[k] or [])):
                assert torch.equal(x.cpu(), y), f"step {step}: argument {k}[{i}]"


@pytest.mark.parametrize("mode", ["master", "sr"])
@pytest.mark.parametrize("op", [o for o in BUILDERS if o != "sophia_update_hessian_"])
def test_found_inf_on_device_keeps_masters_and_seeds(op, mode):
    """found_inf read on the device: nothing changes, seeds included; cleared, the seeds advance."""
    args, idx = build(op, {"found_inf": torch.tensor([1.0])}, torch.bfloat16, mode=mode)
    args = cuda_args(args)
    before = written(args, idx)
    getattr(torch.ops.fusedopt, op)(*args)
    for x, y in zip(written(args, idx), before):
        assert torch.equal(x, y)
    if mode == "sr":
        seeds = args[arg_index(op, "sr_seeds")]
        old = [int(s) for s in seeds]
        args[arg_index(op, "found_inf")].zero_()
        getattr(torch.ops.fusedopt, op)(*args)
        assert [int(s) for s in seeds] == [(o + 1 + 2**63) % 2**64 - 2**63 for o in old]


@pytest.mark.parametrize("dtype,state_dtype,mode", LAMB_STORAGE)
def test_lamb_phase_1_then_2_equals_phase_0(dtype, state_dtype, mode):
    n = 12
    kw = {"found_inf": torch.tensor([0.0]), "lr": torch.tensor(1e-2)}
    whole, idx = _lamb(dtype, state_dtype, mode, **kw)
    split, _ = _lamb(dtype, state_dtype, mode, phase=1, sq_sums=torch.zeros(n, 2).double(), **kw)
    whole, split = cuda_args(whole), cuda_args(split)
    torch.ops.fusedopt.lamb_(*whole)
    torch.ops.fusedopt.lamb_(*split)
    torch.ops.fusedopt.lamb_(*_with_phase(split, 2))
    for k, (x, y) in enumerate(zip(written(split, idx), written(whole, idx))):
        assert torch.equal(x, y), f"written[{k}]"


@pytest.mark.parametrize("op", ["adam_", "lamb_", "sgd_"])
def test_cuda_graph_replay_advances_seeds(op):
    """A captured step with stochastic rounding and a device lr: each replay reads the seeds as
    they are and advances them on the device, as eager steps do, bit for bit."""
    kw = {"lr": torch.tensor(1e-2), "found_inf": torch.tensor([0.0])}
    eager, idx = build(op, kw, torch.bfloat16, state_dtype=torch.float32, mode="sr")
    eager = cuda_args(eager)
    graphed = cuda_args(build(op, kw, torch.bfloat16, state_dtype=torch.float32, mode="sr")[0])
    fn = getattr(torch.ops.fusedopt, op)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(*graphed)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    fn(*eager)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(*graphed)
    for _ in range(3):
        graph.replay()
        fn(*eager)
    torch.cuda.synchronize()
    for k, (x, y) in enumerate(zip(written(graphed, idx), written(eager, idx))):
        assert torch.equal(x, y), f"written[{k}]"
    seeds = graphed[arg_index(op, "sr_seeds")]
    start = build(op, kw, torch.bfloat16, state_dtype=torch.float32, mode="sr")[0]
    first = start[arg_index(op, "sr_seeds")]
    assert [int(s) for s in seeds] == [(int(s) + 4 + 2**63) % 2**64 - 2**63 for s in first]


# -- what the simulation cannot catch -----------------------------------------------------------
def test_reductions_repeat_bit_for_bit():
    """LAMB (per-tensor norms finished by whichever block arrives last, the clip norm's sum_sq)
    run 20 times from the same state: the same bits every time, whatever order the blocks ran."""
    torch.manual_seed(0)
    shapes = [(1_000_003,), (4097, 33), (17,), (0,), (300_000,)]
    start = [torch.randn(s, device="cuda") for s in shapes]
    grads = [torch.randn(s, device="cuda") for s in shapes]
    sums = [torch.ops.fusedopt.sum_sq(grads) for _ in range(20)]
    assert all(torch.equal(s, sums[0]) for s in sums)
    runs = []
    for _ in range(20):
        ps = [p.clone().requires_grad_() for p in start]
        for p, g in zip(ps, grads):
            p.grad = g
        opt = fusedopt.LAMB(ps, lr=1e-2, weight_decay=0.01, max_grad_norm=1.0, backend="cuda")
        opt.step()
        opt.step()
        flat = [p.detach().flatten() for p in ps]
        flat += [opt.state[p][k].flatten() for p in ps for k in ("exp_avg", "exp_avg_sq")]
        runs.append(torch.cat([*flat, opt.last_grad_norm.reshape(1)]))
    for k, r in enumerate(runs[1:], 1):
        assert torch.equal(r, runs[0]), f"run {k} differs from run 0"


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_step_on_a_side_stream(cls, kwargs):
    """A step on a non-default stream runs there: it waits for the grads that stream writes
    behind a 50 ms sleep (a launch on another stream would read the old grads)."""
    torch.manual_seed(0)
    shapes = [(100_003,), (17, 3), (0,)]
    ps = [torch.randn(s, device="cuda", requires_grad=True) for s in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    new = [torch.randn(s, device="cuda") for s in shapes]
    for p, q, g in zip(ps, qs, new):
        p.grad = torch.zeros_like(p)
        q.grad = g.clone()
    on_side = cls(ps, backend="cuda", **kwargs)
    expected = cls(qs, backend="cuda", **kwargs)
    expected.step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # about 50 ms of GPU clock cycles
        for p, g in zip(ps, new):
            p.grad.copy_(g)
        on_side.step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
        for k, v in on_side.state[p].items():
            if torch.is_tensor(v):
                assert torch.equal(v, expected.state[q][k]), k


@pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason=f"needs two GPUs ({torch.cuda.device_count()} visible): a step on cuda:1 while "
    "cuda:0 is the current device",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_step_on_the_second_gpu(cls, kwargs, dtype):
    """Params, state, step counters and reductions on cuda:1 with cuda:0 current: the launches,
    device scalars and arrival counters use the params' GPU (equal bits to the CPU kernels)."""
    with torch.cuda.device(0):
        cpu_equals_other(cls, kwargs, dtype, "cuda", "cuda:1")


def test_kernel_image_check_agrees_with_the_runtime():
    """fusedopt.backends()' reading of the build record (which image a GPU runs) against what
    the CUDA runtime loads: a native image reports its own version, a JIT-compiled PTX the GPU's."""
    images = parse_images(_C.cuda_images())
    assert images is not None, f"setup.py recorded no images: {_C.cuda_images()!r}"
    for i in range(torch.cuda.device_count()):
        cap = torch.cuda.get_device_capability(i)
        chosen = image_for(cap, images)
        error, binary, ptx = _C.cuda_kernel_image(i)
        assert chosen is not None and error == "", (i, cap, chosen, error)
        native = int(re.sub(r"\D", "", chosen)) if "JIT" not in chosen else cap[0] * 10 + cap[1]
        assert binary == native, (i, cap, chosen, binary, ptx)


# -- 8-bit states -------------------------------------------------------------------------------
@pytest.mark.parametrize("scalars", ["host", "device"])
@pytest.mark.parametrize("op,dtype,mode,kw", Q8_CASES, ids=Q8_IDS)
def test_8bit_kernels_match_reference(op, dtype, mode, kw, scalars):
    """Every 8-bit op and mode, 3 steps with GradScaler's scale: codes and absmax the
    reference's bit for bit (the GPU's division, multiplication, max and search), params too
    (Adam's within its ulps)."""
    run_against_reference(
        op, dtype, mode, kw, 3, amp=True, device="cuda", scalars=scalars == "device"
    )


@pytest.mark.parametrize("op", ["adam8bit_", "lion8bit_", "sgd8bit_"])
def test_8bit_edge_blocks_match_reference(op):
    """Zero, NaN, inf, tie and tiny (infinite reciprocal) blocks on the GPU: no flush to zero,
    IEEE division, a NaN block's codes 0."""
    run_against_reference(op, torch.float32, "plain", {}, 2, edge=True, device="cuda")


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (fusedopt.AdamW, {"lr": 1e-3, "weight_decay": 0.1}),
        (fusedopt.Lion, {"lr": 1e-4, "weight_decay": 0.1}),
        (fusedopt.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
    ],
    ids=["AdamW", "Lion", "SGD"],
)
def test_8bit_optimizers_cuda_equal_cpu(cls, kwargs):
    """state_dtype="int8_blockwise" end to end on the GPU (the plans, the maps on the device):
    the CPU backend's codes and absmax bit for bit and its params (Adam: its CPU kernel; Lion,
    SGD: their reference) after 3 steps, the small params' fp32 states included."""
    shapes = [(96, 50), (5001,), (300,)]
    g = torch.Generator().manual_seed(0)
    cpu = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    opts = [
        cls(ps, state_dtype="int8_blockwise", backend=b, **kwargs)
        for ps, b in ((cpu, "cpu"), (gpu, "cuda"))
    ]
    for _ in range(3):
        for p, q in zip(cpu, gpu):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.cuda()
        for opt in opts:
            opt.step()
    for p, q in zip(cpu, gpu):
        assert torch.equal(p.detach(), q.detach().cpu())
        for k, v in opts[0].state[p].items():
            assert torch.equal(v, opts[1].state[q][k].cpu()), k
