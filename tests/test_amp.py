"""fusedopt.amp.GradScaler (Note [inf check in the norm pass] in fusedopt/optim/_norms.py): the
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


def _unscale_clip_step(scaler_cls, opt_cls, unscale: bool) -> tuple:  # noqa: ANN001
    """Two steps (an inf on the second) with an explicit unscale_ and clip, or without."""
    model = _model()
    opt = opt_cls(model.parameters(), lr=0.01)
    scaler = scaler_cls("cpu", init_scale=2.0**8)
    for step in range(3):
        opt.zero_grad()
        x = torch.randn(2, 8, generator=torch.Generator().manual_seed(step))
        scaler.scale(model(x).sum()).backward()
        if step == 1:
            next(model.parameters()).grad[0, 0] = float("inf")
        if unscale:
            scaler.unscale_(opt)  # the user clips by hand: grads are unscaled by torch's pass
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
    return model, opt, scaler


@pytest.mark.parametrize("unscale", [True, False], ids=["unscale_clip", "plain"])
def test_unscale_then_step_and_torch_optimizers_are_torchs_path(unscale) -> None:  # noqa: ANN001
    """After unscale_, and for torch's own optimizers, fusedopt.amp.GradScaler takes
    torch.amp.GradScaler's path: the same scale, the same skipped step, the same numbers."""
    ours = _unscale_clip_step(fusedopt.amp.GradScaler, fusedopt.AdamW, unscale)
    tor = _unscale_clip_step(fusedopt.amp.GradScaler, torch.optim.AdamW, unscale)
    ref = _unscale_clip_step(torch.amp.GradScaler, torch.optim.AdamW, unscale)
    assert ours[2].state_dict() == tor[2].state_dict() == ref[2].state_dict()
    for p, q, r in zip(ours[0].parameters(), tor[0].parameters(), ref[0].parameters()):
        # torch.optim with either scaler: bit for bit; fusedopt: within an fp32 ulp or two
        # of torch's update (test_parity's tolerance).
        assert torch.equal(q, r)
        for k, v in ref[1].state[r].items():
            assert torch.equal(tor[1].state[q][k], v), k
            torch.testing.assert_close(ours[1].state[p][k], v, rtol=1.3e-6, atol=1e-7)
        torch.testing.assert_close(p, r, rtol=1.3e-6, atol=1e-7)
    assert ours[1].state[next(ours[0].parameters())]["step"].item() == 2  # the inf step skipped


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
