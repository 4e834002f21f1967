"""fusedopt.amp.GradScaler (Note [inf check in the norm pass] in fusedopt/optim/_base.py): the
same training as torch.amp.GradScaler, bit for bit, with one pass over the grads fewer."""

from __future__ import annotations

import pytest
import torch

import fusedopt

pytestmark = pytest.mark.skipif(not fusedopt.backends()["cpu"].available, reason="no CPU ops")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _train(scaler_cls, clip, inf_steps=(2, 5), **opt_kw) -> tuple:  # noqa: ANN001
    model = _model()
    opt = fusedopt.AdamW(model.parameters(), lr=0.01, max_grad_norm=clip, **opt_kw)
    scaler = scaler_cls("cpu", init_scale=2.0**10, growth_interval=3)
    skipped, grad_writes = [], 0
    for step in range(8):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(4, 8, generator=g), torch.randn(4, 3, generator=g)
        opt.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        if step in inf_steps:
            next(model.parameters()).grad[0, 0] = float("inf" if step == 2 else "nan")
        versions = [p.grad._version for p in model.parameters()]
        scaler.step(opt)
        grad_writes += sum(p.grad._version != v for p, v in zip(model.parameters(), versions))
        scaler.update()
        skipped.append(bool(opt.step_skipped))
    return model, opt, scaler, skipped, grad_writes


@pytest.mark.parametrize("clip", [None, 0.5])
def test_same_training_as_torchs_grad_scaler_without_writing_the_grads(clip) -> None:  # noqa: ANN001
    ours = _train(fusedopt.amp.GradScaler, clip)
    theirs = _train(torch.amp.GradScaler, clip)
    assert ours[3] == theirs[3] == [False, False, True, False, False, True, False, False]
    assert ours[2].get_scale() == theirs[2].get_scale()
    assert ours[2].state_dict() == theirs[2].state_dict()
    for p, q in zip(ours[0].parameters(), theirs[0].parameters()):
        assert torch.equal(p, q)
        for k, v in ours[1].state[p].items():
            assert torch.equal(v, theirs[1].state[q][k]), k
    if clip is not None:
        assert torch.equal(ours[1].last_grad_norm, theirs[1].last_grad_norm)
    assert ours[4] == 0  # our scaler never writes the grads


def test_unscale_then_step_and_torch_optimizers_are_torchs_path() -> None:
    model = _model()
    opt = fusedopt.AdamW(model.parameters(), lr=0.01)
    scaler = fusedopt.amp.GradScaler("cpu", init_scale=2.0**8)
    scaler.scale(model(torch.randn(2, 8)).sum()).backward()
    scaler.unscale_(opt)  # the user clips by hand: grads are unscaled by torch's pass
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    assert not bool(opt.step_skipped)
    tmodel = _model()
    topt = torch.optim.AdamW(tmodel.parameters(), lr=0.01)
    scaler = fusedopt.amp.GradScaler("cpu")
    scaler.scale(tmodel(torch.randn(2, 8)).sum()).backward()
    scaler.step(topt)
    scaler.update()
    assert topt.state  # stepped through torch's unscale-and-step path


def test_inf_check_reads_the_grads_once_with_clipping(monkeypatch: pytest.MonkeyPatch) -> None:
    """With max_grad_norm, the sum of squares taken for the inf check is the one the clip uses."""
    from fusedopt import _dispatch

    calls = []
    real = _dispatch.kernel

    def counting(backend: str, op: str):  # noqa: ANN202
        fn = real(backend, op)
        if op != "sum_sq":
            return fn
        return lambda *a: calls.append(1) or fn(*a)

    monkeypatch.setattr(_dispatch, "kernel", counting)
    model, opt, *_ = _train(fusedopt.amp.GradScaler, 0.5, inf_steps=())
    assert len(calls) == 8  # one sum per step
