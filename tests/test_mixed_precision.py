"""Mixed precision (Note [mixed precision] in csrc/include/fusedopt/math.h, Note
[mixed-precision options] in fusedopt/optim/_mixed.py): fp32 master weights for fp16/bf16
params, stochastic rounding into bf16 params, and state tensors in their own dtype.

What is checked:
* master weights: the master copy follows EXACTLY the trajectory an fp32 run takes with the same
  (bf16-valued) grads, and the param is the master rounded to nearest, after every step;
* stochastic rounding: bit-identical to fusedopt.reference (counter-based noise), unbiased
  (mean of a million roundings within 6 sigma of the fp32 value), reproducible under
  torch.manual_seed, and it keeps small updates that round-to-nearest loses;
* bf16 / fp32 states: against the reference, one step at a time;
* a small bf16 model with master weights tracks its fp32 twin within a stated bound;
* checkpoints of every mode round-trip and continue bit-identically, and move to and from
  torch.optim; bad options and bad op arguments raise before anything changes.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fusedopt
from fusedopt.optim.muon import adjusted_lr_ratio
from helpers import _CASES, TOL_VS_TORCH, assert_close_ulp, clone_params, ulp
from optim_info import cases

pytestmark = pytest.mark.skipif(not fusedopt.backends()["cpu"].available, reason="no CPU ops")

# (class, kwargs) for every optimizer, tests/optim_info.py's "mixed" configs; lr large enough
# that updates show in bf16.
OPTIMIZERS = {c.id: (c.values[0].cls, c.values[2].kwargs) for c in cases("mixed")}
# name -> its params' factory (tests/optim_info.py), None for _CASES' params
MAKE = {c.id: c.values[0].params for c in cases("mixed")}
STEPS = 4

# The compiled backends under test and where their tensors live: the CPU kernels, and the
# Triton kernels on the GPU, or without one on CPU tensors under TRITON_INTERPRET=1
# (tests/conftest.py).
KERNELS = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param(
        "triton",
        "cuda" if torch.cuda.is_available() else "cpu",
        id="triton",
        marks=[
            pytest.mark.triton,
            pytest.mark.skipif(
                not fusedopt.backends()["triton"].available,
                reason=fusedopt.backends()["triton"].reason,
            ),
        ],
    ),
]


def _params(
    dtype: torch.dtype, seed: int = 0, device: str = "cpu", make=None
) -> list[torch.Tensor]:  # noqa: ANN001
    """One param per helpers._CASES row (odd sizes, transposed, sliced, frozen, empty), or the
    optimizer's own kind of params from its factory ``make``."""
    if make is not None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return make(dtype, device)
    g = torch.Generator().manual_seed(seed)
    out = []
    for make, _ in _CASES:
        p = make(lambda *s: torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype))
        out.append(p.requires_grad_())
    return out


def _grads(params: list[torch.Tensor], step: int, make=None) -> list[torch.Tensor | None]:  # noqa: ANN001
    g = torch.Generator().manual_seed(100 + step)
    if make is not None:  # the factory's params: dense grads of their shapes
        return [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    out = []
    for _, make in _CASES[: len(params)]:
        if make is None:
            out.append(None)
        else:
            out.append(make(lambda *s: torch.randn(s, generator=g, dtype=torch.float64)))
    return out


def _step(opt, params, grads, dtype) -> None:  # noqa: ANN001
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.to(p.device, dtype)
    if isinstance(opt, fusedopt.Sophia):
        opt.update_hessian()
    opt.step()


# -- master weights ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_master_weights_follow_the_fp32_trajectory_exactly(
    name: str, dtype: torch.dtype, backend: str, device: str
) -> None:
    cls, kw = OPTIMIZERS[name]
    half = _params(dtype, device=device, make=MAKE[name])
    full = [p.detach().float().requires_grad_() for p in half]  # the same starting values
    ours = cls(half, master_weights=True, backend=backend, **kw)
    ref = cls(full, backend=backend, **kw)
    for step in range(STEPS):
        grads = [None if g is None else g.to(dtype) for g in _grads(half, step, MAKE[name])]
        _step(ours, half, grads, dtype)
        _step(ref, full, [None if g is None else g.float() for g in grads], torch.float32)
        for i, (p, q) in enumerate(zip(half, full)):
            if p.grad is None:
                assert "master_param" not in ours.state[p]
                continue
            st = ours.state[p]
            m = st["master_param"]
            assert m.dtype == torch.float32 and m.stride() == q.stride()
            assert torch.equal(m, q.detach()), f"{name} step {step + 1} master[{i}]"
            assert torch.equal(p.detach(), m.to(dtype)), f"{name} step {step + 1} param[{i}]"
            for k, v in ref.state[q].items():
                if k != "step":
                    assert st[k].dtype == torch.float32, k
                    assert torch.equal(st[k], v), f"{name} step {step + 1} state[{i}][{k}]"


