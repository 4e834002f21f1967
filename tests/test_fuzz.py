"""Property-based differential tests: hypothesis draws an optimizer, its options, the
mixed-precision mode, dtypes, shapes, layouts, grads (None on some steps, all zero, NaN/inf) and
a backend; every step is compared with torch.optim's for-loop where torch has the optimizer and
the configuration (plain dtypes, no AMP scale, no in-step clipping), else with
fusedopt.reference in the same configuration, element by element and re-synced after every
step (Note [re-sync after every step] in helpers.py).

Profiles: by default (CI) a fixed, derandomized set of examples (no example database, so a run
cannot depend on an earlier one); ``FUSEDOPT_FUZZ=long`` draws fresh random examples, many more
of them (``FUSEDOPT_FUZZ_EXAMPLES=N``, default 6,000):

    FUSEDOPT_FUZZ=long python -m pytest tests/test_fuzz.py -k fuzz --hypothesis-show-statistics
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import fusedopt
from fusedopt import _dispatch
from fusedopt._ext import _C
from helpers import TOL_VS_TORCH, Tol, assert_close_ulp, copy_state, cpu_levels, state_tensors
from optim_info import with_torch

LONG = os.environ.get("FUSEDOPT_FUZZ") == "long"


def _settings(examples: int) -> settings:
    common = {
        "deadline": None,
        "database": None,
        "suppress_health_check": list(HealthCheck),
    }
    if LONG:
        n = int(os.environ.get("FUSEDOPT_FUZZ_EXAMPLES", 40 * examples))
        return settings(max_examples=n, derandomize=False, print_blob=True, **common)
    return settings(max_examples=examples, derandomize=True, **common)


BACKENDS = ["reference"]
if _C is not None:
    BACKENDS += ["cpu"]
    if hasattr(_C, "sim"):
        BACKENDS += ["sim"]  # the CUDA block bodies, simulated on the CPU
if fusedopt.backends()["triton"].available:
    BACKENDS += ["triton"]

HALF = (torch.float16, torch.bfloat16)
TORCH_HAS = {i.cls.__name__: i.torch_cls for i in with_torch()}

# Small sim launch shapes, so that a few dozen elements already span several blocks and launches.
SIM_CONFIGS = [
    {"chunk_size": 16, "threads": 4, "max_slots": 3, "max_blocks": 5},
    {"chunk_size": 48, "threads": 8, "max_blocks": 7, "scalars_by_pointer": True},
    {"chunk_size": 32, "threads": 1, "max_slots": 1, "max_blocks": 1, "scalars_by_pointer": True},
]


def _sim_kernel(op: str):  # noqa: ANN202
    """A kernel with the real op's Python signature running the simulated CUDA op."""
    schema = getattr(torch.ops.fusedopt, op).default._schema
    names = [a.name for a in schema.arguments]
    defaults = [a.default_value if a.has_default_value() else None for a in schema.arguments]
    sim_op = getattr(torch.ops.fusedopt_sim, op)

    def fn(*args, **kwargs):  # noqa: ANN202, ANN002, ANN003
        rest = zip(names[len(args) :], defaults[len(args) :])
        return sim_op(*args, *[kwargs.get(n, d) for n, d in rest])

    return fn


@contextlib.contextmanager
def _backend(name: str, sim_config: dict, level: str | None = None):  # noqa: ANN201
    """The backend argument for ``name``; "sim" runs backend="cpu" steps on the simulation;
    ``level``: the CPU kernels' SIMD level."""
    if name == "cpu" and level is not None:
        saved = _C.cpu_capability()
        _C.set_cpu_capability(level)
        try:
            yield name
        finally:
            _C.set_cpu_capability(saved)
        return
    if name != "sim":
        yield name
        return
    _C.sim.reset()
    _C.sim.configure(**sim_config)
    real = _dispatch.kernel
    try:
        with (
            mock.patch.object(
                _dispatch, "kernel", lambda b, op: _sim_kernel(op) if b == "cpu" else real(b, op)
            ),
            mock.patch.object(_dispatch, "step_plan", lambda *a: None),
        ):
            yield "cpu"
    finally:
        _C.sim.reset()


