"""Params, grads and states that are views of flat buffers (Note [flat states] in
fusedopt/optim/_plan.py, Note [adjacent tensors] in csrc/common/multi_tensor.h).

Such params are updated as one range. The result must be bitwise the per-tensor one on every
step, whatever happens to the grads between steps (replaced by a separate tensor, None, made
adjacent again), and match torch.optim; the states stay per-param views in state_dict and
round-trip with torch.optim both ways.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

import fusedopt
from fusedopt._ext import _C
from helpers import TOL_VS_TORCH

pytestmark = pytest.mark.skipif(_C is None, reason="needs the compiled CPU extension")

# (name, fusedopt and torch.optim constructor options)
OPTIMIZERS = [
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1}),
    ("SGD", {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("Lion", {"lr": 1e-3, "weight_decay": 0.1}),
]
# Odd sizes, an empty one in the middle (it ends no run: it has no elements), matrices.
SHAPES = [(7,), (33, 3), (0,), (129,), (1,), (8, 16), (1000,), (5,)]


def _views(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of values, views of one buffer, end to end."""
    flat = torch.cat([v.reshape(-1) for v in values])
    return [s.view(v.shape) for s, v in zip(flat.split([v.numel() for v in values]), values)]


def _values(dtype: torch.dtype, seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(dtype) for s in SHAPES]


def _torch_opt(name: str, params: list[torch.Tensor], kw: dict) -> torch.optim.Optimizer:
    if name == "Lion":
        return None  # torch.optim has no Lion: compared with fusedopt's per-tensor step only
    return getattr(torch.optim, name)(params, **kw, foreach=False)


def _adjacent(ts: list[torch.Tensor]) -> bool:
    ts = [t for t in ts if t.numel()]
    return all(
        a.data_ptr() + a.numel() * a.element_size() == b.data_ptr() for a, b in zip(ts, ts[1:])
    )


