"""The CUDA backend's host parts, tested without a GPU on every run.

1. The launch planner (csrc/cuda/launch_plan.h, through fusedopt._C.planner): 64-bit sizes and
   offsets (a 2^31+1-element tensor, planned only), empty tensors in every slot position
   including the last, more tensors than one launch holds, tiny and huge tensors mixed, the
   launch tables fitting the kernel-argument space.
2. The simulation (torch.ops.fusedopt_sim.*, csrc/cuda/sim.h): the CUDA ops' host glue, planner,
   launch tables and block bodies -- the code the GPU runs -- executed on the CPU for every
   simulated block and thread, on tensors with odd sizes and misaligned starts, compared with
   the CPU kernels and with torch.optim.
3. Mixed precision on the simulation (Note [mixed precision on the GPU] in csrc/cuda/functors.h):
   every op and every (param dtype, state dtype, master / stochastic rounding) combination
   against fusedopt.reference over several steps; stochastic rounding bit for bit; found_inf;
   LAMB's phases.
4. Adafactor's own kernels on the simulation (Note [Adafactor on the GPU] in
   csrc/cuda/adafactor_kernels.h): against fusedopt.reference element by element on matrices,
   batched matrices, vectors, 0-d, empty and non-contiguous tensors, at several launch shapes.
"""

from __future__ import annotations

import contextlib
import random

import pytest
import torch

import fusedopt
from fusedopt import _dispatch, _opdefs, reference
from fusedopt._ext import _C
from fusedopt._opdefs import AUX, GRAD, LR, OPS, PARAM, STATE, STEP
from fusedopt.reference._common import sr_key, sr_round_bf16
from helpers import (
    DTYPE_IDS,
    DTYPES,
    TOL_VS_TORCH,
    adafactor_scalars,
    assert_close_ulp,
    run_parity,
    ulp,
)
from optim_info import matrix

pytestmark = pytest.mark.skipif(_C is None, reason="the compiled extension is unavailable")

P = _C.planner if _C is not None else None
SMALL, LARGE = 4096, 32764