def _mlp(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10)
    ).to(dtype)


def test_bf16_master_weights_track_the_fp32_model() -> None:
    """A bf16 model trained with fp32 master weights stays within 1% (relative L2) of its fp32
    twin over 200 AdamW steps at lr 1e-4; without masters, bf16 params drift 10x further
    (most updates are below half a bf16 ulp and are lost)."""
    torch.manual_seed(1)
    x = torch.randn(256, 32)
    y = torch.randint(0, 10, (256,))
    models = {"fp32": _mlp(torch.float32), "master": _mlp(torch.bfloat16)}
    models["plain"] = _mlp(torch.bfloat16)
    opts = {
        "fp32": fusedopt.AdamW(models["fp32"].parameters(), lr=1e-4),
        "master": fusedopt.AdamW(models["master"].parameters(), lr=1e-4, master_weights=True),
        "plain": fusedopt.AdamW(models["plain"].parameters(), lr=1e-4),
    }
    for _ in range(200):
        for k, model in models.items():
            dt = next(model.parameters()).dtype
            opts[k].zero_grad()
            torch.nn.functional.cross_entropy(model(x.to(dt)).float(), y).backward()
            opts[k].step()

    def dist(k: str) -> float:
        num = den = 0.0
        for p, q in zip(models[k].parameters(), models["fp32"].parameters()):
            src = opts[k].state[p].get("master_param", p).detach().double()
            num += float((src - q.detach().double()).square().sum())
            den += float(q.detach().double().square().sum())
        return (num / den) ** 0.5

    master, plain = dist("master"), dist("plain")
    assert master < 1e-2, master
    assert plain > 10 * master, (plain, master)


# -- stochastic rounding ----------------------------------------------------------------------