def _state(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [v for p in params for v in opt.state[p].values() if torch.is_tensor(v)]


def _assert_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def _set_grads(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
    for p, g in zip(params, grads):
        p.grad = g


@pytest.mark.parametrize("name,kw", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flat_matches_per_tensor_and_torch(name: str, kw: dict, dtype: torch.dtype) -> None:
    init = _values(dtype, 0)
    flat_ps = _views(init)
    sep_ps = [v.clone() for v in init]
    ref_ps = [v.clone() for v in init]
    flat = getattr(fusedopt, name)(flat_ps, **kw)
    sep = getattr(fusedopt, name)(sep_ps, **kw)
    ref = _torch_opt(name, ref_ps, kw)
    for step in range(12):
        g = _values(dtype, 100 + step, 1e-1)
        flat_g: list[torch.Tensor | None] = _views(g)
        sep_g: list[torch.Tensor | None] = [t.clone() for t in g]
        if step == 3:  # a grad replaced by a separate tensor: the run is split there
            flat_g[3] = g[3].clone()
        if step in (5, 6):  # a param without a grad: skipped, its step count falls behind,
            flat_g[1] = sep_g[1] = None  # and from then on its scalars differ from its neighbours'
        _set_grads(flat_ps, flat_g)
        _set_grads(sep_ps, sep_g)
        flat.step()
        sep.step()
        _assert_equal(flat_ps, sep_ps)
        _assert_equal(_state(flat, flat_ps), _state(sep, sep_ps))
        if ref is not None:
            _set_grads(ref_ps, [None if t is None else t.clone() for t in sep_g])
            ref.step()
            tol = TOL_VS_TORCH[dtype]
            for a, b in zip(flat_ps, ref_ps):
                torch.testing.assert_close(a, b, rtol=tol.rtol, atol=tol.atol)
    # the states of the adjacent params were allocated flat, per-param views in state_dict
    for key in _state_keys(flat, flat_ps[0]):
        ts = [flat.state[p][key] for p in flat_ps]
        assert _adjacent(ts) and ts[0]._base is not None
        assert all(t.shape == p.shape for t, p in zip(ts, flat_ps))


def _state_keys(opt: torch.optim.Optimizer, p: torch.Tensor) -> list[str]:
    return [k for k, v in opt.state[p].items() if torch.is_tensor(v) and v.shape == p.shape]


def test_flat_mixed_dtypes_in_a_group() -> None:
    """fp32 and fp64 views of two buffers interleaved in one group: one run per dtype bucket."""
    a32, a64 = _views(_values(torch.float32, 1)), _views(_values(torch.float64, 2))
    mixed = [t for pair in zip(a32, a64) for t in pair]
    sep = [t.clone() for t in mixed]
    flat_opt = fusedopt.AdamW(mixed, lr=1e-2)
    sep_opt = fusedopt.AdamW(sep, lr=1e-2)
    for step in range(4):
        g32, g64 = (
            _views(_values(torch.float32, 10 + step)),
            _views(_values(torch.float64, 20 + step)),
        )
        gs = [t for pair in zip(g32, g64) for t in pair]
        _set_grads(mixed, gs)
        _set_grads(sep, [t.clone() for t in gs])
        flat_opt.step()
        sep_opt.step()
        _assert_equal(mixed, sep)
        _assert_equal(_state(flat_opt, mixed), _state(sep_opt, sep))
    assert _adjacent([flat_opt.state[p]["exp_avg"] for p in a32])
    assert _adjacent([flat_opt.state[p]["exp_avg"] for p in a64])


def _fresh_grads(params: list[torch.Tensor], seed: int) -> None:
    _set_grads(params, _views(_values(torch.float32, seed, 1e-1)))


def test_flat_state_dict_round_trip_with_torch() -> None:
    init = _values(torch.float32, 0)
    ours_ps, theirs_ps = _views(init), [v.clone() for v in init]
    ours = fusedopt.AdamW(ours_ps, lr=1e-2)
    theirs = torch.optim.AdamW(theirs_ps, lr=1e-2, foreach=False)
    for step in range(3):
        _fresh_grads(ours_ps, step)
        _fresh_grads(theirs_ps, step)
        ours.step()
        theirs.step()
    tol = TOL_VS_TORCH[torch.float32]
    # fusedopt (flat states) -> torch.optim: the views load as any per-param state
    saved = ours.state_dict()
    into_torch = torch.optim.AdamW([p.clone() for p in ours_ps], lr=1e-2, foreach=False)
    into_torch.load_state_dict(saved)
    for p, q in zip(ours_ps, into_torch.param_groups[0]["params"]):
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ours.state[p][k], into_torch.state[q][k])
    # torch.optim -> fusedopt: separate tensors, flattened (by copy) when the plan is built
    again_ps = _views([p.detach() for p in theirs_ps])
    again = fusedopt.AdamW(again_ps, lr=1e-2)
    # deep copies: torch's load_state_dict keeps the given tensors where their dtype and device
    # already fit, and the three optimizers below must not share them
    again.load_state_dict(copy.deepcopy(theirs.state_dict()))
    sep_ps = [p.detach().clone() for p in theirs_ps]
    sep = fusedopt.AdamW(sep_ps, lr=1e-2)
    sep.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for step in range(3, 6):
        for ps in (again_ps, sep_ps, theirs_ps):
            _fresh_grads(ps, step)
        again.step()
        sep.step()
        theirs.step()
        _assert_equal(again_ps, sep_ps)
        _assert_equal(_state(again, again_ps), _state(sep, sep_ps))
        for a, b in zip(again_ps, theirs_ps):
            torch.testing.assert_close(a, b, rtol=tol.rtol, atol=tol.atol)
    assert _adjacent([again.state[p]["exp_avg_sq"] for p in again_ps])


def test_flat_step_that_raises_changes_nothing() -> None:
    ps = _views(_values(torch.float32, 0))
    opt = fusedopt.AdamW(ps, lr=1e-2)
    _fresh_grads(ps, 1)
    opt.step()
    before = [t.clone() for t in ps + _state(opt, ps)]
    _fresh_grads(ps, 2)
    ps[4].grad = torch.zeros(ps[4].shape).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    _assert_equal(ps + _state(opt, ps), before)


def _one_range(opt: torch.optim.Optimizer) -> list[bool]:
    """Per bucket: whether its last step ran as one range (Note [one-range steps])."""
    return [
        b.cplan is not None and b.cplan.last_flat
        for plan in opt._plans.values()
        for b in plan.buckets
    ]


# The one-range step (Note [one-range steps] in csrc/plan.cpp) against the per-tensor step of
# the same optimizer on separate tensors: bitwise, params and every state (counters included).
ONE_RANGE = [
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}, torch.float32, True),
    ("SGD", {"lr": 1e-2, "momentum": 0.9, "dampening": 0.1}, torch.float64, True),
    ("Lion", {"lr": 1e-3, "weight_decay": 0.1}, torch.float32, True),
    ("AdamW", {"lr": 1e-2, "master_weights": True}, torch.bfloat16, True),
    # clipping: the grads' Python lists feed the norm pass, the step is still one range
    ("AdamW", {"lr": 1e-2, "max_grad_norm": 0.05}, torch.float32, True),
    # stochastic rounding draws by the index within each param: never one range
    ("AdamW", {"lr": 1e-2, "stochastic_rounding": True}, torch.bfloat16, False),
]


