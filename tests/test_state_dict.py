"""Checkpoints move both ways between torch.optim and fusedopt, and bad ones are refused."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import fusedopt
from helpers import clone_params, fresh_grads, make_params, set_grads

PAIRS = [
    pytest.param(fusedopt.AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}, id="adamw"),
    pytest.param(fusedopt.Adam, torch.optim.Adam, {"lr": 1e-2, "amsgrad": True}, id="adam-amsgrad"),
    pytest.param(fusedopt.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, id="sgd-momentum"),
    pytest.param(fusedopt.SGD, torch.optim.SGD, {"lr": 0.1}, id="sgd"),
]


def _train(opt, params, grads_seq):
    for g in grads_seq:
        set_grads(params, g)
        opt.step()


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("ours,theirs,kwargs", PAIRS)
@pytest.mark.parametrize("direction", ["torch_to_fusedopt", "fusedopt_to_torch"])
def test_checkpoint_moves_and_training_continues_identically(ours, theirs, kwargs, direction):
    params = make_params(torch.float32)
    grads = [fresh_grads(params) for _ in range(6)]
    src_cls, dst_cls = (theirs, ours) if direction == "torch_to_fusedopt" else (ours, theirs)
    kw = lambda cls: dict(kwargs, foreach=False) if cls is theirs else kwargs  # noqa: E731

    # Three steps with the source, checkpoint, then three more with each.
    src_p = clone_params(params)
    src = src_cls(src_p, **kw(src_cls))
    _train(src, src_p, grads[:3])
    sd = _roundtrip(src.state_dict())
    dst_p = clone_params(src_p)
    dst = dst_cls(dst_p, **kw(dst_cls))
    dst.load_state_dict(sd)
    # The layout is torch's: same keys, same tensors, step a 0-d float32 CPU tensor.
    assert dst.state_dict()["state"].keys() == sd["state"].keys()
    for k, st in dst.state_dict()["state"].items():
        assert st.keys() == sd["state"][k].keys()
        if "step" in st:
            assert st["step"].shape == () and st["step"].dtype == torch.float32
    _train(src, src_p, grads[3:])
    _train(dst, dst_p, grads[3:])
    for a, b in zip(src_p, dst_p):
        torch.testing.assert_close(a, b, rtol=1.3e-6, atol=1e-5)
    for p, q in zip(src_p, dst_p):
        for key, v in src.state.get(p, {}).items():
            torch.testing.assert_close(dst.state[q][key], v, rtol=1.3e-6, atol=1e-5)


def test_state_dict_layout_is_torchs():
    params = make_params(torch.float32)
    ours_p, theirs_p = clone_params(params), clone_params(params)
    ours = fusedopt.AdamW(ours_p, amsgrad=True)
    theirs = torch.optim.AdamW(theirs_p, amsgrad=True)
    g = fresh_grads(params)
    set_grads(ours_p, g)
    set_grads(theirs_p, g)
    ours.step()
    theirs.step()
    a, b = ours.state_dict(), theirs.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert list(a["state"][k]) == list(b["state"][k])  # key order too
        for key in a["state"][k]:
            x, y = a["state"][k][key], b["state"][k][key]
            assert (x.dtype, x.shape, x.device) == (y.dtype, y.shape, y.device), key
    ga, gb = a["param_groups"][0], b["param_groups"][0]
    assert ga.keys() == gb.keys()
    assert {k: v for k, v in ga.items() if k not in ("fused",)} == {
        k: v for k, v in gb.items() if k not in ("fused",)
    }


def test_load_converts_state_to_param_dtype():
    """As torch does: floating state is cast to the param's dtype; step stays float32."""
    p = torch.randn(10, dtype=torch.float64, requires_grad=True)
    src = torch.optim.Adam([torch.randn(10, requires_grad=True)])
    src.param_groups[0]["params"][0].grad = torch.randn(10)
    src.step()
    dst = fusedopt.Adam([p])
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    assert dst.state[p]["exp_avg"].dtype == torch.float64
    assert dst.state[p]["step"].dtype == torch.float32
    p.grad = torch.randn(10, dtype=torch.float64)
    dst.step()
    assert dst.state[p]["step"].item() == 2


def test_float_step_from_old_checkpoints():
    p = torch.randn(5, requires_grad=True)
    opt = fusedopt.Adam([p])
    p.grad = torch.randn(5)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["step"] = 1.0  # checkpoints before torch 1.12 stored a Python float
    opt2 = fusedopt.Adam([p])
    opt2.load_state_dict(sd)
    opt2.step()
    assert torch.is_tensor(opt2.state[p]["step"]) and opt2.state[p]["step"].item() == 2


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_sq"])
def test_state_of_wrong_shape_is_refused_before_anything_changes(key):
    p = torch.randn(4, 3, requires_grad=True)
    opt = fusedopt.AdamW([p])
    p.grad = torch.randn(4, 3)
    opt.step()
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(before)
    bad["state"][0][key] = torch.zeros(5, 3)
    with pytest.raises(
        ValueError, match=rf"'{key}' has shape \(5, 3\), but the parameter has shape \(4, 3\)"
    ):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for k, v in before["state"][0].items():
        assert torch.equal(after["state"][0][k], v)


def test_state_of_wrong_shape_set_by_hand_raises_at_step_and_changes_nothing():
    params = [torch.randn(6, requires_grad=True), torch.randn(4, requires_grad=True)]
    opt = fusedopt.AdamW(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    opt.state[params[1]]["exp_avg"] = torch.zeros(5)
    opt.invalidate_plans()
    snapshot = [p.detach().clone() for p in params]
    state_snapshot = copy.deepcopy({i: dict(opt.state[p]) for i, p in enumerate(params)})
    with pytest.raises(
        RuntimeError, match=r"'exp_avg' of parameter 1 has shape \(5,\).*parameter has shape \(4,\)"
    ):
        opt.step()
    for p, s in zip(params, snapshot):
        assert torch.equal(p, s)
    for i, p in enumerate(params):
        for k, v in state_snapshot[i].items():
            assert torch.equal(opt.state[p][k], v), (i, k)


def test_sgd_without_momentum_keeps_no_state():
    p = torch.randn(3, requires_grad=True)
    opt = fusedopt.SGD([p], lr=0.1)
    p.grad = torch.randn(3)
    opt.step()
    assert opt.state_dict()["state"] == {}


def test_pickle_roundtrip_keeps_backend():
    import pickle

    p = torch.randn(3, requires_grad=True)
    opt = fusedopt.AdamW([p], backend="reference")
    opt2 = pickle.loads(pickle.dumps(opt))
    assert opt2.backend == "reference"
