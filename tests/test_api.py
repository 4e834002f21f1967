"""The torch.optim contract: param groups, hooks, closures, schedulers, zero_grad, backends()."""

from __future__ import annotations

import pytest
import torch

import fusedopt
from helpers import (
    TOL_VS_TORCH,
    Tol,
    assert_close_ulp,
    clone_params,
    fresh_grads,
    make_params,
    set_grads,
)
from optim_info import OPTIMS


def test_backends_report():
    info = fusedopt.backends()
    assert set(info) == {"cpu", "cuda", "triton", "reference"}
    for name, b in info.items():
        assert b.name == name and isinstance(b.available, bool) and b.reason
    assert info["reference"].available


def test_auto_uses_compiled_cpu_kernels_when_built():
    p = torch.randn(3, requires_grad=True)
    opt = fusedopt.AdamW([p])
    p.grad = torch.randn(3)
    opt.step()
    (bucket,) = opt._plans[0].buckets
    assert bucket.backend == ("cpu" if fusedopt.backends()["cpu"].available else "reference")


def test_param_groups_with_different_hyperparameters_and_dtypes():
    params = make_params(torch.float32)
    extra = [
        torch.randn(10, dtype=torch.float64, requires_grad=True),
        torch.randn(10, dtype=torch.bfloat16, requires_grad=True),
    ]
    ours_p, theirs_p = clone_params(params + extra), clone_params(params + extra)

    def groups(ps):
        return [{"params": ps[:6]}, {"params": ps[6:], "lr": 0.05, "weight_decay": 0.0}]

    ref_p = clone_params(params + extra)
    ours = fusedopt.AdamW(groups(ours_p), lr=1e-2)
    theirs = torch.optim.AdamW(groups(theirs_p), lr=1e-2, foreach=False)
    ref = fusedopt.AdamW(groups(ref_p), lr=1e-2, backend="reference")
    for _ in range(3):
        g = fresh_grads(params) + [
            torch.randn(10, dtype=torch.float64),
            torch.randn(10, dtype=torch.bfloat16),
        ]
        set_grads(ours_p, g)
        set_grads(theirs_p, g)
        set_grads(ref_p, g)
        ours.step()
        theirs.step()
        ref.step()
    for a, b in zip(ours_p[:-1], theirs_p[:-1]):
        torch.testing.assert_close(a, b, rtol=1.3e-6, atol=1e-5)
    # The bf16 param: the reference computes as we do (fp32 math, one rounding per stored value),
    # to within a bf16 ulp; torch's bf16 for-loop, which rounds every intermediate to bf16,
    # within the table's bf16 tolerance (torch's own fused-vs-for-loop one, plus an ulp).
    a, r, t = (x[-1].detach() for x in (ours_p, ref_p, theirs_p))
    assert_close_ulp(a, r, Tol(0.0, 0.0, "1 bf16 ulp"), "bf16 vs reference")
    assert_close_ulp(a, t, TOL_VS_TORCH[torch.bfloat16], "bf16 vs torch")


def test_add_param_group_and_params_gaining_grads_later():
    a, b = torch.randn(5, requires_grad=True), torch.randn(7, requires_grad=True)
    ta, tb = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ours, theirs = fusedopt.Adam([a], lr=0.1), torch.optim.Adam([ta], lr=0.1, foreach=False)
    for step in range(4):
        if step == 1:
            ours.add_param_group({"params": [b], "lr": 0.01})
            theirs.add_param_group({"params": [tb], "lr": 0.01})
        ga, gb = torch.randn(5), torch.randn(7)
        a.grad, ta.grad = ga, ga
        # b only has a grad on some steps: plans are rebuilt when the set changes
        b.grad = tb.grad = gb if step in (2, 3) else None
        ours.step()
        theirs.step()
        torch.testing.assert_close(a, ta)
        torch.testing.assert_close(b, tb)
    assert ours.state[b]["step"].item() == 2


def test_hooks_closure_zero_grad():
    p = torch.randn(4, requires_grad=True)
    opt = fusedopt.SGD([p], lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == ["pre", "post"]
    assert isinstance(loss, torch.Tensor)
    opt.zero_grad()
    assert p.grad is None


def test_step_does_not_modify_grads():
    params = make_params(torch.float32)
    g = fresh_grads(params)
    set_grads(params, g)
    saved = [None if x is None else x.clone() for x in g]
    opt = fusedopt.Adam(params, weight_decay=0.1, maximize=True)
    opt.step()
    for x, y in zip(g, saved):
        assert (x is None and y is None) or torch.equal(x, y)


def test_lr_scheduler_and_tensor_lr_updates_take_effect():
    p = torch.randn(6, requires_grad=True)
    tp = p.detach().clone().requires_grad_()
    ours = fusedopt.AdamW([p], lr=torch.tensor(0.1))
    theirs = torch.optim.AdamW([tp], lr=0.1, foreach=False)
    s1 = torch.optim.lr_scheduler.CosineAnnealingLR(ours, T_max=5)
    s2 = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=5)
    for _ in range(5):
        g = torch.randn(6)
        p.grad, tp.grad = g, g
        ours.step()
        theirs.step()
        s1.step()
        s2.step()
        torch.testing.assert_close(p, tp)
    assert isinstance(ours.param_groups[0]["lr"], torch.Tensor)


