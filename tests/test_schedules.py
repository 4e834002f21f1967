"""fusedopt.schedules beyond warmup + cosine (tests/test_training_loop.py has that one): step
decay, exponential decay, cyclical and one-cycle, in host mode against torch.optim.lr_scheduler's
lr sequences (fp64), in device mode against host mode, and through state_dict and
torch.compile (Note [device schedules])."""

from __future__ import annotations

import pytest
import torch
import torch.optim.lr_scheduler as L
from torch._dynamo.testing import CompileCounterWithBackend

import fusedopt
from fusedopt.schedules import Cyclical, ExpDecay, OneCycle, StepDecay

# name -> (ours, torch's, steps); both built on an optimizer with two groups (lr 0.1 and 0.03).
CASES = {
    "step": (lambda o, **k: StepDecay(o, 7, 0.5, **k), lambda o: L.StepLR(o, 7, 0.5), 50),
    "exp": (lambda o, **k: ExpDecay(o, 0.97, **k), lambda o: L.ExponentialLR(o, 0.97), 50),
    "cyclical": (
        lambda o, **k: Cyclical(o, 0.01, 0.1, 5, 3, **k),
        lambda o: L.CyclicLR(o, 0.01, 0.1, 5, 3, cycle_momentum=False),
        50,
    ),
    "cyclical2": (
        lambda o, **k: Cyclical(o, 0.01, 0.1, 4, mode="triangular2", **k),
        lambda o: L.CyclicLR(o, 0.01, 0.1, 4, mode="triangular2", cycle_momentum=False),
        50,
    ),
    "cyclical_exp": (
        lambda o, **k: Cyclical(o, 0.01, 0.1, 4, mode="exp_range", gamma=0.98, **k),
        lambda o: L.CyclicLR(o, 0.01, 0.1, 4, mode="exp_range", gamma=0.98, cycle_momentum=False),
        50,
    ),
    "one_cycle": (
        lambda o, **k: OneCycle(o, 0.1, 40, **k),
        lambda o: L.OneCycleLR(o, 0.1, 40, cycle_momentum=False),
        40,
    ),
    "one_cycle_3_linear": (
        lambda o, **k: OneCycle(o, 0.1, 30, three_phase=True, anneal_strategy="linear", **k),
        lambda o: L.OneCycleLR(
            o, 0.1, 30, three_phase=True, anneal_strategy="linear", cycle_momentum=False
        ),
        30,
    ),
}


def _opt(tensor_lr: bool) -> torch.optim.Optimizer:
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)

    def lr(x: float):  # noqa: ANN202
        return torch.tensor(x, dtype=torch.float64) if tensor_lr else x

    return fusedopt.SGD([{"params": [a], "lr": lr(0.1)}, {"params": [b], "lr": lr(0.03)}], lr=0.1)


def _run(make, steps: int, tensor_lr: bool = False, **kw) -> list[tuple[float, ...]]:  # noqa: ANN001
    opt = _opt(tensor_lr)
    sched = make(opt, **kw)
    out = []
    for _ in range(steps):
        out.append(tuple(float(g["lr"]) for g in opt.param_groups))
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_host_mode_is_torchs_sequence(name: str) -> None:
    ours, theirs, steps = CASES[name]
    a, b = _run(ours, steps), _run(theirs, steps)
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=1e-12, abs=1e-18)
    assert len({x[0] for x in a}) > 3  # the schedule moves


@pytest.mark.parametrize("name", list(CASES))
def test_device_mode_is_host_mode(name: str) -> None:
    ours, _, steps = CASES[name]
    host = _run(ours, steps)
    dev = _run(ours, steps, tensor_lr=True, device=True)
    for x, y in zip(dev, host):
        assert x == pytest.approx(y, rel=1e-12, abs=1e-18)


def test_device_mode_needs_tensor_lrs() -> None:
    with pytest.raises(ValueError, match="needs Tensor learning rates"):
        StepDecay(_opt(False), 3, device=True)


@pytest.mark.parametrize("name", ["step", "one_cycle"])
def test_device_mode_state_dict_resumes(name: str) -> None:
    ours, _, steps = CASES[name]
    opt = _opt(True)
    sched = ours(opt, device=True)
    for _ in range(steps // 2):
        opt.step()
        sched.step()
    sd = sched.state_dict()
    rest = []
    for _ in range(steps // 2 - 1):
        opt.step()
        sched.step()
        rest.append(float(opt.param_groups[0]["lr"]))
    opt2 = _opt(True)
    sched2 = ours(opt2, device=True)
    sched2.load_state_dict(sd)
    again = []
    for _ in range(steps // 2 - 1):
        opt2.step()
        sched2.step()
        again.append(float(opt2.param_groups[0]["lr"]))
    assert again == rest


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="step_size"):
        StepDecay(_opt(False), 0)
    with pytest.raises(ValueError, match="mode is invalid"):
        Cyclical(_opt(False), 0.1, 1.0, mode="nope")
    with pytest.raises(ValueError, match="anneal_strategy"):
        OneCycle(_opt(False), 0.1, 10, anneal_strategy="nope")
    with pytest.raises(ValueError, match="pct_start"):
        OneCycle(_opt(False), 0.1, 10, pct_start=1.5)


@pytest.mark.parametrize("name", ["cyclical", "one_cycle"])
def test_device_schedule_in_a_compiled_step_never_recompiles(name: str) -> None:
    ours, _, steps = CASES[name]
    p = torch.ones(8, requires_grad=True)
    opt = fusedopt.SGD([p], lr=torch.tensor(0.1))
    sched = ours(opt, device=True)
    cnt = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(opt.step, backend=cnt, fullgraph=True)
    host = _run(ours, steps)
    for i in range(steps - 1):
        p.grad = torch.ones_like(p)
        before = p.detach().clone()
        compiled()
        # The step used this step's scheduled lr (stored in fp32: the lr tensor's dtype).
        lr = float(torch.tensor(host[i][0], dtype=torch.float32))
        torch.testing.assert_close(
            before - p.detach(), torch.full_like(p, lr), rtol=1e-6, atol=2.5e-7
        )
        sched.step()
    assert cnt.frame_count == 2
