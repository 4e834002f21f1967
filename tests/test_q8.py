"""8-bit blockwise optimizer states (Note [8-bit states] in fusedopt/reference/quant.py): the
maps against bitsandbytes', the rounding rule, the reference, the CPU kernel and the optimizers'
option, checkpoints and accounting."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import fusedopt
from fusedopt import reference
from fusedopt._ext import _C
from fusedopt._opdefs import OPS
from fusedopt.reference import quant
from helpers import ulp

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (requirements-dev.txt)")
@pytest.mark.parametrize("signed", [True, False])
def test_maps_are_bitsandbytes(signed):
    from bitsandbytes.functional import create_dynamic_map

    want = create_dynamic_map(signed=signed)
    got = quant.dynamic_map(signed)
    assert got.dtype == torch.float32 and got.shape == (256,)
    assert torch.equal(got, want)


@pytest.mark.parametrize("row", [0, 1])
def test_encode_is_the_nearest_entry_ties_down(row):
    qmap = quant.QMAPS[row]
    assert bool((qmap[1:] > qmap[:-1]).all()), "sorted, no repeats"
    mid = quant.midpoints(qmap)
    lo = -1.0 if row == 0 else 0.0
    x = torch.cat([torch.linspace(lo, 1.0, 20001), qmap, mid[:-1], torch.tensor([float("nan")])])
    codes = quant.encode(x, mid)
    # brute force: the nearest entry by |x - map| in fp64; on a midpoint (an fp32 tie) the lower
    dist = (x.double()[:, None] - qmap.double()[None, :]).abs()
    nearest = dist.argmin(dim=1)  # the first (lower) of equal distances
    ties = x[:, None] == mid[None, :-1]
    want = torch.where(ties.any(dim=1), ties.to(torch.int64).argmax(dim=1), nearest)
    want[-1] = 0  # NaN
    finite = torch.isfinite(x)
    # away from ties, fp32 midpoints and fp64 distances agree
    close = (x[:, None].double() - mid[None, :-1].double()).abs().min(dim=1).values < 1e-12
    ok = (codes == want) | (close & ~ties.any(dim=1))
    assert bool(ok[finite].all()) and codes[-1] == 0
    zero = int((qmap == 0).nonzero())
    assert quant.encode(torch.tensor([0.0, -0.0]), mid).tolist() == [zero, zero]


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 1000])
def test_quantize_round_trip(n):
    torch.manual_seed(n)
    x = torch.randn(n)
    x[: min(n, 3)] = 0
    codes, absmax = quant.quantize(x, quant.QMAPS[0])
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert absmax.shape == (quant.num_blocks(n),)
    y = quant.dequantize(codes, absmax, quant.QMAPS[0])
    blocks = torch.nn.functional.pad(x, (0, quant.num_blocks(n) * 256 - n)).view(-1, 256)
    assert torch.equal(absmax, blocks.abs().amax(dim=1))
    # the map's steps are at most 1/71 of absmax apart near 1: half of that is the error bound
    assert bool(((y - x).abs() <= absmax.repeat_interleave(256)[:n] * 0.0071).all())
    assert bool((y[x == 0] == 0).all())
    # a zero block codes as 0, decoding to +0
    z_codes, z_absmax = quant.quantize(torch.zeros(300), quant.QMAPS[1])
    assert bool((z_absmax == 0).all()) and bool((quant.QMAPS[1][z_codes.long()] == 0).all())


# -- the op: the CPU kernel against the reference ------------------------------------------------

SIZES = [0, 1, 255, 257, 4095, 5000, 70001]  # 70001: blocks split over several tasks
LR = torch.tensor(1e-2, dtype=torch.float64)
needs_ext = pytest.mark.skipif(_C is None, reason="the compiled extension is not built")


def _params(dtype: torch.dtype, layout: str) -> list[torch.Tensor]:
    out = []
    for n in SIZES:
        if layout == "transposed" and n > 1 and n % 5 == 0:
            out.append(torch.randn(5, n // 5).to(dtype).t())  # dense, not contiguous
        elif layout == "sliced" and n > 1:
            out.append(torch.randn(n, 2).to(dtype)[:, 0])  # not dense
        else:
            out.append(torch.randn(n).to(dtype))
    return out


# the 8-bit ops (Note [8-bit states]): Adam's two moments, Lion's and SGD's one
Q8_OPS = ["adam8bit_", "lion8bit_", "sgd8bit_"]
# each op's scalars; an op takes those it names
_SCALARS = {
    "adam8bit_": dict(beta1=0.9, beta2=0.999, weight_decay=0.1, eps=1e-8),
    "lion8bit_": dict(beta1=0.9, beta2=0.99, weight_decay=0.1),
    "sgd8bit_": dict(momentum=0.9, dampening=0.3, weight_decay=0.1),
}


def _args(params, mode: str, lr, amp: bool, found_inf: bool = False, op: str = "adam8bit_"):
    """The arguments of 8-bit op ``op`` over ``params``: zero codes and absmax, the steps to 0.
    ``calls`` counts the op's calls (SGD's is_first_step: the first)."""
    names = OPS[op].names
    states = {
        arg.name: [
            torch.zeros(quant.num_blocks(p.numel()))
            if arg.key.endswith("_absmax")
            else torch.zeros(p.shape, dtype=torch.uint8)
            for p in params
        ]
        for arg in OPS[op].aux_state
    }
    masters = [p.float() for p in params] if mode == "master" else None
    seeds = [torch.tensor(7 * i, dtype=torch.int64) for i in range(len(params))]
    values = dict(
        params=params,
        **states,
        state_steps=[torch.tensor(0.0) for _ in params],
        lr=lr,
        **_SCALARS[op],
        qmaps=quant.QMAPS.clone(),
        grad_scale=torch.tensor(4.0) if amp else None,
        found_inf=torch.tensor(1.0 if found_inf else 0.0) if amp else None,
        master_params=masters,
        sr_seeds=seeds if mode == "sr" else None,
    )
    return {"op": op, "calls": torch.zeros(()), **{k: v for k, v in values.items() if k in names}}


def _copy(args):
    return {
        k: [t.clone() for t in v] if isinstance(v, list) else v.clone() if torch.is_tensor(v) else v
        for k, v in args.items()
    }


def _call(fn, args, grads, decoupled: bool, maximize: bool):
    """``fn`` (an implementation of args["op"]) on ``args``; ``decoupled`` is Adam's
    decoupled_weight_decay and SGD's nesterov (dampening 0 then, as torch requires)."""
    op = args["op"]
    flags = dict(decoupled_weight_decay=decoupled, maximize=maximize)
    if op == "sgd8bit_":
        flags.update(nesterov=decoupled, is_first_step=bool(args["calls"] == 0))
        flags["dampening"] = 0.0 if decoupled else args["dampening"]
    values = {**args, **flags, "grads": grads}
    fn(*OPS[op].bind(**{k: v for k, v in values.items() if k in OPS[op].names}))
    args["calls"] += 1


