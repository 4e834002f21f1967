"""8-bit momentum for Lion and SGD (lion8bit_, sgd8bit_; Note [8-bit optimizer states] in
fusedopt/optim/_q8.py): the reference against an fp64 computation, the optimizers against
their fp32-state selves (and bitsandbytes' Lion8bit / SGD8bit), the CPU backend, checkpoints
both ways and the errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_q8 import BACKENDS, HAS_BNB, Q8, _distance, _model, _run, check_round_trip

import fusedopt
from fusedopt import reference
from fusedopt._ext import _C
from fusedopt._opdefs import OPS
from fusedopt.reference import quant

SIZES = [1, 300, 5000]
LR = 1e-2


def _lion_args(params):
    return dict(
        params=params,
        exp_avgs=[torch.zeros(p.shape, dtype=torch.uint8) for p in params],
        exp_avg_absmaxs=[torch.zeros(quant.num_blocks(p.numel())) for p in params],
        state_steps=[torch.tensor(0.0) for _ in params],
        lr=torch.tensor(LR, dtype=torch.float64),
        beta1=0.9,
        beta2=0.99,
        weight_decay=0.5,
        qmaps=quant.QMAPS.clone(),
        maximize=False,
    )


def _sgd_args(params, nesterov: bool):
    return dict(
        params=params,
        momentum_buffers=[torch.zeros(p.shape, dtype=torch.uint8) for p in params],
        momentum_buffer_absmaxs=[torch.zeros(quant.num_blocks(p.numel())) for p in params],
        lr=torch.tensor(LR, dtype=torch.float64),
        momentum=0.9,
        dampening=0.0 if nesterov else 0.3,
        weight_decay=0.1,
        qmaps=quant.QMAPS.clone(),
        nesterov=nesterov,
        maximize=True,
        is_first_step=True,
    )


def _check_moment(codes, absmax, want, scale):
    """The 8-bit moment against its fp64 value: absmax its blocks' largest |value|, each
    decoded element within half the map's widest step (1/71 of absmax), both up to the fp32
    rounding of the update, a few ulps of ``scale`` (the sum of the update's |terms|)."""
    n = want.numel()
    rounding = scale.reshape(-1) * 4 * torch.finfo(torch.float32).eps
    blocks = quant.num_blocks(n) * 256 - n
    flat = torch.nn.functional.pad(want.reshape(-1), (0, blocks)).view(-1, 256)
    slack = torch.nn.functional.pad(rounding, (0, blocks)).view(-1, 256).amax(1)
    assert bool(((absmax.double() - flat.abs().amax(1)).abs() <= slack).all())
    got = quant.dequantize(codes, absmax, quant.QMAPS[0]).double().reshape(-1)
    bound = absmax.double().repeat_interleave(256)[:n] * 0.0071 + rounding
    assert bool(((got - want.reshape(-1)).abs() <= bound).all())


@pytest.mark.parametrize("op", ["lion8bit_", "sgd8bit_", "sgd8bit_nesterov"])
def test_reference_matches_fp64_by_hand(op):
    """Four steps, each from the reference's own 8-bit state: the params to fp32 rounding of
    the fp64 update, the new moment to its quantization error."""
    torch.manual_seed(0)
    params = [torch.randn(n) for n in SIZES] + [torch.randn(80, 64).t()]
    name = op.removesuffix("nesterov")
    a = _lion_args(params) if name == "lion8bit_" else _sgd_args(params, op.endswith("nesterov"))
    for step in range(4):
        grads = [torch.randn_like(p) for p in params]
        old = [
            (p.double(), quant.dequantize(c, am, quant.QMAPS[0]).double())
            for p, c, am in zip(params, *(a[k] for k in OPS[name].names[2:4]))
        ]
        getattr(reference, name)(*OPS[name].bind(**a, grads=grads))
        for i, ((p, m), g) in enumerate(zip(old, grads)):
            g = g.double()
            if name == "lion8bit_":
                p = p * (1 - LR * a["weight_decay"])
                c = 0.9 * m + 0.1 * g
                p = p - LR * c.sign()
                scale = 0.99 * m.abs() + 0.01 * g.abs()
                m = 0.99 * m + 0.01 * g
            else:
                g = -g + 0.1 * p
                scale = 0.9 * m.abs() + g.abs() if step else g.abs()
                m = g if step == 0 else 0.9 * m + (1 - a["dampening"]) * g
                p = p - LR * (g + 0.9 * m if a["nesterov"] else m)
                a["is_first_step"] = False
            torch.testing.assert_close(params[i].double(), p, rtol=2e-7, atol=1e-7)
            codes, absmax = (a[k][i] for k in OPS[name].names[2:4])
            _check_moment(codes, absmax, m, scale)


def test_sgd_first_step_buffer_is_the_quantized_grad():
    torch.manual_seed(1)
    params = [torch.randn(n) for n in SIZES]
    a = {**_sgd_args(params, False), "weight_decay": 0.0, "maximize": False}
    grads = [torch.randn_like(p) for p in params]
    reference.sgd8bit_(*OPS["sgd8bit_"].bind(**a, grads=grads))
    for g, codes, absmax in zip(grads, a["momentum_buffers"], a["momentum_buffer_absmaxs"]):
        want_codes, want_absmax = quant.quantize(g, quant.QMAPS[0])
        assert torch.equal(codes, want_codes) and torch.equal(absmax, want_absmax)


# -- the optimizers ------------------------------------------------------------------------------


def _make(kind: str, params, backend: str, q8: bool):
    kw = {"state_dtype": Q8} if q8 else {}
    if kind == "lion":
        return fusedopt.Lion(params, lr=1e-4, weight_decay=0.1, backend=backend, **kw)
    return fusedopt.SGD(params, lr=1e-2, momentum=0.9, nesterov=True, backend=backend, **kw)


@pytest.mark.parametrize("kind", ["lion", "sgd"])
def test_close_to_fp32_over_100_steps(kind):
    """Relative L2 distance of the params from the fp32-state optimizer's after 100 steps,
    and bitsandbytes' 8-bit twin's (same hyperparameters, grads) when it is installed (on
    the CPU kernels where built: the reference's bits, as the test below checks)."""
    runs = {}
    for q8 in (False, True):
        params = _model()
        _run(_make(kind, params, BACKENDS[-1], q8), params, 100)
        runs[q8] = params
    ours = _distance(runs[True], runs[False])
    # measured: Lion 0.00185 (bitsandbytes 0.50.2's Lion8bit: 0.00185), SGD 0.0119 (SGD8bit:
    # 0.0146), the params having moved 0.086 (Lion) and 0.63 (SGD), relative
    assert 0 < ours < {"lion": 0.003, "sgd": 0.02}[kind], ours
    if HAS_BNB:
        import bitsandbytes as bnb

        params = _model()
        if kind == "lion":
            opt = bnb.optim.Lion8bit(params, lr=1e-4, weight_decay=0.1)
        else:
            opt = bnb.optim.SGD8bit(params, lr=1e-2, momentum=0.9, nesterov=True)
        _run(opt, params, 100)
        theirs = _distance(params, runs[False])
        assert ours <= theirs * 1.05, (ours, theirs)


@pytest.mark.skipif(_C is None, reason="the compiled extension is not built")
@pytest.mark.parametrize("kind", ["lion", "sgd"])
def test_cpu_backend_matches_the_reference_optimizer(kind):
    """backend="cpu" updates the 8-bit params by the CPU kernel (csrc/cpu/q8.h), the small ones
    by the fp32-state one: states bit for bit the reference optimizer's, params equal, over 3
    steps (SGD's first included). tests/test_q8.py checks the op at every SIMD level."""
    a, b = _model(), _model()
    oa, ob = _make(kind, a, "cpu", True), _make(kind, b, "reference", True)
    _run(oa, a, 3)
    _run(ob, b, 3)
    backends = {bk.op: bk.backend for plan in oa._plans.values() for bk in plan.buckets}
    assert backends == {f"{kind}8bit_": "cpu", f"{kind}_": "cpu"}
    for pa, pb in zip(a, b):
        for k, v in oa.state[pa].items():
            if v.dtype == torch.uint8 or k.endswith("absmax"):
                assert torch.equal(v, ob.state[pb][k]), k
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["lion", "sgd"])
def test_state_layout_and_bytes(kind):
    params = _model()
    opt = _make(kind, params, "reference", True)
    _run(opt, params, 2)
    key = "exp_avg" if kind == "lion" else "momentum_buffer"
    big, small = opt.state[params[0]], opt.state[params[2]]
    assert big[key].dtype == torch.uint8 and big[key].shape == params[0].shape
    assert big[f"{key}_absmax"].shape == (quant.num_blocks(params[0].numel()),)
    assert small[key].dtype == torch.float32 and f"{key}_absmax" not in small
    one = torch.nn.Parameter(torch.zeros(1 << 20))
    opt1 = _make(kind, [one], "reference", True)
    _run(opt1, [one], 1)
    step = 4 / one.numel() if kind == "lion" else 0.0  # Lion's fp32 step counter
    assert fusedopt.state_bytes(opt1) == pytest.approx(1 + 4 / 256 + step, abs=1e-6)
    # SGD without momentum has no state to quantize
    opt2 = fusedopt.SGD(params, lr=0.1, state_dtype=Q8, backend="reference")
    _run(opt2, params, 1)
    assert not opt2.state