@pytest.mark.parametrize(
    "name,kw,dtype,one", ONE_RANGE, ids=["adamw-amsgrad", "sgd", "lion", "master", "clip", "sr"]
)
def test_one_range_step_is_the_per_tensor_step(
    name: str, kw: dict, dtype: torch.dtype, one: bool
) -> None:
    init = _values(dtype, 0)
    flat_ps, sep_ps = _views(init), [v.clone() for v in init]
    flat = getattr(fusedopt, name)(flat_ps, **kw)
    sep = getattr(fusedopt, name)(sep_ps, **kw)
    for step in range(4):
        g = _values(dtype, 100 + step, 1e-1)
        _set_grads(flat_ps, _views(g))
        _set_grads(sep_ps, [t.clone() for t in g])
        versions = [p._version for p in flat_ps]
        for opt in (flat, sep):
            torch.manual_seed(0)  # the stochastic-rounding seeds, drawn by the first step
            opt.step()
        # (SGD's first step, which creates the momentum buffers, runs without the StepPlan)
        expect = one and (step > 0 or name != "SGD")
        assert _one_range(flat) == [expect]
        # the next step needs no Python list of the grads: its StepPlan fetches them
        assert (flat._plan_work(own_grads=True)[0][2] is None) == expect
        assert all(p._version > v for p, v in zip(flat_ps, versions))
        _assert_equal(flat_ps, sep_ps)
        _assert_equal(_state(flat, flat_ps), _state(sep, sep_ps))


def test_one_range_falls_back_whenever_a_list_is_not_one_range() -> None:
    """Each change that breaks the one range takes the per-tensor step, with the same result as
    separate tensors; the one range resumes when it holds again. (A sparse grad: the per-tensor
    step's error, test_flat_step_that_raises_changes_nothing.)"""
    init = _values(torch.float32, 0)
    flat_ps, sep_ps = _views(init), [v.clone() for v in init]
    flat, sep = fusedopt.AdamW(flat_ps, lr=1e-2), fusedopt.AdamW(sep_ps, lr=1e-2)

    seeds = iter(range(100, 200))

    def step(expect: bool, edit: Callable | None = None) -> None:
        g = _values(torch.float32, next(seeds), 1e-1)
        _set_grads(flat_ps, _views(g))
        _set_grads(sep_ps, [t.clone() for t in g])
        if edit is not None:
            edit(flat_ps, flat)
            edit(sep_ps, sep)
        flat.step()
        sep.step()
        assert _one_range(flat) == [expect]
        _assert_equal(flat_ps, sep_ps)
        _assert_equal(_state(flat, flat_ps), _state(sep, sep_ps))

    def separate_grad(ps, opt):
        ps[3].grad = ps[3].grad.clone()

    def separate_empty_grad(ps, opt):  # no elements: it breaks no range
        ps[2].grad = ps[2].grad.clone()

    def strided_grad(ps, opt):
        ps[1].grad = ps[1].grad.t().contiguous().t()

    def counter_up(ps, opt):
        opt.state[ps[3]]["step"] += 1

    def counter_down(ps, opt):
        opt.state[ps[3]]["step"] -= 1

    def new_memory(ps, opt):  # the op must update the param's new memory
        ps[5].data = ps[5].data.clone()

    def state_memory(ps, opt):  # a state given new memory: the plan must be rebuilt
        exp_avg = opt.state[ps[3]]["exp_avg"]
        exp_avg.data = exp_avg.data.clone()
        opt.invalidate_plans()

    def no_grad(ps, opt):  # the plan is rebuilt without it, and its counter falls behind
        ps[4].grad = None

    step(True)
    step(True)
    step(False, separate_grad)
    step(True, separate_empty_grad)
    step(False, strided_grad)
    step(True)
    step(True, state_memory)  # its states are made one buffer again
    step(False, counter_up)
    step(True, counter_down)
    step(False, no_grad)
    step(False)
    step(False, new_memory)
    step(False)


def test_one_range_step_skipped_for_inf_changes_nothing() -> None:
    ps = _views(_values(torch.float32, 0))
    opt = fusedopt.AdamW(ps, lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(torch.ones(()))  # makes the scale
    _fresh_grads(ps, 1)
    scaler.step(opt)
    scaler.update()
    assert _one_range(opt) == [True]
    before = [t.clone() for t in ps + _state(opt, ps)]
    _fresh_grads(ps, 2)
    ps[3].grad[1] = float("inf")
    scaler.step(opt)
    assert _one_range(opt) == [True] and bool(opt.step_skipped)
    _assert_equal(ps + _state(opt, ps), before)


def test_one_range_in_a_training_loop_with_flat_grads() -> None:
    """The README's recipe: params and grads views of two buffers, zero_grad(set_to_none=False)
    between steps; autograd accumulates into the views, and every step is one range, with the
    results of the same model trained with separate tensors."""
    torch.manual_seed(0)
    models = [
        torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
        for _ in range(2)
    ]
    models[1].load_state_dict(models[0].state_dict())
    params = list(models[0].parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        p.grad = grad[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    opts = [fusedopt.AdamW(m.parameters(), lr=1e-2) for m in models]
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    for _ in range(3):
        for m, opt in zip(models, opts):
            opt.zero_grad(set_to_none=opt is opts[1])
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
        assert _one_range(opts[0]) == [True]
        _assert_equal(list(models[0].parameters()), list(models[1].parameters()))
