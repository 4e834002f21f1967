"""Checkpoints move both ways between torch.optim and fusedopt, and bad ones are refused."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import fusedopt
from helpers import clone_params, fresh_grads, make_params, set_grads
from optim_info import cases


def _train(opt, params, grads_seq):
    for g in grads_seq:
        set_grads(params, g)
        opt.step()


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("info,name,config", cases("checkpoint"))
@pytest.mark.parametrize("direction", ["torch_to_fusedopt", "fusedopt_to_torch"])
def test_checkpoint_moves_and_training_continues_identically(info, name, config, direction):
    ours, theirs, kwargs = info.cls, info.torch_cls, config.kwargs
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
    assert list(ga) == list(gb)  # key order too
    assert {k: v for k, v in ga.items() if k not in ("fused",)} == {
        k: v for k, v in gb.items() if k not in ("fused",)
    }


@pytest.mark.parametrize(
    "ours,theirs,kwargs",
    [
        (fusedopt.Adam, torch.optim.Adam, {}),
        (fusedopt.AdamW, torch.optim.AdamW, {}),
        (fusedopt.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
        (fusedopt.Adafactor, torch.optim.Adafactor, {}),
    ],
    ids=["Adam", "AdamW", "SGD", "Adafactor"],
)
def test_param_group_keys_in_torchs_order(ours, theirs, kwargs):
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert list(ours(p, **kwargs).param_groups[0]) == list(theirs(p, **kwargs).param_groups[0])


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


# -- damaged checkpoints (Note [damaged checkpoints]) ---------------------------------------------
# Every optimizer with the options that change its state keys (the "damaged" configs of
# tests/optim_info.py); torch.optim's twin where it has one.
OPTIMIZERS = cases("damaged")
MIXED = [
    pytest.param({}, torch.float32, id="fp32"),
    pytest.param({"master_weights": True}, torch.bfloat16, id="bf16-master"),
    pytest.param({"stochastic_rounding": True}, torch.bfloat16, id="bf16-sr"),
]


def _trained(cls, kwargs, dtype=torch.float32, steps=2, make=None):
    if make is not None:  # the optimizer's own kind of params (tests/optim_info.py)
        params = make(dtype)
    else:
        params = [torch.randn(64, dtype=dtype, requires_grad=True), torch.randn(4, 3, dtype=dtype)]
        params[1].requires_grad_(True)
    opt = cls(params, **kwargs)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return params, opt


def _snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def _assert_unchanged(opt, params, snap):
    values, sd = snap
    for p, v in zip(params, values):
        assert torch.equal(p, v)
    after = opt.state_dict()
    assert after["param_groups"] == sd["param_groups"]
    assert after["state"].keys() == sd["state"].keys()
    for pid, pstate in sd["state"].items():
        assert after["state"][pid].keys() == pstate.keys()
        for k, v in pstate.items():
            assert torch.equal(after["state"][pid][k], v), (pid, k)


@pytest.mark.parametrize("info,name,config", OPTIMIZERS)
@pytest.mark.parametrize("mixed,dtype", MIXED)
def test_state_missing_a_key_is_refused_naming_it(info, name, config, mixed, dtype):
    cls, kwargs, twin = info.cls, config.kwargs, info.torch_cls
    params, opt = _trained(cls, {**kwargs, **mixed}, dtype, make=info.params)
    snap = _snapshot(opt, params)
    optional = ("master_param", "sr_seed", *info.optional_state)
    required = [k for k in snap[1]["state"][1] if k not in optional]
    for key in required:
        bad = copy.deepcopy(snap[1])
        del bad["state"][1][key]
        with pytest.raises(KeyError, match=rf"parameter 1 has no '{key}'"):
            opt.load_state_dict(bad)
        _assert_unchanged(opt, params, snap)
    if twin is not None and dtype == torch.float32:
        # torch.optim refuses the same damaged state too (at load or at its next step).
        for key in required:
            tparams = [p.detach().clone().requires_grad_(True) for p in params]
            topt = twin(tparams, **kwargs)
            bad = copy.deepcopy(snap[1])
            del bad["state"][1][key]
            with pytest.raises(KeyError, match=key):
                topt.load_state_dict(bad)
                for p in tparams:
                    p.grad = torch.randn_like(p)
                topt.step()


@pytest.mark.parametrize(
    "info,name,config", [p for p in OPTIMIZERS if "step" in p.values[0].state_keys]
)
@pytest.mark.parametrize("step", [-3.0, -1e-3, float("nan"), float("inf")])
@pytest.mark.parametrize("as_tensor", [True, False], ids=["tensor", "float"])
def test_bad_step_is_refused_at_load(info, name, config, step, as_tensor):
    params, opt = _trained(info.cls, config.kwargs, make=info.params)
    snap = _snapshot(opt, params)
    bad = copy.deepcopy(snap[1])
    bad["state"][0]["step"] = torch.tensor(step) if as_tensor else step
    with pytest.raises(ValueError, match=r"parameter 0: 'step' is .*must be a finite number >= 0"):
        opt.load_state_dict(bad)
    _assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("info,name,config", OPTIMIZERS)
@pytest.mark.parametrize("mixed,dtype", MIXED)
def test_unknown_state_key_of_another_shape_is_kept_untouched(info, name, config, mixed, dtype):
    cls, kwargs, twin = info.cls, config.kwargs, info.torch_cls
    params, opt = _trained(cls, {**kwargs, **mixed}, dtype, make=info.params)
    sd = opt.state_dict()
    foo = torch.arange(3, dtype=torch.float32)
    with_foo = copy.deepcopy(sd)
    with_foo["state"][0]["foo"] = foo.clone()
    grads = [torch.randn_like(p) for p in params]

    def resume(state_dict):
        ps = [p.detach().clone().requires_grad_(True) for p in params]
        o = cls(ps, **kwargs, **mixed)
        o.load_state_dict(state_dict)
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        o.step()
        return ps, o

    ps, o = resume(with_foo)
    ref, _ = resume(sd)
    for a, b in zip(ps, ref):  # the extra key changes nothing
        assert torch.equal(a, b)
    kept = o.state[ps[0]]["foo"]
    want = foo.to(dtype)  # what torch.optim's load_state_dict makes of it: the param's dtype
    assert torch.equal(kept, want) and kept.dtype == want.dtype
    assert torch.equal(o.state_dict()["state"][0]["foo"], want)
    if twin is not None and dtype == torch.float32:
        tps = [p.detach().clone().requires_grad_(True) for p in params]
        topt = twin(tps, **kwargs)
        topt.load_state_dict(with_foo)
        assert torch.equal(topt.state[tps[0]]["foo"], kept)


@pytest.mark.parametrize("info,name,config", OPTIMIZERS)
def test_mixed_precision_keys_of_wrong_shape_are_refused(info, name, config):
    cls, kwargs = info.cls, config.kwargs
    params, opt = _trained(
        cls, {**kwargs, "master_weights": True}, torch.bfloat16, make=info.params
    )
    snap = _snapshot(opt, params)
    bad = copy.deepcopy(snap[1])
    bad["state"][1]["master_param"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"'master_param' has shape \(3,\), but the parameter"):
        opt.load_state_dict(bad)
    _assert_unchanged(opt, params, snap)

    params, opt = _trained(
        cls, {**kwargs, "stochastic_rounding": True}, torch.bfloat16, make=info.params
    )
    snap = _snapshot(opt, params)
    bad = copy.deepcopy(snap[1])
    bad["state"][1]["sr_seed"] = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"'sr_seed' must have one element, got shape \(2,\)"):
        opt.load_state_dict(bad)
    _assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("mixed", [{"master_weights": True}, {"stochastic_rounding": True}])
@pytest.mark.parametrize("info,name,config", OPTIMIZERS)
def test_missing_mixed_precision_keys_are_made_again(info, name, config, mixed):
    cls, kwargs = info.cls, config.kwargs
    # A checkpoint that went through torch.optim, or from a run without the option, has no
    # master or seed: they are made from the params, as for a fresh state.
    params, opt = _trained(cls, {**kwargs, **mixed}, torch.bfloat16, make=info.params)
    sd = copy.deepcopy(opt.state_dict())
    key = "master_param" if "master_weights" in mixed else "sr_seed"
    for pstate in sd["state"].values():
        del pstate[key]
    opt.load_state_dict(sd)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    for p in params:
        assert key in opt.state[p]
        if key == "master_param":
            assert opt.state[p][key].to(torch.bfloat16).equal(p)


def test_timm_lamb_group_step_is_taken_when_the_state_has_none():
    params, opt = _trained(fusedopt.LAMB, {"lr": 1e-2}, steps=5)
    grads = [torch.randn_like(p) for p in params]
    timm_like = copy.deepcopy(opt.state_dict())  # timm's Lamb: the count in the group
    for pstate in timm_like["state"].values():
        del pstate["step"]
    timm_like["param_groups"][0]["step"] = 5
    given = copy.deepcopy(timm_like)

    ps = [p.detach().clone().requires_grad_(True) for p in params]
    resumed = fusedopt.LAMB(ps, lr=1e-2)
    resumed.load_state_dict(timm_like)
    assert timm_like["param_groups"] == given["param_groups"]  # the caller's dict is unchanged
    assert timm_like["state"][0].keys() == given["state"][0].keys()
    assert "step" not in resumed.param_groups[0]
    for p, q, g in zip(params, ps, grads):
        p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    resumed.step()
    for p, q in zip(params, ps):  # bias corrections at step 6, not 1
        assert torch.equal(p, q)
        assert resumed.state[q]["step"].item() == 6

    del timm_like["param_groups"][0]["step"]  # no count anywhere: refused
    with pytest.raises(KeyError, match="parameter 0 has no 'step'"):
        fusedopt.LAMB([p.detach().clone() for p in params]).load_state_dict(timm_like)
