"""fusedopt.Muon and fusedopt.MuonWithAuxAdam: the fused elementwise ops on every backend against
the reference, the optimizer against torch.optim.Muon over many steps, validation, checkpoints
both ways, the combined optimizer and the param split.

Tolerances: the ops are elementwise, so the backends agree with the reference to a few ulp of
fp32 (torch.lerp's vectorized form may contract a multiply-add, ours does not) and to one bf16
ulp on the bf16 matrix they write (a one-ulp fp32 difference can flip its rounding). The
optimizer runs torch's bf16 Newton-Schulz iteration as batched matmuls: a flipped bf16 rounding
anywhere in the iteration moves an element of the update by about 2^-8 of its size, so the
params agree with torch.optim.Muon to a few lr x 2^-8 per step (NS_TOL), not to fp32 ulps.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

import fusedopt
from fusedopt import reference
from fusedopt._ext import _C
from fusedopt.optim.muon import newton_schulz

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_C = _C is not None

BACKENDS = ["reference"]
if HAS_C:
    BACKENDS.append("cpu")
if HAS_TRITON:
    BACKENDS.append("triton")

# Shapes the optimizer tests use: wide, tall, square, repeated (batched together), odd sizes,
# a single row, an empty matrix.
SHAPES = [(64, 32), (32, 64), (64, 32), (17, 5), (33, 33), (64, 32), (1, 9), (0, 4)]


def _op_fn(backend: str, op: str):
    if backend == "cpu":
        return getattr(torch.ops.fusedopt, op)
    if backend == "sim":
        return getattr(torch.ops.fusedopt_sim, op)
    if backend == "triton":
        import fusedopt.triton as ft

        return getattr(ft, op)
    return getattr(reference, op)


OP_BACKENDS = [b for b in ("cpu", "sim", "triton") if (b != "triton" or HAS_TRITON) and HAS_C]


def _tensors(shapes, dtype, gen):
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


# Elementwise shapes: empty, below / at / above the SIMD width, across the parallel grain,
# a transposed (non-contiguous) one.
OP_SHAPES = [(0,), (1,), (15,), (16,), (17,), (33, 31), (40001,), (9, 17)]


def _momentum_args(gdt, bdt, udt, nesterov, gen, transposed=True):
    g = _tensors(OP_SHAPES, gdt, gen)
    b = _tensors(OP_SHAPES, bdt, gen)
    if transposed:
        g[-1] = g[-1].t().contiguous().t()  # a transposed grad: staged
    u = [torch.full(s, float("nan"), dtype=udt) for s in OP_SHAPES]
    return [b, g, u, 0.95, nesterov]


def _ulps(x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype, *inputs: torch.Tensor) -> float:
    """max |x - y| in ulps of ``dtype`` at the largest of |x|, |y| and the ``inputs``' sizes
    (a lerp that cancels leaves a rounding error of its inputs' size)."""
    if x.numel() == 0:
        return 0.0
    scale = torch.maximum(x.double().abs(), y.double().abs())
    for t in inputs:
        scale = torch.maximum(scale, t.double().abs())
    scale = scale.clamp(min=torch.finfo(dtype).tiny)
    return float(((x.double() - y.double()).abs() / (scale * torch.finfo(dtype).eps)).max())


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "plain"])
@pytest.mark.parametrize(
    "gdt,bdt,udt",
    [
        (torch.float32, torch.float32, torch.bfloat16),
        (torch.float32, torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32, torch.bfloat16),
        (torch.float16, torch.float16, torch.bfloat16),
        (torch.float64, torch.float64, torch.float64),
    ],
    ids=["fp32-bf16", "fp32-fp32", "bf16", "bf16-fp32state", "fp16", "fp64"],
)
def test_momentum_op_matches_reference(backend, nesterov, gdt, bdt, udt):
    if backend == "triton" and bdt == torch.float64 and udt == torch.bfloat16:
        pytest.skip("not a Triton table")
    gen = torch.Generator().manual_seed(1)
    ours = _momentum_args(gdt, bdt, udt, nesterov, gen)
    theirs = [[t.clone() for t in a] if isinstance(a, list) else a for a in ours]
    before = [b.clone() for b in ours[0]]
    scale = torch.tensor(4.0)
    _op_fn(backend, "muon_momentum_")(*ours, scale, None)
    reference.muon_momentum_(*theirs, scale, None)
    for which, k in (("momentum_buffers", 0), ("updates", 2)):
        for i, (x, y) in enumerate(zip(ours[k], theirs[k])):
            assert x.dtype == y.dtype and x.shape == y.shape
            # a few ulps of fp32 (torch.lerp may contract a multiply-add), one of bf16/fp16 (a
            # one-ulp fp32 difference may flip a rounding)
            full = x.dtype in (torch.float32, torch.float64)
            ulps = _ulps(x, y, x.dtype, before[i], ours[1][i] / 4)
            assert ulps <= (4 if full else 1), f"{which}[{i}]: {ulps} ulps"


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_momentum_op_found_inf_changes_nothing(backend):
    gen = torch.Generator().manual_seed(2)
    args = _momentum_args(torch.float32, torch.float32, torch.bfloat16, True, gen)
    before = [t.clone() for t in args[0]]
    _op_fn(backend, "muon_momentum_")(*args, None, torch.ones(()))
    assert all(torch.equal(a, b) for a, b in zip(args[0], before))
    assert all(u.isnan().all() for u in args[2])


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_momentum_op_rejects_bad_lists(backend):
    gen = torch.Generator().manual_seed(3)
    args = _momentum_args(torch.float32, torch.float32, torch.bfloat16, True, gen)
    before = [t.clone() for t in args[0]]
    bad = list(args)
    bad[2] = [*args[2][:-1], torch.zeros(3, dtype=torch.bfloat16)]  # a wrong shape
    with pytest.raises(RuntimeError):
        _op_fn(backend, "muon_momentum_")(*bad, None, None)
    bad = list(args)
    bad[2] = [u.to(torch.float16) for u in args[2]]  # neither bf16 nor the grads' dtype
    with pytest.raises(RuntimeError, match="updates"):
        _op_fn(backend, "muon_momentum_")(*bad, None, None)
    assert all(torch.equal(a, b) for a, b in zip(args[0], before))


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16])
def test_update_op_matches_reference(backend, dtype):
    gen = torch.Generator().manual_seed(4)
    p = _tensors(OP_SHAPES, dtype, gen)
    p[-1] = p[-1].t()  # a transposed param
    o = _tensors([tuple(x.shape) for x in p], dtype, gen)
    q = [x.clone() for x in p]
    before = [x.clone() for x in p]
    lr = torch.tensor(0.02, dtype=torch.float64)
    _op_fn(backend, "muon_")(p, o, lr, 0.1, 1.7, None, None, None, None)
    reference.muon_(q, o, lr, 0.1, 1.7, None, None)
    for i, (x, y) in enumerate(zip(p, q)):
        ulps = _ulps(x, y, dtype, before[i])
        assert ulps <= (2 if dtype in (torch.float32, torch.float64) else 1), f"{i}: {ulps}"