@pytest.mark.parametrize("kernels,device", KERNELS)
def test_stochastic_rounding_noise_is_the_reference_bit_for_bit(kernels: str, device: str) -> None:
    """SGD with lr 1 on bf16 values computes p - g exactly in fp32 on both backends, so the
    bf16 results differ only if the rounding noise does: keys, seeds, element indices
    (transposed and sliced params included), over several steps."""
    runs = {}
    for backend in (kernels, "reference"):
        torch.manual_seed(7)  # the seeds are drawn from torch's generator: same on both
        params = _params(torch.bfloat16, device=device)
        opt = fusedopt.SGD(params, lr=1.0, stochastic_rounding=True, backend=backend)
        trace = []
        for step in range(STEPS):
            grads = [None if g is None else (g * 1e-3).bfloat16() for g in _grads(params, step)]
            _step(opt, params, grads, torch.bfloat16)
            trace.append([p.detach().clone() for p in params])
        runs[backend] = (trace, [opt.state[p].get("sr_seed") for p in params])
    (ta, sa), (tb, sb) = runs[kernels], runs["reference"]
    moved = 0
    for step, (a, b) in enumerate(zip(ta, tb)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert torch.equal(x, y), f"step {step + 1} param[{i}]"
            moved += int((x != ta[step - 1][i]).sum()) if step else 0
    assert moved > 1000  # the updates are not all rounded away
    assert [None if s is None else s.item() for s in sa] == [
        None if s is None else s.item() for s in sb
    ]


@pytest.mark.parametrize("kernels,device", KERNELS)
@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16], ids=["fp32_state", "bf16_state"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_stochastic_rounding_matches_the_reference(name: str, state_dtype, kernels, device) -> None:  # noqa: ANN001
    """Every optimizer: the same noise as the reference; the fp32 update before rounding may
    differ in its last bit (operation order), which can move a rounding by one bf16 ulp, rarely."""
    cls, kw = OPTIMIZERS[name]
    runs = {}
    for backend in (kernels, "reference"):
        torch.manual_seed(7)
        params = _params(torch.bfloat16, device=device, make=MAKE[name])
        opt = cls(params, stochastic_rounding=True, state_dtype=state_dtype, backend=backend, **kw)
        _step(opt, params, _grads(params, 0, MAKE[name]), torch.bfloat16)
        runs[backend] = (opt, params)
    (oa, pa), (ob, pb) = runs[kernels], runs["reference"]
    differ = total = 0
    for i, (p, q) in enumerate(zip(pa, pb)):
        x, y = p.detach().double(), q.detach().double()
        # Neighbouring roundings of values a last fp32 bit apart: within one ulp, or 1.5 of
        # the smaller one where they straddle a power of two; near 0 (p - lr*g cancelling) the
        # fp32 values themselves differ by up to an fp32 ulp of the operands (atol).
        big = torch.maximum(x.abs(), y.abs())
        assert ((x - y).abs() <= ulp(big, torch.bfloat16) + 1e-6).all(), f"{name} param[{i}]"
        differ += int((x != y).sum())
        total += x.numel()
        if p.grad is None:
            continue
        sa, sb = oa.state[p], ob.state[q]
        assert sa["sr_seed"].item() == sb["sr_seed"].item()
        want = state_dtype or torch.float32
        for k in sa:
            if k not in ("step", "sr_seed"):
                assert sa[k].dtype == want, k
                assert_close_ulp(sa[k], sb[k], TOL_VS_TORCH[torch.float32], f"state[{i}][{k}]")
    assert differ <= max(3, total // 1000), (differ, total)


def test_stochastic_rounding_is_unbiased() -> None:
    """p = 1 - d with d = 0.3 bf16 ulp below 1 is not a bf16 number: SR must give
    1 - ulp with probability 0.3 and 1 otherwise, so the mean of 2^20 roundings is within
    6 sigma (6 * ulp * sqrt(0.21 / 2^20) ~ 1.1e-5) of 1 - d."""
    n = 1 << 20
    p = torch.ones(n, dtype=torch.bfloat16, requires_grad=True)
    below = 1.0 - float(ulp(torch.tensor(0.99), torch.bfloat16))  # the bf16 number below 1
    d = 0.3 * (1.0 - below)
    opt = fusedopt.SGD([p], lr=1.0, stochastic_rounding=True)
    p.grad = torch.full((n,), d, dtype=torch.bfloat16)
    d = float(p.grad[0])  # the update actually applied (d rounded to bf16)
    opt.step()
    vals = p.detach().double()
    assert set(vals.unique().tolist()) == {below, 1.0}
    sigma = (1.0 - below) * (0.3 * 0.7 / n) ** 0.5
    assert abs(vals.mean().item() - (1.0 - d)) < 6 * sigma
    frac = (vals == below).double().mean().item()
    assert abs(frac - d / (1.0 - below)) < 6 * (0.21 / n) ** 0.5


def test_stochastic_rounding_keeps_small_updates_that_rounding_to_nearest_loses() -> None:
    n = 1 << 16
    lr, steps = 1e-3, 50  # each update is a quarter of a bf16 ulp at 1.0
    for sr in (False, True):
        p = torch.ones(n, dtype=torch.bfloat16, requires_grad=True)
        opt = fusedopt.SGD([p], lr=lr, stochastic_rounding=sr)
        for _ in range(steps):
            p.grad = torch.ones(n, dtype=torch.bfloat16)
            opt.step()
        mean = p.detach().double().mean().item()
        if sr:
            assert abs(mean - (1.0 - lr * steps)) < 1e-3, mean
        else:
            assert mean == 1.0  # every update rounded away


def test_stochastic_rounding_is_reproducible_and_seeded() -> None:
    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        p = torch.linspace(-1, 1, 4097, dtype=torch.bfloat16).requires_grad_()
        opt = fusedopt.AdamW([p], lr=1e-4, stochastic_rounding=True)
        for step in range(3):
            p.grad = torch.full_like(p, 0.5 + step)
            opt.step()
        assert opt.state[p]["sr_seed"].dtype == torch.int64
        return p.detach().clone()

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# -- state dtypes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pdtype,sdtype",
    [
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float16, torch.bfloat16),
    ],
    ids=["fp32_bf16", "bf16_fp32", "fp16_fp32", "fp16_bf16"],
)
@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dtype_matches_the_reference(name: str, pdtype, sdtype, backend, device) -> None:  # noqa: ANN001
    """One step at a time from the same state (re-synced): params within the fp32 tolerance
    (plus a storage ulp), moments within one ulp of their dtype."""
    cls, kw = OPTIMIZERS[name]
    ours_p = _params(pdtype, device=device, make=MAKE[name])
    ref_p = clone_params(ours_p)
    ours = cls(ours_p, state_dtype=sdtype, backend=backend, **kw)
    ref = cls(ref_p, state_dtype=sdtype, backend="reference", **kw)
    tol = TOL_VS_TORCH[torch.float32]
    # Lion and Sophia step by sign(c) (Lion) or sign(m) (Sophia): where that quantity is within
    # rounding of 0, the last-bit differences of two operation orders flip the sign and move
    # the param by 2 lr; allowed for at most 0.1% of the elements (as in test_lion_lamb_sophia).
    signed = cls in (fusedopt.Lion, fusedopt.Sophia)
    # Muon orthogonalizes its momentum in bf16 (torch.optim.Muon's Newton-Schulz): a last-bit
    # difference of the momentum can round the iteration's input the other way and move the
    # param by a few lr x 2^-8 of its update (NS_TOL in tests/test_muon.py); the momentum itself
    # is held to the fp32 tolerance below.
    orthogonalized = cls is fusedopt.Muon
    for step in range(STEPS):
        grads = _grads(ours_p, step, MAKE[name])
        _step(ours, ours_p, grads, pdtype)
        _step(ref, ref_p, grads, pdtype)
        flips = 0
        for i, (p, q) in enumerate(zip(ours_p, ref_p)):
            what = f"{name} step {step + 1} param[{i}]"
            if signed:
                x, y = p.detach().double(), q.detach().double()
                near = (x - y).abs() <= tol.atol + tol.rtol * y.abs() + ulp(y, pdtype)
                flip = ~near & ((x - y).abs() <= 2 * kw["lr"] + 2 * ulp(y, pdtype))
                assert (near | flip).all(), what
                flips += int(flip.sum())
            elif orthogonalized:
                x, y = p.detach().double(), q.detach().double()
                ns = 2.0 * float(kw["lr"]) * 2**-8 * adjusted_lr_ratio(None, p.shape)
                assert ((x - y).abs() <= ns + ulp(y, pdtype)).all(), what
            else:
                assert_close_ulp(p.detach(), q.detach(), tol, what)
            for k, v in ref.state.get(q, {}).items():
                if k == "step":
                    continue
                mine = ours.state[p][k]
                assert mine.dtype == sdtype == v.dtype, k
                assert_close_ulp(mine, v, tol, f"{name} step {step + 1} state[{i}][{k}]")
        assert flips <= max(2, sum(p.numel() for p in ours_p) // 1000), flips
        with torch.no_grad():  # re-sync
            for p, q in zip(ours_p, ref_p):
                p.copy_(q)
                for k, v in ref.state.get(q, {}).items():
                    ours.state[p][k].copy_(v)


# -- checkpoints ------------------------------------------------------------------------------

MODES = {
    "master_bf16": (torch.bfloat16, {"master_weights": True}),
    "master_fp16_bf16_state": (
        torch.float16,
        {"master_weights": True, "state_dtype": torch.bfloat16},
    ),
    "sr": (torch.bfloat16, {"stochastic_rounding": True}),
    "fp32_bf16_state": (torch.float32, {"state_dtype": torch.bfloat16}),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", [c.id for c in cases("mixed_checkpoint")])
def test_checkpoint_round_trip_continues_identically(name: str, mode: str) -> None:
    cls, kw = OPTIMIZERS[name]
    dtype, mkw = MODES[mode]
    params = _params(dtype)
    opt = cls(params, **kw, **mkw)
    for step in range(2):
        _step(opt, params, _grads(params, step), dtype)
    saved = copy.deepcopy(opt.state_dict())
    snapshot = clone_params(params)
    for step in range(2, 4):
        _step(opt, params, _grads(params, step), dtype)

    params2 = snapshot
    opt2 = cls(params2, **kw, **mkw)
    opt2.load_state_dict(saved)
    for i, q in enumerate(params2):
        for k, v in opt2.state.get(q, {}).items():
            assert v.dtype == saved["state"][i][k].dtype, k
    for step in range(2, 4):
        _step(opt2, params2, _grads(params2, step), dtype)
    for i, (p, q) in enumerate(zip(params, params2)):
        assert torch.equal(p.detach(), q.detach()), f"param[{i}]"
        for k, v in opt.state.get(p, {}).items():
            assert torch.equal(v, opt2.state[q][k]), f"state[{i}][{k}]"


def test_checkpoints_move_between_torch_and_master_weights() -> None:
    params = _params(torch.bfloat16)
    ours = fusedopt.AdamW(params, lr=1e-2, master_weights=True)
    for step in range(2):
        _step(ours, params, _grads(params, step), torch.bfloat16)
    # fusedopt -> torch.optim: torch takes the moments (cast to bf16) and ignores the master.
    tparams = clone_params(params)
    theirs = torch.optim.AdamW(tparams, lr=1e-2)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))
    for p, q in zip(params, tparams):
        if p.grad is not None:
            assert theirs.state[q]["exp_avg"].dtype == torch.bfloat16
            assert torch.equal(theirs.state[q]["exp_avg"], ours.state[p]["exp_avg"].bfloat16())
    for step in range(2, 12):
        _step(theirs, tparams, _grads(tparams, step), torch.bfloat16)
    # torch.optim -> fusedopt with master weights: fp32 moments; torch kept our master_param
    # without updating it (10 steps stale): the param wins (Note [stale master weights]).
    back = clone_params(tparams)
    mine = fusedopt.AdamW(back, lr=1e-2, master_weights=True)
    mine.load_state_dict(copy.deepcopy(theirs.state_dict()))
    stale_far = False
    for p, q in zip(back, tparams):
        if q.grad is not None:
            st = mine.state[p]
            assert st["exp_avg"].dtype == torch.float32
            assert torch.equal(st["exp_avg"], theirs.state[q]["exp_avg"].float())
            stale_far |= bool(((st["master_param"] - p.detach().float()).abs() > 0.03).any())
    assert stale_far  # else this test could not tell a stale master from a synced one
    before = [p.detach().float() for p in back]
    _step(mine, back, _grads(back, 12), torch.bfloat16)
    for p, b in zip(back, before):
        if p.grad is not None:
            m = mine.state[p]["master_param"]
            assert torch.equal(m.bfloat16(), p.detach())
            assert ((m - b).abs() <= 0.03).all()  # one Adam step (~lr) from the param