# -- 1. the planner -----------------------------------------------------------------------------
def check_plan(numels, chunk, max_slots, max_blocks):
    """Every chunk of every non-empty tensor in exactly one block, in order; capacities kept;
    no empty slot or launch; a tensor's blocks consecutive in the global numbering; block
    offsets and sizes as the kernel resolves them from its launch table."""
    plan = P.plan_launches(numels, chunk, max_slots, max_blocks)
    next_block = 0
    for launch in plan:
        assert launch["first_block"] == next_block
        slots = launch["slots"]
        assert 1 <= len(slots) <= max_slots and 1 <= launch["num_blocks"] <= max_blocks
        start = 0
        for tensor, _first, block_start, count in slots:
            assert numels[tensor] > 0 and count >= 1
            assert block_start == start  # slots tile the launch's blocks
            start += count
        assert start == launch["num_blocks"]
        next_block += start
    blocks = P.resolve_blocks(numels, chunk, max_slots, max_blocks)
    assert len(blocks) == next_block == sum((n + chunk - 1) // chunk for n in numels)
    expect = [(t, c) for t, n in enumerate(numels) for c in range((n + chunk - 1) // chunk)]
    assert [(t, c) for _, _, t, c, _, _ in blocks] == expect
    for i, (_, g, t, c, offset, n) in enumerate(blocks):
        assert g == i  # global numbers: consecutive per tensor, as reductions need
        assert offset == c * chunk and n == min(chunk, numels[t] - offset) and n > 0
    return plan, blocks


def test_tensor_of_2_pow_31_plus_1_elements():
    n = 2**31 + 1
    slots, blocks = P.table_capacity(1, LARGE)
    assert blocks == P.MAX_GRID_BLOCKS
    plan, resolved = check_plan([n], P.CHUNK_SIZE, slots, blocks)
    assert len(plan) == 1  # one launch: blocks are not limited by the argument space
    last = resolved[-1]
    assert last[4] == 2**31 and last[5] == 1  # the last element sits past 2^31: 64-bit offset
    # Split over launches (as at the grid limit): each launch resumes at the next chunk.
    chunks = -(-n // P.CHUNK_SIZE)
    plan, resolved = check_plan([n], P.CHUNK_SIZE, slots, 40_000)
    assert len(plan) == -(-chunks // 40_000) and all(len(lc["slots"]) == 1 for lc in plan)
    assert [launch["slots"][0][1] for launch in plan] == list(range(0, chunks, 40_000))


def test_tiny_and_huge_mixed():
    numels = [1, 2**33 + 5, 3, 0, 65537, 2**31 - 1, 0, 16]
    for arg_bytes in (LARGE, SMALL):
        check_plan(numels, P.CHUNK_SIZE, *P.table_capacity(4, arg_bytes))
        check_plan(numels, P.CHUNK_SIZE, P.table_capacity(4, arg_bytes)[0], 50_000)


@pytest.mark.parametrize("count", [1, 2, 5])
def test_empty_tensors_in_every_slot_position(count):
    base = [33, 5, 70, 16, 1, 48]
    for pos in range(len(base) + 1):  # before each tensor, and after the last
        numels = base[:pos] + [0] * count + base[pos:]
        for slots, blocks in [(1, 1), (2, 3), (3, 2), (100, 100)]:
            plan, _ = check_plan(numels, 16, slots, blocks)
            assert all(numels[t] > 0 for launch in plan for t, *_ in launch["slots"])
    assert P.plan_launches([0, 0, 0], 16, 4, 4) == []


def test_more_tensors_than_one_launch_holds():
    numels = [1 + (i * 7) % 50 for i in range(1000)]
    slots, blocks = P.table_capacity(4, SMALL)
    plan, _ = check_plan(numels, 16, slots, blocks)
    assert len(plan) > 1 and max(len(lc["slots"]) for lc in plan) == slots
    # 10,000 tiny tensors: 21 launches with the 32 KB table, 186 with 4 KB.
    for arg_bytes, launches in [(LARGE, 21), (SMALL, 186)]:
        cap = P.table_capacity(4, arg_bytes)
        assert len(P.plan_launches([1024] * 10_000, P.CHUNK_SIZE, *cap)) == launches


def test_random_plans():
    rng = random.Random(0)
    for _ in range(200):
        numels = [rng.choice([0, 0, 1, 15, 16, 17, rng.randrange(1, 400)]) for _ in range(12)]
        check_plan(numels, 16, rng.randrange(1, 6), rng.randrange(1, 9))


def test_first_block_offsets_a_plan():
    plan = P.plan_launches([100, 50], 16, 2, 4, first_block=1000)
    assert plan[0]["first_block"] == 1000
    assert plan[1]["first_block"] == 1004


def test_tables_fit_the_kernel_argument_space():
    for arg_bytes in (SMALL, LARGE):
        for depth in range(1, P.MAX_DEPTH + 1):
            slots, blocks = P.table_capacity(depth, arg_bytes)
            # 4 KB: 43 slots at depth 6, 39 at 7 (the 8-bit ops with a master or seed)
            assert slots >= 39 and blocks == P.MAX_GRID_BLOCKS
            assert P.table_bytes(depth, arg_bytes) + P.FUNCTOR_ARG_BYTES <= arg_bytes
    assert P.table_capacity(4, LARGE)[0] > 9 * P.table_capacity(4, SMALL)[0]


@pytest.mark.parametrize(
    "driver,cc,expect",
    [(12000, 9, SMALL), (12010, 6, SMALL), (12010, 7, LARGE), (13000, 9, LARGE), (11080, 8, SMALL)],
)
def test_argument_space_choice(driver, cc, expect):
    assert P.kernel_arg_bytes(driver, cc) == expect


def test_vector_alignment():
    assert P.vector_aligned([0x1000, 0x2010, 0x30F0])
    assert not P.vector_aligned([0x1000, 0x2004])
    assert not P.vector_aligned([0x1002])


@pytest.mark.parametrize(
    "args,match",
    [
        (([10], 24, 4, 4), "multiple of 16"),
        (([10], 0, 4, 4), "multiple of 16"),
        (([10], 16, 0, 4), "positive"),
        (([-1], 16, 4, 4), "negative"),
    ],
)
def test_planner_rejects(args, match):
    with pytest.raises(ValueError, match=match):
        P.plan_launches(*args)


# -- 2. the simulation --------------------------------------------------------------------------
SIM = torch.ops.fusedopt_sim if _C is not None else None

# How the simulated launches are cut: the GPU's defaults, and small chunks and tables so that
# small tensors span many blocks and launches (and chunk tails, vector tails and the 4 KB table
# all occur).
SIM_CONFIGS = [
    pytest.param({}, id="gpu-defaults"),
    pytest.param({"chunk_size": 16, "threads": 4, "max_slots": 3, "max_blocks": 5}, id="c16t4"),
    pytest.param({"chunk_size": 48, "threads": 8, "arg_bytes": SMALL, "max_blocks": 7}, id="c48t8"),
    pytest.param({"chunk_size": 64, "threads": 1, "max_slots": 1, "max_blocks": 1}, id="c64t1"),
]


@pytest.fixture
def sim():
    _C.sim.reset()
    yield _C.sim
    _C.sim.reset()


SIZES = [1, 3, 0, 15, 16, 17, 31, 33, 100, 257, 1000, 0]


def _tensors(sizes, dtype, offsets, gen, positive=False):
    """Slices of larger buffers at the given element offsets: odd offsets are misaligned."""
    out = []
    for n, off in zip(sizes, offsets):
        vals = torch.randn(n, generator=gen, dtype=torch.float64)
        buf = torch.zeros(n + off + 3, dtype=dtype)
        buf[off : off + n] = vals.abs() if positive else vals
        out.append(buf[off : off + n])
    return out


def _offsets(kind, n, lst):
    if kind == "aligned":
        return [0] * n
    if kind == "misaligned":
        return [1 + (i + lst) % 3 for i in range(n)]
    # mixed: every third param aligned in all its arrays, the others misaligned in some
    return [0 if i % 3 == 0 else (i + lst) % 4 for i in range(n)]


def _steps(n, dtype=torch.float32):
    return [torch.tensor(float(3 + i % 4), dtype=dtype) for i in range(n)]


# The op-level tests' scalar values by name (kw overrides them): floats not named take 0.5,
# bools False, ints their default; states with these keys are made non-negative.
_SCALARS = {
    "beta1": 0.9,
    "beta2": 0.99,
    "weight_decay": 0.1,
    "eps": 1e-8,
    "momentum": 0.9,
    "dampening": 0.1,
    "rho": 0.04,
    "bs": 5.0,
    "trust_clip": None,
    "decoupled_weight_decay": True,
    "bias_correction": True,
}
_NON_NEGATIVE = {"exp_avg_sq", "max_exp_avg_sq", "hessian"}
# Auxiliary outputs and Tensor scalars given to the op, by name, made for n params.
_AUX = {
    "tensor_norms": lambda n: torch.full((n, 2), -1.0),
    "ckp1": lambda n: torch.tensor(0.5, dtype=torch.float64),
    "bias_correction2": lambda n: torch.tensor(0.5, dtype=torch.float64),
}


def _build(op, t, sizes, kw):
    """Op ``op``'s arguments from its registry entry (lists by name: t(name, non-negative); a
    state list with a ``when`` scalar empty when that is false), and the indices of the ones it
    writes."""
    d = OPS[op]
    n = len(sizes)

    def scalar(a):
        default = a.py_default if a.default is not None else 0.5 if a.type == "float" else False
        return kw.get(a.name, _SCALARS.get(a.name, default))

    def value(a):
        if a.role in (PARAM, GRAD):
            return t(a.name)
        if a.role == STATE:
            if a.when is not None and not kw.get(a.when, _SCALARS.get(a.when, False)):
                return []
            return t(a.name, a.key in _NON_NEGATIVE)
        if a.role == STEP:
            return _steps(n, kw.get("step_dtype", torch.float32))
        if a.role == LR:
            return kw.get("lr", torch.tensor(1e-2, dtype=torch.float64))
        if a.role == AUX and a.name in _AUX and a.name not in kw:
            return _AUX[a.name](n)
        if a.is_list or a.type.startswith("Tensor"):
            return kw.get(a.name)
        return scalar(a)

    args = tuple(value(a) for a in d.args)
    return args, [i for i, a in enumerate(d.args) if a.write and args[i] is not None]


def _muon_momentum(t, dtype, sizes, kw):
    # the updates bf16 (what Newton-Schulz reads), of the grads' shapes, only written
    updates = [torch.zeros(g.shape, dtype=torch.bfloat16) for g in t("grads")]
    return _build("muon_momentum_", t, sizes, {"updates": updates, **kw})


# Op argument builders: (args, indices of the arguments the op writes); every op with kernels
# (OpDef.kernels) but sum_sq and those whose state is not param-shaped (auxiliary state:
# adafactor_ in section 4, the 8-bit ops in tests/test_cuda_q8.py).
BUILDERS = {
    name: (lambda t, dtype, sizes, kw, name=name: _build(name, t, sizes, kw))
    for name in OPS
    if name != "sum_sq" and not OPS[name].aux_state and OPS[name].kernels
}
BUILDERS["muon_momentum_"] = _muon_momentum

# The ops without params (no master_params / sr_seeds).
NO_PARAMS = ("sophia_update_hessian_", "muon_momentum_")

# (op, mode kwargs): every template mode of every op at least once.
OP_CASES = [
    ("adam_", {}),
    ("adam_", {"amsgrad": True, "maximize": True}),
    ("adam_", {"decoupled_weight_decay": False, "weight_decay": 0.05}),
    ("adam_", {"amsgrad": True, "decoupled_weight_decay": False, "step_dtype": torch.float64}),
    ("sgd_", {}),
    ("sgd_", {"is_first_step": True, "nesterov": True}),
    ("sgd_", {"momentum": 0.0, "dampening": 0.0, "maximize": True}),
    ("sgd_", {"nesterov": True, "maximize": True, "dampening": 0.0}),
    ("lion_", {}),
    ("lion_", {"maximize": True}),
    ("schedule_free_adamw_", {}),
    (
        "schedule_free_adamw_",
        {"weight_decay": 0.0, "ckp1": torch.tensor(0.75, dtype=torch.float64)},
    ),
    # eval's weight 1 - 1/beta1 at beta1 = 0.9 and 0.4 (torch.lerp's two forms: |w| < 0.5 or
    # not), train's 1 - beta1 at beta1 = 0.3
    ("schedule_free_swap_", {"weight": 1 - 1 / 0.9}),
    ("schedule_free_swap_", {"weight": 1 - 1 / 0.4}),
    ("schedule_free_swap_", {"weight": 0.7}),
    ("lamb_", {}),
    ("lamb_", {"maximize": True, "trust_clip": 0.5, "bias_correction": False}),
    ("sophia_", {}),
    ("sophia_", {"maximize": True, "bs": 100.0}),
    ("sophia_update_hessian_", {}),
    ("muon_momentum_", {"nesterov": True}),
    ("muon_momentum_", {"nesterov": False}),
    ("muon_", {}),
]
OP_IDS = [f"{op.rstrip('_')}-{i}" for i, (op, _) in enumerate(OP_CASES)]


# Seeds whose increments cross the 32-bit halves of sr_key, and wrap around.
SR_SEEDS = [0, 2**32 - 1, -1, 12345, 2**40 + 7, -(2**63), 2**63 - 1]


def build(op, kw, dtype, layout="mixed", sizes=SIZES, seed=0, state_dtype=None, mode="plain"):
    """The op's arguments: params and grads of `dtype`, states of `state_dtype` (default
    `dtype`); mode "master" adds fp32 master copies of the params (at their own offsets),
    "sr" one int64 seed per param (0-d and 1-element tensors)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(sizes)
    cache = {}

    def t(name, positive=False):
        if name not in cache:
            dt = dtype if name in ("params", "grads") else (state_dtype or dtype)
            cache[name] = _tensors(sizes, dt, _offsets(layout, n, len(cache)), gen, positive)
        return cache[name]

    kw = dict(kw)
    if mode == "master":
        masters = []
        for p, off in zip(t("params"), _offsets(layout, n, 5)):
            buf = torch.zeros(p.numel() + off + 3, dtype=torch.float32)
            masters.append(buf[off : off + p.numel()].view(p.shape).copy_(p))
        kw["master_params"] = masters
    elif mode == "sr":
        kw["sr_seeds"] = [
            torch.tensor(SR_SEEDS[i % len(SR_SEEDS)], dtype=torch.int64).reshape(
                () if i % 2 else (1,)
            )
            for i in range(n)
        ]
    return BUILDERS[op](t, dtype, sizes, kw)


def written(args, idx):
    out = []
    for i in idx:
        a = args[i]
        out += [x.clone() for x in a] if isinstance(a, list) else [a.clone()]
    return out


# Note [CPU and CUDA bits]
# The CPU kernels and the CUDA block bodies call the same math.h functions in the same order,
# with no FMA contraction on either side (-ffp-contract=off, nvcc --fmad=false): their outputs
# are equal bit for bit, in every dtype (fp16/bf16 compute in fp32 and round once). Exceptions:
#  - LAMB's norms sum squares in fp64 in another order (CPU: per thread and SIMD lane; CUDA: per
#    thread, then a fixed tree), which moves the fp64 norms, and so the fp64 params they scale,
#    by a few fp64 ulps (measured: up to 5). In fp32 and below the sums are rounded to float
#    before they scale anything: equal bits there (checked).
#  - on a GPU (ulps=1 for fp64): the bias corrections' pow() in double is the device's, within
#    an ulp of glibc's; rounded to fp32 that never shows, in fp64 opmath it can.
LAMB_FP64_SUM_ORDER_RTOL = 64 * torch.finfo(torch.float64).eps


def assert_matches(actual, expected, dtype, what, op=None, ulps=0):
    """Bit for bit (NaN == NaN), or within `ulps` ulps, per Note [CPU and CUDA bits]; `op`
    "lamb_" allows its fp64 sum-order difference."""
    assert len(actual) == len(expected)
    for k, (a, e) in enumerate(zip(actual, expected)):
        name = f"{what}[{k}] ({DTYPE_IDS[dtype]})"
        assert a.dtype == e.dtype and a.shape == e.shape, name
        same = (a == e) | (a.isnan() & e.isnan()) if a.is_floating_point() else a == e
        if a.is_floating_point() and (ulps or (op == "lamb_" and a.dtype == torch.float64)):
            allowed = ulps * ulp(e, a.dtype)
            if op == "lamb_" and a.dtype == torch.float64:
                allowed = allowed + LAMB_FP64_SUM_ORDER_RTOL * e.double().abs()
            same |= (a.double() - e.double()).abs() <= allowed
        if not same.all():
            i = int((~same).flatten().nonzero()[0])
            raise AssertionError(
                f"{name}: {int((~same).sum())}/{a.numel()} elements differ; first at {i}: "
                f"{a.flatten()[i].item()!r} vs {e.flatten()[i].item()!r}"
            )


def cpu_vs_sim(op, kw, dtype, layout="mixed", sizes=SIZES):
    a, idx = build(op, kw, dtype, layout, sizes)
    b, _ = build(op, kw, dtype, layout, sizes)
    getattr(torch.ops.fusedopt, op)(*a)
    getattr(SIM, op)(*b)
    return written(b, idx), written(a, idx)


@pytest.mark.parametrize("config", SIM_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("op,kw", OP_CASES, ids=OP_IDS)
def test_simulated_kernels_match_cpu_kernels(sim, op, kw, dtype, config):
    sim.configure(**config)
    ours, cpu = cpu_vs_sim(op, kw, dtype)
    assert_matches(ours, cpu, dtype, f"{op} {kw}", op)
    stats = sim.stats()
    assert 0 < stats["vector_blocks"] < stats["blocks"]  # mixed layouts: both paths ran


@pytest.mark.parametrize(
    "op,kw",
    [c for c in OP_CASES if c[0] not in ("lamb_",)],
    ids=[i for i, c in zip(OP_IDS, OP_CASES) if c[0] != "lamb_"],
)
def test_elementwise_bits_do_not_depend_on_the_launch_shape(sim, op, kw):
    """Any indexing slip (a chunk offset, a vector tail, a slot lookup) changes some element."""
    results = []
    for config in [
        {},
        {"chunk_size": 16, "threads": 4, "max_slots": 2, "max_blocks": 3},
        {"chunk_size": 32, "threads": 1},
        {"chunk_size": 1024, "threads": 64},
    ]:
        for layout in ("aligned", "misaligned"):
            sim.reset()
            sim.configure(**config)
            args, idx = build(op, kw, torch.float32, layout)
            getattr(SIM, op)(*args)
            results.append(written(args, idx))
    for r in results[1:]:
        for x, y in zip(results[0], r):
            assert torch.equal(x, y)


@pytest.mark.parametrize("layout,vector", [("aligned", True), ("misaligned", False)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
def test_vector_path_only_when_aligned(sim, layout, vector, dtype):
    sim.configure(chunk_size=32, threads=4)
    ours, cpu = cpu_vs_sim("adam_", {"amsgrad": True}, dtype, layout)
    assert_matches(ours, cpu, dtype, "adam")
    st = sim.stats()
    assert st["blocks"] > 0 and st["vector_blocks"] == (st["blocks"] if vector else 0)


# (param dtype, state dtype, param mode) for found_inf: plain, and each way of writing a param.
FOUND_INF_STORAGE = [
    pytest.param(torch.float32, None, "plain", id="fp32"),
    pytest.param(torch.bfloat16, torch.float32, "master", id="bf16-master"),
    pytest.param(torch.bfloat16, torch.bfloat16, "sr", id="bf16-sr"),
    pytest.param(torch.float32, torch.bfloat16, "plain", id="fp32-bf16states"),
]


@pytest.mark.parametrize("dtype,state_dtype,mode", FOUND_INF_STORAGE)
@pytest.mark.parametrize("by_pointer", [False, True], ids=["by-value", "by-pointer"])
@pytest.mark.parametrize("op", list(BUILDERS))
def test_found_inf_changes_nothing(sim, op, by_pointer, dtype, state_dtype, mode):
    """Params, states, step counters, masters and seeds all keep their bits."""
    if op in NO_PARAMS and mode != "plain":
        pytest.skip("no params")
    sim.configure(chunk_size=16, threads=4, max_blocks=4, scalars_by_pointer=by_pointer)
    kw = {"found_inf": torch.tensor([1.0])}
    args, idx = build(op, kw, dtype, state_dtype=state_dtype, mode=mode)
    before = written(args, idx)
    getattr(SIM, op)(*args)
    for x, y in zip(written(args, idx), before):
        assert torch.equal(x, y)
    st = sim.stats()
    if by_pointer:  # every block read the flag and left
        assert st["blocks"] > 0 and st["skipped_blocks"] == st["blocks"]
    else:  # known on the host: nothing launched
        assert st["blocks"] == 0 and st["step_launches"] == 0


@pytest.mark.parametrize("by_pointer", [False, True], ids=["by-value", "by-pointer"])
@pytest.mark.parametrize("op", list(BUILDERS))
def test_device_scalars(sim, op, by_pointer):
    """lr, grad_scale and a clear found_inf in several dtypes, read on the 'device'."""
    sim.configure(chunk_size=32, threads=8, scalars_by_pointer=by_pointer)
    kw = {
        "lr": torch.tensor([2e-3], dtype=torch.float32),
        "grad_scale": torch.tensor(64.0, dtype=torch.float64),
        "found_inf": torch.tensor(0.0, dtype=torch.float32),
    }
    ours, cpu = cpu_vs_sim(op, kw, torch.float32)
    assert_matches(ours, cpu, torch.float32, op)


def test_step_counters_in_several_launches(sim):
    """More step counters than one increment launch holds (4 KB table: 448)."""
    sim.configure(arg_bytes=SMALL, chunk_size=16, threads=2)
    sizes = [i % 3 for i in range(1000)]  # a third empty: their counters count too
    ours, cpu = cpu_vs_sim("adam_", {}, torch.float32, "aligned", sizes)
    assert_matches(ours, cpu, torch.float32, "adam")
    assert sim.stats()["step_launches"] == 3


@pytest.mark.parametrize("config", SIM_CONFIGS)
def test_lamb_norms_across_launches(sim, config):
    """A tensor spanning many blocks and launches: its last block reduces the norms."""
    sim.configure(**config)
    sizes = [1000, 0, 37, 5000, 1, 0]
    ours, cpu = cpu_vs_sim("lamb_", {"weight_decay": 0.1}, torch.float32, "mixed", sizes)
    assert_matches(ours, cpu, torch.float32, "lamb")
    norms = ours[-1]
    assert torch.equal(norms[1], torch.zeros(2)) and torch.equal(norms[5], torch.zeros(2))
    # fp64 sums in another order, stored as float32: at most one float32 rounding apart
    torch.testing.assert_close(norms, cpu[-1], rtol=1.2e-7, atol=0)


@pytest.mark.parametrize("config", SIM_CONFIGS)
def test_sum_sq(sim, config):
    sim.configure(**config)
    gen = torch.Generator().manual_seed(0)
    xs = _tensors([1000, 0, 17, 3333], torch.float32, [0, 1, 2, 3], gen)
    xs += _tensors([5, 100], torch.bfloat16, [1, 0], gen)
    xs += _tensors([77], torch.float64, [1], gen) + [torch.randn(6, 4).t()]  # non-dense
    ours = SIM.sum_sq(xs)
    expect = sum(
        float((x.double() if x.dtype != torch.bfloat16 else x.float().double()).square().sum())
        for x in xs
    )
    assert ours.dtype == torch.float64 and ours.shape == ()
    assert abs(ours.item() - expect) <= 1e-12 * expect
    assert abs(ours.item() - torch.ops.fusedopt.sum_sq(xs).item()) <= 1e-12 * expect
    assert SIM.sum_sq([torch.empty(0), torch.empty(0, 3)]).item() == 0.0


def test_validation_matches_cpu_messages(sim):
    for op in BUILDERS:
        args, idx = build(op, {}, torch.float32, "aligned")
        args = list(args)
        first = idx[0]
        bad = list(args[first])
        bad[3] = torch.zeros(bad[3].numel() + 1)
        args[first] = bad
        before = written(args, [i for i in idx if i != first])
        errors = []
        for ops in (torch.ops.fusedopt, SIM):
            with pytest.raises(RuntimeError) as info:
                getattr(ops, op)(*args)
            errors.append(str(info.value).splitlines()[0])
        assert errors[0] == errors[1]
        for x, y in zip(written(args, [i for i in idx if i != first]), before):
            assert torch.equal(x, y)


def test_sim_ops_take_the_real_ops_arguments():
    for op in [*BUILDERS, "sum_sq"]:
        real = getattr(torch.ops.fusedopt, op).default._schema
        ours = getattr(SIM, op).default._schema
        assert [str(a.type) for a in real.arguments] == [str(a.type) for a in ours.arguments], op


# -- the optimizers on the simulated kernels ----------------------------------------------------
def _sim_kernel(op):
    """A kernel with the real op's Python signature running the simulation."""
    schema = getattr(torch.ops.fusedopt, op).default._schema
    names = [a.name for a in schema.arguments]
    defaults = [a.default_value if a.has_default_value() else None for a in schema.arguments]

    def fn(*args, **kwargs):
        full = list(args) + [
            kwargs.get(n, d) for n, d in zip(names[len(args) :], defaults[len(args) :])
        ]
        return getattr(SIM, op)(*full)

    return fn


@pytest.fixture
def cpu_backend_simulated(monkeypatch, sim):
    """backend="cpu" steps run the simulated CUDA kernels instead of the CPU kernels."""
    real = _dispatch.kernel
    monkeypatch.setattr(
        _dispatch, "kernel", lambda b, op: _sim_kernel(op) if b == "cpu" else real(b, op)
    )
    # Steps must go through kernel(), not the C++ StepPlan (which calls the real CPU op).
    monkeypatch.setattr(_dispatch, "step_plan", lambda *a: None)
    return sim


# Every optimizer, as tests/test_cuda.py steps it on the CPU and on the GPU.
OPTIMIZERS = matrix("cuda", "cls", "kwargs")


def cpu_equals_other(cls, kwargs, dtype, backend, device, around=contextlib.nullcontext):
    """Every optimizer stepped on the CPU kernels and on `backend` (on `device`, each step run
    inside around()) from the same grads, re-synced after every step: params and every state
    tensor equal bit for bit (Note [CPU and CUDA bits]), Lion's sign near zero included."""
    torch.manual_seed(0)
    shapes = [(1,), (17,), (40007,), (), (33, 31), (0,)]
    cpu = [torch.randn(s, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    # copy=True: on the CPU (the simulation) .to(device) would alias the params, and the
    # second optimizer would step what the first one already stepped.
    other = [p.detach().to(device, copy=True).requires_grad_() for p in cpu]
    a = cls(cpu, backend="cpu", **kwargs)
    b = cls(other, backend=backend, **kwargs)
    for t in range(4):
        for p, q in zip(cpu, other):
            p.grad = torch.randn(p.shape, dtype=torch.float64).to(dtype)
            q.grad = p.grad.to(device)
        if cls is fusedopt.Sophia and t % 2:
            a.update_hessian()
            with around():
                b.update_hessian()
        a.step()
        with around():
            b.step()
        for p, q in zip(cpu, other):
            assert_matches([q.detach().cpu()], [p.detach()], dtype, f"step {t} param")
            for k, v in a.state[p].items():
                if not torch.is_tensor(v):
                    continue
                w = b.state[q][k]
                assert w.device == q.device, k  # state, `step` included, on the params' device
                assert_matches([w.cpu()], [v], dtype, f"step {t} {k}")
        with torch.no_grad():
            for p, q in zip(cpu, other):
                q.copy_(p)
                for k, v in a.state[p].items():
                    if torch.is_tensor(v):
                        b.state[q][k].copy_(v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_optimizers_cpu_equals_simulated(monkeypatch, sim, cls, kwargs, dtype):
    """tests/test_cuda.py's CPU == CUDA comparison with the simulated kernels at the GPU's launch
    shape: the same sums in the same order as on the GPU, so equal bits here mean equal bits
    there (LAMB's clipping norm and trust ratios included)."""
    real = _dispatch.kernel
    simulate = [False]
    monkeypatch.setattr(
        _dispatch, "kernel", lambda b, op: _sim_kernel(op) if simulate[0] else real(b, op)
    )
    monkeypatch.setattr(_dispatch, "step_plan", lambda *a: None)

    @contextlib.contextmanager
    def simulated():
        simulate[0] = True
        try:
            yield
        finally:
            simulate[0] = False

    cpu_equals_other(cls, kwargs, dtype, "cpu", "cpu", simulated)
    assert sim.stats()["launches"] > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("ours,theirs,kwargs", matrix("sim_torch", "cls", "torch_cls", "kwargs"))
def test_optimizers_on_simulated_kernels_match_torch(
    cpu_backend_simulated, ours, theirs, kwargs, dtype
):
    cpu_backend_simulated.configure(chunk_size=4096, threads=32, max_slots=4, max_blocks=6)
    run_parity(
        lambda ps: ours(ps, backend="cpu", **kwargs),
        lambda ps: theirs(ps, foreach=False, **kwargs),
        dtype,
        steps=3,
        make_ref64=lambda ps: ours(ps, backend="reference", **kwargs),
    )
    assert cpu_backend_simulated.stats()["launches"] > 3


def step_both(a, b, ps, qs):
    """One step of optimizer a (over ps) and b (over qs) from the same random grads."""
    for p, q in zip(ps, qs):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    a.step()
    b.step()


def test_clipping_and_grad_scaler_on_simulated_kernels(cpu_backend_simulated):
    """max_grad_norm: sum_sq and the clip factor through grad_scale, as the GPU step runs it."""
    cpu_backend_simulated.configure(chunk_size=64, threads=8, scalars_by_pointer=True)
    torch.manual_seed(0)
    ps = [torch.randn(n, requires_grad=True) for n in (300, 0, 17)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    a = fusedopt.AdamW(ps, lr=1e-2, max_grad_norm=0.5, backend="cpu")
    b = fusedopt.AdamW(qs, lr=1e-2, max_grad_norm=0.5, backend="reference")
    for _ in range(3):
        step_both(a, b, ps, qs)
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q, rtol=1.3e-6, atol=1e-6)


# -- 3. mixed precision on the simulated kernels -------------------------------------------------
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

# Every (param dtype, state dtype, param mode) beside the four plain ones (cpu::dispatch_mixed).
MIXED = [
    pytest.param(BF16, FP32, "master", id="bf16-master"),
    pytest.param(BF16, BF16, "master", id="bf16-master-bf16states"),
    pytest.param(FP16, FP32, "master", id="fp16-master"),
    pytest.param(FP16, BF16, "master", id="fp16-master-bf16states"),
    pytest.param(BF16, BF16, "sr", id="bf16-sr"),
    pytest.param(BF16, FP32, "sr", id="bf16-sr-fp32states"),
    pytest.param(FP32, BF16, "plain", id="fp32-bf16states"),
    pytest.param(BF16, FP32, "plain", id="bf16-fp32states"),
    pytest.param(FP16, FP32, "plain", id="fp16-fp32states"),
    pytest.param(FP16, BF16, "plain", id="fp16-bf16states"),
]
UPDATE_CASES = [c for c in OP_CASES if c[0] not in NO_PARAMS]
UPDATE_IDS = [i for i, c in zip(OP_IDS, OP_CASES) if c[0] not in NO_PARAMS]


def arg_index(op, name):
    """Position of the argument `name` in the op's schema (the builders' positional order)."""
    return [a.name for a in getattr(torch.ops.fusedopt, op).default._schema.arguments].index(name)


def assert_mixed_matches(actual, expected, what, sign_flips=False):
    """Our outputs against the reference's, computed from the same inputs.

    Step counters and seeds: equal. fp32/fp64: TOL_VS_TORCH (the fp32 math differs from torch's
    by FMA contraction and the order of a few operations). fp16/bf16 (params, states): the same
    rounding of an fp32 value a few fp32 ulps away (or, where the math cancels, as much apart as
    TOL_VS_TORCH's atol allows), so at most one storage ulp apart beyond that, and equal but
    where that value is within those ulps of a rounding boundary: at most 1% of the elements (a
    wrong index, key or rounding mode changes about a third of them). sign_flips (Lion): a few
    elements may step the other way where c is 0 on one side and a rounding error on the other
    (Note in fusedopt/math.h lion_element; coarse fp16/bf16 inputs cancel exactly now and then)."""
    assert len(actual) == len(expected)
    mismatched = far = total = 0
    atol = TOL_VS_TORCH[FP32].atol
    for k, (a, e) in enumerate(zip(actual, expected)):
        name = f"{what}[{k}]"
        assert a.dtype == e.dtype and a.shape == e.shape, name
        if a.dtype == torch.int64 or a.dim() == 0:
            assert torch.equal(a, e), f"{name}: {a} != {e}"
        elif a.dtype in (BF16, FP16):
            diff = (a.double() - e.double()).abs()
            bad = ~(diff <= ulp(e, a.dtype) + atol) & ~(a.isnan() & e.isnan())
            if not sign_flips:
                assert not bad.any(), f"{name}: {int(bad.sum())} elements more than an ulp apart"
            far += int(bad.sum())
            mismatched += int((a != e).sum())
            total += a.numel()
        elif sign_flips:
            tol = TOL_VS_TORCH[a.dtype]
            far += int((~((a - e).abs() <= tol.atol + tol.rtol * e.abs())).sum())
        else:
            assert_close_ulp(a, e, TOL_VS_TORCH[a.dtype], name)
    assert mismatched <= 1 + total // 100, f"{what}: {mismatched}/{total} rounded differently"
    assert far <= 1 + total // 1000, f"{what}: {far}/{total} more than an ulp apart"


def live(args, idx):
    """The written tensors themselves (to re-sync them)."""
    out = []
    for i in idx:
        out += args[i] if isinstance(args[i], list) else [args[i]]
    return out


def resync(ours, theirs, idx, step):
    """Ours takes the reference's values (Note [re-sync after every step] in helpers.py) and both
    get new grads: each step is judged from the same state."""
    with torch.no_grad():
        for x, y in zip(live(ours, idx), live(theirs, idx)):
            x.copy_(y)
        gen = torch.Generator().manual_seed(1000 + step)
        for x, y in zip(ours[1], theirs[1]):
            g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            x.copy_(g)
            y.copy_(g)


@pytest.mark.parametrize("dtype,state_dtype,mode", MIXED)
@pytest.mark.parametrize("op,kw", OP_CASES, ids=OP_IDS)
def test_mixed_precision_matches_reference(sim, op, kw, dtype, state_dtype, mode):
    """Three steps of every op mode in every mixed combination, on tensors spanning many blocks
    and launches (an empty one among them), vector and scalar paths, against the reference."""
    if op in NO_PARAMS and mode != "plain":
        pytest.skip("no params")
    sim.configure(chunk_size=16, threads=4, max_slots=3, max_blocks=5)
    ours, idx = build(op, kw, dtype, state_dtype=state_dtype, mode=mode)
    theirs, _ = build(op, kw, dtype, state_dtype=state_dtype, mode=mode)
    for step in range(3):
        getattr(SIM, op)(*ours)
        getattr(reference, op)(*theirs)
        flips = op == "lion_"
        assert_mixed_matches(written(ours, idx), written(theirs, idx), f"{op} {step}", flips)
        resync(ours, theirs, idx, step)
    st = sim.stats()
    assert 0 < st["vector_blocks"] < st["blocks"]  # both paths, with arrays of mixed widths
    if mode == "sr":  # the seeds advanced once per step
        seeds = ours[arg_index(op, "sr_seeds")]
        assert [int(s) for s in seeds] == [
            (SR_SEEDS[i % len(SR_SEEDS)] + 3 + 2**63) % 2**64 - 2**63 for i in range(len(seeds))
        ]


@pytest.mark.parametrize("state_dtype", [FP32, BF16], ids=["fp32states", "bf16states"])
@pytest.mark.parametrize("op,kw", UPDATE_CASES, ids=UPDATE_IDS)
def test_stochastic_rounding_bits(sim, op, kw, state_dtype):
    """Bit for bit: the stochastically rounded param is sr_round_bf16 (the reference's) of the
    fp32 theta that the same kernel body computes with a master copy, whose param is that theta
    rounded to nearest; states and step counters are the same in both modes. Chunks of 64 on 8
    threads: the noise counter is the element's index in its tensor across chunks and packs."""
    sim.configure(chunk_size=64, threads=8, max_slots=4)
    sizes = [1000, 0, 37, 3, 129, 2048, 1]
    sr, idx = build(op, kw, BF16, sizes=sizes, state_dtype=state_dtype, mode="sr")
    ms, _ = build(op, kw, BF16, sizes=sizes, state_dtype=state_dtype, mode="master")
    seeds = [int(s) for s in sr[arg_index(op, "sr_seeds")]]
    getattr(SIM, op)(*sr)
    getattr(SIM, op)(*ms)
    masters = ms[arg_index(op, "master_params")]
    for i, (p_sr, p_ms, m) in enumerate(zip(sr[0], ms[0], masters)):
        assert torch.equal(p_ms, m.to(BF16)), f"param {i}: master rounding"
        key = sr_key((seeds[i] + 1) % 2**64)
        expect = sr_round_bf16(m, key, p_sr)
        assert torch.equal(p_sr.view(torch.int16), expect.view(torch.int16)), f"param {i}"
        changed = p_sr.float() != m  # theta not representable: rounded up or down
        if changed.sum() > 100:  # both ways, about as often as the low bits say
            up = (p_sr.float().abs() > m.abs())[changed].double().mean()
            assert 0.3 < up < 0.7, f"param {i}: rounded up {up:.2f} of the time"
    rest = [i for i in idx if i not in (0, arg_index(op, "sr_seeds"))]
    for x, y in zip(written(sr, rest), written(ms, rest)):
        assert torch.equal(x, y)


def _exact_sgd_args(dtype, mode, seed):
    """SGD without momentum or decay, lr a power of two and grads in the params' dtype: theta -
    lr*g has one rounding in fp32 whoever computes it (FMA or not), so the stored bits must be
    the reference's exactly. Params: a 0-d one, a transposed one (dense, not row-major: the noise
    counter is the memory index), a non-dense one (staged: row-major), one spanning chunks, an
    empty one, and misaligned slices."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    params = [r(), r(9, 17).t(), r(20, 20)[:, ::2], r(5000), r(0), r(40)[1:34], r(77)]
    grads = [r(*p.shape) for p in params]
    kw = {}
    if mode == "master":
        kw["master_params"] = [p.float().clone() for p in params]
    else:
        kw["sr_seeds"] = [torch.tensor([s]) for s in (3, -1, 2**32, 7, 0, 2**63 - 1, 99)]
    lr = torch.tensor(2.0**-4)
    args = (params, grads, [], lr, 0.0, 0.0, 0.0, False, False, False, None, None)
    return args + (kw.get("master_params"), kw.get("sr_seeds"))


@pytest.mark.parametrize(
    "dtype,mode",
    [(BF16, "sr"), (BF16, "master"), (FP16, "master")],
    ids=["bf16-sr", "bf16-master", "fp16-master"],
)
def test_exact_updates_equal_the_reference_bits(sim, dtype, mode):
    sim.configure(chunk_size=256, threads=16)
    ours = _exact_sgd_args(dtype, mode, 0)
    theirs = _exact_sgd_args(dtype, mode, 0)
    for step in range(3):
        SIM.sgd_(*ours)
        reference.sgd_(*theirs)
        for k in (0, 12, 13):
            for i, (x, y) in enumerate(zip(ours[k] or [], theirs[k] or [])):
                assert torch.equal(x, y), f"step {step}: argument {k}[{i}]"
                assert x.stride() == y.stride()
        assert any(
            not torch.equal(x, y) for x, y in zip(ours[0], _exact_sgd_args(dtype, mode, 0)[0])
        )


# LAMB's phases: each way the passes split (pass 1 storing the moments or not), and each param
# mode.
LAMB_STORAGE = [
    pytest.param(FP32, FP32, "plain", id="fp32"),
    pytest.param(BF16, BF16, "plain", id="bf16"),
] + [
    c
    for c in MIXED
    if c.id
    in ("fp32-bf16states", "bf16-master", "fp16-master-bf16states", "bf16-sr", "bf16-sr-fp32states")
]


def _lamb(dtype, state_dtype, mode, **kw):
    kw = dict({"weight_decay": 0.1, "trust_clip": 2.0}, **kw)
    return build("lamb_", kw, dtype, state_dtype=state_dtype, mode=mode)


def _with_phase(args, phase):
    k = arg_index("lamb_", "phase")
    return args[:k] + (phase,) + args[k + 1 :]


@pytest.mark.parametrize("by_pointer", [False, True], ids=["by-value", "by-pointer"])
@pytest.mark.parametrize("dtype,state_dtype,mode", LAMB_STORAGE)
def test_lamb_phase_1_then_2_equals_phase_0(sim, dtype, state_dtype, mode, by_pointer):
    """Phase 1 increments the steps and writes the sums of squares (the reference's, up to the
    order of the fp64 sums), and no param, master, seed or norm; phase 2 with the same arguments
    then writes what phase 0 writes, bit for bit, and what the reference's phases write."""
    sim.configure(
        chunk_size=16, threads=4, max_slots=3, max_blocks=5, scalars_by_pointer=by_pointer
    )
    n = len(SIZES)
    whole, idx = _lamb(dtype, state_dtype, mode)
    split, _ = _lamb(dtype, state_dtype, mode, phase=1, sq_sums=torch.full((n, 2), -1.0).double())
    ref, _ = _lamb(dtype, state_dtype, mode, phase=1, sq_sums=torch.full((n, 2), -1.0).double())
    SIM.lamb_(*whole)
    before = {k: written(split, [k]) for k in idx}
    SIM.lamb_(*split)
    reference.lamb_(*ref)
    steps, norms = arg_index("lamb_", "state_steps"), arg_index("lamb_", "tensor_norms")
    for k in idx:
        if k == steps:
            assert [float(x) for x in split[k]] == [float(x) + 1 for x in before[k]]
        elif k in (2, 3) and state_dtype == FP32:
            pass  # the moments may be stored already (in fp32 they are not rounded)
        else:  # params, masters, seeds, norms; moments that storing would round
            assert all(torch.equal(x, y) for x, y in zip(written(split, [k]), before[k])), k
    sq = arg_index("lamb_", "sq_sums")
    torch.testing.assert_close(split[sq], ref[sq], rtol=1e-5, atol=0)
    assert all(float(split[sq][i].abs().sum()) == 0.0 for i in range(n) if SIZES[i] == 0)
    split, ref = _with_phase(split, 2), _with_phase(ref, 2)
    SIM.lamb_(*split)
    reference.lamb_(*ref)
    for k, (x, y) in enumerate(zip(written(split, idx), written(whole, idx))):
        assert torch.equal(x, y), f"written[{k}]"
    assert_mixed_matches(written(split, idx), written(ref, idx), "lamb phase 2")
    assert not torch.equal(split[norms], torch.full((n, 2), -1.0))


@pytest.mark.parametrize("dtype,state_dtype,mode", LAMB_STORAGE[:4])
def test_lamb_phase_2_takes_the_norms_from_sq_sums(sim, dtype, state_dtype, mode):
    """The all-reduced sums (here: p's scaled by 9, u's by 1/4, as if other ranks held more of
    the tensors) make the norms and trust ratios of phase 2, as in the reference."""
    sim.configure(chunk_size=32, threads=4)
    n = len(SIZES)
    kw = {"phase": 1, "sq_sums": torch.zeros(n, 2).double(), "trust_clip": None}
    ours, idx = _lamb(dtype, state_dtype, mode, **kw)
    theirs, _ = _lamb(dtype, state_dtype, mode, **kw)
    plain, _ = _lamb(dtype, state_dtype, mode, trust_clip=None)
    SIM.lamb_(*ours)
    sq, steps = arg_index("lamb_", "sq_sums"), arg_index("lamb_", "state_steps")
    reduced = ours[sq] * torch.tensor([9.0, 0.25], dtype=torch.float64)
    for x in (ours, theirs):
        x[sq].copy_(reduced)
    for t, s in zip(theirs[steps], ours[steps]):
        t.copy_(s)  # as phase 1 left them
    ours, theirs = _with_phase(ours, 2), _with_phase(theirs, 2)
    SIM.lamb_(*ours)
    reference.lamb_(*theirs)
    assert_mixed_matches(written(ours, idx), written(theirs, idx), "lamb phase 2")
    norms = ours[arg_index("lamb_", "tensor_norms")]
    assert torch.equal(norms, reduced.sqrt().float())
    SIM.lamb_(*plain)  # phase 0: other trust ratios, other params
    big = [i for i, size in enumerate(SIZES) if size > 100]
    assert all(not torch.equal(ours[0][i], plain[0][i]) for i in big)


def test_lamb_phase_arguments_are_checked(sim):
    n = len(SIZES)
    for kw, match in [
        ({"phase": 3}, "phase must be 0, 1 or 2"),
        ({"phase": 1}, r"phase 1 needs sq_sums of shape \(12, 2\)"),
        ({"phase": 2, "sq_sums": torch.zeros(n, 3).double()}, "needs sq_sums of shape"),
        ({"phase": 1, "sq_sums": torch.zeros(n, 2)}, "sq_sums must be float64"),
    ]:
        args, idx = build("lamb_", kw, torch.float32)
        before = written(args, idx)
        with pytest.raises(RuntimeError, match=match):
            SIM.lamb_(*args)
        for x, y in zip(written(args, idx), before):
            assert torch.equal(x, y)


@pytest.mark.parametrize("by_pointer", [False, True], ids=["by-value", "by-pointer"])
@pytest.mark.parametrize("phase", [1, 2])
def test_lamb_phases_and_found_inf(sim, phase, by_pointer):
    sim.configure(chunk_size=16, threads=4, scalars_by_pointer=by_pointer)
    n = len(SIZES)
    sums = torch.rand(n, 2, generator=torch.Generator().manual_seed(0)).double()
    kw = {"phase": phase, "sq_sums": sums, "found_inf": torch.tensor([1.0])}
    args, idx = build("lamb_", kw, BF16, state_dtype=FP32, mode="sr")
    before = written(args, idx)
    SIM.lamb_(*args)
    for x, y in zip(written(args, idx), before):
        assert torch.equal(x, y)


def test_hessians_in_their_own_dtype(sim):
    """sophia_update_hessian_ with bf16 hessians of fp32 grads (and the reverse), as Sophia keeps
    them with bf16 states; an unsupported pair is refused before anything is written."""
    sim.configure(chunk_size=16, threads=4)
    for p_dt, s_dt in [(FP32, BF16), (BF16, FP32), (FP16, FP32)]:
        ours, idx = build("sophia_update_hessian_", {}, p_dt, state_dtype=s_dt)
        theirs, _ = build("sophia_update_hessian_", {}, p_dt, state_dtype=s_dt)
        SIM.sophia_update_hessian_(*ours)
        reference.sophia_update_hessian_(*theirs)
        assert ours[0][-3].dtype == s_dt and ours[1][-3].dtype == p_dt
        assert_mixed_matches(written(ours, idx), written(theirs, idx), f"{p_dt} {s_dt}")
    args, idx = build("sophia_update_hessian_", {}, torch.float64, state_dtype=FP32)
    with pytest.raises(RuntimeError, match="state dtype Float is not supported"):
        SIM.sophia_update_hessian_(*args)


def _bad_mixed(op):
    """(kwargs of build, expected message): mixed-precision arguments the ops refuse."""
    n = len(SIZES)
    bf = build(op, {}, BF16)[0]
    # an op without state lists (muon_) has no state dtype to refuse
    stateful = any(a.role == "state" for a in _opdefs.OPS[op].args)
    states = [({"dtype": torch.float64, "state_dtype": FP32}, "state dtype Float is not supported")]
    return [
        ({"dtype": FP32, "mode": "master"}, "master_params need float16 or bfloat16 params"),
        ({"dtype": FP16, "mode": "sr"}, "stochastic rounding .* needs bfloat16 params"),
        *(states if stateful else []),
        (
            {
                "dtype": BF16,
                "kw": {
                    "master_params": [p.float() for p in bf[0]],
                    "sr_seeds": [torch.tensor(0)] * n,
                },
            },
            "exclusive",
        ),
        ({"dtype": BF16, "kw": {"sr_seeds": [torch.tensor(0.0)] * n}}, "one-element int64"),
        ({"dtype": BF16, "kw": {"master_params": [p.double() for p in bf[0]]}}, "expected Float"),
        (
            {"dtype": BF16, "kw": {"master_params": [p.float() for p in bf[0]][:-1]}},
            "expected master_params to have 12 tensors",
        ),
    ]


@pytest.mark.parametrize("op", [o for o in BUILDERS if o not in NO_PARAMS])
def test_mixed_arguments_are_checked(sim, op):
    for spec, match in _bad_mixed(op):
        args, idx = build(
            op,
            spec.get("kw", {}),
            spec["dtype"],
            state_dtype=spec.get("state_dtype"),
            mode=spec.get("mode", "plain"),
        )
        before = written(args, idx)
        with pytest.raises(RuntimeError, match=match):
            getattr(SIM, op)(*args)
        for x, y in zip(written(args, idx), before):
            assert torch.equal(x, y)
    # one state list in another dtype than the first
    args, idx = build(op, {}, FP32, state_dtype=BF16)
    if op in ("adam_", "lamb_", "sophia_"):
        k = 3
        args[k][5] = args[k][5].float()
        with pytest.raises(RuntimeError, match=r"\[5\] has dtype Float, expected BFloat16"):
            getattr(SIM, op)(*args)


# -- 4. Adafactor on the simulated kernels -------------------------------------------------------
# 1-D, odd 2-D, 3-D and 4-D (batched), 0-d, a row and a column, empty ones, a transposed param,
# a matrix wider than a statistics group (512 columns) and taller than a tile, a long vector.
AF_SHAPES = [(37,), (13, 29), (3, 5, 17), (2, 2, 3, 9), (), (1, 40), (40, 1), (0, 5), (5, 0),
             (0,), (70, 600), (3000,)]  # fmt: skip
AF_WRITTEN = [0, 2, 3, 4, 5]  # params, row_vars, col_vars, variances, state_steps


def adafactor_args(dtype, seed=0, **kw):
    """adafactor_'s arguments (the schema's order): the params of AF_SHAPES and a transposed one;
    one grad and one col_var non-contiguous, the others at odd offsets of larger buffers."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, positive=False, offset=0):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        x = x.abs() if positive else x
        buf = torch.zeros(x.numel() + offset, dtype=dtype)
        return buf[offset:].view(shape).copy_(x)

    params = [rand(s, offset=i % 3) for i, s in enumerate(AF_SHAPES)]
    params.append(rand((11, 7)).t())
    grads = [rand(p.shape, offset=(i + 1) % 3) for i, p in enumerate(params)]
    grads[1] = rand(grads[1].shape[::-1]).t()
    rows, cols, variances = [], [], []
    for i, p in enumerate(params):
        empty = torch.empty(0, dtype=dtype)
        if p.dim() >= 2:
            rows.append(rand((*p.shape[:-1], 1), True, i % 2))
            cols.append(rand((*p.shape[:-2], 1, p.shape[-1]), True, (i + 1) % 2))
            variances.append(empty)
        else:
            rows.append(empty)
            cols.append(empty)
            variances.append(rand(p.shape, True, i % 2))
    cols[1] = rand((1, 2 * 29), True)[:, ::2]
    steps = [torch.tensor(float(seed % 4 + i % 3)) for i in range(len(params))]
    kw.setdefault("grad_scale", torch.tensor(4.0, dtype=torch.float64))
    return [params, grads, rows, cols, variances, steps, *adafactor_scalars(**kw).values()]


AF_CONFIGS = [
    *SIM_CONFIGS,
    pytest.param({"chunk_size": 32, "threads": 2, "arg_bytes": SMALL, "max_slots": 2}, id="c32t2"),
]


@pytest.mark.parametrize("config", AF_CONFIGS)
@pytest.mark.parametrize("kw", [{}, {"maximize": True, "weight_decay": 0.0, "d": 0.3}])
def test_adafactor_is_the_reference_in_fp64(sim, config, kw):
    """Three steps from the same arguments: what the kernels compute is the reference, up to the
    order of the fp64 sums, at every launch shape (tiles of 1 to 8 rows, one block to many per
    launch, one thread to 512)."""
    sim.configure(**config)
    ours = adafactor_args(torch.float64, **kw)
    theirs = adafactor_args(torch.float64, **kw)
    for step in range(3):
        SIM.adafactor_(*ours)
        reference.adafactor_(*theirs)
        for x, y in zip(written(ours, AF_WRITTEN), written(theirs, AF_WRITTEN)):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14, msg=f"step {step}")
    assert sim.stats()["launches"] >= 3 * 5 and sim.stats()["step_launches"] == 3


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("config", [SIM_CONFIGS[0], SIM_CONFIGS[1]])
def test_adafactor_in_every_dtype(sim, config, dtype):
    """Re-synced after every step, against the reference in fp32/fp64 and against the CPU kernel
    in fp16/bf16 (computed in fp32): both kernels read back the states they stored, rounded,
    as torch.optim.Adafactor's in-place updates do, where fusedopt.reference takes the update
    from the fp32 values. The sums run in another order on each side (fp32 torch reductions in
    the reference, fp32 lanes on the CPU, fp64 here), so the row and column means may round
    differently by an ulp (assert_mixed_matches)."""
    sim.configure(**config)
    ours = adafactor_args(dtype, maximize=True)
    theirs = adafactor_args(dtype, maximize=True)
    spec = reference.adafactor_ if dtype in (FP32, torch.float64) else torch.ops.fusedopt.adafactor_
    for step in range(3):
        SIM.adafactor_(*ours)
        spec(*theirs)
        # the 0-d param too within the tolerances (its RMS: torch's fp32 norm, our fp64 sum)
        got = [x.reshape(-1) for x in written(ours, AF_WRITTEN[:-1])]
        want = [x.reshape(-1) for x in written(theirs, AF_WRITTEN[:-1])]
        assert_mixed_matches(got, want, f"adafactor step {step}")
        steps = zip(written(ours, [5]), written(theirs, [5]))
        assert all(torch.equal(x, y) for x, y in steps)
        with torch.no_grad():
            for x, y in zip(live(ours, AF_WRITTEN), live(theirs, AF_WRITTEN)):
                x.copy_(y)


def test_adafactor_bits_are_the_same_every_run(sim):
    """No atomics in the sums: a launch shape gives the same bits every time."""
    results = []
    for _ in range(2):
        args = adafactor_args(torch.float32)
        SIM.adafactor_(*args)
        results.append(written(args, AF_WRITTEN))
    for x, y in zip(*results):
        assert torch.equal(x, y)


@pytest.mark.parametrize("by_pointer", [False, True], ids=["by-value", "by-pointer"])
def test_adafactor_device_scalars_and_found_inf(sim, by_pointer):
    """lr, grad_scale and found_inf read on the 'device' in other dtypes; found_inf set: every
    block leaves (or, known on the host, nothing is launched) and nothing changes."""
    sim.configure(chunk_size=64, threads=8, scalars_by_pointer=by_pointer)
    kw = {
        "lr": torch.tensor([0.02], dtype=torch.float32),
        "grad_scale": torch.tensor(4.0, dtype=torch.float32),
        "found_inf": torch.tensor(0.0, dtype=torch.float32),
    }
    ours, theirs = adafactor_args(torch.float64, **kw), adafactor_args(torch.float64, **kw)
    SIM.adafactor_(*ours)
    reference.adafactor_(*theirs)
    for x, y in zip(written(ours, AF_WRITTEN), written(theirs, AF_WRITTEN)):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    sim.reset()
    sim.configure(chunk_size=64, threads=8, scalars_by_pointer=by_pointer)
    args = adafactor_args(torch.float32, found_inf=torch.tensor([1.0]))
    before = written(args, AF_WRITTEN)
    SIM.adafactor_(*args)
    for x, y in zip(written(args, AF_WRITTEN), before):
        assert torch.equal(x, y)
    st = sim.stats()
    if by_pointer:
        assert st["blocks"] > 0 and st["skipped_blocks"] == st["blocks"]
    else:
        assert st["blocks"] == 0 and st["step_launches"] == 0


def test_adafactor_validation_matches_cpu_messages(sim):
    """The CPU kernel's checks, messages and order, before anything is written."""
    cases = []
    args = adafactor_args(torch.float32)
    args[2] = list(args[2])
    args[2][1] = torch.zeros(13, 2)  # a wrong row_var shape
    cases.append(args)
    args = adafactor_args(torch.float32)
    args[5] = list(args[5])
    args[5][3] = args[5][2]  # a shared step counter
    cases.append(args)
    args = adafactor_args(torch.float32, lr=torch.tensor([0.1, 0.2]))
    cases.append(args)
    for args in cases:
        before = written(args, AF_WRITTEN)
        errors = []
        for ops in (torch.ops.fusedopt, SIM):
            with pytest.raises(RuntimeError) as info:
                ops.adafactor_(*args)
            errors.append(str(info.value).splitlines()[0])
        assert errors[0] == errors[1]
        for x, y in zip(written(args, AF_WRITTEN), before):
            assert torch.equal(x, y)


def test_adafactor_optimizer_on_simulated_kernels(cpu_backend_simulated):
    """fusedopt.Adafactor stepping the simulated kernels (a Tensor lr, max_grad_norm) against
    the reference backend over several steps."""
    cpu_backend_simulated.configure(chunk_size=256, threads=16, max_slots=3)
    torch.manual_seed(0)
    shapes = [(300,), (), (33, 31), (2, 40, 9), (0, 4)]
    ps = [torch.randn(s, requires_grad=True) for s in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    kw = {"lr": torch.tensor(0.01), "weight_decay": 0.1, "max_grad_norm": 1.0}
    a = fusedopt.Adafactor(ps, backend="cpu", **kw)
    b = fusedopt.Adafactor(qs, backend="reference", **kw)
    for _ in range(4):
        step_both(a, b, ps, qs)
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-6)
        for k, v in a.state[p].items():
            torch.testing.assert_close(v, b.state[q][k], rtol=2e-5, atol=2e-6)
    assert cpu_backend_simulated.stats()["launches"] > 4
