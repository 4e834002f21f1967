"""The 8-bit ops' CUDA kernels (Note [8-bit CUDA kernel] in csrc/cuda/q8_kernels.h) on the host
simulation (torch.ops.fusedopt_sim), every run: codes and absmax bit for bit the reference's,
params the reference's (Adam's within the ulps its denominator allows, and bit for bit the CPU
kernel's), over several steps, at several launch shapes, on odd sizes, empty and
non-contiguous params, several params in one call; every op and mode; bf16/fp16 params with
fp32 masters and stochastic rounding; found_inf on the host and on the "device"; NaN, inf,
zero, tie and tiny blocks; the CPU op's errors. tests/test_cuda.py runs Q8_CASES on a GPU
(run_against_reference with a device)."""

from __future__ import annotations

import pytest
import torch
from test_q8 import _edge_grads

from fusedopt import reference
from fusedopt._ext import _C
from fusedopt._opdefs import OPS
from fusedopt.reference import quant
from helpers import ulp

pytestmark = pytest.mark.skipif(_C is None, reason="the compiled extension is unavailable")

SMALL = 4096
# 0: empty; 255, 257, 1300: partial last blocks; 1300 spans chunks of 256 and 768 elements.
SIZES = [257, 0, 1, 1300, 255]
HYPER = {
    "adam8bit_": dict(beta1=0.9, beta2=0.999, weight_decay=0.1, eps=1e-8),
    "lion8bit_": dict(beta1=0.9, beta2=0.99, weight_decay=0.5),
    "sgd8bit_": dict(momentum=0.9, dampening=0.3, weight_decay=0.1, is_first_step=True),
}
FLAGS = ("maximize", "decoupled_weight_decay", "nesterov")


def q8_args(op: str, dtype: torch.dtype, mode: str, seed: int = 0, **kw) -> dict:
    """Keyword arguments of `op` (OPS[op].bind) on the CPU: params of SIZES (one transposed, so
    staged), zero states, a float64 Tensor lr; mode "plain", "master" (fp32 copies) or "sr"."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=g).to(dtype) for n in SIZES]
    params.append(torch.randn(20, 13, generator=g).to(dtype).t())  # 260: dense, transposed
    if mode == "sr":
        params[-1] = params[-1].contiguous()  # Q8's stochastic rounding needs row-major order
    d = OPS[op]
    args = {"params": params, "lr": torch.tensor(1e-2, dtype=torch.float64)}
    for a in d.aux_state:
        if a.key.endswith("_absmax"):  # type: ignore[union-attr]
            args[a.name] = [torch.zeros(quant.num_blocks(p.numel())) for p in params]
        else:
            args[a.name] = [torch.zeros(p.shape, dtype=torch.uint8) for p in params]
    if "state_steps" in d.names:
        args["state_steps"] = [torch.tensor(float(i)) for i in range(len(params))]
    args["qmaps"] = quant.QMAPS.clone()
    args.update(HYPER[op])
    args.update({f: False for f in FLAGS if f in d.names})
    if mode == "master":
        args["master_params"] = [torch.randn(p.shape, generator=g) for p in params]
    if mode == "sr":
        args["sr_seeds"] = [torch.tensor(5 * i + 1, dtype=torch.int64) for i in range(len(params))]
    args.update(kw)
    return args


def copy_args(args: dict) -> dict:
    def c(v):
        return v.clone() if torch.is_tensor(v) else v

    return {k: [c(t) for t in v] if isinstance(v, list) else c(v) for k, v in args.items()}


def call(fn, op: str, args: dict, grads) -> None:
    fn(*OPS[op].bind(**args, grads=grads))


def grads_for(params, step: int, edge: bool) -> list[torch.Tensor]:
    if edge:
        return _edge_grads(params, step)
    g = torch.Generator().manual_seed(100 + step)
    return [(torch.randn(p.shape, generator=g) * 4).to(p.dtype) for p in params]


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Bit for bit, but a NaN may carry another payload (torch.amax's, the GPU's)."""
    if not x.is_floating_point():
        return torch.equal(x, y)
    ints = {2: torch.int16, 4: torch.int32}[x.element_size()]
    return bool(((x.view(ints) == y.view(ints)) | (x.isnan() & y.isnan())).all())


def assert_same_states(op: str, ours: dict, theirs: dict, what: str) -> None:
    """Codes and absmax bit for bit, step counters and seeds equal."""
    for a in OPS[op].aux_state:
        for i, (x, y) in enumerate(zip(ours[a.name], theirs[a.name])):
            assert same_bits(x, y), f"{what}: {a.name}[{i}] differs"
    for key in ("state_steps", "sr_seeds"):
        for x, y in zip(ours.get(key) or [], theirs.get(key) or []):
            assert torch.equal(x, y), f"{what}: {key}"


