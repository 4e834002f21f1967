"""Lion, LAMB and Sophia: every backend against the fp64 reference, element by element.

The matrix (optimizer config x backend x dtype) runs each optimizer for STEPS steps on a param
list with odd sizes, a 0-d tensor, a transposed and a sliced (non-dense) param whose grads have
other strides, a frozen param and an empty tensor last. After every step the fused optimizer's
params and state are compared with an fp64 run of the reference backend, then both are re-synced
to the reference values rounded to the dtype, so that each step is checked on its own.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import fusedopt
from fusedopt import reference
from fusedopt._ext import _C
from helpers import flagged_fractions
from optim_info import BACKENDS, INFO, cases

HAS_CPU = fusedopt.backends()["cpu"].available
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="compiled CPU kernels unavailable")
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float64, id="fp64"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]
STEPS = 7

# name -> (class, state keys but the step), from tests/optim_info.py
OPTIMIZERS = {
    n: (INFO[n].cls, tuple(k for k in INFO[n].state_keys if k != "step"))
    for n in ("lion", "lamb", "sophia")
}
# (optimizer, constructor kwargs, step kwargs): the registry's "fp64ref" configs
CONFIGS = [
    pytest.param(c.values[0].name, c.values[2].kwargs, c.values[2].step, id=c.id)
    for c in cases("fp64ref")
]


# -- tolerances --------------------------------------------------------------------------------
# Note: one table, one reason per entry. `ref` is the fp64 reference result, `err` our distance
# from it; an element passes when err <= bound(ref).
#
#   fp64        1e-14 + 1e-12*|ref|   the same formulas in fp64; only FMA contraction, operation
#                                     order and LAMB's norm summation order differ: a few ulp.
#   fp32, bf16, fp16
#               2*r + eps*|ref| + s   r = |ref rounded to the dtype - ref|, the error of the best
#                                     value the dtype can hold: we may be off by twice that, plus
#                                     one ulp (eps*|ref|) for an fp32 result that lands on the
#                                     other side of a rounding boundary, plus the subnormal
#                                     spacing s for results near 0;
#               + 4*eps32*(|x| + |ref - x| + max|ref - x|)   with x the value before the step:
#                                     fp32 opmath rounds the terms of each update (e.g. beta1*m
#                                     and (1-beta1)*g), which is all that is left where they
#                                     cancel and the result is far below them; max|ref - x|, the
#                                     tensor's largest step, bounds the terms of intermediates
#                                     that cancel (LAMB's u, Sophia's m).
#               For fp32 that is about 6 ulp of the larger of the value before, the result and
#               the change, and no absolute tolerance: with an absolute 1e-5, an update of
#               lr = 1e-3 is only 100 times the tolerance, and an lr 1% too large slipped
#               through all but a few elements (test_checker_catches_a_1pct_lr_error).
# Lion/Sophia take sign(c): where c is within rounding of 0 the two precisions may step in
# opposite directions. Such elements (|c| <= 8*eps(opmath)*(|beta1*m| + |(1-beta1)*g|)) may miss
# the bound, at most SIGN_FLIP_FRACTION of them per step; every other element must meet it.
SIGN_FLIP_FRACTION = 1e-3


def bound(ref: Tensor, before: Tensor, dtype: torch.dtype) -> Tensor:
    if dtype == torch.float64:
        return 1e-14 + 1e-12 * ref.abs()
    fi = torch.finfo(dtype)
    rounding = (ref.to(dtype).double() - ref).abs()
    change = (ref - before).abs()
    tol = 2 * rounding + fi.eps * ref.abs() + fi.tiny * fi.eps
    eps32 = torch.finfo(torch.float32).eps
    # An intermediate the step is computed from may itself cancel (LAMB's u = m/denom + wd*p,
    # Sophia's m): its rounding is relative to its terms, bounded by the tensor's largest step.
    largest = change.max() if change.numel() else 0.0
    return tol + 4 * eps32 * (before.abs() + change + largest)


def check_close(
    what: str,
    actual: Tensor,
    ref: Tensor,
    tol: Tensor,
    ambiguous: Tensor | None = None,
) -> int:
    """Asserts the bound element by element; returns how many ambiguous elements missed it."""
    a = actual.detach().double()
    bad = ~((a - ref).abs() <= tol)  # NaN counts as bad
    if ambiguous is not None:
        flips = bad & ambiguous
        bad = bad & ~ambiguous
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements out of tolerance; first at flat "
            f"index {i}: got {a.flatten()[i].item()!r}, reference {ref.flatten()[i].item()!r}, "
            f"bound {tol.flatten()[i].item()!r}"
        )
    return 0 if ambiguous is None else int(flips.sum())


# -- the param list ----------------------------------------------------------------------------
FROZEN = 8  # index of the param that never gets a grad


def make_params(dtype: torch.dtype, gen: torch.Generator) -> list[Tensor]:
    def rnd(*shape: int) -> Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    params = [
        rnd(1),
        rnd(15),
        rnd(17),  # around the SIMD widths
        rnd(1000),
        rnd(40007),  # more than one parallel block (kGrainSize), not a multiple of anything
        rnd(),  # 0-d
        rnd(17, 33).t(),  # transposed: dense, but its contiguous grads have other strides
        rnd(12, 10)[:, 2:7],  # sliced: not dense, staged by the CPU kernels
        rnd(5),  # frozen
        rnd(0),  # empty, last
    ]
    return [p.requires_grad_() for p in params]


def set_grads(fused: list[Tensor], ref: list[Tensor], gen: torch.Generator) -> None:
    for i, (p, q) in enumerate(zip(fused, ref)):
        if i == FROZEN:
            continue
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)  # contiguous
        p.grad = g
        q.grad = g.double()


def sign_ambiguous(name: str, kwargs: dict[str, Any], ref_opt, q: Tensor, dtype) -> Tensor | None:
    """Elements whose update direction sign(.) is within rounding of 0 (Lion's c, Sophia's m)."""
    if name not in ("lion", "sophia") or q.grad is None:
        return None
    beta1 = kwargs.get("betas", (0.9, 0.99) if name == "lion" else (0.965, 0.99))[0]
    g = -q.grad if kwargs.get("maximize", False) else q.grad
    state = ref_opt.state.get(q, {})
    m = state["exp_avg"] if "exp_avg" in state else torch.zeros_like(q)
    c = beta1 * m + (1 - beta1) * g
    scale = (beta1 * m).abs() + ((1 - beta1) * g).abs()
    eps = torch.finfo(reference.opmath_dtype(dtype)).eps
    return c.abs() <= 8 * eps * scale


def resync(fused_opt, ref_opt, fused: list[Tensor], ref: list[Tensor], keys) -> None:
    """Both optimizers continue from the reference values rounded to the dtype."""
    with torch.no_grad():
        for p, q in zip(fused, ref):
            v = q.to(p.dtype)
            p.copy_(v)
            q.copy_(v.double())
            if q not in ref_opt.state:
                continue
            for k in keys:
                fs, rs = fused_opt.state[p][k], ref_opt.state[q][k]
                v = rs.to(fs.dtype)
                fs.copy_(v)
                rs.copy_(v.double())


def run_matrix(name, kwargs, step_kwargs, backend, dtype, steps=STEPS, fused_kwargs=None) -> None:
    """``fused_kwargs``: the fused optimizer's kwargs, if not ``kwargs`` (a wrong one)."""
    cls = INFO[name].cls  # any registry entry in the "fp64ref" matrix
    keys = tuple(k for k in INFO[name].state_keys if k != "step")
    gen = torch.Generator().manual_seed(1234)
    fused = make_params(dtype, gen)
    ref = [p.detach().double().clone().requires_grad_() for p in fused]
    fused_opt = cls(fused, backend=backend, **(kwargs if fused_kwargs is None else fused_kwargs))
    ref_opt = cls(ref, backend="reference", **kwargs)
    frozen = fused[FROZEN].detach().clone()
    compared = sum(p.numel() for i, p in enumerate(fused) if i != FROZEN)
    for t in range(steps):
        set_grads(fused, ref, gen)
        hessian = "update_hessian" in INFO[name].supports
        if hessian and t % 2 == 1:  # Sophia's step 0 runs with h = 0: the sign(m) regime
            pairs = [(p, q) for p, q in zip(fused, ref) if q in ref_opt.state]
            before_h = [ref_opt.state[q]["hessian"].clone() for _, q in pairs]
            fused_opt.update_hessian()
            ref_opt.update_hessian()
            for (p, q), x in zip(pairs, before_h):
                h = ref_opt.state[q]["hessian"]
                what = f"step {t + 1}: update_hessian of {tuple(p.shape)}"
                check_close(what, fused_opt.state[p]["hessian"], h, bound(h, x, dtype))
            resync(fused_opt, ref_opt, fused, ref, keys)  # the step reads h as stored
        ambiguous = [sign_ambiguous(name, kwargs, ref_opt, q, dtype) for q in ref]
        before = {  # by id: the reference's params and state tensors before this step
            id(x): x.detach().clone() for q in ref for x in [q, *ref_opt.state.get(q, {}).values()]
        }
        fused_opt.step(**step_kwargs)
        ref_opt.step(**step_kwargs)
        flips = 0
        for i, (p, q) in enumerate(zip(fused, ref)):
            where = f"step {t + 1}, param {i} {tuple(p.shape)}"
            if i == FROZEN:
                assert torch.equal(p, frozen) and p not in fused_opt.state, where
                continue
            tol = bound(q, before[id(q)], dtype)
            flips += check_close(f"{where}: param", p, q, tol, ambiguous[i])
            for k in keys:
                r = ref_opt.state[q][k]
                x = before.get(id(r), torch.zeros_like(r))  # created by this step
                check_close(f"{where}: {k}", fused_opt.state[p][k], r, bound(r, x, dtype))
            assert fused_opt.state[p]["step"].item() == t + 1, where
        assert flips <= SIGN_FLIP_FRACTION * compared, f"step {t + 1}: {flips} sign flips"
        resync(fused_opt, ref_opt, fused, ref, keys)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs,step_kwargs", CONFIGS)