# -- the optimizer --------------------------------------------------------------------------


def _torch_takes(adjust_lr_fn: str) -> bool:
    try:
        torch.optim.Muon([torch.zeros(2, 2, requires_grad=True)], adjust_lr_fn=adjust_lr_fn)
    except ValueError:
        return False
    return True


# torch 2.11's Muon has no "spectral_unclamped" (fusedopt takes it, as torch 2.14 does)
TORCH_ADJUST_LR_FNS = [None] + [
    f for f in ("original", "match_rms_adamw", "spectral_unclamped") if _torch_takes(f)
]

# Params within this many lr x 2^-8 (x the largest update element, ~1) of torch.optim.Muon per
# step: bf16 roundings of the iteration that batched and single matmuls make differently.
NS_TOL = 2.0


def _params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = _tensors(SHAPES, dtype, gen)
    ps.append(_tensors([(9, 17)], dtype, gen)[0].t())  # a transposed (tall, strided) param
    return ps


def _pair(dtype=torch.float32, backend="auto", **kwargs):
    """fusedopt.Muon and torch.optim.Muon on copies of the same params: (ours, a, theirs, b)."""
    ps = _params(dtype)
    ours = [p.clone().requires_grad_() for p in ps]
    theirs = [p.clone().requires_grad_() for p in ps]
    return (
        ours,
        fusedopt.Muon(ours, backend=backend, **kwargs),
        theirs,
        torch.optim.Muon(theirs, **kwargs),
    )