@pytest.mark.parametrize("threads", [1, 2])
def test_many_tiny_tensors_match_the_reference(threads):
    """2,000 small tensors in one launch: every tensor boundary inside a thread's range."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sizes = torch.randint(0, 70, (2000,)).tolist()
        params = [torch.randn(n, requires_grad=True) for n in sizes]
        ref = [p.detach().clone().requires_grad_() for p in params]
        ours = fusedopt.AdamW(params, lr=1e-2, weight_decay=0.1)
        theirs = fusedopt.AdamW(ref, lr=1e-2, weight_decay=0.1, backend="reference")
        for _ in range(2):
            for p, r in zip(params, ref):
                p.grad = r.grad = torch.randn_like(p)
            ours.step()
            theirs.step()
        for p, r in zip(params, ref):
            torch.testing.assert_close(p, r, rtol=1.3e-6, atol=1e-6)
    finally:
        torch.set_num_threads(old)


def test_step_bumps_version_counters_so_autograd_sees_the_change() -> None:
    """Note [version counters] in csrc/autograd.cpp: a param saved for backward and then
    stepped makes backward raise, as with torch.optim, instead of computing wrong grads."""
    for backend in [b for b in ("cpu", "reference") if fusedopt.backends()[b].available]:
        p = torch.randn(5, requires_grad=True)
        opt = fusedopt.AdamW([p], lr=0.1, backend=backend)
        p.grad = torch.ones_like(p)
        v = p._version
        opt.step()
        assert p._version > v
        assert opt.state[p]["exp_avg"]._version > 0
        loss = (p * p).sum()  # saves p
        p.grad = torch.ones_like(p)
        opt.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


@pytest.mark.skipif(not fusedopt.backends()["cpu"].available, reason="no CPU ops")
@pytest.mark.parametrize(
    "cls",
    # Muon calls its ops per param shape, around the Newton-Schulz matmuls, never through a plan
    [i.cls for i in OPTIMS if i.cls is not fusedopt.Muon],
    ids=lambda c: c.__name__,
)
def test_step_plan_path_equals_the_op_path(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """Note [C++ step plans]: a step through the C++ StepPlan (eager) and one through
    torch.ops.fusedopt (what torch.compile traces) are the same call: identical bits."""
    from fusedopt import _dispatch

    name = cls.__name__
    kw = {"lr": 0.01}
    if name in ("Adam", "AdamW"):
        kw["amsgrad"] = True
    if name == "SGD":
        kw["momentum"] = 0.9
    runs = []
    for use_plan in (True, False):
        if not use_plan:
            monkeypatch.setattr(_dispatch, "step_plan", lambda *a: None)
        torch.manual_seed(0)
        params = [torch.randn(s, requires_grad=True) for s in [(33, 7), (5,), (0,), (4096,)]]
        opt = cls(params, **kw)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            if name == "Sophia":
                opt.update_hessian()
            opt.step()
        assert all(
            (b.cplan is not None) == use_plan for pl in opt._plans.values() for b in pl.buckets
        )
        runs.append(
            [p.detach().clone() for p in params]
            + [v for p in params for v in opt.state[p].values() if torch.is_tensor(v)]
        )
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.skipif(not fusedopt.backends()["cpu"].available, reason="no CPU ops")
def test_step_plan_takes_the_registry_order() -> None:
    """Note [C++ step plans]: StepPlan(op, lists) takes OpDef.plan_lists (None for an absent
    optional list) and .call(grads, *rest) OpDef.plan_rest; other counts are refused."""
    from fusedopt import _dispatch
    from fusedopt._opdefs import OPS

    d = OPS["lion_"]
    n = 3
    params = [torch.randn(5) for _ in range(n)]
    lists = {"params": params, "exp_avgs": [torch.zeros(5) for _ in range(n)]}
    lists["state_steps"] = [torch.zeros(()) for _ in range(n)]
    grads = [torch.randn(5) for _ in range(n)]
    before = [p.clone() for p in params]
    plan = _dispatch.step_plan("lion_", [lists.get(k) for k in d.plan_lists])
    values = {"lr": torch.tensor(0.1), "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0}
    values["maximize"] = False
    plan.call(grads, *[values.get(k) for k in d.plan_rest])  # grad_scale, found_inf: None
    want = [p - 0.1 * torch.sign(g) for p, g in zip(before, grads)]  # m = 0: sign(g)
    for p, w in zip(params, want):
        torch.testing.assert_close(p, w)
    assert [float(s) for s in lists["state_steps"]] == [1.0] * n
    with pytest.raises(RuntimeError, match="expected 5 lists, got 4"):
        _dispatch.step_plan("lion_", [lists.get(k) for k in d.plan_lists][:4])
    with pytest.raises(RuntimeError, match="list 0 is None"):
        _dispatch.step_plan("lion_", [None, *[lists.get(k) for k in d.plan_lists][1:]])
    with pytest.raises(RuntimeError, match="expected 7 arguments after the grads, got 1"):
        plan.call(grads, torch.tensor(0.1))
    with pytest.raises(ValueError, match="unknown op"):
        _dispatch.step_plan("nope_", [])