def _impl(backend: str, op: str):
    return getattr(torch.ops.fusedopt if backend == "cpu" else reference, op)


CASES = [
    # (param dtype, mode, layout, decoupled, maximize, Tensor lr, amp)
    (torch.float32, "plain", "contiguous", True, False, False, False),
    (torch.float32, "plain", "transposed", False, True, True, True),
    (torch.float32, "plain", "sliced", True, False, True, False),
    (torch.bfloat16, "master", "contiguous", True, False, False, True),
    (torch.bfloat16, "sr", "contiguous", True, False, False, False),
    (torch.float16, "master", "sliced", False, False, True, False),
    (torch.bfloat16, "plain", "transposed", True, True, False, False),
]


@needs_ext
@pytest.mark.parametrize("op", Q8_OPS)
@pytest.mark.parametrize("dtype, mode, layout, decoupled, maximize, tensor_lr, amp", CASES)
def test_cpu_kernel_matches_reference(op, dtype, mode, layout, decoupled, maximize, tensor_lr, amp):
    # Lion's and SGD's kernels compute the reference's own operations: 4 steps, bit for bit
    _match_reference(
        getattr(torch.ops.fusedopt, op),
        CASES.index((dtype, mode, layout, decoupled, maximize, tensor_lr, amp)),
        12 if op == "adam8bit_" else 4,
        op,
    )


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("case", [1, 3, 4, 5])
def test_triton_kernel_matches_reference(case):
    """As the CPU kernel's test, on the cases with a Tensor lr, GradScaler, master weights and
    stochastic rounding (fewer steps: the interpreter runs the Triton kernel)."""
    import fusedopt.triton as ft

    _match_reference(ft.adam8bit_, case, 3)


