"""fusedopt.ScheduleFreeAdamW against schedulefree.AdamWScheduleFree where the shared matrices of
tests/optim_info.py cannot reach: many steps through warmup with train()/eval() round trips, the
eval-mode refusal, the group counters, checkpoints taken in eval mode, GradScaler's skipped
steps and the fp32 masters under train()/eval()."""

from __future__ import annotations

import copy
import io

import pytest
import schedulefree
import torch

import fusedopt
from helpers import TOL_VS_TORCH, assert_close_ulp
from optim_info import BACKENDS, TrainingAdamWScheduleFree

# Warmup inside the run, polynomial weights, decay at y: every per-group scalar moves.
KW = {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 0.05, "warmup_steps": 10, "r": 0.5}
SHAPES = [(7, 13), (33,), (1,), (), (0,), (64, 5)]
COUNTERS = ("k", "scheduled_lr", "lr_max", "weight_sum", "train_mode")


def _params(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in SHAPES]


def _clone(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def _grads(params: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1_000 + seed)
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]


def _step(opt, params, grads) -> None:  # noqa: ANN001
    for p, g in zip(params, grads):
        p.grad = g.clone()  # schedulefree divides its grads in place
    opt.step()


def _assert_matches(ours, ours_p, theirs, theirs_p, what: str) -> None:  # noqa: ANN001
    tol = TOL_VS_TORCH[torch.float32]
    for i, (p, q) in enumerate(zip(ours_p, theirs_p)):
        assert_close_ulp(p.detach(), q.detach(), tol, f"{what} param[{i}]")
        for key in ("z", "exp_avg_sq"):
            assert_close_ulp(ours.state[p][key], theirs.state[q][key], tol, f"{what} {key}[{i}]")
    for key in COUNTERS:
        assert ours.param_groups[0][key] == theirs.param_groups[0][key], key