# -- bad input --------------------------------------------------------------------------------


def test_bad_options_raise() -> None:
    p = torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(ValueError, match="exclusive"):
        fusedopt.AdamW([p], master_weights=True, stochastic_rounding=True)
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        fusedopt.AdamW([p], state_dtype=torch.float16)
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        fusedopt.SGD([p], lr=0.1, state_dtype="bfloat16")


def test_stochastic_rounding_of_fp16_params_raises_before_any_change() -> None:
    a = torch.ones(4, dtype=torch.bfloat16, requires_grad=True)
    b = torch.ones(4, dtype=torch.float16, requires_grad=True)
    # Two groups: the bf16 one, planned first, must not get state either.
    opt = fusedopt.AdamW([{"params": [a]}, {"params": [b]}], lr=0.1, stochastic_rounding=True)
    rng = torch.get_rng_state()
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    with pytest.raises(ValueError, match="stochastic_rounding rounds to bfloat16"):
        opt.step()
    assert torch.equal(a, torch.ones_like(a)) and torch.equal(b, torch.ones_like(b))
    assert not any(opt.state[p] for p in (a, b) if p in opt.state)
    assert torch.equal(torch.get_rng_state(), rng)  # no seed was drawn


def test_fp32_and_fp64_params_need_no_master() -> None:
    """master_weights / stochastic_rounding apply to half-precision params; fp32 and fp64
    params of the same optimizer step exactly as without the options."""
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(10, dtype=dtype, requires_grad=True)
        b = a.detach().clone().requires_grad_()
        opt_a = fusedopt.AdamW([a], lr=0.1, master_weights=True)
        opt_b = fusedopt.AdamW([b], lr=0.1)
        a.grad = b.grad = torch.ones_like(a)
        opt_a.step()
        opt_b.step()
        assert torch.equal(a, b) and "master_param" not in opt_a.state[a]