def _torch_twin(kind: str, params):
    if kind == "lion":
        return fusedopt.Lion(params, lr=1e-4, weight_decay=0.1, backend=BACKENDS[-1])
    return torch.optim.SGD(params, lr=1e-2, momentum=0.9, nesterov=True)


@pytest.mark.parametrize("kind", ["lion", "sgd"])
def test_checkpoints_both_ways(kind):
    key, row = ("exp_avg" if kind == "lion" else "momentum_buffer"), 0
    a = _model()
    oa = _make(kind, a, "reference", True)
    _run(oa, a, 3)
    sd = oa.state_dict()
    assert sd["state"][0][f"{key}_qmap"].shape == (256,) and f"{key}_qmap" not in oa.state[a[0]]
    ob, b = check_round_trip(oa, a, lambda b: _make(kind, b, "reference", True))
    # out: dequantize_state_dict makes a checkpoint the fp32-state twin loads
    plain = fusedopt.dequantize_state_dict(ob.state_dict())
    c = [torch.nn.Parameter(p.detach().clone()) for p in b]
    tc = _torch_twin(kind, c)
    tc.load_state_dict(plain)
    for pb, pc in zip(b, c):
        st = ob.state[pb]
        want = st[key]
        if want.dtype == torch.uint8:
            want = quant.dequantize(want, st[f"{key}_absmax"], quant.QMAPS[row])
        got = tc.state[pc][key]
        assert got.dtype == torch.float32 and torch.equal(got, want)
    assert not any(k.endswith(("absmax", "qmap")) for k in plain["state"][0])
    # in: the twin's fp32 checkpoint into an 8-bit optimizer is quantized
    _run(tc, c, 1)
    d = [torch.nn.Parameter(p.detach().clone()) for p in c]
    od = _make(kind, d, "reference", True)
    od.load_state_dict(tc.state_dict())
    codes, absmax = quant.quantize(tc.state[c[0]][key], quant.QMAPS[row])
    assert torch.equal(od.state[d[0]][key], codes)
    assert torch.equal(od.state[d[0]][f"{key}_absmax"], absmax)
    assert torch.equal(od.state[d[2]][key], tc.state[c[2]][key])  # small: fp32
    _run(od, d, 1)


