"""What training loops wrap around the step: AMP grad scaling, clipping, schedules, no syncs."""

from __future__ import annotations

import math

import pytest
import torch

import fusedopt
from fusedopt.schedules import WarmupCosine, warmup_cosine
from helpers import clone_params, fresh_grads, make_params, set_grads
from optim_info import BACKENDS, matrix

OPTS = matrix("training", "cls", "torch_cls", "kwargs")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))


def _data(n=8):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(32, 16, generator=g), torch.randint(0, 4, (32,), generator=g))
        for _ in range(n)
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ours,theirs,kwargs", OPTS)
def test_gradscaler_autocast_training_matches_torch(ours, theirs, kwargs, backend):
    """GradScaler + autocast: our in-kernel unscaling equals torch's unscale-then-step."""
    m1, m2 = _model(), _model()
    o1 = ours(m1.parameters(), backend=backend, **kwargs)
    o2 = theirs(m2.parameters(), foreach=False, **kwargs)
    s1 = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    s2 = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for x, y in _data():
        for m, o, s in ((m1, o1, s1), (m2, o2, s2)):
            o.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(m(x), y)
            s.scale(loss).backward()
            s.step(o)
            s.update()
        for a, b in zip(m1.parameters(), m2.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not o1.step_skipped


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ours,theirs,kwargs", OPTS)
def test_inf_grad_step_changes_nothing(ours, theirs, kwargs, backend):
    m = _model()
    opt = ours(m.parameters(), backend=backend, **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x, y = _data(1)[0]
    for step in range(3):
        opt.zero_grad()
        scaler.scale(torch.nn.functional.cross_entropy(m(x), y)).backward()
        if step == 2:
            next(m.parameters()).grad[0, 0] = float("inf")
            params = [p.detach().clone() for p in m.parameters()]
            state = {k: {n: v.clone() for n, v in s.items()} for k, s in opt.state.items()}
        scaler.step(opt)
        scaler.update()
    assert bool(opt.step_skipped)
    for p, q in zip(m.parameters(), params):
        assert torch.equal(p, q)
    for p, s in opt.state.items():
        for name, v in s.items():
            assert torch.equal(v, state[p][name]), name  # 'step' included


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # clipping active / inactive
@pytest.mark.parametrize("ours,theirs,kwargs", OPTS)
def test_max_grad_norm_equals_clip_then_step(ours, theirs, kwargs, max_norm, backend):
    params = make_params(torch.float32)
    a, b = clone_params(params), clone_params(params)
    o1 = ours(a, backend=backend, max_grad_norm=max_norm, **kwargs)
    o2 = theirs(b, foreach=False, **kwargs)
    for _ in range(4):
        g = fresh_grads(params)
        saved = [None if x is None else x.clone() for x in g]
        set_grads(a, g)
        set_grads(b, [None if x is None else x.clone() for x in g])
        o1.step()
        norm = torch.nn.utils.clip_grad_norm_([p for p in b if p.grad is not None], max_norm)
        o2.step()
        torch.testing.assert_close(o1.last_grad_norm, norm, rtol=1e-6, atol=0)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1.3e-6, atol=1e-5)
        for x, s in zip(a, saved):  # the in-step clipping does not rewrite the grads
            assert (x.grad is None and s is None) or torch.equal(x.grad, s)


def test_max_grad_norm_with_gradscaler_unscales_first():
    m1, m2 = _model(), _model()
    o1 = fusedopt.AdamW(m1.parameters(), lr=1e-2, max_grad_norm=0.1)
    o2 = torch.optim.AdamW(m2.parameters(), lr=1e-2, foreach=False)
    s1, s2 = torch.amp.GradScaler("cpu"), torch.amp.GradScaler("cpu")
    for x, y in _data(4):
        for m, o, s, clip in ((m1, o1, s1, False), (m2, o2, s2, True)):
            o.zero_grad()
            s.scale(torch.nn.functional.cross_entropy(m(x), y)).backward()
            if clip:
                s.unscale_(o)
                torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)
            s.step(o)
            s.update()
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("max_norm", [0.3, 100.0])
def test_clip_grad_norm_matches_torch(dtype, max_norm):
    params = make_params(dtype)
    a, b = clone_params(params), clone_params(params)
    g = fresh_grads(params)
    set_grads(a, [None if x is None else x.clone() for x in g])
    set_grads(b, [None if x is None else x.clone() for x in g])
    n1 = fusedopt.clip_grad_norm_(a, max_norm)
    n2 = torch.nn.utils.clip_grad_norm_(b, max_norm)
    assert n1.dtype == n2.dtype
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-6, "atol": 1e-7}
    torch.testing.assert_close(n1, n2, **tol)
    for x, y in zip(a, b):
        if x.grad is not None:
            torch.testing.assert_close(x.grad, y.grad, **tol)