def test_matches_fp64_reference(name, kwargs, step_kwargs, backend, dtype):
    run_matrix(name, kwargs, step_kwargs, backend, dtype)


BIG = 4  # make_params' 40007-element param


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_checker_catches_a_1pct_lr_error(name, backend, monkeypatch):
    """A test that cannot fail is worse than none: in fp32 at lr 1e-3, an lr 1% too large must
    be flagged by most elements of the big param at every step, not by a lucky few (an absolute
    tolerance of 1e-5 flagged 62 of its 40,007 elements for Lion and Sophia). Lion steps every
    element by lr: all but the largest |p| are flagged; LAMB's steps vary with |u| and Sophia's,
    once it has a Hessian estimate, with |m|/h: the smallest ones (~15%) stay within rounding."""
    kwargs = {"lr": 1e-3, "weight_decay": 0.1}
    fractions = flagged_fractions(
        monkeypatch,
        sys.modules[__name__],
        "check_close",
        r"(\d+) of (\d+) elements out of tolerance",
        lambda: run_matrix(
            name, kwargs, {}, backend, torch.float32, steps=3, fused_kwargs=dict(kwargs, lr=1.01e-3)
        ),
    )
    for t in range(1, 4):
        what = f"step {t}, param {BIG} (40007,): param"
        assert fractions.get(what, 0.0) >= (0.9 if name == "lion" else 0.75), (
            what,
            fractions.get(what),
        )