@pytest.mark.parametrize("foreach", [True, False], ids=["sf-foreach", "sf-forloop"])
@pytest.mark.parametrize("backend", [*BACKENDS, "triton"])
def test_fifty_steps_with_warmup_and_train_eval_round_trips(backend, foreach):
    if backend == "triton" and not fusedopt.backends()["triton"].available:
        pytest.skip("triton is not installed")
    params = _params()
    ours_p, theirs_p = _clone(params), _clone(params)
    ours = fusedopt.ScheduleFreeAdamW(ours_p, backend=backend, **KW)
    theirs = schedulefree.AdamWScheduleFree(theirs_p, foreach=foreach, **KW)
    ours.train()
    theirs.train()
    for t in range(50):
        g = _grads(params, t)
        _step(ours, ours_p, g)
        _step(theirs, theirs_p, g)
        _assert_matches(ours, ours_p, theirs, theirs_p, f"step {t + 1}")
        if t in (4, 19, 49):  # evaluate at x, then train on from y
            ours.eval()
            theirs.eval()
            _assert_matches(ours, ours_p, theirs, theirs_p, f"eval after step {t + 1}")
            ours.train()
            theirs.train()
            _assert_matches(ours, ours_p, theirs, theirs_p, f"train after step {t + 1}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("beta1", [0.9, 0.4], ids=["w-small", "w-large"])
@pytest.mark.parametrize("backend", [*BACKENDS, "triton"])
def test_train_and_eval_are_schedulefrees_lerps(backend, beta1, dtype):
    """From the same y and an unrelated z, eval() and train() give schedulefree's params:
    torch.lerp's formula with its Python float weight, in both of its forms (|1 - 1/beta1| >= 0.5
    at beta1 = 0.4 takes the other one). The reference backend is torch.lerp itself, bit for bit;
    the kernels make no fused multiply-adds, where torch's vectorized CPU lerp does: an ulp."""
    if backend == "triton" and not fusedopt.backends()["triton"].available:
        pytest.skip("triton is not installed")
    params = _params(dtype)
    ours_p, theirs_p = _clone(params), _clone(params)
    kw = {**KW, "betas": (beta1, 0.99)}
    ours = fusedopt.ScheduleFreeAdamW(ours_p, backend=backend, **kw)
    theirs = schedulefree.AdamWScheduleFree(theirs_p, **kw)
    ours.train()
    theirs.train()
    _step(ours, ours_p, _grads(params, 0))
    _step(theirs, theirs_p, _grads(params, 0))
    with torch.no_grad():
        for p, q, z in zip(ours_p, theirs_p, _grads(params, 1)):
            q.copy_(p)
            ours.state[p]["z"].copy_(z)
            theirs.state[q]["z"].copy_(z)
    for switch in ("eval", "train", "eval"):
        getattr(ours, switch)()
        getattr(theirs, switch)()
        for i, (p, q) in enumerate(zip(ours_p, theirs_p)):
            what = f"{switch} param[{i}]"
            if backend == "reference":
                assert torch.equal(p.detach(), q.detach()), what
            else:
                assert_close_ulp(p.detach(), q.detach(), TOL_VS_TORCH[dtype], what)


def test_a_step_in_eval_mode_raises_as_schedulefrees():
    def message(cls: type) -> tuple[type, str]:
        p = torch.randn(3, requires_grad=True)
        opt = cls([p])
        p.grad = torch.randn(3)
        with pytest.raises(Exception) as e:  # noqa: PT011 - schedulefree raises a bare Exception
            opt.step()
        return type(e.value), str(e.value)

    assert message(fusedopt.ScheduleFreeAdamW) == message(schedulefree.AdamWScheduleFree)


def test_train_and_eval_twice_change_nothing_more():
    p = torch.randn(5, requires_grad=True)
    opt = fusedopt.ScheduleFreeAdamW([p], lr=0.1)
    opt.train()
    p.grad = torch.randn(5)
    opt.step()
    opt.eval()
    x = p.detach().clone()
    opt.eval()
    assert torch.equal(p, x) and not opt.param_groups[0]["train_mode"]
    opt.train()
    y = p.detach().clone()
    opt.train()
    assert torch.equal(p, y) and opt.param_groups[0]["train_mode"]


def _roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_round_trip_continues_bit_identically(backend):
    params = _params()
    a_p = _clone(params)
    a = fusedopt.ScheduleFreeAdamW(a_p, backend=backend, **KW)
    a.train()
    for t in range(4):
        _step(a, a_p, _grads(params, t))
    a.eval()  # as schedulefree's docs ask before saving
    sd = _roundtrip(a.state_dict())
    b_p = [p.detach().clone().requires_grad_() for p in a_p]
    b = fusedopt.ScheduleFreeAdamW(b_p, backend=backend, **KW)
    b.load_state_dict(sd)
    assert b.state_dict()["param_groups"] == a.state_dict()["param_groups"]
    for opt in (a, b):
        opt.train()
    for t in range(4, 8):
        g = _grads(params, t)
        _step(a, a_p, g)
        _step(b, b_p, g)
    for p, q in zip(a_p, b_p):
        assert torch.equal(p, q)
        for key in ("z", "exp_avg_sq"):
            assert torch.equal(a.state[p][key], b.state[q][key])


def test_schedulefree_checkpoint_in_eval_mode_loads_and_back():
    """schedulefree's checkpoint (taken in eval mode, as its docs ask) loads into ours and ours
    into schedulefree; both continue as schedulefree does."""
    params = _params()
    src_p = _clone(params)
    src = TrainingAdamWScheduleFree(src_p, **KW)
    for t in range(12):  # past the warmup
        _step(src, src_p, _grads(params, t))
    src.eval()
    sd = _roundtrip(src.state_dict())
    ours_p = [p.detach().clone().requires_grad_() for p in src_p]
    ours = fusedopt.ScheduleFreeAdamW(ours_p, **KW)
    ours.load_state_dict(copy.deepcopy(sd))
    back_p = [p.detach().clone().requires_grad_() for p in src_p]
    back = schedulefree.AdamWScheduleFree(back_p, **KW)
    back.load_state_dict(_roundtrip(ours.state_dict()))
    for opt in (src, ours, back):
        opt.train()
    for t in range(12, 20):
        g = _grads(params, t)
        for opt, ps in ((src, src_p), (ours, ours_p), (back, back_p)):
            _step(opt, ps, g)
    _assert_matches(ours, ours_p, src, src_p, "loaded from schedulefree")
    for p, q in zip(back_p, src_p):
        assert torch.equal(p, q)  # schedulefree from our checkpoint: its own computation


def test_skipped_amp_step_changes_nothing_counters_included():
    """Under GradScaler (fused AMP) an inf step changes no tensor and no group counter, as
    GradScaler skipping schedulefree's step() would; the next step is the one schedulefree
    takes."""
    params = _params()
    ours_p, theirs_p = _clone(params), _clone(params)
    ours = fusedopt.ScheduleFreeAdamW(ours_p, **KW)
    theirs = TrainingAdamWScheduleFree(theirs_p, **KW)
    ours.train()
    g = _grads(params, 0)
    _step(ours, ours_p, g)
    _step(theirs, theirs_p, g)
    before = [p.detach().clone() for p in ours_p]
    counters = copy.deepcopy({k: ours.param_groups[0][k] for k in COUNTERS})
    ours.grad_scale = torch.tensor(4.0)
    ours.found_inf = torch.tensor(1.0)
    _step(ours, ours_p, _grads(params, 1))
    assert all(torch.equal(p, b) for p, b in zip(ours_p, before))
    assert counters == {k: ours.param_groups[0][k] for k in COUNTERS}
    assert bool(ours.step_skipped)
    ours.found_inf = torch.tensor(0.0)
    g = _grads(params, 2)
    _step(ours, ours_p, [x * 4 for x in g])  # scaled by grad_scale
    _step(theirs, theirs_p, g)
    del ours.grad_scale, ours.found_inf
    _assert_matches(ours, ours_p, theirs, theirs_p, "after the skipped step")


@pytest.mark.parametrize("backend", BACKENDS)
def test_master_weights_follow_train_and_eval(backend):
    """bf16 params with fp32 masters: eval() and train() move the masters (fp32, as an fp32 run
    does) and round them into the params."""
    params = _params()
    half_p = [p.detach().to(torch.bfloat16).requires_grad_() for p in params]
    full_p = [p.detach().to(torch.bfloat16).float().requires_grad_() for p in params]
    half = fusedopt.ScheduleFreeAdamW(half_p, backend=backend, master_weights=True, **KW)
    full = fusedopt.ScheduleFreeAdamW(full_p, backend=backend, **KW)
    for opt in (half, full):
        opt.train()
    for t in range(6):
        g = _grads(params, t)
        _step(half, half_p, [x.to(torch.bfloat16) for x in g])
        _step(full, full_p, [x.to(torch.bfloat16).float() for x in g])
    for switch in ("eval", "train"):
        getattr(half, switch)()
        getattr(full, switch)()
        for p, q in zip(half_p, full_p):
            assert torch.equal(half.state[p]["master_param"], q.detach()), switch
            assert torch.equal(p.detach(), q.detach().to(torch.bfloat16)), switch


def test_lr_zero_keeps_the_average_weight_zero():
    """lr=0: every averaging weight is 0 (schedulefree's ZeroDivisionError branch, ckp1 = 0)."""
    ps = _params()
    ours_p, theirs_p = _clone(ps), _clone(ps)
    ours = fusedopt.ScheduleFreeAdamW(ours_p, lr=0.0)
    theirs = TrainingAdamWScheduleFree(theirs_p, lr=0.0)
    ours.train()
    for t in range(3):
        g = _grads(ps, t)
        _step(ours, ours_p, g)
        _step(theirs, theirs_p, g)
    _assert_matches(ours, ours_p, theirs, theirs_p, "lr=0")
    assert ours.param_groups[0]["weight_sum"] == 0.0


def test_skipped_first_amp_step_changes_nothing():
    """A first step GradScaler skips: the params and the counters stay at their start (lr_max
    -1, with a fractional weight_lr_power too)."""
    p = torch.randn(4, requires_grad=True)
    opt = fusedopt.ScheduleFreeAdamW([p], weight_lr_power=0.5)
    opt.train()
    y = p.detach().clone()
    opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(1.0)
    p.grad = torch.randn(4)
    opt.step()
    assert torch.equal(p, y) and opt.param_groups[0]["k"] == 0
    assert opt.param_groups[0]["lr_max"] == -1.0


def test_options_schedulefree_lacks_are_refused_as_it_refuses_them():
    for kwargs in ({"differentiable": True}, {"maximize": True}, {"amsgrad": True}):
        for cls in (fusedopt.ScheduleFreeAdamW, schedulefree.AdamWScheduleFree):
            with pytest.raises(TypeError, match="unexpected keyword argument"):
                cls([torch.randn(2, requires_grad=True)], **kwargs)