def _run(opt_a, a, opt_b, b, steps, seed=10):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
            x.grad, y.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.02},
        {"lr": 0.02, "nesterov": False, "weight_decay": 0.0},
        {"lr": 0.01, "adjust_lr_fn": "match_rms_adamw", "momentum": 0.9},
        {"lr": torch.tensor(0.02), "adjust_lr_fn": "spectral_unclamped", "ns_steps": 3},
        {"lr": 0.02, "momentum": 0.3, "ns_coefficients": (2.0, -1.5, 0.5), "eps": 1e-3},
    ],
    ids=["default", "plain-nowd", "match_rms", "tensor_lr-spectral", "lowmomentum-coeffs"],
)
def test_matches_torch_muon(backend, kwargs):
    if kwargs.get("adjust_lr_fn") not in TORCH_ADJUST_LR_FNS:
        pytest.skip(f"torch {torch.__version__}'s Muon has no {kwargs['adjust_lr_fn']}")
    steps = 25
    ours, a, theirs, b = _pair(backend=backend, **kwargs)
    _run(a, ours, b, theirs, steps)
    lr = float(kwargs["lr"])
    for i, (x, y) in enumerate(zip(ours, theirs)):
        ratio = fusedopt.optim.muon.adjusted_lr_ratio(kwargs.get("adjust_lr_fn"), x.shape)
        bound = NS_TOL * steps * lr * ratio * 2**-8
        assert x.stride() == y.stride()
        diff = (x - y).abs().max().item() if x.numel() else 0.0
        assert diff <= bound, f"param[{i}] {tuple(x.shape)}: {diff:.3g} > {bound:.3g}"
        bx, by = a.state[x]["momentum_buffer"], b.state[y]["momentum_buffer"]
        assert bx.dtype == by.dtype and bx.shape == by.shape
    assert list(a.state[ours[0]]) == list(b.state[theirs[0]]) == ["momentum_buffer"]


def test_momentum_is_torchs():
    """The momentum buffer depends on the grads only: torch's to a few ulps of the grads (cpu;
    torch's vectorized lerp contracts a multiply-add, ours does not)."""
    ours, a, theirs, b = _pair(lr=0.02)
    _run(a, ours, b, theirs, 3)
    for x, y in zip(ours, theirs):
        bx, by = a.state[x]["momentum_buffer"], b.state[y]["momentum_buffer"]
        assert _ulps(bx, by, torch.float32, x.grad) <= 4