def assert_params_match(op: str, ours: dict, theirs: dict, what: str) -> None:
    """Lion's and SGD's params bit for bit; Adam's within test_q8's bound (adam_element's
    denominator is within an ulp of torch's), then re-synced (the states are not)."""
    for key in ("params", "master_params"):
        for i, (x, y) in enumerate(zip(ours.get(key) or [], theirs.get(key) or [])):
            if op == "adam8bit_":
                err = (x.double() - y.double()).abs()
                tol = 2 * ulp(y, x.dtype) + 2 * ulp(torch.tensor(1e-2), torch.float32)
                assert bool(((err <= tol) | (x.isnan() & y.isnan())).all()), f"{what}: {key}[{i}]"
                x.copy_(y)
            else:
                assert same_bits(x, y), f"{what}: {key}[{i}] differs"


# (op, param dtype, mode, options): every op and flag, each mixed-precision mode.
Q8_CASES = [
    ("adam8bit_", torch.float32, "plain", {"decoupled_weight_decay": True}),
    ("adam8bit_", torch.float32, "plain", {"maximize": True}),
    ("adam8bit_", torch.bfloat16, "master", {"decoupled_weight_decay": True}),
    ("adam8bit_", torch.bfloat16, "sr", {}),
    ("adam8bit_", torch.float16, "plain", {"decoupled_weight_decay": True}),
    ("lion8bit_", torch.float32, "plain", {}),
    ("lion8bit_", torch.bfloat16, "sr", {"maximize": True}),
    ("lion8bit_", torch.float16, "master", {}),
    ("sgd8bit_", torch.float32, "plain", {}),
    ("sgd8bit_", torch.float32, "plain", {"nesterov": True, "dampening": 0.0, "maximize": True}),
    ("sgd8bit_", torch.bfloat16, "master", {"nesterov": True, "dampening": 0.0}),
]
Q8_IDS = [
    f"{op.rstrip('_')}-{str(dt).split('.')[1]}-{mode}" + "".join(f"-{k}" for k in kw)
    for op, dt, mode, kw in Q8_CASES
]

# The GPU's launch shape (chunks of 2,048 elements, 512 threads); chunks of one block with a
# table of 2 slots and 3 blocks (several launches, a param across launches); chunks of 3 blocks
# in the 4 KB table, scalars read through pointers as on the GPU.
SIM_CONFIGS = [
    pytest.param({}, id="gpu"),
    pytest.param({"chunk_size": 16, "threads": 32, "max_slots": 2, "max_blocks": 3}, id="c256t32"),
    pytest.param(
        {"chunk_size": 768, "threads": 8, "arg_bytes": SMALL, "scalars_by_pointer": True},
        id="c768t8",
    ),
]


@pytest.fixture
def sim():
    _C.sim.reset()
    yield _C.sim
    _C.sim.reset()


def to_device(args: dict, device: str, scalars: bool = True) -> dict:
    """Copies of `args` on `device` (layouts kept); lr, grad_scale and found_inf there only if
    `scalars`."""
    out = {}
    for k, v in args.items():
        if isinstance(v, list):
            out[k] = [t.to(device) for t in v]
        elif torch.is_tensor(v):
            out[k] = v.to(device) if scalars or k == "qmaps" else v.clone()
        else:
            out[k] = v
    return out


def run_against_reference(
    op, dtype, mode, kw, steps, edge=False, amp=False, device=None, scalars=True
) -> None:
    """`steps` steps of the simulation (or, given a `device`, the op there) and of the reference
    from the same arguments."""
    extra = {"grad_scale": torch.tensor(4.0), "found_inf": torch.tensor([0.0])} if amp else {}
    theirs = q8_args(op, dtype, mode, **kw, **extra)
    if edge:  # the (first) moment is the grad
        theirs.update({"adam8bit_": {"beta1": 0.0}, "lion8bit_": {"beta2": 0.0}}.get(op, {}))
        theirs.update({"momentum": 0.0, "dampening": 0.0} if op == "sgd8bit_" else {})
    ours = to_device(theirs, device, scalars) if device else copy_args(theirs)
    fn = getattr(torch.ops.fusedopt if device else torch.ops.fusedopt_sim, op)
    for step in range(steps):
        grads = grads_for(theirs["params"], step, edge)
        call(fn, op, ours, [g.to(ours["params"][0].device) for g in grads])
        call(getattr(reference, op), op, theirs, grads)
        got = to_device(ours, "cpu") if device else ours
        assert_same_states(op, got, theirs, f"step {step}")
        assert_params_match(op, got, theirs, f"step {step}")
        for key in ("params", "master_params") if device else ():
            for x, y in zip(ours.get(key) or [], got.get(key) or []):
                x.copy_(y)
        if op == "sgd8bit_":
            ours["is_first_step"] = theirs["is_first_step"] = False


