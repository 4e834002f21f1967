"""fusedopt vs torch.optim (for-loop implementation), element by element after every step.

The matrix is declared once, in tests/optim_info.py: optimizer config x backend x dtype. Every run uses the parameter
set of helpers.make_params (odd sizes, 0-d, transposed/sliced params, expanded and transposed
grads, a frozen param, an empty param last).
"""

from __future__ import annotations

import pytest
import torch

import fusedopt
import helpers
from helpers import DTYPE_IDS, DTYPES, cpu_levels, flagged_fractions, run_parity
from optim_info import BACKENDS, cases


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("info,name,config", cases("parity"))
def test_matches_torch_forloop(info, name, config, backend, dtype):
    kwargs = config.kwargs
    run_parity(
        lambda ps: info.cls(ps, backend=backend, **kwargs),
        lambda ps: info.torch_cls(ps, foreach=False, **kwargs),
        dtype,
        make_ref64=lambda ps: info.cls(ps, backend="reference", **kwargs),
    )


@pytest.mark.parametrize("info,name,config", cases("tensor_lr"))
def test_tensor_lr(info, name, config):
    kwargs = config.kwargs
    kw = dict(kwargs, lr=torch.tensor(kwargs["lr"]))
    run_parity(
        lambda ps: info.cls(ps, **kw),
        lambda ps: info.torch_cls(ps, foreach=False, **kwargs),
        torch.float32,
    )


@pytest.mark.parametrize("level", cpu_levels())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_every_simd_level(level, dtype):
    """The AVX-512, AVX2 and portable loops each match torch (selected at run time)."""
    from fusedopt._ext import _C

    before = _C.cpu_capability()
    _C.set_cpu_capability(level)
    try:
        assert _C.cpu_capability() == level
        for case in cases("simd"):
            info, _, config = case.values
            ours, theirs, kwargs = info.cls, info.torch_cls, config.kwargs
            run_parity(
                lambda ps, o=ours, k=kwargs: o(ps, backend="cpu", **k),
                lambda ps, t=theirs, k=kwargs: t(ps, foreach=False, **k),
                dtype,
                steps=3,
                make_ref64=lambda ps, o=ours, k=kwargs: o(ps, backend="reference", **k),
            )
    finally:
        _C.set_cpu_capability(before)


WRONG = [
    # fp32 resolves small errors in one step
    pytest.param(torch.float32, {"lr": 1e-2}, {"betas": (0.9, 0.99)}, id="fp32-beta2"),
    pytest.param(torch.float32, {"lr": 1e-2}, {"lr": 1.01e-2}, id="fp32-lr+1%"),
    pytest.param(torch.float32, {"lr": 1e-2}, {"eps": 1e-6}, id="fp32-eps"),
    pytest.param(torch.float32, {"lr": 1e-2}, {"weight_decay": 0.11}, id="fp32-wd"),
    # bf16 has 8 significant bits: a single step only shows errors above its resolution
    pytest.param(torch.bfloat16, {"lr": 1e-1}, {"betas": (0.9, 0.99)}, id="bf16-beta2"),
    pytest.param(torch.bfloat16, {"lr": 1e-1}, {"lr": 1.2e-1}, id="bf16-lr+20%"),
    pytest.param(torch.bfloat16, {"lr": 1e-1}, {"betas": (0.8, 0.999)}, id="bf16-beta1"),
]


@pytest.mark.parametrize("dtype,base,wrong", WRONG)
def test_checker_catches_a_wrong_update(dtype, base, wrong):
    """A test that cannot fail is worse than none: a slightly wrong optimizer must fail."""
    kwargs = dict(base, weight_decay=0.1)
    with pytest.raises(AssertionError):
        run_parity(
            lambda ps: fusedopt.AdamW(ps, **dict(kwargs, **wrong)),
            lambda ps: torch.optim.AdamW(ps, foreach=False, **kwargs),
            dtype,
            steps=2,
            make_ref64=lambda ps: fusedopt.AdamW(ps, backend="reference", **kwargs),
        )


@pytest.mark.parametrize("info,name,config", cases("wrong_lr"))
def test_checker_catches_a_1pct_lr_error(info, name, config, monkeypatch):
    """In fp32 at lr 1e-3, an lr 1% too large must be flagged by most elements of the big param
    at every step, not by a lucky few. An element's error is 1% of its step, lr*|update|; the
    bound is 1.3e-6 (|p| + |result| + |step|): elements whose update is under about a quarter of
    |p| may pass (15-26% of them with randn grads, the most with SGD's dampened momentum), all
    others must be flagged."""
    fractions = flagged_fractions(
        monkeypatch,
        helpers,
        "assert_close_ulp",
        r"(\d+)/(\d+) elements differ",
        lambda: run_parity(
            lambda ps: info.cls(ps, lr=1.01e-3, **config.kwargs),
            lambda ps: info.torch_cls(ps, lr=1e-3, foreach=False, **config.kwargs),
            torch.float32,
            steps=3,
        ),
    )
    for t in range(1, 4):
        what = f"step {t} param[6]"  # make_params' 40001-element param
        assert fractions.get(what, 0.0) >= 2 / 3, (what, fractions.get(what))


def test_params_at_different_step_counts_in_one_call():
    """AdamW's CPU op computes the per-tensor scalars once per run of equal step counts
    (csrc/cpu/adam.cpp): params of one call whose counts differ still get their own."""
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(37, generator=g, dtype=torch.float64) for _ in range(5)]
    ours = [p.clone().requires_grad_() for p in base]
    theirs = [p.clone().requires_grad_() for p in base]
    opt = fusedopt.AdamW(ours, lr=1e-2, weight_decay=0.1, backend="cpu")
    ref = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(6):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            grad = torch.randn(37, generator=g, dtype=torch.float64)
            skip = step < 4 and (i + step) % 3 == 0
            a.grad = None if skip else grad.clone()
            b.grad = None if skip else grad.clone()
        opt.step()
        ref.step()
    assert [float(opt.state[p]["step"]) for p in ours] == [4.0, 5.0, 5.0, 4.0, 5.0]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-16)
