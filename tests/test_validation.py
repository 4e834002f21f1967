"""Bad arguments: the same exception type and message as torch.optim, before anything changes."""

from __future__ import annotations

import inspect

import pytest
import torch

import fusedopt
from optim_info import OPTIMS, with_torch

CASES = [
    pytest.param(info, kw, exc, id=f"{info.name}-{kw}")
    for info in with_torch()
    for kw, exc in info.bad_args
]


def _message(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return type(e), str(e)
    return None, None


@pytest.mark.parametrize("info,kwargs,exc", CASES)
def test_same_error_as_torch(info, kwargs, exc):
    p = [torch.randn(3, requires_grad=True)]
    t_type, t_msg = _message(lambda: info.torch_cls(p, **kwargs))
    o_type, o_msg = _message(lambda: info.cls(p, **kwargs))
    assert t_type is exc, "the case must be an error for torch.optim too"
    assert (o_type, o_msg) == (t_type, t_msg)


# The twins that take torch.optim's `differentiable` (schedulefree's and torch's Adafactor do not:
# they raise TypeError for it, as ours do).
_DIFFERENTIABLE = [
    i.cls for i in with_torch() if "differentiable" in inspect.signature(i.torch_cls).parameters
]


@pytest.mark.parametrize("cls", _DIFFERENTIABLE, ids=lambda c: c.__name__)
def test_differentiable_is_refused(cls):
    with pytest.raises(RuntimeError, match="does not support `differentiable`"):
        cls([torch.randn(2, requires_grad=True)], differentiable=True)


@pytest.mark.parametrize(
    "info", [i for i in with_torch() if i.cls not in _DIFFERENTIABLE], ids=lambda i: i.name
)
def test_differentiable_is_refused_as_by_the_twin(info):
    p = [torch.randn(2, requires_grad=True)]
    with pytest.raises(TypeError, match="differentiable"):
        info.torch_cls(p, differentiable=True)
    with pytest.raises(TypeError, match="differentiable"):
        info.cls(p, differentiable=True)


@pytest.mark.parametrize(
    "info,kwargs,match",
    [
        pytest.param(info, kw, m, id=f"{info.name}-{m.split(':')[0]}")
        for info in OPTIMS
        for kw, m in info.bad_args_own
    ],
)
def test_bad_args_raise(info, kwargs, match):
    """Optimizers torch.optim lacks: a ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=match):
        info.cls([torch.zeros(2, requires_grad=True)], **kwargs)


def test_sparse_grad_same_error_as_torch_adam():
    ours_p = torch.randn(4, 3, requires_grad=True)
    theirs_p = ours_p.detach().clone().requires_grad_()
    g = torch.randn(4, 3).to_sparse()
    ours_p.grad, theirs_p.grad = g, g.clone()
    _, t_msg = _message(torch.optim.Adam([theirs_p]).step)
    before = ours_p.detach().clone()
    with pytest.raises(RuntimeError) as info:
        fusedopt.Adam([ours_p]).step()
    assert str(info.value) == t_msg
    assert torch.equal(ours_p.detach(), before)


def test_sparse_grad_sgd_raises_like_torch_fused():
    p = torch.randn(4, requires_grad=True)
    p.grad = torch.randn(4).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        fusedopt.SGD([p], lr=0.1).step()


def test_complex_params_are_refused_clearly():
    p = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    p.grad = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        fusedopt.AdamW([p]).step()


def test_a_failing_group_leaves_earlier_groups_untouched():
    """Every group is validated before any group is updated."""
    a = torch.randn(5, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    opt = fusedopt.AdamW([{"params": [a]}, {"params": [b]}])
    a.grad, b.grad = torch.randn(5), torch.randn(5).to_sparse()
    before = a.detach().clone()
    with pytest.raises(RuntimeError):
        opt.step()
    assert torch.equal(a.detach(), before)
    st = opt.state.get(a, {})  # lazily initialised state may exist, but nothing stepped
    assert "step" not in st or st["step"].item() == 0
    assert "exp_avg" not in st or not st["exp_avg"].any()


@pytest.mark.parametrize("backend", ["bogus", "CPU", ""])
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match="Invalid backend"):
        fusedopt.AdamW([torch.randn(2, requires_grad=True)], backend=backend)


@pytest.mark.parametrize(
    "backend", [b for b, info in fusedopt.backends().items() if not info.available]
)
def test_unavailable_backend_says_why(backend):
    reason = fusedopt.backends()[backend].reason
    with pytest.raises(RuntimeError, match=f"backend '{backend}' is not available: "):
        fusedopt.AdamW([torch.randn(2, requires_grad=True)], backend=backend)
    assert reason