@pytest.mark.parametrize("op", ["lion8bit_", "sgd8bit_"])
def test_bad_states_are_refused_before_any_write(op):
    params = [torch.randn(n) for n in SIZES]
    grads = [torch.randn_like(p) for p in params]
    make = _lion_args if op == "lion8bit_" else (lambda ps: _sgd_args(ps, False))
    keys = dict(zip(("codes", "absmax"), OPS[op].names[2:4]))
    for name, bad, message in [
        ("codes", lambda t: t.float(), r"\[2\] must be a contiguous torch.uint8"),
        ("absmax", lambda t: t[:-1], r"absmaxs\[2\] must be a contiguous torch.float32"),
        ("qmaps", lambda t: t[:1], "qmaps must be a float32"),
    ]:
        args = make([p.clone() for p in params])
        if name == "qmaps":
            args["qmaps"] = bad(args["qmaps"])
        else:
            args[keys[name]][2] = bad(args[keys[name]][2])
        before = {k: [t.clone() for t in v] for k, v in args.items() if isinstance(v, list)}
        with pytest.raises(RuntimeError, match=message):
            getattr(reference, op)(*OPS[op].bind(**args, grads=grads))
        for k, v in before.items():
            assert all(torch.equal(x, y) for x, y in zip(v, args[k])), k


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("kind", ["lion", "sgd"])
def test_triton_matches_reference(kind):
    """Main's 8-bit Triton kernel (_q8_kernel) with Lion's and SGD's math: codes and absmax
    equal the reference's, params within an ulp, over 2 steps (SGD's first included), on one
    param of 19 blocks (the interpreter runs the kernel)."""
    a, b = _model()[:1], _model()[:1]
    oa, ob = _make(kind, a, "triton", True), _make(kind, b, "reference", True)
    for step in range(2):
        _run(oa, a, 1, seed=step)
        _run(ob, b, 1, seed=step)
        for pa, pb in zip(a, b):
            for k, v in oa.state[pa].items():
                if v.dtype == torch.uint8 or k.endswith("absmax"):
                    assert torch.equal(v, ob.state[pb][k]), (step, k)
            torch.testing.assert_close(pa, pb, rtol=2e-7, atol=1e-9)
            with torch.no_grad():
                pa.copy_(pb)


def test_bad_options():
    p = [torch.nn.Parameter(torch.zeros(5000))]
    with pytest.raises(ValueError, match="Invalid min_8bit_size"):
        fusedopt.Lion(p, state_dtype=Q8, min_8bit_size=-1)
    with pytest.raises(ValueError, match="Invalid state_dtype: 'int4'"):
        fusedopt.SGD(p, lr=0.1, momentum=0.9, state_dtype="int4")