# -- drawing a case -------------------------------------------------------------------------------
SHAPES = [(), (0,), (1,), (3,), (7,), (13,), (37,), (3, 5), (5, 7), (67,), (131,)]
BIG = [(9, 41), (2053,)]  # many SIMD tiles; not under the Triton interpreter (slow)


@st.composite
def _hyper(draw, name: str) -> dict:
    kw: dict = {"lr": draw(st.sampled_from([1e-3, 1.7e-2, 0.1]))}
    wd = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    maximize = draw(st.booleans())
    if name in ("Adam", "AdamW"):
        kw.update(
            betas=(draw(st.sampled_from([0.0, 0.5, 0.9])), draw(st.sampled_from([0.9, 0.999]))),
            eps=draw(st.sampled_from([1e-8, 1e-3])),
            amsgrad=draw(st.booleans()),
        )
    elif name == "SGD":
        momentum = draw(st.sampled_from([0.0, 0.0, 0.9]))
        nesterov = momentum > 0 and draw(st.booleans())
        dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.5]))
        kw.update(momentum=momentum, nesterov=nesterov, dampening=dampening)
    elif name == "Lion":
        kw.update(betas=(draw(st.sampled_from([0.9, 0.5])), draw(st.sampled_from([0.99, 0.9]))))
    elif name == "LAMB":
        kw.update(
            betas=(draw(st.sampled_from([0.0, 0.9])), draw(st.sampled_from([0.9, 0.999]))),
            eps=draw(st.sampled_from([1e-6, 1e-3])),
            bias_correction=draw(st.booleans()),
            trust_clip=draw(st.sampled_from([None, 1.0, 10.0])),
        )
    else:  # Sophia
        kw.update(
            betas=(draw(st.sampled_from([0.965, 0.5])), draw(st.sampled_from([0.99, 0.9]))),
            rho=draw(st.sampled_from([0.04, 1.0])),
        )
    kw.update(weight_decay=wd, maximize=maximize)
    return kw


@st.composite
def _case(draw) -> dict:
    name = draw(st.sampled_from(["Adam", "AdamW", "SGD", "Lion", "LAMB", "Sophia"]))
    backend = draw(st.sampled_from(BACKENDS))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    mode = "plain"
    if dtype != torch.float64:
        modes = ["plain", "plain", "state_dtype"]
        if dtype in HALF:
            modes.append("master_weights")
        if dtype == torch.bfloat16:
            modes.append("stochastic_rounding")
        mode = draw(st.sampled_from(modes))
    opts: dict = {}
    if mode == "state_dtype":
        opts["state_dtype"] = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    elif mode != "plain":
        opts[mode] = True
    kw = draw(_hyper(name))
    lr_dtype = draw(st.sampled_from([None, None, torch.float32, torch.float64, *HALF]))
    if lr_dtype is not None:
        kw["lr"] = torch.tensor(kw["lr"], dtype=lr_dtype)
    if draw(st.integers(0, 3)) == 0:
        opts["max_grad_norm"] = draw(st.sampled_from([0.5, 1e3]))
    amp = draw(st.sampled_from([None, None, None, "scale", "found_inf"]))
    shapes = SHAPES if backend == "triton" else SHAPES + BIG
    n = draw(st.integers(1, 4))
    params = []
    for _ in range(n):
        shape = draw(st.sampled_from(shapes))
        # Half-precision runs may hold fp32 params in the same group (two buckets).
        pdt = dtype if dtype == torch.float64 or draw(st.integers(0, 4)) != 0 else torch.float32
        layout = draw(st.sampled_from(["contiguous", "transposed", "strided", "offset"]))
        glayout = draw(st.sampled_from(["contiguous", "transposed", "strided", "expanded"]))
        params.append((shape, pdt, layout, glayout))
    steps = draw(st.integers(1, 3))
    # Per step and param: "randn", "none" (no grad this step), "zero", "nonfinite".
    grads = [
        [draw(st.sampled_from(["randn"] * 6 + ["none", "zero", "nonfinite"])) for _ in params]
        for _ in range(steps)
    ]
    hessian = [name == "Sophia" and draw(st.booleans()) for _ in range(steps)]
    seed = draw(st.integers(0, 2**31 - 1))
    sim_config = draw(st.sampled_from(SIM_CONFIGS))
    level = draw(st.sampled_from(cpu_levels() or [None]))
    return {
        "name": name,
        "backend": backend,
        "mode": mode,
        "opts": opts,
        "kw": kw,
        "amp": amp,
        "params": params,
        "grads": grads,
        "hessian": hessian,
        "seed": seed,
        "sim_config": sim_config,
        "level": level,
    }