@pytest.mark.parametrize("shape", [(48, 24), (24, 48), (33, 33)])
def test_batched_newton_schulz_is_torchs_per_matrix(shape):
    """One stacked bf16 iteration == torch's _zeropower_via_newtonschulz per matrix, to the
    rounding of the bf16 matmuls."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    gen = torch.Generator().manual_seed(5)
    xs = torch.randn((5, *shape), generator=gen)
    coeffs = fusedopt.optim.muon.NS_COEFFICIENTS
    got = newton_schulz(xs.bfloat16(), coeffs, 5, 1e-7)
    assert got.shape == xs.shape and got.dtype == torch.bfloat16
    for k in range(5):
        want = _zeropower_via_newtonschulz(xs[k], coeffs, 5, 1e-7)
        err = (got[k].float() - want.float()).abs().max().item()
        assert err <= 4 * 2**-8 * want.float().abs().max().item(), (k, err)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp64_params_match_torch(backend):
    ours, a, theirs, b = _pair(torch.float64, backend=backend, lr=0.02)
    _run(a, ours, b, theirs, 5)
    for i, (x, y) in enumerate(zip(ours, theirs)):
        assert x.dtype == torch.float64
        diff = (x - y).abs().max().item() if x.numel() else 0.0
        assert diff <= NS_TOL * 5 * 0.02 * 2 * 2**-8, i


def test_bf16_params_match_torch():
    """bf16 params, step by step from the same state (re-synced to torch's after each step):
    torch rounds the param twice per step (mul_, then add_), fusedopt once, so they may be one
    bf16 ulp apart, plus the iteration's roundings."""
    ours, a, theirs, b = _pair(torch.bfloat16, lr=0.02)
    gen = torch.Generator().manual_seed(6)
    for step in range(6):
        for x, y in zip(ours, theirs):
            g = torch.randn(x.shape, generator=gen).bfloat16()
            x.grad, y.grad = g.clone(), g.clone()
        a.step()
        b.step()
        for i, (x, y) in enumerate(zip(ours, theirs)):
            assert x.dtype == torch.bfloat16
            ratio = fusedopt.optim.muon.adjusted_lr_ratio(None, x.shape)
            allowed = 2**-7 * y.detach().float().abs() + NS_TOL * 0.02 * ratio * 2**-8
            assert ((x.float() - y.float()).abs() <= allowed).all(), f"step {step} param[{i}]"
            with torch.no_grad():
                x.copy_(y)
                a.state[x]["momentum_buffer"].copy_(b.state[y]["momentum_buffer"])


def test_validation_is_torchs():
    p = torch.zeros(3, 4, requires_grad=True)
    bad = [
        {"lr": -1.0},
        {"lr": torch.tensor([1e-3, 1e-3])},
        {"momentum": -0.5},
        {"weight_decay": -0.1},
        {"adjust_lr_fn": "nope"},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError) as want:
            torch.optim.Muon([p], **kwargs)
        with pytest.raises(ValueError) as got:
            fusedopt.Muon([p], **kwargs)
        assert str(got.value) == str(want.value), kwargs
    for q in (torch.zeros(3, requires_grad=True), torch.zeros(2, 3, 4, requires_grad=True)):
        with pytest.raises(ValueError) as want:
            torch.optim.Muon([q])
        with pytest.raises(ValueError) as got:
            fusedopt.Muon([q])
        assert str(got.value) == str(want.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"ns_steps": 100}, "Number of steps must be less than 100"),
        ({"ns_coefficients": (1.0, 2.0)}, "Coefficients must be a tuple of exactly 3 values"),
    ],
)
def test_step_errors_change_nothing(kwargs, message):
    """torch raises these in its step after updating momentum; fusedopt before any write."""
    p = torch.randn(4, 3, requires_grad=True)
    before = p.detach().clone()
    opt = fusedopt.Muon([p], **kwargs)
    p.grad = torch.randn(4, 3)
    with pytest.raises(ValueError, match=message):
        opt.step()
    assert torch.equal(p.detach(), before)
    assert not opt.state[p] or not opt.state[p]["momentum_buffer"].any()


