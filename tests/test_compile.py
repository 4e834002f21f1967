"""torch.compile: every optimizer's step traces with fullgraph=True (custom ops with fake
kernels, nothing dynamo can't trace), compiled steps equal eager ones, and a Tensor lr changed
every step never recompiles.

Compiles use the ``aot_eager`` backend (dynamo + AOTAutograd functionalization of our mutating
custom ops, the part that can break) wrapped in a compile counter; one test runs inductor.
"""

from __future__ import annotations

import warnings

import pytest
import schedulefree
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fusedopt
from fusedopt.schedules import WarmupCosine
from helpers import TOL_VS_TORCH, assert_close_ulp
from optim_info import BACKENDS, OPTIMS, cases

# name -> (class, kwargs but the lr, which each test sets): tests/optim_info.py's "compile" configs
OPTIMIZERS = {c.id: (c.values[0].cls, c.values[2].kwargs) for c in cases("compile")}
TOL = TOL_VS_TORCH[torch.float32]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _params() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [
        torch.randn(5, 3).requires_grad_(),
        torch.randn(3).requires_grad_(),
        torch.randn(17).requires_grad_(),
    ]


def _make(name: str, backend: str, params: list[torch.Tensor], lr: float | torch.Tensor):
    cls, kw = OPTIMIZERS[name]
    return cls(params, lr=lr, backend=backend, **kw)


def _assert_same(opt_a, params_a, opt_b, params_b, what: str) -> None:  # noqa: ANN001
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        assert_close_ulp(a.detach(), b.detach(), TOL, f"{what} param[{i}]")
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert sa.keys() == sb.keys()
        for k in sa:
            if torch.is_tensor(sa[k]):
                assert_close_ulp(sa[k], sb[k], TOL, f"{what} state[{i}][{k}]")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fullgraph_matches_eager_and_never_recompiles(name: str, backend: str) -> None:
    """fullgraph compile succeeds; compiled == eager after every step; with the lr tensor
    written every step (``lr.fill_``) the counter stays at 2 compilations: the first step
    (which creates the state) and the steady state."""
    eager_p, comp_p = _params(), _params()
    eager = _make(name, backend, eager_p, torch.tensor(0.01))
    comp = _make(name, backend, comp_p, torch.tensor(0.01))
    cnt = CompileCounterWithBackend("aot_eager")

    def step() -> None:
        comp.step()

    compiled = torch.compile(step, backend=cnt, fullgraph=True)
    for i in range(20):
        lr = 0.01 * (1 + i % 7) / (1 + i)
        for opt in (eager, comp):
            opt.param_groups[0]["lr"].fill_(lr)
        grads = [torch.randn_like(p) for p in eager_p]
        for p, q, g in zip(eager_p, comp_p, grads):
            p.grad, q.grad = g, g.clone()
        eager.step()
        compiled()
        if i < 4:
            _assert_same(comp, comp_p, eager, eager_p, f"{name} step {i + 1}")
        if comp.max_grad_norm is not None:  # what the step keeps on the optimizer object
            assert_close_ulp(comp.last_grad_norm, eager.last_grad_norm, TOL, f"{name} norm")
        assert cnt.frame_count == min(i + 1, 2), f"recompiled at step {i + 1}"
    _assert_same(comp, comp_p, eager, eager_p, f"{name} step 20")
    assert cnt.frame_count == 2


