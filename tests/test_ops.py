"""The custom ops themselves: opcheck, validation in C++, threads, empty inputs."""

from __future__ import annotations

import pytest
import torch

import fusedopt

pytestmark = pytest.mark.skipif(
    not fusedopt.backends()["cpu"].available, reason="compiled CPU kernels unavailable"
)


def _adam_args(n=3, amsgrad=True, dtype=torch.float32):
    sizes = [17, 0, 5][:n]
    mk = lambda: [torch.randn(s, dtype=dtype) for s in sizes]  # noqa: E731
    return (
        mk(),
        mk(),
        mk(),
        [x.abs() for x in mk()],
        [x.abs() for x in mk()] if amsgrad else [],
        [torch.tensor(float(i)) for i in range(len(sizes))],
        torch.tensor(1e-3),
        0.9,
        0.999,
        0.01,
        1e-8,
        amsgrad,
        False,
        True,
        None,
        None,
    )


def _sgd_args(first=False):
    mk = lambda: [torch.randn(s) for s in (17, 0, 5)]  # noqa: E731
    return (mk(), mk(), mk(), torch.tensor(0.1), 0.9, 0.0, 0.01, True, False, first, None, None)


@pytest.mark.parametrize(
    "args",
    [_adam_args(), _adam_args(amsgrad=False), _adam_args(dtype=torch.bfloat16)],
    ids=["ams", "plain", "bf16"],
)
def test_opcheck_adam(args):
    torch.library.opcheck(torch.ops.fusedopt.adam_.default, args)


@pytest.mark.parametrize("first", [False, True])
def test_opcheck_sgd(first):
    torch.library.opcheck(torch.ops.fusedopt.sgd_.default, _sgd_args(first))


def _adam(params, grads, exp_avgs, exp_avg_sqs, steps):
    """adam_ at lr 1e-3, betas (0.9, 0.999), no weight decay, eps 1e-8, no amsgrad."""
    torch.ops.fusedopt.adam_(
        params, grads, exp_avgs, exp_avg_sqs, [], steps, torch.tensor(1e-3),
        0.9, 0.999, 0.0, 1e-8, False, False, True,
    )  # fmt: skip


def test_cpp_validation_rejects_before_writing():
    params = [torch.randn(4), torch.randn(6)]
    before = [p.clone() for p in params]
    grads = [torch.randn(4), torch.randn(6)]
    m = [torch.zeros(4), torch.zeros(5)]  # wrong shape for param 1
    v = [torch.zeros(4), torch.zeros(6)]
    steps = [torch.tensor(0.0), torch.tensor(0.0)]
    with pytest.raises(
        RuntimeError, match=r"exp_avgs\[1\] has shape \[5\] but its param has shape \[6\]"
    ):
        _adam(params, grads, m, v, steps)
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    assert all(s.item() == 0 for s in steps)


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"grads": 1}, "expected grads to have 2 tensors"),
        ({"dtype": 1}, r"exp_avgs\[1\] has dtype Double, expected Float"),
        ({"step": 1}, "state_steps\\[0\\] must be a one-element tensor"),
    ],
)
def test_cpp_validation_messages(bad, match):
    params = [torch.randn(4), torch.randn(3)]
    grads = [torch.randn(4), torch.randn(3)][: 2 - bad.get("grads", 0)]
    m = [torch.zeros(4), torch.zeros(3, dtype=torch.float64 if bad.get("dtype") else torch.float32)]
    v = [torch.zeros(4), torch.zeros(3)]
    steps = [torch.zeros(2) if bad.get("step") else torch.tensor(0.0), torch.tensor(0.0)]
    with pytest.raises(RuntimeError, match=match):
        _adam(params, grads, m, v, steps)


def test_empty_lists_and_all_empty_tensors():
    torch.ops.fusedopt.adam_(
        [], [], [], [], [], [], torch.tensor(1e-3), 0.9, 0.999, 0.0, 1e-8, False, False, True
    )
    e = [torch.empty(0) for _ in range(3)]
    steps = [torch.tensor(0.0) for _ in range(3)]
    torch.ops.fusedopt.adam_(
        e, e, e, e, [], steps, torch.tensor(1e-3), 0.9, 0.999, 0.0, 1e-8, False, False, True
    )
    assert all(s.item() == 1 for s in steps)  # torch counts steps of empty params too


def test_found_inf_skips_everything_and_grad_scale_unscales():
    args = list(_adam_args())
    snapshot = [[t.clone() for t in lst] for lst in args[:6]]
    args[15] = torch.tensor(1.0)  # found_inf
    torch.ops.fusedopt.adam_(*args)
    for lst, snap in zip(args[:6], snapshot):
        assert all(torch.equal(a, b) for a, b in zip(lst, snap))
    # grad_scale: scaled grads + grad_scale == unscaled grads
    a = list(_adam_args())
    b = [[t.clone() for t in x] if isinstance(x, list) else x for x in a]
    b[1] = [g * 1024.0 for g in b[1]]
    b[14] = torch.tensor(1024.0)
    torch.ops.fusedopt.adam_(*a)
    torch.ops.fusedopt.adam_(*b)
    for x, y in zip(a[0], b[0]):
        torch.testing.assert_close(x, y)


def test_two_threads_equal_one_thread_bitwise():
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(1)
            args = _adam_args()
            args[0][0] = torch.randn(100_003)
            for lst in args[1:5]:
                lst[0] = torch.randn(100_003).abs()
            torch.ops.fusedopt.adam_(*args)
            outs.append(args[0])
        for a, b in zip(*outs):
            assert torch.equal(a, b)
    finally:
        torch.set_num_threads(old)