ISAS = ("default", "avx2", "avx512")


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_simd_level(name, isa, dtype):
    if ISAS.index(isa) > ISAS.index(_C.cpu_capability_detected()):
        pytest.skip(f"this CPU lacks {isa}")
    kwargs = {"lr": 1e-3, "weight_decay": 0.1}
    if name == "lamb":
        kwargs["trust_clip"] = 0.5
    saved = _C.cpu_capability()
    _C.set_cpu_capability(isa)
    try:
        run_matrix(name, kwargs, {}, "cpu", dtype, steps=3)
    finally:
        _C.set_cpu_capability(saved)


# -- the reference against the issue's definitions ---------------------------------------------
def spec_step(name, kw, lrs, params, grads, state, t, bs, hessian_grads):
    """The updates exactly as issue 3 writes them, vectorised, in fp64 (no op-order mimicry)."""
    wd = kw["weight_decay"]
    b1, b2 = kw["betas"]
    if name == "lion":
        for lr, p, g, s in zip(lrs, params, grads, state):
            c = b1 * s["m"] + (1 - b1) * g
            p.mul_(1 - lr * wd).sub_(lr * torch.sign(c))
            s["m"] = b2 * s["m"] + (1 - b2) * g
    elif name == "lamb":
        # Over both groups. The shared clipping (Note [clipping inside the step]) computes the
        # factor min(1, max_grad_norm / (norm + 1e-6)) in fp32, as torch's clip_grad_norm_ does
        # in the grads' dtype: so does this definition, or fp64 agreement would end at 1e-8.
        norm = torch.cat([g.flatten() for g in grads]).norm().float()
        clip = torch.clamp(kw["max_grad_norm"] / (norm + 1e-6), max=1.0).item()
        for lr, p, g, s in zip(lrs, params, grads, state):
            g = g * clip
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            u = (s["m"] / (1 - b1**t)) / ((s["v"] / (1 - b2**t)).sqrt() + kw["eps"]) + wd * p
            pn, un = p.norm().item(), u.norm().item()
            r = pn / un if pn > 0 and un > 0 else 1.0
            p.sub_(lr * min(r, kw["trust_clip"]) * u)
    else:
        if hessian_grads is not None:
            for s, hg in zip(state, hessian_grads):
                s["h"] = b2 * s["h"] + (1 - b2) * hg * hg
        for lr, p, g, s in zip(lrs, params, grads, state):
            s["m"] = b1 * s["m"] + (1 - b1) * g
            p.mul_(1 - lr * wd)
            ratio = (s["m"].abs() / (kw["rho"] * bs * s["h"] + 1e-15)).clamp(max=1)
            p.sub_(lr * torch.sign(s["m"]) * ratio)