def _match_reference(fn, case: int, steps: int, op: str = "adam8bit_") -> None:
    """Codes bitwise equal, absmax equal, params within an ulp or two (Adam's; Lion's and
    SGD's equal), over ``steps`` steps of CASES[case]; params re-synced after each step (Note
    [re-sync after every step] in helpers.py), the states not."""
    dtype, mode, layout, decoupled, maximize, tensor_lr, amp = CASES[case]
    torch.manual_seed(0)
    # the optimizers pass a float lr as an fp64 tensor
    lr = torch.tensor(1e-2, dtype=torch.float32 if tensor_lr else torch.float64)
    ours = _args(_params(dtype, layout), mode, lr, amp, op=op)
    theirs = _copy(ours)
    aux = [arg.name for arg in OPS[op].aux_state]
    for step in range(steps):
        grads = [torch.randn_like(p) * 4 for p in ours["params"]]
        _call(fn, ours, grads, decoupled, maximize)
        _call(getattr(reference, op), theirs, grads, decoupled, maximize)
        for key in aux:
            for i, (a, b) in enumerate(zip(ours[key], theirs[key])):
                assert torch.equal(a, b), f"step {step}: {key}[{i}] differs"
        for key in ("state_steps", "sr_seeds"):
            assert all(
                torch.equal(a, b) for a, b in zip(ours.get(key) or [], theirs.get(key) or [])
            )
        for key in ("params", "master_params"):
            for a, b in zip(ours[key] or [], theirs[key] or []):
                if op != "adam8bit_":
                    assert torch.equal(a, b), f"step {step}: {key}"
                    continue
                # adam_element's denominator is within an ulp of torch's (math.h): an ulp or
                # two of the update (lr), and of the result
                err = (a.double() - b.double()).abs()
                tol = 2 * ulp(b, a.dtype) + 2 * ulp(torch.tensor(1e-2), torch.float32)
                assert bool((err <= tol).all()), f"step {step}: {key}"
                a.copy_(b)


def _no_table_maps(row: int) -> torch.Tensor:
    """The maps with three entries of row ``row`` within 2e-6 of each other: two of its
    midpoints share every bucket of 8 mantissa bits, so it has no encode table (Note [encode by
    table] in csrc/cpu/q8.h); the other row keeps its table."""
    maps = quant.QMAPS.clone()
    maps[row, 201] = maps[row, 200] + 1e-6
    maps[row, 202] = maps[row, 200] + 2e-6
    return maps


def _edge_grads(params, step: int) -> list[torch.Tensor]:
    """Grads whose blocks reach the kernel's special cases: with the moment made the grad
    (_EDGE), block 0 is all zeros, block 1 holds a NaN, block 2 an inf, block 3 the signed map's
    midpoints (ties, absmax 1), block 4 an absmax below 2^-128 (an infinite reciprocal);
    the rest are random over many magnitudes, with a partial last block."""
    g = torch.Generator().manual_seed(step)
    out = []
    for p in params:
        x = torch.randn(p.shape, generator=g) * 10.0 ** torch.randint(-6, 3, p.shape, generator=g)
        flat = x.view(-1)
        if flat.numel() >= 5 * 256:
            flat[:256] = 0
            flat[256 + 17] = float("nan")
            flat[512 + 3] = float("-inf")
            flat[768:1024] = torch.cat([torch.ones(1), quant.midpoints(quant.QMAPS[0])[:-1]])
            flat[1024:1280] = torch.randn(256, generator=g) * 1e-40
            flat[1024 + 5] = -0.0
        out.append(x.to(p.dtype))
    return out


# the scalars that make each op's (first) moment the grad
_EDGE = {
    "adam8bit_": dict(beta1=0.0),
    "lion8bit_": dict(beta2=0.0),
    "sgd8bit_": dict(momentum=0.0, dampening=0.0, weight_decay=0.0),
}