@pytest.mark.parametrize(
    "info", [i for i in OPTIMS if "compile" in i.unsupported], ids=lambda i: i.name
)
def test_unsupported_compiled_step_is_refused_before_anything_changes(info) -> None:  # noqa: ANN001
    """An optimizer that cannot be compiled (tests/optim_info.py ``unsupported``) says so under
    fullgraph compile and changes nothing; compiled without fullgraph, it steps eagerly."""
    params = _params()
    opt = info.cls(params, backend="reference")
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    with pytest.raises(Exception, match=info.unsupported["compile"]):
        torch.compile(opt.step, backend="aot_eager", fullgraph=True)()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert groups == [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    torch.compile(opt.step, backend="aot_eager")()
    assert not all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_scheduler_sees_the_compiled_step(backend: str) -> None:
    """A torch.optim LRScheduler attached before compiling: the compiled step records that it
    ran (Note [schedulers and torch.compile] in fusedopt/optim/_base.py), so the scheduler's
    first step does not warn that it was called before optimizer.step()."""
    params = _params()
    opt = fusedopt.AdamW(params, lr=0.01, backend=backend)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    step = torch.compile(opt.step, backend="aot_eager", fullgraph=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            for p in params:
                p.grad = torch.ones_like(p)
            step()
            sched.step()
    assert not [w for w in caught if "before `optimizer.step()`" in str(w.message)]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


@pytest.mark.parametrize("backend", BACKENDS)
def test_warmup_cosine_device_schedule_no_recompile(backend: str) -> None:
    """WarmupCosine(device=True) writes the lr tensor in place: 20 scheduled steps, 2 compiles,
    the same params as the eager run (the scheduler, attached before compiling, does not hide
    the step from dynamo: Note [schedulers and torch.compile] in fusedopt/optim/_base.py)."""
    runs = []
    for compile_it in (False, True):
        params = _params()
        opt = fusedopt.AdamW(params, lr=torch.tensor(0.02), backend=backend)
        sched = WarmupCosine(opt, warmup_steps=5, total_steps=20, device=True)
        cnt = CompileCounterWithBackend("aot_eager")
        step = torch.compile(opt.step, backend=cnt, fullgraph=True) if compile_it else opt.step
        lrs = []
        torch.manual_seed(1)
        for _ in range(20):
            for p in params:
                p.grad = torch.randn_like(p)
            step()
            sched.step()
            lrs.append(float(opt.param_groups[0]["lr"]))
        if compile_it:
            assert cnt.frame_count == 2
        runs.append((params, opt, lrs))
    (pe, oe, lre), (pc, oc, lrc) = runs
    assert lre == lrc and len(set(lre)) > 10
    _assert_same(oc, pc, oe, pe, "WarmupCosine 20 steps")


def test_float_lr_recompiles_tensor_lr_does_not() -> None:
    """What the README says: a float lr is a constant of the graph, so each new value
    recompiles; the same schedule through a Tensor lr compiles twice in all."""
    counts = {}
    for kind in ("float", "tensor"):
        torch._dynamo.reset()
        params = _params()
        opt = fusedopt.AdamW(params, lr=0.01 if kind == "float" else torch.tensor(0.01))
        cnt = CompileCounterWithBackend("aot_eager")
        step = torch.compile(opt.step, backend=cnt, fullgraph=True)
        for i in range(5):
            for p in params:
                p.grad = torch.randn_like(p)
            if kind == "float":
                opt.param_groups[0]["lr"] = 0.01 / (i + 1)
            else:
                opt.param_groups[0]["lr"].fill_(0.01 / (i + 1))
            step()
        counts[kind] = cnt.frame_count
    assert counts == {"float": 6, "tensor": 2}


def test_param_without_grad_recompiles_once_per_set() -> None:
    """Changing which params have a grad changes the plan and recompiles (each set once
    with a plan being built, once with it cached); a set seen before recompiles nothing."""
    params = _params()
    opt = fusedopt.AdamW(params, lr=torch.tensor(0.01))
    cnt = CompileCounterWithBackend("aot_eager")
    step = torch.compile(opt.step, backend=cnt, fullgraph=True)
    expected = [1, 2, 3, 4, 5]  # first step, steady, params[1] frozen, frozen steady, unfrozen
    for i, freeze in enumerate([False, False, True, True, False]):
        for j, p in enumerate(params):
            p.grad = None if (freeze and j == 1) else torch.randn_like(p)
        step()
        assert cnt.frame_count == expected[i]
    count = cnt.frame_count
    for i in range(4):
        for j, p in enumerate(params):
            p.grad = None if (i % 2 and j == 1) else torch.randn_like(p)
        step()
    assert cnt.frame_count == count, "a param set seen before recompiled"


def _train_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    return model, x, y


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_training_step(compiler: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """forward + backward + opt.step() in one fullgraph compile (backward is traced with
    torch._dynamo.config.trace_autograd_ops); zero_grad stays outside (torch never traces
    Optimizer.zero_grad). Matches the eager loop."""
    if compiler == "inductor":
        pytest.importorskip("torch._inductor")
    monkeypatch.setattr(torch._dynamo.config, "trace_autograd_ops", True, raising=False)
    losses = {}
    params = {}
    for mode in ("eager", "compiled"):
        model, x, y = _train_setup()
        opt = fusedopt.AdamW(model.parameters(), lr=torch.tensor(0.01))
        sched = WarmupCosine(opt, warmup_steps=2, total_steps=10, device=True)

        def train_step(model=model, opt=opt, x=x, y=y) -> torch.Tensor:  # noqa: ANN001
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach()

        cnt = CompileCounterWithBackend(compiler)
        fn = (
            torch.compile(train_step, backend=cnt, fullgraph=True)
            if mode == "compiled"
            else train_step
        )
        out = []
        for _ in range(6):
            opt.zero_grad()
            out.append(fn())
            sched.step()
        if mode == "compiled":
            assert cnt.frame_count == 2
        losses[mode] = torch.stack(out)
        params[mode] = [p.detach().clone() for p in model.parameters()]
    assert losses["compiled"][-1] < losses["compiled"][0]
    # The compiled forward/backward may reassociate float sums: fp32 tolerance, loosened for
    # inductor's fused kernels.
    tol = dict(rtol=1e-5, atol=1e-6) if compiler == "aot_eager" else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["compiled"], losses["eager"], **tol)
    for a, b in zip(params["compiled"], params["eager"]):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize(
    "mixed",
    [{"master_weights": True}, {"stochastic_rounding": True, "state_dtype": torch.bfloat16}],
    ids=["master", "sr_bf16_state"],
)
def test_fullgraph_mixed_precision_matches_eager(mixed: dict) -> None:
    """bf16 params with master weights / stochastic rounding: the compiled step (which also
    creates the masters and seeds on its first call) == eager, bit for bit, without
    recompiling after the first step."""
    torch.manual_seed(0)
    base = [torch.randn(33, 7), torch.randn(5), torch.randn(1000)]
    eager_p = [b.bfloat16().requires_grad_() for b in base]
    comp_p = [b.bfloat16().requires_grad_() for b in base]
    torch.manual_seed(1)
    _check_compiled_is_eager(
        lambda ps: fusedopt.AdamW(ps, lr=torch.tensor(0.01), **mixed), eager_p, comp_p
    )


def _check_compiled_is_eager(make, eager_p, comp_p) -> None:  # noqa: ANN001
    """``make(params)``'s eager step and its fullgraph-compiled one on copies of the params, six
    steps: params and every state tensor equal bit for bit after each; two compilations."""
    eager, comp = make(eager_p), make(comp_p)
    cnt = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(comp.step, backend=cnt, fullgraph=True)
    for i in range(6):
        grads = [torch.randn_like(p) for p in eager_p]
        for p, q, g in zip(eager_p, comp_p, grads):
            p.grad, q.grad = g, g.clone()
        torch.manual_seed(2)  # the seeds drawn on the first step: the same in both
        eager.step()
        torch.manual_seed(2)
        compiled()
        for j, (a, b) in enumerate(zip(eager_p, comp_p)):
            assert torch.equal(a, b), f"step {i + 1} param[{j}]"
            assert eager.state[a].keys() == comp.state[b].keys()
            for k, v in eager.state[a].items():
                assert torch.equal(v, comp.state[b][k]), f"step {i + 1} state[{j}][{k}]"
    assert cnt.frame_count == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_schedule_free_compiled_across_train_eval_matches_schedulefree(backend: str) -> None:
    """ScheduleFreeAdamW's compiled step (its group counters are tensors the graph reads and
    advances) against schedulefree's eager one: 30 steps through the warmup, with eval()/train()
    round trips between compiled steps, 2 compilations in all; a compiled step in eval mode
    raises with schedulefree's message and changes nothing; the checkpoint's counters are
    schedulefree's numbers."""
    kw = {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 0.05, "warmup_steps": 8, "r": 0.5}
    ours_p, theirs_p = _params(), _params()
    ours = fusedopt.ScheduleFreeAdamW(ours_p, backend=backend, **kw)
    theirs = schedulefree.AdamWScheduleFree(theirs_p, **kw)
    cnt = CompileCounterWithBackend("aot_eager")
    step = torch.compile(ours.step, backend=cnt, fullgraph=True)
    for opt in (ours, theirs):
        opt.train()
    for i in range(30):
        grads = [torch.randn_like(p) for p in ours_p]
        for p, q, g in zip(ours_p, theirs_p, grads):
            p.grad, q.grad = g, g.clone()  # schedulefree divides its grads in place
        step()
        theirs.step()
        if i % 10 == 9:
            for switch in ("eval", "train"):
                getattr(ours, switch)()
                getattr(theirs, switch)()
        for j, (p, q) in enumerate(zip(ours_p, theirs_p)):
            assert_close_ulp(p.detach(), q.detach(), TOL, f"step {i + 1} param[{j}]")
            assert_close_ulp(ours.state[p]["z"], theirs.state[q]["z"], TOL, f"step {i + 1} z")
        assert cnt.frame_count == min(i + 1, 2), f"recompiled at step {i + 1}"
    ours.eval()
    theirs.eval()
    sd, ref = ours.state_dict()["param_groups"][0], theirs.state_dict()["param_groups"][0]
    for key in ("k", "scheduled_lr", "lr_max", "weight_sum", "train_mode"):
        assert type(sd[key]) is type(ref[key]) and sd[key] == ref[key], key
    # In eval mode: schedulefree's Exception, from dynamo's error under fullgraph (dynamo
    # reports an uncaught exception as Unsupported there, with the message), itself without.
    before = [p.detach().clone() for p in ours_p]
    with pytest.raises(Exception, match="not in train mode"):
        step()
    with pytest.raises(Exception, match="not in train mode") as caught:
        torch.compile(ours.step, backend="aot_eager")()
    assert type(caught.value) is Exception
    assert all(torch.equal(p, b) for p, b in zip(ours_p, before))
    assert ours.state_dict()["param_groups"][0]["k"] == 30


def _muon(backend: str, params: list[torch.Tensor], aux: list[torch.Tensor] | None):
    if aux is None:
        return fusedopt.Muon(params, lr=torch.tensor(0.02), weight_decay=0.1, backend=backend)
    groups = [
        {"params": params, "use_muon": True, "lr": torch.tensor(0.02), "weight_decay": 0.1},
        {"params": aux, "use_muon": False, "lr": torch.tensor(3e-3), "weight_decay": 0.01},
    ]
    return fusedopt.MuonWithAuxAdam(groups, backend=backend)


@pytest.mark.parametrize("with_adam", [False, True], ids=["muon", "muon_with_aux_adam"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_muon_fullgraph_matches_eager_and_never_recompiles(backend: str, with_adam: bool) -> None:
    """Muon (2-D params only: its own case, not the registry's 1-D ones) and MuonWithAuxAdam:
    the momentum kernel, the batched Newton-Schulz matmuls and the update kernels in one graph;
    compiled == eager (the same ATen matmuls run) with the lrs written every step, 2
    compilations in all."""
    shapes = [(8, 4), (4, 8), (8, 4), (5, 3)]

    def make() -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        torch.manual_seed(0)
        mats = [torch.randn(s).requires_grad_() for s in shapes]
        aux = [torch.randn(7).requires_grad_(), torch.randn(3, 2).requires_grad_()]
        return mats, aux if with_adam else None

    (eager_m, eager_a), (comp_m, comp_a) = make(), make()
    eager, comp = _muon(backend, eager_m, eager_a), _muon(backend, comp_m, comp_a)
    eager_p = eager_m + (eager_a or [])
    comp_p = comp_m + (comp_a or [])
    cnt = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(comp.step, backend=cnt, fullgraph=True)
    for i in range(8):
        for opt in (eager, comp):
            for group in opt.param_groups:
                group["lr"].mul_(0.9)
        for p, q in zip(eager_p, comp_p):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        eager.step()
        compiled()
        assert cnt.frame_count == min(i + 1, 2), f"recompiled at step {i + 1}"
    _assert_same(comp, comp_p, eager, eager_p, "8 steps")


def test_8bit_states_fullgraph_matches_eager() -> None:
    """AdamW with 8-bit states (Note [8-bit optimizer states] in fusedopt/optim/_q8.py; the
    param in 8 bits here) compiles with fullgraph, its CPU op through its fake kernel. Lion's
    and SGD's 8-bit steps compile and equal eager as well (measured with their reference
    traced, before their CPU kernels: 6 s a compile here, too long for the suite)."""
    backend = "cpu" if fusedopt.backends()["cpu"].available else "reference"
    q8 = {"state_dtype": "int8_blockwise", "min_8bit_size": 1, "backend": backend}
    torch.manual_seed(0)
    base = torch.randn(300)  # two blocks, the second partial; one param keeps the traces short
    _check_compiled_is_eager(
        lambda ps: fusedopt.AdamW(ps, lr=torch.tensor(0.01), **q8),
        [base.clone().requires_grad_()],
        [base.clone().requires_grad_()],
    )