SPEC_KWARGS = {
    "lion": {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 0.3},
    "lamb": {
        "lr": 1e-2,
        "betas": (0.9, 0.999),
        "eps": 1e-6,
        "weight_decay": 0.05,
        "max_grad_norm": 2.0,
        "trust_clip": 0.8,
    },
    "sophia": {"lr": 1e-2, "betas": (0.965, 0.99), "rho": 0.04, "weight_decay": 0.2},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_matches_issue_definition(name, backend):
    kw = SPEC_KWARGS[name]
    gen = torch.Generator().manual_seed(7)
    shapes = [(31,), (4, 9), (2,)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    ours = [p.clone().requires_grad_() for p in params]
    # Two groups: LAMB's global grad norm must span both.
    groups = [{"params": ours[:2]}, {"params": ours[2:], "lr": kw["lr"] / 2}]
    opt = OPTIMIZERS[name][0](groups, backend=backend, **kw)
    state = [{"m": torch.zeros_like(p), "v": torch.zeros_like(p), "h": 0 * p} for p in params]
    bs = 64.0
    lrs = [kw["lr"], kw["lr"], kw["lr"] / 2]
    for t in range(1, 5):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        hgrads = None
        if name == "sophia" and t % 2 == 0:
            hgrads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
            for p, hg in zip(ours, hgrads):
                p.grad = hg.clone()
            opt.update_hessian()
        for p, g in zip(ours, grads):
            p.grad = g.clone()
        if name == "sophia":
            opt.step(bs=bs)
        else:
            opt.step()
        spec_step(name, kw, lrs, params, grads, state, t, bs, hgrads)
        for p, q in zip(ours, params):
            torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-14)


# -- LAMB's norms and trust ratio --------------------------------------------------------------
def lamb_op(backend: str):
    return fusedopt._dispatch.kernel(backend, "lamb_")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lamb_tensor_norms(backend, dtype):
    """The per-tensor norms the kernel reduces equal torch.linalg.vector_norm in fp64."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(40007,), (17,), (1,), (), (0,), (33, 65)]

    def rnd(s):
        return torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)

    params, grads = [rnd(s) for s in shapes], [rnd(s) for s in shapes]
    m, v = [0.1 * rnd(s) for s in shapes], [0.01 * rnd(s).abs() for s in shapes]
    inputs = [[t.double() for t in lst] for lst in (params, grads, m, v)]  # copies (fp64: views)
    inputs = [[t.clone() for t in lst] for lst in inputs]
    steps = [torch.tensor(4.0) for _ in shapes]
    norms = torch.full((len(shapes), 2), -1.0, dtype=torch.float64)
    beta1, beta2, wd, eps = 0.9, 0.999, 0.01, 1e-6
    lamb_op(backend)(
        params,
        grads,
        m,
        v,
        steps,
        torch.tensor(1e-2),
        beta1,
        beta2,
        wd,
        eps,
        True,
        None,
        False,
        norms,
    )
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    for i, (p0, g0, m0, v0) in enumerate(zip(*inputs)):
        m1, v1 = beta1 * m0 + (1 - beta1) * g0, beta2 * v0 + (1 - beta2) * g0 * g0
        u = (m1 / (1 - beta1**5)) / ((v1 / (1 - beta2**5)).sqrt() + eps) + wd * p0
        want = torch.stack([torch.linalg.vector_norm(p0), torch.linalg.vector_norm(u)])
        torch.testing.assert_close(norms[i], want, rtol=rtol, atol=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lamb_zero_norms(backend):
    """r = 1 when ||p|| = 0 (the step is lr*u) or ||u|| = 0 (nothing moves)."""
    lr, eps = 0.1, 1e-6
    zero_p = torch.zeros(20)  # ||p|| = 0, grads non-zero
    zero_u = torch.randn(20)  # grads and moments 0 and weight_decay 0: u = 0
    g = torch.randn(20)
    params = [zero_p, zero_u]
    m = [torch.zeros(20), torch.zeros(20)]
    v = [torch.zeros(20), torch.zeros(20)]
    steps = [torch.tensor(0.0), torch.tensor(0.0)]
    expect_u = g / (g.abs() + eps)  # step 1: m/(1-b1) = g, sqrt(v/(1-b2)) = |g|
    norms = torch.zeros(2, 2, dtype=torch.float64)
    zero_u_before = zero_u.clone()
    lamb_op(backend)(
        params,
        [g, torch.zeros(20)],
        m,
        v,
        steps,
        torch.tensor(lr),
        0.9,
        0.999,
        0.0,
        eps,
        True,
        0.5,
        False,
        norms,
    )
    # trust_clip=0.5 clamps r = 1 too: the ratio is clamped wherever it came from
    torch.testing.assert_close(zero_p, -lr * 0.5 * expect_u, rtol=1e-5, atol=1e-7)
    assert torch.equal(zero_u, zero_u_before)
    assert norms[0, 0] == 0 and norms[1, 1] == 0


@needs_cpu
def test_lamb_same_bits_on_any_thread_count():
    """Note [fixed-order reductions]: the norms, and so the params, don't depend on threads."""
    results = []
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            gen = torch.Generator().manual_seed(5)
            lists = [
                [torch.randn(n, generator=gen) for n in (100_000, 70_001, 3)] for _ in range(3)
            ]
            lists[2] = [x.abs() for x in lists[2]]
            norms = torch.zeros(3, 2, dtype=torch.float64)
            steps = [torch.tensor(1.0) for _ in range(3)]
            lamb_op("cpu")(
                lists[0],
                lists[1],
                [x.clone() for x in lists[1]],
                lists[2],
                steps,
                torch.tensor(1e-2),
                0.9,
                0.999,
                0.01,
                1e-6,
                True,
                None,
                False,
                norms,
            )
            results.append((lists[0], norms))
    finally:
        torch.set_num_threads(saved)
    (p1, n1), (p2, n2) = results
    assert torch.equal(n1, n2) and all(torch.equal(a, b) for a, b in zip(p1, p2))


# -- training ----------------------------------------------------------------------------------
def synthetic_task() -> tuple[Tensor, Tensor]:
    """4 classes of 512 points labelled by a random teacher network."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=gen)
    w1, w2 = torch.randn(8, 16, generator=gen), torch.randn(16, 4, generator=gen)
    return x, (torch.tanh(x @ w1) @ w2).argmax(1)


CONVERGENCE = {
    "lion": {"lr": 1e-2, "weight_decay": 0.01},
    "lamb": {"lr": 2e-2},
    "sophia": {"lr": 1e-2, "rho": 0.05, "weight_decay": 0.01},
}
CONVERGENCE_STEPS = 150
CONVERGENCE_LOSS = 0.1  # from ln(4) = 1.39; every optimizer here ends near 0.02


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_convergence(name, backend):
    x, y = synthetic_task()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    opt = OPTIMIZERS[name][0](net.parameters(), backend=backend, **CONVERGENCE[name])
    for it in range(CONVERGENCE_STEPS):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        if name != "sophia":
            opt.step()
            continue
        opt.step(bs=len(y))
        if it % 10 == 9:  # the Gauss-Newton-Bartlett estimate, as in Sophia's docstring
            opt.zero_grad()
            logits = net(x)
            y_hat = torch.distributions.Categorical(logits=logits).sample()
            F.cross_entropy(logits, y_hat).backward()
            opt.update_hessian()
    loss = F.cross_entropy(net(x), y).item()
    assert loss < CONVERGENCE_LOSS, f"{name} on {backend}: loss {loss} after {it + 1} steps"


# -- checkpoints, errors, AMP ------------------------------------------------------------------
def small_setup(name: str, backend: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in [(40,), (3, 7), ()]]
    kwargs = {"lr": 1e-2, "weight_decay": 0.1}
    return params, OPTIMIZERS[name][0](params, backend=backend, **kwargs), gen


def run_steps(name, opt, params, gen, n):
    for t in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        if name == "sophia" and t % 2 == 0:
            opt.update_hessian()
        opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip(name, backend):
    params, opt, _ = small_setup(name, backend)
    run_steps(name, opt, params, torch.Generator().manual_seed(1), 3)
    saved = copy.deepcopy(opt.state_dict())
    assert set(saved["state"][0]) == {"step", *OPTIMIZERS[name][1]}
    assert saved["state"][0]["step"].dtype == torch.float32 and saved["state"][0]["step"].ndim == 0
    clones = [p.detach().clone().requires_grad_() for p in params]
    fresh = OPTIMIZERS[name][0](clones, backend=backend, lr=0.5)
    fresh.load_state_dict(saved)
    run_steps(name, opt, params, torch.Generator().manual_seed(2), 3)
    run_steps(name, fresh, clones, torch.Generator().manual_seed(2), 3)
    for p, q in zip(params, clones):
        assert torch.equal(p, q)
        for k, v in opt.state[p].items():
            assert torch.equal(v, fresh.state[q][k]), k


def test_foreign_checkpoints_load():
    """lion-pytorch keeps no 'step'; timm's Lamb keeps trust_clip as a bool (True: clamp to 1)."""
    params, opt, gen = small_setup("lion", "reference")
    run_steps("lion", opt, params, gen, 1)
    sd = opt.state_dict()
    for s in sd["state"].values():
        del s["step"]
    opt.load_state_dict(sd)
    run_steps("lion", opt, params, gen, 1)
    assert opt.state[params[0]]["step"].item() == 1
    lamb = fusedopt.LAMB([torch.zeros(2, requires_grad=True)])
    sd = lamb.state_dict()
    sd["param_groups"][0]["trust_clip"] = True
    lamb.load_state_dict(sd)
    assert lamb.param_groups[0]["trust_clip"] == 1.0


def test_sophia_bad_batch_size_raises():
    opt = fusedopt.Sophia([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match="Invalid bs"):
        opt.step(bs=0)


def snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"])


def assert_unchanged(opt, params, snap):
    before_params, before_state = snap
    assert all(torch.equal(p, q) for p, q in zip(params, before_params))
    after = opt.state_dict()["state"]
    assert after.keys() == before_state.keys()
    for i, s in before_state.items():
        for k, v in s.items():
            assert torch.equal(after[i][k], v), (i, k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_failed_step_changes_nothing(name, backend):
    params, opt, gen = small_setup(name, backend)
    run_steps(name, opt, params, gen, 2)
    # A state tensor of the wrong shape, put in by hand for the last param.
    opt.state[params[1]]["exp_avg"] = torch.zeros(5)
    opt.invalidate_plans()
    snap = snapshot(opt, params)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    with pytest.raises(RuntimeError, match="shape"):
        opt.step()
    assert_unchanged(opt, params, snap)


OP_LISTS = {"lion_": 3, "lamb_": 4, "sophia_": 4}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OP_LISTS))
def test_op_validates_before_writing(op, backend):
    """The kernels themselves check every list before the first write (and step increment)."""
    lists = [[torch.ones(4), torch.ones(3)] for _ in range(OP_LISTS[op])]
    lists[2][1] = torch.ones(2)  # last param's exp_avg: wrong shape
    steps = [torch.tensor(1.0), torch.tensor(1.0)]
    before = copy.deepcopy((lists, steps))
    tail = {
        "lion_": (0.9, 0.99, 0.1, False),
        "lamb_": (0.9, 0.999, 0.01, 1e-6, True, None, False),
        "sophia_": (0.965, 0.04, 5120.0, 0.1, False),
    }[op]
    with pytest.raises(RuntimeError, match="shape"):
        fusedopt._dispatch.kernel(backend, op)(*lists, steps, torch.tensor(1e-3), *tail)
    assert all(torch.equal(a, b) for la, lb in zip(lists, before[0]) for a, b in zip(la, lb))
    assert all(torch.equal(a, b) for a, b in zip(steps, before[1]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_found_inf_and_grad_scale(name, backend):
    """As torch.amp.GradScaler drives a fused optimizer: found_inf skips everything, grads are
    divided by grad_scale."""
    params, opt, gen = small_setup(name, backend)
    run_steps(name, opt, params, gen, 2)
    snap = snapshot(opt, params)
    for p in params:
        p.grad = torch.full(p.shape, float("inf"))
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(1.0)
    opt.step()
    assert_unchanged(opt, params, snap)
    assert bool(opt.step_skipped)

    twin_params, twin, _ = small_setup(name, backend)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    with torch.no_grad():
        for p, q in zip(twin_params, params):
            p.copy_(q)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    for p, q, g in zip(params, twin_params, grads):
        p.grad, q.grad = g * 1024.0, g.clone()
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    twin.step()
    for p, q in zip(params, twin_params):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# -- the custom ops ----------------------------------------------------------------------------
def opcheck_args(op: str) -> tuple[tuple, dict]:
    gen = torch.Generator().manual_seed(0)

    def lst(positive=False):
        out = [torch.randn(s, generator=gen) for s in [(3,), (2, 5), ()]]
        return [x.abs() for x in out] if positive else out

    steps = [torch.zeros(()) for _ in range(3)]
    lr = torch.tensor(1e-3, dtype=torch.float64)
    if op == "lion_":
        return (lst(), lst(), lst(), steps, lr, 0.9, 0.99, 0.1, False), {}
    if op == "lamb_":
        args = (lst(), lst(), lst(), lst(True), steps, lr, 0.9, 0.999, 0.01, 1e-6, True, 0.5, True)
        return args, {"tensor_norms": torch.zeros(3, 2, dtype=torch.float64)}
    if op == "sophia_":
        return (lst(), lst(), lst(), lst(True), steps, lr, 0.965, 0.04, 100.0, 0.1, True), {}
    return (lst(True), lst(), 0.99), {"grad_scale": torch.tensor(2.0)}


@needs_cpu
@pytest.mark.parametrize("op", ["lion_", "lamb_", "sophia_", "sophia_update_hessian_"])
def test_opcheck(op):
    args, kwargs = opcheck_args(op)
    torch.library.opcheck(getattr(torch.ops.fusedopt, op).default, args, kwargs)


def test_exported():
    assert {"Lion", "LAMB", "Sophia"} <= set(fusedopt.__all__)
    for op in ("lion_", "lamb_", "sophia_", "sophia_update_hessian_"):
        assert callable(getattr(reference, op))
    assert math.isclose(fusedopt.Sophia([torch.zeros(1, requires_grad=True)]).defaults["rho"], 0.04)