def _adam_args(params, grads, m, v, steps) -> tuple:  # noqa: ANN001
    return (params, grads, m, v, [], steps, torch.tensor(0.1), 0.9, 0.99, 0.0, 1e-8)


@pytest.mark.parametrize(
    "case,match",
    [
        ("master_fp32", "master_params need float16 or bfloat16 params"),
        ("master_dtype", r"master_params\[1\] has dtype BFloat16, expected Float"),
        ("master_count", "expected master_params to have 2 tensors"),
        ("seed_fp16", "needs bfloat16 params"),
        ("seed_dtype", r"sr_seeds\[0\] must be a one-element int64 tensor"),
        ("both", "exclusive"),
        ("seed_shared", r"sr_seeds\[1\] shares its memory with sr_seeds\[0\]"),
        ("state_fp16", "state dtype Half is not supported with param dtype Float"),
        ("state_mixed", r"exp_avg_sqs\[0\] has dtype Float, expected BFloat16"),
    ],
)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_op_rejects_bad_mixed_arguments_before_writing(case: str, match: str, backend) -> None:  # noqa: ANN001
    from fusedopt import _dispatch

    pd = torch.float32 if case in ("master_fp32", "state_fp16", "state_mixed") else torch.bfloat16
    if case == "seed_fp16":
        pd = torch.float16
    params = [torch.randn(5).to(pd), torch.randn(3).to(pd)]
    grads = [torch.ones_like(p) for p in params]
    sd = {"state_fp16": torch.float16, "state_mixed": torch.bfloat16}.get(case, torch.float32)
    m = [torch.zeros(5, dtype=sd), torch.zeros(3, dtype=sd)]
    v = [torch.zeros(5, dtype=torch.float32 if case == "state_mixed" else sd), torch.zeros(3)]
    v[1] = v[1].to(v[0].dtype)
    steps = [torch.tensor(0.0), torch.tensor(0.0)]
    masters = None
    seeds = None
    if case.startswith("master") or case == "both":
        masters = [p.float() for p in params]
        if case == "master_dtype":
            masters[1] = masters[1].bfloat16()
        if case == "master_count":
            masters = masters[:1]
    if case.startswith("seed") or case == "both":
        seeds = [torch.tensor(1), torch.tensor(2)]
        if case == "seed_dtype":
            seeds[0] = torch.tensor(1.0)
        if case == "seed_shared":
            seeds[1] = seeds[0]
    before = [t.clone() for t in params + m + v + steps + (seeds or []) + (masters or [])]
    fn = _dispatch.kernel(backend, "adam_")
    if backend == "reference" and case in ("master_dtype",):
        match = r"master_params\[1\] must be float32"
    if backend == "reference" and case == "state_mixed":
        match = r"exp_avg_sqs\[0\] has dtype torch.float32 but the first state tensor"
    if backend == "reference":
        match = match.replace("Half", "torch.float16").replace("Float", "torch.float32")
    with pytest.raises(RuntimeError, match=match):
        fn(*_adam_args(params, grads, m, v, steps), False, False, True, None, None, masters, seeds)
    after = params + m + v + steps + (seeds or []) + (masters or [])
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize(
    "backend,device", [*KERNELS, pytest.param("reference", "cpu", id="reference")]
)
def test_found_inf_changes_nothing_in_mixed_modes(backend: str, device: str) -> None:
    for mkw in ({"master_weights": True}, {"stochastic_rounding": True}):
        p = torch.randn(100, dtype=torch.bfloat16, device=device, requires_grad=True)
        opt = fusedopt.AdamW([p], lr=0.1, backend=backend, **mkw)
        p.grad = torch.ones_like(p)
        opt.step()
        snap = {k: v.clone() for k, v in opt.state[p].items()}
        pv = p.detach().clone()
        opt.found_inf = torch.tensor(1.0)
        opt.grad_scale = torch.tensor(1.0)
        opt.step()
        assert bool(opt.step_skipped)
        assert torch.equal(p.detach(), pv)
        for k, v in snap.items():
            assert torch.equal(opt.state[p][k], v), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_lamb_phases_equal_one_call(dtype: torch.dtype) -> None:
    """phase 1 (sums of squares) + phase 2 (apply) == phase 0, and phase 1 writes no param."""
    torch.manual_seed(0)
    shapes = [(7, 5), (0,), (40001,), (3,)]
    base = [torch.randn(s).to(dtype) for s in shapes]
    grads = [torch.randn(s).to(dtype) for s in shapes]
    m0 = [(torch.randn(s) * 0.1).to(dtype) for s in shapes]
    v0 = [(torch.rand(s) * 0.01).to(dtype) for s in shapes]
    results = []
    for split in (False, True):
        params = [p.clone() for p in base]
        m = [x.clone() for x in m0]
        v = [x.clone() for x in v0]
        steps = [torch.tensor(2.0) for _ in shapes]
        args = (params, grads, m, v, steps, torch.tensor(0.01), 0.9, 0.99, 0.01, 1e-6, True)
        args = (*args, None, False, None, None, None, None, None)
        if split:
            sq = torch.zeros(len(shapes), 2, dtype=torch.float64)
            torch.ops.fusedopt.lamb_(*args, 1, sq)
            assert all(torch.equal(a, b) for a, b in zip(params, base))
            assert all(s.item() == 3.0 for s in steps)
            assert sq[0, 0].item() == pytest.approx(base[0].double().square().sum().item())
            torch.ops.fusedopt.lamb_(*args, 2, sq)
            assert all(s.item() == 3.0 for s in steps)
        else:
            torch.ops.fusedopt.lamb_(*args)
        results.append(params + m + v)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dampening", [0.0, 0.5])
def test_sgd_first_step_skipped_by_found_inf_leaves_no_momentum(dampening: float) -> None:
    """Note [skipped first SGD step]: GradScaler skipping the step that creates the momentum
    buffers leaves them uncreated (zeros, still fresh), so the next step is torch's first step:
    buffer = grad. (torch's fused SGD leaves empty_like memory there.)"""
    kw = {"lr": 0.1, "momentum": 0.9, "dampening": dampening}
    p = torch.randn(1000, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    ours = fusedopt.SGD([p], **kw)
    ref = torch.optim.SGD([q], **kw, foreach=False)
    g = torch.randn(1000)
    p.grad = torch.full_like(p, float("inf"))
    ours.found_inf, ours.grad_scale = torch.tensor(1.0), torch.tensor(1.0)
    ours.step()
    assert bool(ours.step_skipped) and torch.equal(p, q)
    del ours.found_inf, ours.grad_scale
    for _ in range(3):
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        torch.testing.assert_close(p, q, rtol=1.3e-6, atol=1e-6)
        torch.testing.assert_close(
            ours.state[p]["momentum_buffer"],
            ref.state[q]["momentum_buffer"],
            rtol=1.3e-6,
            atol=1e-6,
        )