def test_sparse_and_complex_are_refused():
    p = torch.zeros(3, 4, requires_grad=True)
    opt = fusedopt.Muon([p])
    p.grad = torch.zeros(3, 4).to_sparse()
    with pytest.raises(RuntimeError, match="Muon does not support sparse gradients"):
        opt.step()
    c = torch.zeros(3, 4, dtype=torch.complex64, requires_grad=True)
    opt = fusedopt.Muon([c])
    c.grad = torch.zeros(3, 4, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        opt.step()


def test_checkpoints_round_trip_and_load_torchs_both_ways():
    ours, a, theirs, b = _pair(lr=0.02)
    _run(a, ours, b, theirs, 3)
    # fusedopt -> fusedopt: bit-identical state, and the same next steps (a copy, as torch.save
    # makes: a state_dict shares the optimizer's tensors).
    sd = copy.deepcopy(a.state_dict())
    copies = [p.detach().clone().requires_grad_() for p in ours]
    c = fusedopt.Muon(copies, lr=0.5)
    c.load_state_dict(sd)
    assert c.param_groups[0]["lr"] == 0.02
    for x, y in zip(ours, copies):
        assert torch.equal(a.state[x]["momentum_buffer"], c.state[y]["momentum_buffer"])
    _run(a, ours, c, copies, 2, seed=20)
    for x, y in zip(ours, copies):
        assert torch.equal(x, y)
    # torch -> fusedopt and fusedopt -> torch: the same keys, values and groups.
    d = fusedopt.Muon([p.detach().clone().requires_grad_() for p in theirs])
    d.load_state_dict(copy.deepcopy(b.state_dict()))
    for x, y in zip(theirs, d.param_groups[0]["params"]):
        assert torch.equal(b.state[x]["momentum_buffer"], d.state[y]["momentum_buffer"])
    e = torch.optim.Muon([p.detach().clone().requires_grad_() for p in ours])
    e.load_state_dict(copy.deepcopy(a.state_dict()))
    for x, y in zip(ours, e.param_groups[0]["params"]):
        assert torch.equal(a.state[x]["momentum_buffer"], e.state[y]["momentum_buffer"])


def test_found_inf_skips_the_step():
    p = torch.randn(6, 4, requires_grad=True)
    before = p.detach().clone()
    opt = fusedopt.Muon([p], lr=0.1)
    p.grad = torch.randn(6, 4)
    opt.step()
    after_one = p.detach().clone()
    buf = opt.state[p]["momentum_buffer"].clone()
    assert not torch.equal(after_one, before)
    sc = torch.amp.GradScaler("cpu")
    p.grad = torch.full((6, 4), float("inf"))
    sc.scale(torch.zeros((), requires_grad=True))
    sc.step(opt)
    sc.update()
    assert torch.equal(p.detach(), after_one)
    assert torch.equal(opt.state[p]["momentum_buffer"], buf)


def test_compiled_step_matches_eager():
    torch._dynamo.reset()
    ps = _params()[:4]
    a = [p.clone().requires_grad_() for p in ps]
    b = [p.clone().requires_grad_() for p in ps]
    oa = fusedopt.Muon(a, lr=0.02)
    ob = fusedopt.Muon(b, lr=0.02)

    @torch.compile(fullgraph=True)
    def step():
        ob.step()

    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen)
            x.grad, y.grad = g.clone(), g.clone()
        oa.step()
        step()
    for x, y in zip(a, b):
        bound = NS_TOL * 3 * 0.02 * 2 * 2**-8
        assert (x - y).abs().max().item() <= bound


