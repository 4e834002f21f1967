"""Bad arguments: the same exception type and message as torch.optim, before anything changes."""

from __future__ import annotations

import pytest
import torch

import fusedopt

ADAM_BAD = [
    ({"lr": -1.0}, ValueError),
    ({"lr": torch.tensor([1e-3, 1e-3])}, ValueError),
    ({"eps": -1e-8}, ValueError),
    ({"betas": (1.0, 0.999)}, ValueError),
    ({"betas": (0.9, -0.1)}, ValueError),
    ({"betas": (0.9, torch.tensor(0.999))}, ValueError),
    ({"weight_decay": -0.1}, ValueError),
    ({"fused": True, "foreach": True}, RuntimeError),
]
SGD_BAD = [
    ({"lr": -1.0}, ValueError),
    ({"momentum": -0.5}, ValueError),
    ({"weight_decay": -0.1}, ValueError),
    ({"nesterov": True}, ValueError),
    ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError),
    ({"fused": True, "foreach": True}, RuntimeError),
]
CASES = (
    [
        pytest.param(fusedopt.Adam, torch.optim.Adam, kw, exc, id=f"adam-{kw}")
        for kw, exc in ADAM_BAD
    ]
    + [
        pytest.param(fusedopt.AdamW, torch.optim.AdamW, kw, exc, id=f"adamw-{kw}")
        for kw, exc in ADAM_BAD
    ]
    + [pytest.param(fusedopt.SGD, torch.optim.SGD, kw, exc, id=f"sgd-{kw}") for kw, exc in SGD_BAD]
)


def _message(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return type(e), str(e)
    return None, None


@pytest.mark.parametrize("ours,theirs,kwargs,exc", CASES)
def test_same_error_as_torch(ours, theirs, kwargs, exc):
    p = [torch.randn(3, requires_grad=True)]
    t_type, t_msg = _message(lambda: theirs(p, **kwargs))
    o_type, o_msg = _message(lambda: ours(p, **kwargs))
    assert t_type is exc, "the case must be an error for torch.optim too"
    assert (o_type, o_msg) == (t_type, t_msg)


@pytest.mark.parametrize("cls", [fusedopt.Adam, fusedopt.AdamW, fusedopt.SGD])
def test_differentiable_is_refused(cls):
    with pytest.raises(RuntimeError, match="does not support `differentiable`"):
        cls([torch.randn(2, requires_grad=True)], differentiable=True)


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