def _layout(values: torch.Tensor, layout: str, gen: torch.Generator) -> torch.Tensor:
    """``values``' numbers in a tensor of its shape with the given memory layout."""
    shape = values.shape
    if layout == "transposed" and values.dim() == 2:
        return values.t().contiguous().t()
    if layout == "strided" and values.dim() >= 1:
        wide = torch.zeros((*shape[:-1], 2 * shape[-1] + 1), dtype=values.dtype)
        out = wide[..., 1::2]
        out.copy_(values)
        return out
    if layout == "offset":
        flat = torch.zeros(values.numel() + 3, dtype=values.dtype)
        out = flat[3:].view(shape)  # storage offset 3: misaligned for vector loads
        out.copy_(values)
        return out
    if layout == "expanded" and values.dim() >= 1 and values.numel() > 0:
        row = torch.randn((1, *shape[1:]), generator=gen, dtype=torch.float64).to(values.dtype)
        return row.expand(shape)
    return values.clone()


def _grad(
    kind: str, shape: torch.Size, dtype: torch.dtype, layout: str, gen: torch.Generator
) -> torch.Tensor | None:
    if kind == "none":
        return None
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "zero":
        g.zero_()
    elif kind == "nonfinite" and g.numel():
        idx = torch.randint(0, g.numel(), (2,), generator=gen)
        g.view(-1)[idx[0]] = math.nan
        g.view(-1)[idx[1]] = -math.inf if int(idx[1]) % 2 else math.inf
    g = g.to(dtype)
    if layout == "expanded":
        return _layout(g, "expanded", gen) if kind == "randn" else g
    return _layout(g, layout, gen)


def _make(case: dict, backend: str, params: list[torch.Tensor], judge: str):  # noqa: ANN202
    kw = dict(case["kw"])
    if torch.is_tensor(kw["lr"]):
        kw["lr"] = kw["lr"].clone()
    if judge == "torch":
        return TORCH_HAS[case["name"]](params, foreach=False, **kw)
    return getattr(fusedopt, case["name"])(params, backend=backend, **kw, **case["opts"])


def _tol(t: torch.Tensor) -> Tol:
    return TOL_VS_TORCH.get(t.dtype, Tol(0, 0, "exact"))