# -- the combined optimizer -------------------------------------------------------------------


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 8)
        self.fc1 = torch.nn.Linear(8, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.fc2 = torch.nn.Linear(16, 8, bias=False)
        self.lm_head = torch.nn.Linear(8, 11, bias=False)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.lm_head(self.fc2(self.norm(torch.tanh(self.fc1(self.embed(x))))))


def test_muon_param_groups_split():
    net = _Net()
    groups = fusedopt.muon_param_groups(net, muon={"lr": 0.05}, adam={"lr": 1e-3})
    muon, adam = groups
    assert muon["use_muon"] and not adam["use_muon"]
    assert [id(p) for p in muon["params"]] == [id(net.fc1.weight), id(net.fc2.weight)]
    assert {id(p) for p in adam["params"]} == {
        id(p)
        for p in (
            net.embed.weight,
            net.fc1.bias,
            net.norm.weight,
            net.norm.bias,
            net.lm_head.weight,
        )
    }
    assert muon["lr"] == 0.05 and adam["lr"] == 1e-3
    # a head tied to the embedding stays with AdamW
    net.lm_head.weight = net.embed.weight
    ids = [id(p) for p in fusedopt.muon_param_groups(net)[0]["params"]]
    assert id(net.embed.weight) not in ids


def test_muon_with_aux_adam_matches_torch_pair():
    """The combined optimizer == torch.optim.Muon on the hidden matrices + torch.optim.AdamW
    on the rest, with the reference repository's group defaults."""
    torch.manual_seed(0)
    net = _Net()
    ref = _Net()
    ref.load_state_dict(net.state_dict())
    opt = fusedopt.MuonWithAuxAdam(
        fusedopt.muon_param_groups(net, muon={"weight_decay": 0.01}, adam={"weight_decay": 0.01})
    )
    rg = fusedopt.muon_param_groups(ref)
    tm = torch.optim.Muon(rg[0]["params"], lr=0.02, momentum=0.95, weight_decay=0.01)
    ta = torch.optim.AdamW(
        rg[1]["params"], lr=3e-4, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.01, foreach=False
    )
    gen = torch.Generator().manual_seed(3)

    def backward(*models: torch.nn.Module) -> None:
        x = torch.randint(0, 11, (4, 5), generator=gen)
        for model in models:
            model.zero_grad()
            model(x).square().mean().backward()

    for _ in range(8):
        backward(net, ref)
        opt.step()
        tm.step()
        ta.step()
    for (name, x), y in zip(net.named_parameters(), ref.parameters()):
        assert (x - y).abs().max().item() <= 8 * NS_TOL * 0.02 * 2**-8 + 1e-6, name
    muon_p = opt.param_groups[0]["params"][0]
    adam_p = opt.param_groups[1]["params"][0]
    assert list(opt.state[muon_p]) == ["momentum_buffer"]
    assert list(opt.state[adam_p]) == ["step", "exp_avg", "exp_avg_sq"]
    # checkpoints round-trip bit-identically
    net2 = _Net()
    net2.load_state_dict(net.state_dict())
    opt2 = fusedopt.MuonWithAuxAdam(fusedopt.muon_param_groups(net2))
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p, q in zip(net.parameters(), net2.parameters()):
        for k, v in opt.state[p].items():
            assert torch.equal(v, opt2.state[q][k]), k
    backward(net, net2)
    opt.step()
    opt2.step()
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)


def test_muon_with_aux_adam_validation():
    w = torch.zeros(4, 3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="use_muon"):
        fusedopt.MuonWithAuxAdam([{"params": [w]}])
    with pytest.raises(ValueError, match="unknown options for a Muon group"):
        fusedopt.MuonWithAuxAdam([{"params": [w], "use_muon": True, "betas": (0.9, 0.9)}])
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        fusedopt.MuonWithAuxAdam([{"params": [b], "use_muon": True}])
    with pytest.raises(ValueError, match="Invalid beta parameter"):
        fusedopt.MuonWithAuxAdam([{"params": [b], "use_muon": False, "betas": (1.0, 0.9)}])


def test_max_grad_norm_clips_before_the_momentum():
    """max_grad_norm inside the step == torch.nn.utils.clip_grad_norm_ before it."""
    ps = _params()[:5]
    a = [p.clone().requires_grad_() for p in ps]
    b = [p.clone().requires_grad_() for p in ps]
    oa = fusedopt.Muon(a, lr=0.02, max_grad_norm=0.5)
    ob = fusedopt.Muon(b, lr=0.02)
    gen = torch.Generator().manual_seed(8)
    for _ in range(3):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen)
            x.grad, y.grad = g.clone(), g.clone()
        torch.nn.utils.clip_grad_norm_(b, 0.5)
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        assert _ulps(oa.state[x]["momentum_buffer"], ob.state[y]["momentum_buffer"],
                     torch.float32, ob.state[y]["momentum_buffer"].abs().max()) <= 8  # fmt: skip
        assert (x - y).abs().max().item() <= NS_TOL * 3 * 0.02 * 2 * 2**-8