LEVEL_CASES = [  # (param dtype, mode, qmaps)
    (torch.float32, "plain", "default"),
    (torch.float32, "plain", "no-table"),
    (torch.bfloat16, "sr", "default"),
    (torch.float16, "master", "default"),
]


@needs_ext
@pytest.mark.parametrize("op", Q8_OPS)
@pytest.mark.parametrize("dtype, mode, maps", LEVEL_CASES)
def test_every_simd_level_gives_the_reference_bits(op, dtype, mode, maps):
    """Each SIMD level's decode and encode (Note [8-bit SIMD] in csrc/cpu/q8.h) gives
    the reference's codes and absmax, and the same bits at every level, on the blocks of
    _edge_grads, over 3 steps."""
    from helpers import cpu_levels

    levels = cpu_levels()
    saved = _C.cpu_capability()
    sizes = (256 * 7 + 77, 256 * 6, 100)
    results = []
    try:
        for level in levels:
            _C.set_cpu_capability(level)
            torch.manual_seed(0)
            ours = _args([torch.randn(n).to(dtype) for n in sizes], mode, LR, False, op=op)
            ours.update(_EDGE[op])
            if maps == "no-table":
                # the map of Adam's second moment; Lion's and SGD's one moment's
                ours["qmaps"] = _no_table_maps(1 if op == "adam8bit_" else 0)
            theirs = _copy(ours)
            for step in range(3):
                grads = _edge_grads(ours["params"], step)
                _call(getattr(torch.ops.fusedopt, op), ours, grads, True, False)
                _call(getattr(reference, op), theirs, grads, True, False)
                for key in (arg.name for arg in OPS[op].aux_state):
                    for i, (a, b) in enumerate(zip(ours[key], theirs[key])):
                        # a NaN absmax may carry another payload than torch.amax's
                        same = (a == b) | (a.isnan() & b.isnan())
                        assert bool(same.all()), f"{level}, step {step}: {key}[{i}] differs"
                for key in ("params", "master_params"):
                    for a, b in zip(ours[key] or [], theirs[key] or []):
                        # Adam's within an ulp (above): the states must see the same params
                        same = (a == b) | (a.isnan() & b.isnan())
                        assert op == "adam8bit_" or bool(same.all()), f"{level}: {key}"
                        b.copy_(a)
            results.append(
                (level, [t.clone() for t in ours["params"] + (ours["master_params"] or [])])
            )
    finally:
        _C.set_cpu_capability(saved)
    for level, got in results[1:]:
        for a, b in zip(results[0][1], got):
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), f"{level} differs"


@needs_ext
@pytest.mark.parametrize("op", Q8_OPS)
@pytest.mark.parametrize("fn", ["cpu", "reference"])
def test_found_inf_changes_nothing(fn, op):
    args = _args(_params(torch.float32, "contiguous"), "plain", LR, True, op=op)
    grads = [torch.randn_like(p) for p in args["params"]]
    _call(_impl(fn, op), args, grads, True, False)
    before = _copy(args)
    args["found_inf"].fill_(1.0)
    _call(_impl(fn, op), args, grads, True, False)
    for k, v in before.items():
        if isinstance(v, list):
            assert all(torch.equal(a, b) for a, b in zip(v, args[k])), k


@needs_ext
@pytest.mark.parametrize("op", Q8_OPS)
@pytest.mark.parametrize("fn", ["cpu", "reference"])
def test_bad_states_are_refused_before_any_write(fn, op):
    params = _params(torch.float32, "contiguous")
    grads = [torch.randn_like(p) for p in params]
    aux = [arg.name for arg in OPS[op].aux_state]  # the codes first, the last an absmax list
    for key, bad, message in [
        (aux[0], lambda t: t.float(), f"{aux[0]}.3. must be a contiguous"),
        (aux[-1], lambda t: t[:-1], f"{aux[-1]}.3. must be a contiguous"),
        ("qmaps", lambda t: t[:1], "qmaps must be a float32"),
    ]:
        args = _args(params, "plain", LR, False, op=op)
        if key == "qmaps":
            args[key] = bad(args[key])
        else:
            args[key][3] = bad(args[key][3])
        before = _copy(args)
        with pytest.raises(RuntimeError, match=message):
            _call(_impl(fn, op), args, grads, True, False)
        for k in ("state_steps", "params", *aux):
            assert all(torch.equal(a, b) for a, b in zip(before.get(k, []), args.get(k, []))), k