def _compare(case: dict, ours, ours_p, judge, judge_p, step: int) -> None:  # noqa: ANN001
    a = state_tensors(ours, ours_p)
    b = state_tensors(judge, judge_p)
    assert [k for k, _ in a] == [k for k, _ in b], f"step {step}: state keys differ"
    for (name, x), (_, y) in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape, name
        what = f"step {step} {name}"
        if name.endswith("[sr_seed]") or name.endswith("[step]"):
            assert torch.equal(x, y.to(x.device)), what
            continue
        if case["name"] in ("Lion", "Sophia") and x.dtype in HALF:
            # sign(c) flips where c is within rounding of 0 (math.h, lion_element): at most
            # one element in a few hundred, each off by 2 lr.
            bad = ~torch.isclose(x.double(), y.double(), rtol=1e-2, atol=1e-2, equal_nan=True)
            assert int(bad.sum()) <= max(1, x.numel() // 200), what
            continue
        assert_close_ulp(x, y.to(x.device), _tol(x), what)


def _run(case: dict) -> None:
    gen = torch.Generator().manual_seed(case["seed"])
    name, mode = case["name"], case["mode"]
    plain = mode == "plain" and "max_grad_norm" not in case["opts"] and case["amp"] is None
    torch_judge = (
        name in TORCH_HAS
        and plain
        and all(dt in (torch.float32, torch.float64) for _, dt, _, _ in case["params"])
    )
    if case["backend"] == "reference" and not torch_judge:
        assume(False)  # the reference against itself checks nothing
    base = []
    for shape, dtype, layout, _ in case["params"]:
        v = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        base.append(_layout(v, layout, gen))

    def leafs() -> list[torch.Tensor]:
        out = []
        for p in base:
            n = p.untyped_storage().nbytes() // p.element_size()
            c = torch.zeros(n, dtype=p.dtype).as_strided(p.size(), p.stride(), p.storage_offset())
            c.copy_(p)
            out.append(c.requires_grad_())
        return out

    ours_p, judge_p = leafs(), leafs()
    with _backend(case["backend"], case["sim_config"], case.get("level")) as backend:
        ours = _make(case, backend, ours_p, "ours")
        judge = _make(case, "reference", judge_p, "torch" if torch_judge else "reference")
        for step, (kinds, hess) in enumerate(zip(case["grads"], case["hessian"]), start=1):
            grads = [
                _grad(k, p.shape, p.dtype, gl, gen)
                for k, p, (_, _, _, gl) in zip(kinds, base, case["params"])
            ]
            for ps in (ours_p, judge_p):
                for p, g in zip(ps, grads):
                    p.grad = g
            # Stochastic-rounding seeds are drawn from torch's generator when a plan is built
            # (by update_hessian or step): the same for both.
            if hess:
                torch.manual_seed(step)
                ours.update_hessian()
                torch.manual_seed(step)
                judge.update_hessian()
            if case["amp"] is not None:
                scale = torch.tensor(1024.0)
                found = torch.tensor(1.0 if case["amp"] == "found_inf" and step == 1 else 0.0)
                for o in (ours, judge):
                    o.grad_scale, o.found_inf = scale, found
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # e.g. SGD's all-None-grads note
                    torch.manual_seed(step)
                    ours.step()
                    torch.manual_seed(step)
                    judge.step()
            finally:
                for o in (ours, judge):
                    o.__dict__.pop("grad_scale", None)
                    o.__dict__.pop("found_inf", None)
            _compare(case, ours, ours_p, judge, judge_p, step)
            if "max_grad_norm" in case["opts"] and ours.last_grad_norm is not None:
                assert torch.allclose(
                    ours.last_grad_norm, judge.last_grad_norm, rtol=1e-6, equal_nan=True
                )
            copy_state(ours, ours_p, judge, judge_p)


@_settings(examples=150)
@given(_case())
def test_fuzz_matches_torch_or_reference(case):
    note(repr(case))
    _run(case)


# -- cases found by fuzzing, and the edges the issue lists -------------------------------------
def _case_of(name: str, backend: str, dtype: torch.dtype, **over) -> dict:  # noqa: ANN003
    kw = {"lr": 1e-2, "weight_decay": 0.1}
    if name == "SGD":
        kw["momentum"] = 0.9
    case = {
        "name": name,
        "backend": backend,
        "mode": "plain",
        "opts": {},
        "kw": kw,
        "amp": None,
        "params": [
            ((37,), dtype, "contiguous", "contiguous"),
            ((5, 7), dtype, "transposed", "expanded"),
            ((), dtype, "offset", "contiguous"),
        ],
        "grads": [["randn"] * 3] * 3,
        "hessian": [False, name == "Sophia", False],
        "seed": 1,
        "sim_config": SIM_CONFIGS[0],
    }
    for k, v in over.items():
        case[k] = v if k != "kw" else dict(kw, **v)
    return case


def _pairs(names: list[str]) -> list[tuple[str, str]]:
    """(optimizer, backend) pairs with a judge other than the backend itself."""
    return [(n, b) for n in names for b in BACKENDS if n in TORCH_HAS or b != "reference"]


@pytest.mark.parametrize(
    "lr_dtype",
    [torch.float32, torch.float16, torch.bfloat16, torch.float64],
    ids=["lr32", "lr16", "lrbf16", "lr64"],
)
@pytest.mark.parametrize("pdtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name,backend", _pairs(["Adam", "AdamW", "SGD", "Lion", "Sophia"]))
def test_tensor_lr_arithmetic_matches_torch(name, backend, pdtype, lr_dtype):
    """Found by fuzzing: fp64 params with an fp32 Tensor lr were 2e-8 (of the step) away from
    torch, which computes 1 - lr*wd and lr/bc1 in the lr's dtype, where we used fp64 (Note
    [Tensor lr arithmetic] in csrc/include/fusedopt/math.h); with a bf16 lr torch's 1 - lr*wd is
    exactly 1. Adam, AdamW, SGD against torch, Lion and Sophia against the reference."""
    lr = torch.tensor(1.2345e-3, dtype=torch.float64).to(lr_dtype)
    _run(_case_of(name, backend, pdtype, kw={"lr": lr, "weight_decay": 0.3}))


@pytest.mark.parametrize("name,backend", _pairs(["Adam", "AdamW", "SGD", "Lion", "LAMB", "Sophia"]))
def test_all_zero_grads(name, backend):
    _run(_case_of(name, backend, torch.float32, grads=[["zero"] * 3] * 3))


def _dup_run(name: str, backend: str, judge: str) -> None:
    torch.manual_seed(3)
    p0 = torch.randn(37, dtype=torch.float64)
    a, b = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    kw = {"lr": 1e-2, "momentum": 0.5} if name == "SGD" else {"lr": 1e-2}
    with _backend(backend, SIM_CONFIGS[0]) as be:
        with pytest.warns(UserWarning, match="duplicate parameters"):
            ours = getattr(fusedopt, name)([a, a], backend=be, **kw)
        with pytest.warns(UserWarning, match="duplicate parameters"):
            if judge == "torch":
                theirs = TORCH_HAS[name]([b, b], foreach=False, **kw)
            else:
                theirs = getattr(fusedopt, name)([b, b], backend="reference", **kw)
        for _ in range(3):
            g = torch.randn(37, dtype=torch.float64)
            a.grad, b.grad = g, g.clone()
            ours.step()
            theirs.step()
            _compare({"name": name}, ours, [a], theirs, [b], 0)


@pytest.mark.parametrize("name,backend", _pairs(["AdamW", "SGD", "Lion", "LAMB"]))
def test_param_listed_twice_is_stepped_twice_as_torch(name, backend):
    """torch warns and steps a param listed twice in a group twice, its state shared. One
    kernel updating the same memory twice would race; found by fuzzing: the Triton backend
    counted the step once and AdamW's update went wrong by 7e-2."""
    _dup_run(name, backend, "torch" if name in TORCH_HAS else "reference")


@pytest.mark.parametrize("name", ["AdamW", "SGD", "Lion"])
def test_params_on_cpu_and_meta_in_one_group(name):
    """torch's for-loop steps a group holding CPU and meta params; so does backend="auto" (the
    meta bucket on the reference, its step counter on the CPU as torch keeps it), where it
    raised "Tensor.item() cannot be called on meta tensors". An explicit backend="cpu" cannot
    update meta tensors and says so."""
    torch.manual_seed(0)
    a = torch.randn(5, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    q = torch.randn(5, device="meta", requires_grad=True)
    ours = getattr(fusedopt, name)([a, q], lr=1e-2)
    theirs = (TORCH_HAS.get(name) or getattr(fusedopt, name))([b], lr=1e-2)
    for _ in range(2):
        g = torch.randn(5)
        a.grad, b.grad, q.grad = g, g.clone(), torch.empty(5, device="meta")
        ours.step()
        theirs.step()
    assert_close_ulp(a.detach(), b.detach(), TOL_VS_TORCH[torch.float32], "cpu param")
    assert q.device.type == "meta"
    if name != "SGD":
        assert ours.state[q]["step"].device.type == "cpu" and ours.state[q]["step"].item() == 2
    with pytest.raises(RuntimeError, match="cannot update tensors on meta"):
        getattr(fusedopt, name)([a, q], lr=1e-2, backend="cpu").step()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_requires_grad_false_params(name, backend):
    """As torch.optim: a param that does not require grad is accepted, left alone (no state)
    while it has no grad, and stepped like any other once a grad is set by hand."""
    torch.manual_seed(0)
    p0 = torch.randn(17)
    a, b = p0.clone(), p0.clone()
    kw = {"lr": 1e-2, "momentum": 0.9} if name == "SGD" else {"lr": 1e-2}
    with _backend(backend, SIM_CONFIGS[1]) as be:
        ours = getattr(fusedopt, name)([a], backend=be, **kw)
        theirs = TORCH_HAS[name]([b], foreach=False, **kw)
        ours.step()
        theirs.step()
        assert torch.equal(a, p0) and not ours.state
        for _ in range(2):
            g = torch.randn(17)
            a.grad, b.grad = g, g.clone()
            ours.step()
            theirs.step()
            _compare({"name": name}, ours, [a], theirs, [b], 0)