def test_clip_grad_norm_nonfinite_like_torch():
    p = torch.randn(5, requires_grad=True)
    p.grad = torch.tensor([1.0, float("inf"), 2.0, 3.0, 4.0])
    with pytest.raises(RuntimeError, match="is non-finite, so it cannot be clipped"):
        fusedopt.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    q = p.detach().clone().requires_grad_()
    q.grad = p.grad.clone()
    n1 = fusedopt.clip_grad_norm_([p], 1.0)
    n2 = torch.nn.utils.clip_grad_norm_([q], 1.0)
    assert torch.equal(n1, n2) and torch.equal(p.grad.isnan(), q.grad.isnan())


def test_invalid_max_grad_norm():
    with pytest.raises(ValueError, match="Invalid max_grad_norm value: -1.0"):
        fusedopt.AdamW([torch.randn(2, requires_grad=True)], max_grad_norm=-1.0)


def test_warmup_cosine_formula_fp64():
    base, W, T, lo = 3e-4, 10, 100, 1e-5
    assert warmup_cosine(0, base, W, T, lo) == 0.0
    assert warmup_cosine(5, base, W, T, lo) == pytest.approx(base / 2, rel=1e-15)
    assert warmup_cosine(W, base, W, T, lo) == pytest.approx(base, rel=1e-15)
    assert warmup_cosine(T, base, W, T, lo) == lo
    assert warmup_cosine(T + 5, base, W, T, lo) == lo
    for t in range(W, T):  # the post's formula with the decay measured from the warmup's end
        want = lo + (base - lo) * 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W)))
        assert warmup_cosine(t, base, W, T, lo) == pytest.approx(want, rel=1e-14, abs=1e-18)
    # without warmup it is exactly the post's eta_max * (1 + cos(pi t / T)) / 2
    for t in range(T):
        assert warmup_cosine(t, 1.0, 0, T) == pytest.approx(0.5 * (1 + math.cos(math.pi * t / T)))


@pytest.mark.parametrize("device_mode", [False, True])
def test_warmup_cosine_scheduler_sequence_and_state_dict(device_mode):
    p = torch.randn(3, requires_grad=True)
    lr = torch.tensor(1e-2, dtype=torch.float64) if device_mode else 1e-2
    opt = fusedopt.AdamW([p], lr=lr)
    sched = WarmupCosine(opt, warmup_steps=4, total_steps=20, min_lr=1e-4, device=device_mode)
    seen = []
    for _ in range(25):
        seen.append(float(opt.param_groups[0]["lr"]))
        p.grad = torch.randn(3)
        opt.step()
        sched.step()
    want = [warmup_cosine(t, 1e-2, 4, 20, 1e-4) for t in range(25)]
    assert seen == pytest.approx(want, rel=1e-12, abs=1e-15)
    sd = sched.state_dict()
    assert sd["last_epoch"] == 25


@pytest.mark.parametrize(
    "mixed",
    [{}, {"master_weights": True}, {"stochastic_rounding": True, "state_dtype": torch.bfloat16}],
    ids=["fp32", "bf16_master", "bf16_sr"],
)
def test_no_host_sync_in_step(monkeypatch, mixed):
    """No .item()/.cpu()/.tolist()/bool()/float() of a tensor in the Python step path."""
    m = _model()
    if mixed:
        m = m.bfloat16()
    opt = fusedopt.AdamW(m.parameters(), lr=torch.tensor(1e-3), max_grad_norm=1.0, **mixed)
    sched = WarmupCosine(opt, warmup_steps=2, total_steps=10, device=True)
    scaler = torch.amp.GradScaler("cpu")
    x, y = _data(1)[0]
    x = x.to(next(m.parameters()).dtype)

    def train_step():
        opt.zero_grad()
        scaler.scale(torch.nn.functional.cross_entropy(m(x).float(), y)).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()

    train_step()  # plans and state are built on the first step
    calls = []

    def forbid(name):
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):
            calls.append(name)
            return orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("item", "cpu", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        forbid(name)
    train_step()
    train_step()
    monkeypatch.undo()
    assert calls == []