# -- the optimizers ------------------------------------------------------------------------------

Q8 = "int8_blockwise"
BACKENDS = ["reference"] + (["cpu"] if _C is not None else [])


def _model(seed: int = 0) -> list[torch.nn.Parameter]:
    """Params above and below the 8-bit threshold, one of them transposed."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(96, 50), (5001,), (300,), (7, 3)]
    ps = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in shapes]
    ps.append(torch.nn.Parameter((torch.randn(64, 80, generator=g) * 0.1).t()))
    return ps


def _run(opt, params, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * 0.01 + p.detach() * 0.1
        opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_8bit_state_layout_and_bytes(backend):
    params = _model()
    opt = fusedopt.AdamW(params, lr=1e-3, state_dtype=Q8, backend=backend)
    _run(opt, params, 2)
    big, small = params[0], params[2]
    st = opt.state[big]
    assert st["exp_avg"].dtype == torch.uint8 and st["exp_avg"].shape == big.shape
    assert st["exp_avg_absmax"].shape == (quant.num_blocks(big.numel()),)
    assert set(opt.state[small]) == {"step", "exp_avg", "exp_avg_sq"}
    assert opt.state[small]["exp_avg"].dtype == torch.float32
    one = torch.nn.Parameter(torch.zeros(1 << 20))
    opt1 = fusedopt.AdamW([one], state_dtype=Q8, backend=backend)
    _run(opt1, [one], 1)
    assert fusedopt.state_bytes(opt1) == pytest.approx(2 + 8 / 256, abs=1e-4)
    opt2 = fusedopt.AdamW([one], backend=backend)
    _run(opt2, [one], 1)
    assert fusedopt.state_bytes(opt2) == pytest.approx(8, abs=1e-4)
    # the threshold is configurable
    opt3 = fusedopt.AdamW(params, state_dtype=Q8, min_8bit_size=100, backend=backend)
    _run(opt3, params, 1)
    assert opt3.state[small]["exp_avg"].dtype == torch.uint8
    assert opt3.state[params[3]]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("backend, steps", [("cpu", 20), ("triton", 4)])
def test_optimizer_matches_reference_backend(backend, steps):
    if backend == "cpu" and _C is None:
        pytest.skip("the compiled extension is not built")
    if backend == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    a, b = _model(), _model()
    oa = fusedopt.AdamW(a, lr=1e-2, state_dtype=Q8, backend=backend, max_grad_norm=0.05)
    ob = fusedopt.AdamW(b, lr=1e-2, state_dtype=Q8, backend="reference", max_grad_norm=0.05)
    for step in range(steps):
        _run(oa, a, 1, seed=step)
        _run(ob, b, 1, seed=step)
        for pa, pb in zip(a, b):
            for k in oa.state[pa]:
                if oa.state[pa][k].dtype == torch.uint8 or "absmax" in k:
                    assert torch.equal(oa.state[pa][k], ob.state[pb][k]), (step, k)
            # an ulp or two of the result and of the update (math.h's denominator)
            torch.testing.assert_close(pa, pb, rtol=3e-7, atol=2e-9)
            with torch.no_grad():
                pa.copy_(pb)


def _distance(params, ref) -> float:
    num = sum(float((p - q).detach().double().square().sum()) for p, q in zip(params, ref))
    den = sum(float(q.detach().double().square().sum()) for q in ref)
    return (num / den) ** 0.5


def test_close_to_fp32_adamw_over_100_steps():
    """Relative L2 distance of the params from fp32 AdamW's after 100 steps; against
    bitsandbytes' AdamW8bit's (same hyperparameters and grads) when it is installed."""
    backend = "cpu" if _C is not None else "reference"
    runs = {}
    for name in ("fp32", "8bit"):
        params = _model()
        kw = {"state_dtype": Q8} if name == "8bit" else {}
        opt = fusedopt.AdamW(params, lr=1e-3, weight_decay=0.1, backend=backend, **kw)
        _run(opt, params, 100)
        runs[name] = params
    ours = _distance(runs["8bit"], runs["fp32"])
    # measured: 0.0141 (bitsandbytes 0.50.2: 0.0141), the params having moved 0.49 (relative)
    assert 0 < ours < 0.02, ours
    if HAS_BNB:
        import bitsandbytes as bnb

        params = _model()
        opt = bnb.optim.AdamW8bit(params, lr=1e-3, weight_decay=0.1)
        _run(opt, params, 100)
        theirs = _distance(params, runs["fp32"])
        assert ours <= theirs * 1.05, (ours, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_round_trip_is_bit_identical(backend):
    a = _model()
    oa = fusedopt.AdamW(a, lr=1e-2, state_dtype=Q8, backend=backend)
    _run(oa, a, 3)
    sd = oa.state_dict()
    assert sd["state"][0]["exp_avg_qmap"].shape == (256,) and "exp_avg_qmap" not in oa.state[a[0]]
    check_round_trip(oa, a, lambda b: fusedopt.AdamW(b, lr=1e-2, state_dtype=Q8, backend=backend))


def check_round_trip(oa, a, make):  # noqa: ANN001
    """``oa``'s saved and reloaded state_dict in ``make(b)``, b copies of its params ``a``: every
    state tensor the same bits, and the same params after two more steps. Returns (ob, b)."""
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ob = make(b)
    ob.load_state_dict(torch.load(_saved(oa.state_dict()), weights_only=True))
    for pa, pb in zip(a, b):
        assert set(oa.state[pa]) == set(ob.state[pb])
        for k, v in oa.state[pa].items():
            assert v.dtype == ob.state[pb][k].dtype and torch.equal(v, ob.state[pb][k]), k
    _run(oa, a, 2, seed=5)
    _run(ob, b, 2, seed=5)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a, b))
    return ob, b


def _saved(sd):
    import io

    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return buf


def test_checkpoints_to_and_from_torch_optim():
    backend = BACKENDS[-1]
    # torch.optim's fp32 checkpoint into an 8-bit optimizer: quantized
    a = _model()
    ta = torch.optim.AdamW(a, lr=1e-2)
    _run(ta, a, 3)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ob = fusedopt.AdamW(b, lr=1e-2, state_dtype=Q8, backend=backend)
    ob.load_state_dict(ta.state_dict())
    codes, absmax = quant.quantize(ta.state[a[0]]["exp_avg_sq"], quant.QMAPS[1])
    assert torch.equal(ob.state[b[0]]["exp_avg_sq"], codes)
    assert torch.equal(ob.state[b[0]]["exp_avg_sq_absmax"], absmax)
    assert torch.equal(ob.state[b[2]]["exp_avg"], ta.state[a[2]]["exp_avg"])  # small: fp32
    _run(ob, b, 1)
    # and back: dequantize_state_dict makes a checkpoint torch.optim.AdamW loads
    plain = fusedopt.dequantize_state_dict(ob.state_dict())
    tc = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in b], lr=1e-2)
    tc.load_state_dict(plain)
    for i, p in enumerate(b):
        st = ob.state[p]
        want = st["exp_avg"]
        if want.dtype == torch.uint8:
            want = quant.dequantize(want, st["exp_avg_absmax"], quant.QMAPS[0])
        got = tc.state[tc.param_groups[0]["params"][i]]["exp_avg"]
        assert got.dtype == torch.float32 and torch.equal(got, want)
    assert set(plain["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    # an 8-bit checkpoint into a fusedopt optimizer with fp32 moments: decoded
    oc = fusedopt.AdamW([torch.nn.Parameter(p.detach().clone()) for p in b], lr=1e-2)
    oc.load_state_dict(ob.state_dict())
    c0 = oc.param_groups[0]["params"][0]
    assert set(oc.state[c0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert torch.equal(
        oc.state[c0]["exp_avg"],
        quant.dequantize(
            ob.state[b[0]]["exp_avg"], ob.state[b[0]]["exp_avg_absmax"], quant.QMAPS[0]
        ),
    )


def test_bad_options_and_checkpoints():
    p = [torch.nn.Parameter(torch.zeros(5000))]
    with pytest.raises(ValueError, match="Invalid state_dtype: 'int4'"):
        fusedopt.AdamW(p, state_dtype="int4")
    with pytest.raises(ValueError, match="amsgrad is not supported"):
        fusedopt.Adam(p, amsgrad=True, state_dtype=Q8)
    with pytest.raises(ValueError, match="not supported by this optimizer"):
        fusedopt.LAMB(p, state_dtype=Q8)
    with pytest.raises(ValueError, match="Invalid min_8bit_size"):
        fusedopt.AdamW(p, state_dtype=Q8, min_8bit_size=-1)
    with pytest.raises(TypeError, match="min_8bit_size"):
        fusedopt.LAMB(p, min_8bit_size=10)
    opt = fusedopt.AdamW(p, state_dtype=Q8, backend=BACKENDS[-1])
    _run(opt, p, 1)
    sd = opt.state_dict()
    del sd["state"][0]["exp_avg_absmax"]
    with pytest.raises(KeyError, match="no 'exp_avg_absmax'"):
        opt.load_state_dict(sd)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (requirements-dev.txt)")
def test_bitsandbytes_checkpoint_loads_bit_for_bit():
    """Note [bitsandbytes checkpoints]: AdamW8bit's state1/state2/absmax as our codes and
    absmax, its fp32 states of small params as fp32 moments; another block size is refused."""
    import bitsandbytes as bnb

    a = _model()[:4]  # bitsandbytes' CPU kernels want contiguous params
    ta = bnb.optim.AdamW8bit(a, lr=1e-2)
    _run(ta, a, 3)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ob = fusedopt.AdamW(b, lr=1e-2, state_dtype=Q8, backend=BACKENDS[-1])
    sd = ta.state_dict()
    ob.load_state_dict(sd)
    for pa, pb in zip(a, b):
        theirs, ours = ta.state[pa], ob.state[pb]
        assert float(ours["step"]) == theirs["step"] == 3
        assert torch.equal(ours["exp_avg"], theirs["state1"])
        assert torch.equal(ours["exp_avg_sq"], theirs["state2"])
        if theirs["state1"].dtype == torch.uint8:
            assert torch.equal(ours["exp_avg_absmax"], theirs["absmax1"])
            assert torch.equal(ours["exp_avg_sq_absmax"], theirs["absmax2"])
    _run(ob, b, 1)
    # fp32 moments: decoded
    oc = fusedopt.AdamW([torch.nn.Parameter(p.detach().clone()) for p in a], lr=1e-2)
    oc.load_state_dict(sd)
    c0 = oc.param_groups[0]["params"][0]
    want = quant.dequantize(ta.state[a[0]]["state1"], ta.state[a[0]]["absmax1"], quant.QMAPS[0])
    assert torch.equal(oc.state[c0]["exp_avg"], want)
    sd["state"][0]["__bnb_optimizer_quant_state__"]["absmax1"] = torch.ones(3)
    before = {k: v.clone() for k, v in ob.state[b[0]].items()}
    with pytest.raises(ValueError, match="another block size"):
        ob.load_state_dict(sd)
    assert all(torch.equal(v, ob.state[b[0]][k]) for k, v in before.items())
    # Lion8bit's state1 is Lion's exp_avg; SGD8bit's groups keep no dampening: refused
    lion = bnb.optim.Lion8bit(a[:1], lr=1e-4)
    _run(lion, a[:1], 1)
    ol = fusedopt.Lion(b[:1], state_dtype=Q8, backend="reference")
    ol.load_state_dict(lion.state_dict())
    assert torch.equal(ol.state[b[0]]["exp_avg"], lion.state[a[0]]["state1"])
    sgd = bnb.optim.SGD8bit(a[:1], lr=0.1, momentum=0.9)
    _run(sgd, a[:1], 1)
    with pytest.raises(ValueError, match="lack dampening, momentum"):
        fusedopt.SGD(b[:1], lr=0.1, momentum=0.9, state_dtype=Q8).load_state_dict(sgd.state_dict())