@pytest.mark.parametrize("config", SIM_CONFIGS)
@pytest.mark.parametrize("op,dtype,mode,kw", Q8_CASES, ids=Q8_IDS)
def test_simulation_matches_reference(sim, config, op, dtype, mode, kw):
    sim.configure(**config)
    run_against_reference(op, dtype, mode, kw, steps=3, amp=bool(config))
    assert sim.stats()["blocks"] > 0


@pytest.mark.parametrize("op", ["adam8bit_", "lion8bit_", "sgd8bit_"])
def test_nan_inf_zero_tie_and_tiny_blocks(sim, op):
    """test_q8's _edge_grads (with the moment equal to the grad): a zero block, a NaN block, an
    inf block, the map's midpoints (ties), an absmax below 2^-128 (an infinite reciprocal)."""
    sim.configure(chunk_size=512, threads=16)
    run_against_reference(op, torch.float32, "plain", {}, steps=2, edge=True)


@pytest.mark.parametrize("case", [0, 2, 3])
def test_simulation_equals_cpu_kernel_bits(sim, case):
    """adam8bit_'s params too are the CPU kernel's bit for bit (the same math.h element)."""
    op, dtype, mode, kw = Q8_CASES[case]
    sim.configure(chunk_size=256, threads=16)
    cpu = q8_args(op, dtype, mode, **kw)
    ours = copy_args(cpu)
    for step in range(3):
        grads = grads_for(cpu["params"], step, False)
        call(torch.ops.fusedopt_sim.adam8bit_, op, ours, grads)
        call(torch.ops.fusedopt.adam8bit_, op, cpu, grads)
        for key, v in cpu.items():
            if isinstance(v, list):
                assert all(torch.equal(x, y) for x, y in zip(ours[key], v)), (step, key)


@pytest.mark.parametrize("where", ["host", "device"])
def test_found_inf_changes_nothing(sim, where):
    sim.configure(chunk_size=256, threads=8, scalars_by_pointer=where == "device")
    for op in HYPER:
        args = q8_args(op, torch.bfloat16, "sr", found_inf=torch.tensor([1.0]))
        before = copy_args(args)
        call(getattr(torch.ops.fusedopt_sim, op), op, args, grads_for(args["params"], 0, False))
        for k, v in before.items():
            if isinstance(v, list):
                assert all(torch.equal(x, y) for x, y in zip(v, args[k])), (op, k)
    launched = sim.stats()["blocks"]
    assert (launched > 0) == (where == "device") and sim.stats()["skipped_blocks"] == launched


def _bad(op):
    """(argument, change, exception, message): each rejected before anything is written."""
    codes, absmax = OPS[op].names[2], next(a.name for a in OPS[op].aux_state if "absmax" in a.key)
    return [
        (codes, lambda t: t.float(), RuntimeError, rf"{codes}\[3\] must be a contiguous"),
        (absmax, lambda t: t[:-1], RuntimeError, rf"{absmax}\[3\] must be a contiguous"),
        ("qmaps", lambda t: t[:1], RuntimeError, "qmaps must be a float32"),
        ("params", lambda t: t.double(), RuntimeError, "need float32, bfloat16 or float16"),
    ]


@pytest.mark.parametrize("op", ["adam8bit_", "lion8bit_", "sgd8bit_"])
def test_bad_input_is_refused_before_any_write(sim, op):
    """The CPU op's errors (adam8bit_: the same messages; the others have the reference's
    exception types), nothing written, steps included; and stochastic rounding of a dense
    transposed param is not implemented, as on the CPU."""
    for name, change, exc, message in _bad(op):
        args = q8_args(op, torch.float32, "plain")
        if name == "qmaps":
            args[name] = change(args[name])
        else:
            args[name][3] = change(args[name][3])
        grads = [torch.zeros(p.shape, dtype=p.dtype) for p in args["params"]]
        before = copy_args(args)
        with pytest.raises(exc, match=message) as ours:
            call(getattr(torch.ops.fusedopt_sim, op), op, args, grads)
        for k, v in before.items():
            if isinstance(v, list):
                assert all(torch.equal(x, y) for x, y in zip(v, args[k])), (name, k)
        if op == "adam8bit_":
            with pytest.raises(exc) as cpu:
                call(torch.ops.fusedopt.adam8bit_, op, args, grads)
            assert str(ours.value).splitlines()[0] == str(cpu.value).splitlines()[0]
        else:
            with pytest.raises(exc):
                call(getattr(reference, op), op, args, grads)
    args = q8_args(op, torch.bfloat16, "sr")
    args["params"][-1] = args["params"][-1].t().contiguous().t()
    grads = [torch.zeros(p.shape, dtype=p.dtype) for p in args["params"]]
    with pytest.raises(NotImplementedError, match="stochastic rounding"):
        call(getattr(torch.ops.fusedopt_sim, op), op, args, grads)
