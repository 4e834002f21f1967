"""The Triton kernels: csrc/include/fusedopt/math.h's per-element math, in the same operation
order, driven by the pointer tables of ``_multi_tensor.py``.

Note [pointer tables]
One launch updates every tensor of a (device, dtype) group. Program ``pid`` reads its chunk
``(row, start)`` from ``chunks``, then the addresses of its tensors (int64) from row ``row`` of
``table`` and casts them to pointers. A row is ``[address of list 0, ..., address of list k-1,
address of the SR seed (with sr_seeds), address of the step counter (ops with steps), numel]``:
list 0 is the params, then the state lists, then the fp32 master copies (with master_params),
so the step counter is column W-2 and the master / seed columns are passed as MASTER_COL /
SEED_COL. Grads have their own table because they change every step while the rest changes
only with the parameter set. Offsets are int64 throughout (a chunk may start past 2^31
elements, where int32 offsets would wrap). Empty tensors have a row (their step and seed still
count) but no chunk.

Note [kernel dtypes]
PT is the params' (and grads') storage dtype, ST the state lists' (Note [mixed precision] in
csrc/include/fusedopt/math.h: S == P, or float32 / bfloat16 for P != float64), CT the compute
dtype (fp64 for fp64 params, else fp32), masters are float32. The param mode is compile-time:
MASTER reads theta from the master and writes it to the master and (rounded to nearest) to the
param; SR writes the param rounded stochastically with the noise of this tensor's advanced
seed. Without either (and PT == ST) a kernel compiles to what it was before mixed precision.

Note [scalars in fp64]
Hyper-parameters arrive as fp64 kernel arguments (the interpreter hands Python floats through);
everything derived from them and from the step (bias corrections, -lr/bc1, 1 - lr*wd, 1/scale)
is computed in fp64 in the kernel and rounded once to the compute type, as the CPU kernels do on
the host in double. beta^t is exp2(t*log2(beta)) with log2(beta) from the host: the
interpreter has no pow, and for the steps that matter the difference from pow is a few fp64 ulp.

Note [exact rounding]
Triton's fp32 ``/`` and ``sqrt`` are approximate on NVIDIA GPUs; div_rn and sqrt_rn round like
torch. bf16 is loaded and stored through its bits (round to nearest even, NaN kept a quiet NaN,
as c10::BFloat16): the interpreter's fp32->bf16 conversion truncates. Stochastic rounding works
on the bits too (sr_bf16_bits in math.h), with the hash in uint32 arithmetic, which wraps mod
2^32 in both the compiler and the interpreter (numpy uint32 arrays).
"""

from __future__ import annotations

import triton
import triton.language as tl

# ---------------------------------------------------------------------------------------------
# helpers


@triton.jit
def _sign(x):
    """torch.sign: -1, 0 or +1, and 0 for NaN."""
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


@triton.jit
def _ptr(table, row, W: tl.constexpr, col: tl.constexpr, ST: tl.constexpr, ALIGNED: tl.constexpr):
    """The pointer in column ``col`` of row ``row`` of ``table``, for storage dtype ST (bf16
    is handled as its bits)."""
    a = tl.load(table + row * W + col)
    if tl.bfloat16 == ST:
        p = a.to(tl.pointer_type(tl.uint16))
    else:
        p = a.to(tl.pointer_type(ST))
    if ALIGNED:
        # Every address in the table is a multiple of 16 bytes (checked on the host), so the
        # compiler may use 16-byte vector loads. (The hint must be on the pointer: on the int64
        # before the cast it is lost; checked in the PTX for sm_90.)
        p = tl.multiple_of(p, 16)
    return p


@triton.jit
def _load(ptr, offs, mask, ST: tl.constexpr, CT: tl.constexpr):
    """Load storage dtype ST (bits for bf16), return the compute type CT."""
    x = tl.load(ptr + offs, mask=mask)
    if tl.bfloat16 == ST:
        return (x.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(CT)


@triton.jit
def _store(ptr, offs, x, mask, ST: tl.constexpr):
    """Store x in storage dtype ST, rounding to nearest even (bf16 through its bits)."""
    if tl.bfloat16 == ST:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(x != x, 0x7FC0, bits)
        tl.store(ptr + offs, bits.to(tl.uint16), mask=mask)
    else:
        tl.store(ptr + offs, x.to(ST), mask=mask)


@triton.jit
def _fmix32(h):
    """murmur3's 32-bit finalizer (fmix32 in math.h), on uint32: products wrap mod 2^32."""
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


@triton.jit
def _sr_key(table, row, W: tl.constexpr, SEED_COL: tl.constexpr, SR: tl.constexpr):
    """sr_key(seed) of this row's (already advanced) SR seed, uint32; 0 without SR."""
    if SR:
        return _seed_key(tl.load(tl.load(table + row * W + SEED_COL).to(tl.pointer_type(tl.int64))))
    else:
        return tl.full((), 0, tl.uint32)


@triton.jit
def _seed_key(seed):
    """sr_key(seed) in math.h of an int64 seed, uint32."""
    hi = (seed >> 32).to(tl.uint32)  # bits 32..63, whatever the sign
    return _fmix32(seed.to(tl.uint32) ^ _fmix32(hi + 0x9E3779B9))


@triton.jit
def _store_sr(ptr, offs, x, mask, key):
    """Store fp32 x as bf16 bits, rounded stochastically (sr_bf16_bits(x, sr_noise(key, j)) in
    math.h, j = offs: the element's offset from the param's address)."""
    jl = offs.to(tl.uint32)
    jh = (offs >> 32).to(tl.uint32)
    noise = _fmix32((jl * 0x9E3779B1) ^ key ^ (jh * 0x85EBCA77)) >> 16
    u = x.to(tl.uint32, bitcast=True)
    special = (u & 0x7F800000) == 0x7F800000  # inf and NaN: rounded to nearest
    kept = tl.where((u & 0x007FFFFF) != 0, 0x7FC0, u >> 16)
    bits = tl.where(special, kept, (u + noise) >> 16)
    tl.store(ptr + offs, bits.to(tl.uint16), mask=mask)


@triton.jit
def _load_param(p_ptr, w_ptr, offs, mask, PT: tl.constexpr, CT: tl.constexpr, MASTER: tl.constexpr):
    """theta in CT: from the fp32 master (w_ptr) with MASTER, else from the param."""
    if MASTER:
        return tl.load(w_ptr + offs, mask=mask)
    else:
        return _load(p_ptr, offs, mask, PT, CT)


@triton.jit
def _store_param(
    p_ptr, w_ptr, offs, x, mask, key, PT: tl.constexpr, MASTER: tl.constexpr, SR: tl.constexpr
):
    """The new theta: to the master and rounded to nearest into the param (MASTER), rounded
    stochastically into the bf16 param (SR), or rounded to nearest into the param."""
    if MASTER:
        tl.store(w_ptr + offs, x, mask=mask)
        _store(p_ptr, offs, x, mask, PT)
    elif SR:
        _store_sr(p_ptr, offs, x, mask, key)
    else:
        _store(p_ptr, offs, x, mask, PT)


@triton.jit
def _param_ptrs(
    table,
    row,
    W: tl.constexpr,
    PT: tl.constexpr,
    MASTER: tl.constexpr,
    MASTER_COL: tl.constexpr,
    SEED_COL: tl.constexpr,
    SR: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """(param pointer, master pointer (the param's without MASTER), SR key) of a row."""
    p_ptr = _ptr(table, row, W, 0, PT, ALIGNED)
    if MASTER:
        w_ptr = _ptr(table, row, W, MASTER_COL, tl.float32, ALIGNED)
    else:
        w_ptr = p_ptr
    return p_ptr, w_ptr, _sr_key(table, row, W, SEED_COL, SR)


@triton.jit
def _chunk(
    chunks,
    table,
    W: tl.constexpr,
    found_inf_ptr,
    HAS_FOUND_INF: tl.constexpr,
    CHUNK: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """This program's (row, start, end): elements [start, end) of the tensor in table row
    ``row``. Where GradScaler found inf/NaN, end == start and nothing is touched."""
    pid = tl.program_id(0).to(tl.int64)
    row = tl.load(chunks + 2 * pid)
    start = tl.load(chunks + 2 * pid + 1)
    if ALIGNED:
        start = tl.multiple_of(start, 16)  # chunk starts are multiples of CHUNK (of 16)
    numel = tl.load(table + row * W + (W - 1))
    end = tl.minimum(start + CHUNK, numel)
    if HAS_FOUND_INF:
        end = tl.where(tl.load(found_inf_ptr) != 0, start, end)
    return row, start, end


@triton.jit
def _step(table, row, W: tl.constexpr, STEP_T: tl.constexpr):
    """This tensor's step counter (already incremented this step), fp64."""
    return tl.load(tl.load(table + row * W + (W - 2)).to(tl.pointer_type(STEP_T))).to(tl.float64)


@triton.jit
def _lr(lr_ptr, lr_value, LR_FROM_PTR: tl.constexpr):
    if LR_FROM_PTR:
        return tl.load(lr_ptr).to(tl.float64)
    else:
        return tl.full((), lr_value, tl.float64)


@triton.jit
def _lr_store(x, LR_T: tl.constexpr):
    """fp64 x, the exact or fp64-rounded result of an op on fp32 values, as the fp32 math of a
    torch op on an lr of dtype LR_T (fp32, fp16 or bf16) stores it, returned as fp64. Rounding
    the fp64 result of +, -, *, / on fp32 values to fp32 gives the fp32 op's result."""
    x = x.to(tl.float32)
    if tl.bfloat16 == LR_T:
        # To nearest even through the bits, as _store does.
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    elif tl.float16 == LR_T:
        x = x.to(tl.float16).to(tl.float32)
    return x.to(tl.float64)


@triton.jit
def _lr_decay(lr, weight_decay, LR_T: tl.constexpr):
    """1 - lr*weight_decay in the lr's arithmetic (Note [Tensor lr arithmetic] in
    fusedopt/reference/_common.py), as fp64."""
    wd = tl.full((), weight_decay, tl.float64)
    if tl.float64 == LR_T:
        return 1.0 - lr * wd
    else:
        return _lr_store(1.0 - _lr_store(lr * wd.to(tl.float32).to(tl.float64), LR_T), LR_T)


@triton.jit
def _lr_div(lr, y, LR_T: tl.constexpr):
    """lr / y in the lr's arithmetic (see _lr_decay), as fp64."""
    if tl.float64 == LR_T:
        return lr / y
    else:
        return _lr_store(lr / y.to(tl.float32).to(tl.float64), LR_T)


@triton.jit
def _inv_scale(grad_scale_ptr, HAS_GRAD_SCALE: tl.constexpr):
    if HAS_GRAD_SCALE:
        return 1.0 / tl.load(grad_scale_ptr).to(tl.float64)
    else:
        return tl.full((), 1.0, tl.float64)


# ---------------------------------------------------------------------------------------------
# the driver: every kernel that walks a chunk


@triton.jit
def _tiles(
    TILE,
    ptrs,
    sc,
    acc,
    first,
    n,
    end,
    PT: tl.constexpr,
    ST: tl.constexpr,
    CT: tl.constexpr,
    F,
    MASKED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``n`` tiles from element ``first`` on; MASKED: the elements from ``end`` on are masked off
    (the unmasked tiles compile without masks: full-width vector accesses)."""
    for t in range(0, n):
        offs = first + t * BLOCK + tl.arange(0, BLOCK)
        if MASKED:
            mask = offs < end
        else:
            mask = None
        acc = TILE(ptrs, offs, mask, sc, acc, PT, ST, CT, F)
    return acc


@triton.jit
def _sweep(
    TILE,
    ptrs,
    sc,
    acc,
    start,
    end,
    PT: tl.constexpr,
    ST: tl.constexpr,
    CT: tl.constexpr,
    F,
    BLOCK: tl.constexpr,
):
    """Note [tiles]
    Runs ``TILE(ptrs, offs, mask, sc, acc, PT, ST, CT, F) -> acc`` over elements [start, end):
    the full tiles, then at most one masked one. A tile function gets its tensors' pointers
    (``ptrs``), its per-tensor scalars in the compute type (``sc``), the dtypes of Note [kernel
    dtypes] and its compile-time flags (``F``, a tuple of bools) from its kernel, which computes
    them once per program; ``acc`` is a reduction's running sum (returned updated, summed per
    lane in a fixed order for a given BLOCK) or, for an update, :func:`_no_acc`. Returns
    ``acc``."""
    n_full = (end - start) // BLOCK
    acc = _tiles(TILE, ptrs, sc, acc, start, n_full, end, PT, ST, CT, F, False, BLOCK)
    tail = start + n_full * BLOCK
    n_tail = (end - tail + BLOCK - 1) // BLOCK
    return _tiles(TILE, ptrs, sc, acc, tail, n_tail, end, PT, ST, CT, F, True, BLOCK)


@triton.jit
def _no_acc():
    """The ``acc`` of an update (a tensor: a loop carries it)."""
    return tl.zeros((), tl.int32)


# ---------------------------------------------------------------------------------------------
# step counters and SR seeds


@triton.jit
def _increment_steps_kernel(
    table,  # int64 [n, W]
    n,  # rows in table
    found_inf_ptr,  # GradScaler's found_inf (read when HAS_FOUND_INF)
    W: tl.constexpr,  # table width
    STEP_COL: tl.constexpr,  # column of the step counters' addresses, -1: none
    STEP_T: tl.constexpr,  # dtype of the step counters (float32 or float64)
    SEED_COL: tl.constexpr,  # column of the SR seeds' addresses (int64), -1: none
    HAS_FOUND_INF: tl.constexpr,
    BLOCK: tl.constexpr,  # rows per program
):
    """+1 on every step counter and every SR seed (before the update kernel reads them)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if HAS_FOUND_INF:
        n = tl.where(tl.load(found_inf_ptr) != 0, 0, n)
    mask = rows < n
    if STEP_COL >= 0:
        ptrs = tl.load(table + rows * W + STEP_COL, mask=mask).to(tl.pointer_type(STEP_T))
        tl.store(ptrs, tl.load(ptrs, mask=mask) + 1, mask=mask)
    if SEED_COL >= 0:
        seeds = tl.load(table + rows * W + SEED_COL, mask=mask).to(tl.pointer_type(tl.int64))
        tl.store(seeds, tl.load(seeds, mask=mask) + 1, mask=mask)


# ---------------------------------------------------------------------------------------------
# the elementwise update kernel


@triton.jit
def _update_kernel(
    table,  # int64 [n, W]: list 0, the state lists[, master][, seed][, step], numel (Note
    # [pointer tables])
    grads,  # int64 [n]: address of each grad
    chunks,  # int64 [programs, 2]: (table row, first element) of each program's chunk
    lr_ptr,  # the learning rate, a 0-d tensor on the device (LR_FROM_PTR)
    grad_scale_ptr,  # GradScaler's scale (HAS_GRAD_SCALE): grads are divided by it
    found_inf_ptr,  # GradScaler's found_inf (HAS_FOUND_INF): nonzero -> change nothing
    lr_value: tl.float64,  # the learning rate when not LR_FROM_PTR
    h0: tl.float64,  # h0..h7: the op's hyperparameters, in the order its SCALARS reads them
    h1: tl.float64,
    h2: tl.float64,
    h3: tl.float64,
    h4: tl.float64,
    h5: tl.float64,
    h6: tl.float64,
    h7: tl.float64,
    PT: tl.constexpr,  # param and grad storage dtype (Note [kernel dtypes])
    ST: tl.constexpr,  # state storage dtype
    CT: tl.constexpr,  # compute dtype: fp32, or fp64 for fp64 params
    MASTER: tl.constexpr,  # fp32 master copies in column MASTER_COL
    MASTER_COL: tl.constexpr,
    SR: tl.constexpr,  # stochastic rounding with the seed in column SEED_COL
    SEED_COL: tl.constexpr,
    STEP_T: tl.constexpr,  # step counter dtype
    W: tl.constexpr,  # table width
    LR_FROM_PTR: tl.constexpr,
    LR_T: tl.constexpr,  # the lr's dtype (Note [Tensor lr arithmetic])
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    ALIGNED: tl.constexpr,  # every address 16-byte aligned
    CHUNK: tl.constexpr,  # elements per program
    BLOCK: tl.constexpr,  # elements per tile
    PARAMS: tl.constexpr,  # list 0 is the params (else the op's first state list)
    STATES: tl.constexpr,  # the state lists after list 0 in this call (columns 1..STATES)
    STEPS: tl.constexpr,  # the rows have step counters
    F: tl.constexpr,  # the tile's flags: (MASTER, SR, HAS_GRAD_SCALE, the op's own...)
    SCALARS: tl.constexpr,  # the op's scalars function
    TILE: tl.constexpr,  # the op's tile function
):
    """Note [update kernel]
    Every elementwise update op: ``SCALARS(hp, key, inv_scale, step, lr, CT, LR_T)`` turns the
    op's fp64 hyperparameters ``hp`` (h0..h7), this tensor's SR key, GradScaler's 1/scale, its
    step and the lr (fp64) into the tile's per-tensor scalars ``sc`` (Note [scalars in fp64]),
    then ``TILE`` sweeps the chunk (Note [tiles]) with the pointers ``(param, master, grad,
    state 1, state 2, state 3)``: the master is the param's without MASTER; a state list the call
    lacks (STATES smaller) points at the grad and is not touched. Without PARAMS, list 0 takes
    the param's place, in the state dtype."""
    row, start, end = _chunk(chunks, table, W, found_inf_ptr, HAS_FOUND_INF, CHUNK, ALIGNED)
    g_ptr = _ptr(grads, row, 1, 0, PT, ALIGNED)
    if PARAMS:
        p_ptr, w_ptr, key = _param_ptrs(
            table, row, W, PT, MASTER, MASTER_COL, SEED_COL, SR, ALIGNED
        )
    else:
        p_ptr = _ptr(table, row, W, 0, ST, ALIGNED)
        w_ptr = p_ptr
        key = _sr_key(table, row, W, SEED_COL, False)
    s1 = g_ptr
    s2 = g_ptr
    s3 = g_ptr
    if STATES >= 1:
        s1 = _ptr(table, row, W, 1, ST, ALIGNED)
    if STATES >= 2:
        s2 = _ptr(table, row, W, 2, ST, ALIGNED)
    if STATES >= 3:
        s3 = _ptr(table, row, W, 3, ST, ALIGNED)
    if STEPS:
        step = _step(table, row, W, STEP_T)
    else:
        step = tl.full((), 0.0, tl.float64)
    hp = (
        tl.full((), h0, tl.float64),
        tl.full((), h1, tl.float64),
        tl.full((), h2, tl.float64),
        tl.full((), h3, tl.float64),
        tl.full((), h4, tl.float64),
        tl.full((), h5, tl.float64),
        tl.full((), h6, tl.float64),
        tl.full((), h7, tl.float64),
    )
    lr = _lr(lr_ptr, lr_value, LR_FROM_PTR)
    sc = SCALARS(hp, key, _inv_scale(grad_scale_ptr, HAS_GRAD_SCALE), step, lr, CT, LR_T)
    ptrs = (p_ptr, w_ptr, g_ptr, s1, s2, s3)
    _sweep(TILE, ptrs, sc, _no_acc(), start, end, PT, ST, CT, F, BLOCK)


# ---------------------------------------------------------------------------------------------
# Adam / AdamW


@triton.jit
def _adam_tile(ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F):
    p_ptr, w_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr = ptrs
    MASTER: tl.constexpr = F[0]
    SR: tl.constexpr = F[1]
    AMSGRAD: tl.constexpr = F[4]
    p = _load_param(p_ptr, w_ptr, offs, mask, PT, CT, MASTER)
    g = _load(g_ptr, offs, mask, PT, CT)
    m = _load(m_ptr, offs, mask, ST, CT)
    v = _load(v_ptr, offs, mask, ST, CT)
    p, m, v = _adam_moments(p, g, m, v, sc, F)
    denom_src = v
    if AMSGRAD:
        vmax = _load(vmax_ptr, offs, mask, ST, CT)
        vmax = tl.where((vmax > v) | (vmax != vmax), vmax, v)  # torch.maximum: NaN wins
        _store(vmax_ptr, offs, vmax, mask, ST)
        denom_src = vmax
    p = _adam_apply(p, m, denom_src, sc, CT)
    _store_param(p_ptr, w_ptr, offs, p, mask, sc[0], PT, MASTER, SR)
    _store(m_ptr, offs, m, mask, ST)
    _store(v_ptr, offs, v, mask, ST)
    return acc


@triton.jit
def _adam_moments(p, g, m, v, sc, F):
    """Adam's grad (scaled, signed, decayed) into its moments; returns (p, m, v), p decayed
    with decoupled weight decay."""
    key, inv_scale, decay, wd, omb1, beta2, omb2, eps, neg_step, bc2_sqrt = sc
    HAS_GRAD_SCALE: tl.constexpr = F[2]
    DECOUPLED: tl.constexpr = F[3]
    MAXIMIZE: tl.constexpr = F[5]
    WEIGHT_DECAY: tl.constexpr = F[6]
    LERP_LOW: tl.constexpr = F[7]
    if HAS_GRAD_SCALE:
        g = g * inv_scale
    if MAXIMIZE:
        g = -g
    if DECOUPLED:
        p = p * decay
    elif WEIGHT_DECAY:
        g = g + wd * p
    # torch.lerp (ATen Lerp.h): the form depends on the (per-call) weight 1 - beta1.
    if LERP_LOW:
        m = m + omb1 * (g - m)
    else:
        m = g - (g - m) * (1.0 - omb1)
    v = v * beta2
    v = v + omb2 * g * g
    return p, m, v


@triton.jit
def _adam_apply(p, m, denom_src, sc, CT: tl.constexpr):
    """p - lr/bc1 * m / (sqrt(denom_src)/sqrt(bc2) + eps)."""
    key, inv_scale, decay, wd, omb1, beta2, omb2, eps, neg_step, bc2_sqrt = sc
    if tl.float32 == CT:  # Note [exact rounding]
        denom = tl.div_rn(tl.sqrt_rn(denom_src), bc2_sqrt) + eps
        return p + tl.div_rn(neg_step * m, denom)
    else:
        denom = tl.sqrt(denom_src) / bc2_sqrt + eps
        return p + neg_step * m / denom


@triton.jit
def _adam_scalars(hp, key, inv_scale, step, lr, CT: tl.constexpr, LR_T: tl.constexpr):
    """hp: beta1, beta2, log2(beta1), log2(beta2), weight_decay, eps."""
    bc1 = 1.0 - tl.exp2(step * hp[2])
    bc2 = 1.0 - tl.exp2(step * hp[3])
    return (
        key,
        inv_scale.to(CT),
        _lr_decay(lr, hp[4], LR_T).to(CT),
        hp[4].to(CT),
        (1.0 - hp[0]).to(CT),
        hp[1].to(CT),
        (1.0 - hp[1]).to(CT),
        hp[5].to(CT),
        (-_lr_div(lr, bc1, LR_T)).to(CT),
        tl.sqrt(bc2).to(CT),
    )


# ---------------------------------------------------------------------------------------------
# 8-bit states (Note [8-bit states] in fusedopt/reference/quant.py)


@triton.jit
def _q8_decode(codes_ptr, absmax_ptr, qmap_ptr, offs, rows, mask, in_range):
    """The fp32 values of a tile's codes (one block per row): map[code] * absmax of the
    block."""
    c = tl.load(codes_ptr + offs, mask=mask, other=0).to(tl.int32)
    x = tl.load(qmap_ptr + c) * tl.load(absmax_ptr + rows, mask=in_range, other=0.0)[:, None]
    return tl.where(mask, x, 0.0)  # lanes off the param: no overflow in their (unstored) math


@triton.jit
def _q8_encode(x, codes_ptr, absmax_ptr, mid_ptr, offs, rows, mask, row_mask):
    """Encodes a tile of whole blocks (one per row): each block's absmax (an integer max of the
    bits of |x|, so that a NaN, above +inf, wins) and each value's code, the number of midpoints
    (``mid_ptr``, +inf last) below x * (1 / absmax), by the branch-free search."""
    x = tl.where(mask, x, 0.0)
    top = tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=1)
    absmax = top.to(tl.float32, bitcast=True)
    recip = tl.div_rn(tl.full(absmax.shape, 1.0, tl.float32), tl.where(absmax == 0, 1.0, absmax))
    y = x * recip[:, None]
    c = tl.zeros(x.shape, tl.int32)
    for k in tl.static_range(8):
        c += tl.where(tl.load(mid_ptr + c + ((128 >> k) - 1)) < y, 128 >> k, 0)
    tl.store(codes_ptr + offs, c.to(tl.uint8), mask=mask)
    tl.store(absmax_ptr + rows, absmax, mask=row_mask)


@triton.jit
def _q8_kernel(
    p_ptr,  # the param (bf16 as its bits), contiguous
    w_ptr,  # its fp32 master (MASTER), else the param
    g_ptr,  # the grad, contiguous, the param's dtype
    c1_ptr,  # uint8 codes of the first moment (signed map), then of the second (unsigned)
    c2_ptr,
    a1_ptr,  # fp32 absmax per block of 256: the first moment's, then the second's
    a2_ptr,
    maps_ptr,  # fp32 [4, 256]: the signed map, the unsigned map, their midpoints (+inf last)
    step_ptr,  # the param's step counter, already advanced (STEPS)
    seed_ptr,  # its SR seed, already advanced (SR)
    lr_ptr,  # LR_FROM_PTR
    grad_scale_ptr,  # HAS_GRAD_SCALE
    found_inf_ptr,  # HAS_FOUND_INF: nonzero -> nothing is written
    lr_value: tl.float64,
    h0: tl.float64,  # h0..h5: the op's hyperparameters, in the order its SCALARS reads them
    h1: tl.float64,
    h2: tl.float64,
    h3: tl.float64,
    h4: tl.float64,
    h5: tl.float64,
    n,  # elements of the param
    PT: tl.constexpr,
    LR_FROM_PTR: tl.constexpr,
    LR_T: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    STEPS: tl.constexpr,
    MOMENTS: tl.constexpr,  # 8-bit moments: 1 or 2
    F: tl.constexpr,  # the op's tile flags (MASTER, SR, HAS_GRAD_SCALE, the op's own...)
    SCALARS: tl.constexpr,  # the op's scalars function (Note [update kernel])
    MATH: tl.constexpr,  # (p, g, m, v, sc, F) -> (p, m, v): the op's update, in fp32
    ROWS: tl.constexpr,  # blocks of 256 per program
):
    """Note [8-bit kernel]
    An update with 8-bit moments (Note [8-bit states] in fusedopt/reference/quant.py), one
    param's blocks ``ROWS`` per program, in one pass: the moments decoded, the param and the
    moments updated by the op's fp32 math (``MATH``, the math of its update tile), the moments
    encoded with their blocks' new absmax."""
    MASTER: tl.constexpr = F[0]
    SR: tl.constexpr = F[1]
    HAS_GRAD_SCALE: tl.constexpr = F[2]
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    offs = rows[:, None] * 256 + tl.arange(0, 256)[None, :]
    in_range = rows * 256 < n
    end = n
    if HAS_FOUND_INF:
        end = tl.where(tl.load(found_inf_ptr) != 0, 0, n)
    live = offs < end  # what the program writes
    row_mask = rows * 256 < end
    if SR:
        key = _seed_key(tl.load(seed_ptr))
    else:
        key = tl.full((), 0, tl.uint32)
    hp = (
        tl.full((), h0, tl.float64),
        tl.full((), h1, tl.float64),
        tl.full((), h2, tl.float64),
        tl.full((), h3, tl.float64),
        tl.full((), h4, tl.float64),
        tl.full((), h5, tl.float64),
    )
    if STEPS:
        step = tl.load(step_ptr).to(tl.float64)
    else:
        step = tl.full((), 0.0, tl.float64)
    lr = _lr(lr_ptr, lr_value, LR_FROM_PTR)
    inv_scale = _inv_scale(grad_scale_ptr, HAS_GRAD_SCALE)
    sc = SCALARS(hp, key, inv_scale, step, lr, tl.float32, LR_T)
    p = _load_param(p_ptr, w_ptr, offs, live, PT, tl.float32, MASTER)
    g = _load(g_ptr, offs, live, PT, tl.float32)
    m = _q8_decode(c1_ptr, a1_ptr, maps_ptr, offs, rows, live, in_range)
    v = m
    if MOMENTS == 2:
        v = _q8_decode(c2_ptr, a2_ptr, maps_ptr + 256, offs, rows, live, in_range)
    p, m, v = MATH(p, g, m, v, sc, F)
    _store_param(p_ptr, w_ptr, offs, p, live, key, PT, MASTER, SR)
    _q8_encode(m, c1_ptr, a1_ptr, maps_ptr + 512, offs, rows, live, row_mask)
    if MOMENTS == 2:
        _q8_encode(v, c2_ptr, a2_ptr, maps_ptr + 768, offs, rows, live, row_mask)


@triton.jit
def _adam8bit_math(p, g, m, v, sc, F):
    p, m, v = _adam_moments(p, g, m, v, sc, F)
    return _adam_apply(p, m, v, sc, tl.float32), m, v


@triton.jit
def _lion8bit_math(p, g, m, v, sc, F):
    p, m = _lion_math(p, g, m, sc, F)
    return p, m, v


@triton.jit
def _sgd8bit_math(p, g, m, v, sc, F):
    p, m = _sgd_math(p, g, m, sc, F)
    return p, m, v


# ---------------------------------------------------------------------------------------------
# SGD


@triton.jit
def _sgd_tile(ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F):
    p_ptr, w_ptr, g_ptr, buf_ptr = ptrs[0], ptrs[1], ptrs[2], ptrs[3]
    MASTER: tl.constexpr = F[0]
    SR: tl.constexpr = F[1]
    MOMENTUM: tl.constexpr = F[3]
    FIRST: tl.constexpr = F[4]
    p = _load_param(p_ptr, w_ptr, offs, mask, PT, CT, MASTER)
    g = _load(g_ptr, offs, mask, PT, CT)
    buf = g
    if MOMENTUM and not FIRST:
        buf = _load(buf_ptr, offs, mask, ST, CT)
    p, buf = _sgd_math(p, g, buf, sc, F)
    if MOMENTUM:
        _store(buf_ptr, offs, buf, mask, ST)
    _store_param(p_ptr, w_ptr, offs, p, mask, sc[0], PT, MASTER, SR)
    return acc


@triton.jit
def _sgd_math(p, g, buf, sc, F):
    """SGD's update from the grad and the momentum buffer (unread on the first step); returns
    (p, buf)."""
    key, inv_scale, neg_lr, wd, momentum, omd = sc
    HAS_GRAD_SCALE: tl.constexpr = F[2]
    MOMENTUM: tl.constexpr = F[3]
    FIRST: tl.constexpr = F[4]
    NESTEROV: tl.constexpr = F[5]
    MAXIMIZE: tl.constexpr = F[6]
    WEIGHT_DECAY: tl.constexpr = F[7]
    if HAS_GRAD_SCALE:
        g = g * inv_scale
    if MAXIMIZE:
        g = -g
    if WEIGHT_DECAY:
        g = g + wd * p
    if MOMENTUM:
        if FIRST:
            buf = g  # torch clones the decayed grad into the new buffer
        else:
            buf = buf * momentum + omd * g
        if NESTEROV:
            g = g + momentum * buf
        else:
            g = buf
    return p + neg_lr * g, buf


@triton.jit
def _sgd_scalars(hp, key, inv_scale, step, lr, CT: tl.constexpr, LR_T: tl.constexpr):
    """hp: momentum, dampening, weight_decay."""
    return (key, inv_scale.to(CT), (-lr).to(CT), hp[2].to(CT), hp[0].to(CT), (1.0 - hp[1]).to(CT))


# ---------------------------------------------------------------------------------------------
# Lion


@triton.jit
def _lion_tile(ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F):
    p_ptr, w_ptr, g_ptr, m_ptr = ptrs[0], ptrs[1], ptrs[2], ptrs[3]
    MASTER: tl.constexpr = F[0]
    SR: tl.constexpr = F[1]
    p = _load_param(p_ptr, w_ptr, offs, mask, PT, CT, MASTER)
    g = _load(g_ptr, offs, mask, PT, CT)
    m = _load(m_ptr, offs, mask, ST, CT)
    p, m = _lion_math(p, g, m, sc, F)
    _store_param(p_ptr, w_ptr, offs, p, mask, sc[0], PT, MASTER, SR)
    _store(m_ptr, offs, m, mask, ST)
    return acc


@triton.jit
def _lion_math(p, g, m, sc, F):
    """Lion's update from the grad and the momentum; returns (p, m)."""
    key, inv_scale, neg_lr, decay, beta1, omb1, beta2, omb2 = sc
    HAS_GRAD_SCALE: tl.constexpr = F[2]
    MAXIMIZE: tl.constexpr = F[3]
    if HAS_GRAD_SCALE:
        g = g * inv_scale
    if MAXIMIZE:
        g = -g
    p = p * decay
    c = m * beta1 + omb1 * g
    p = p + neg_lr * _sign(c)
    m = m * beta2 + omb2 * g
    return p, m


@triton.jit
def _lion_scalars(hp, key, inv_scale, step, lr, CT: tl.constexpr, LR_T: tl.constexpr):
    """hp: beta1, beta2, weight_decay."""
    return (
        key,
        inv_scale.to(CT),
        (-lr).to(CT),
        _lr_decay(lr, hp[2], LR_T).to(CT),
        hp[0].to(CT),
        (1.0 - hp[0]).to(CT),
        hp[1].to(CT),
        (1.0 - hp[1]).to(CT),
    )


# ---------------------------------------------------------------------------------------------
# Schedule-Free AdamW


@triton.jit
def _schedule_free_adamw_tile(
    ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F
):
    p_ptr, w_ptr, g_ptr, z_ptr, v_ptr = ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4]
    key, inv_scale, beta2, omb2, bc2, eps, wd, ckp1, y_step, neg_lr = sc
    MASTER: tl.constexpr = F[0]
    SR: tl.constexpr = F[1]
    HAS_GRAD_SCALE: tl.constexpr = F[2]
    WEIGHT_DECAY: tl.constexpr = F[3]
    LERP_LOW: tl.constexpr = F[4]
    y = _load_param(p_ptr, w_ptr, offs, mask, PT, CT, MASTER)
    g = _load(g_ptr, offs, mask, PT, CT)
    z = _load(z_ptr, offs, mask, ST, CT)
    v = _load(v_ptr, offs, mask, ST, CT)
    if HAS_GRAD_SCALE:
        g = g * inv_scale
    v = v * beta2
    v = v + omb2 * g * g
    if tl.float32 == CT:  # Note [exact rounding]
        u = tl.div_rn(g, tl.sqrt_rn(tl.div_rn(v, bc2)) + eps)
    else:
        u = g / (tl.sqrt(v / bc2) + eps)
    if WEIGHT_DECAY:
        u = u + wd * y
    # torch.lerp (ATen Lerp.h): the form depends on the (per-call) weight ckp1.
    if LERP_LOW:
        y = y + ckp1 * (z - y)
    else:
        y = z - (z - y) * (1.0 - ckp1)
    y = y + y_step * u
    z = z + neg_lr * u
    _store_param(p_ptr, w_ptr, offs, y, mask, key, PT, MASTER, SR)
    _store(z_ptr, offs, z, mask, ST)
    _store(v_ptr, offs, v, mask, ST)
    return acc


@triton.jit
def _schedule_free_adamw_scalars(
    hp, key, inv_scale, step, lr, CT: tl.constexpr, LR_T: tl.constexpr
):
    """hp: beta1, beta2, eps, weight_decay, ckp1, bias_correction2; lr the warmed-up one; in
    fp64 as schedulefree's Python float arithmetic (csrc's make_schedule_free_scalars)."""
    return (
        key,
        inv_scale.to(CT),
        hp[1].to(CT),
        (1.0 - hp[1]).to(CT),
        hp[5].to(CT),
        hp[2].to(CT),
        hp[3].to(CT),
        hp[4].to(CT),
        (lr * (hp[0] * (1.0 - hp[4]) - 1.0)).to(CT),
        (-lr).to(CT),
    )


@triton.jit
def _schedule_free_swap_tile(
    ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F
):
    p_ptr, w_ptr, z_ptr = ptrs[0], ptrs[1], ptrs[2]
    key, weight = sc
    MASTER: tl.constexpr = F[0]
    SR: tl.constexpr = F[1]
    LERP_LOW: tl.constexpr = F[3]
    theta = _load_param(p_ptr, w_ptr, offs, mask, PT, CT, MASTER)
    z = _load(z_ptr, offs, mask, PT, CT)
    theta = _lerp(theta, z, weight, LERP_LOW)
    _store_param(p_ptr, w_ptr, offs, theta, mask, key, PT, MASTER, SR)
    return acc


@triton.jit
def _schedule_free_swap_scalars(hp, key, inv_scale, step, lr, CT: tl.constexpr, LR_T: tl.constexpr):
    """hp: weight (schedulefree's Python float, rounded to the compute type as torch.lerp
    rounds a scalar weight)."""
    return (key, hp[0].to(CT))


# ---------------------------------------------------------------------------------------------
# Muon (the elementwise parts around the batched Newton-Schulz matmuls)


@triton.jit
def _rounded(x, ST: tl.constexpr, CT: tl.constexpr):
    """x rounded to storage dtype ST as _store rounds it, back in the compute type CT."""
    if tl.bfloat16 == ST:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(x != x, 0x7FC0, bits)
        return (bits << 16).to(tl.float32, bitcast=True).to(CT)
    else:
        return x.to(ST).to(CT)


@triton.jit
def _lerp(a, b, w, LOW: tl.constexpr):
    """torch.lerp's formula (lerp_ in math.h); LOW: |w| < 0.5 in the compute type."""
    if LOW:
        return a + w * (b - a)
    else:
        return b - (b - a) * (1.0 - w)


@triton.jit
def _muon_momentum_tile(
    ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F
):
    b_ptr, g_ptr, u_ptr = ptrs
    inv_scale, mu, omm = sc
    HAS_GRAD_SCALE: tl.constexpr = F[0]
    NESTEROV: tl.constexpr = F[1]
    BT: tl.constexpr = F[2]
    OMM_LOW: tl.constexpr = F[3]
    MU_LOW: tl.constexpr = F[4]
    b = _load(b_ptr, offs, mask, BT, CT)
    g = _load(g_ptr, offs, mask, PT, CT)
    if HAS_GRAD_SCALE:
        g = g * inv_scale
    # Each a tensor of its own dtype in torch.optim.Muon: b rounded to the buffers' dtype
    # before the nesterov lerp reads it, that lerp to the grads' (muon_momentum_element).
    b = _rounded(_lerp(b, g, omm, OMM_LOW), BT, CT)
    _store(b_ptr, offs, b, mask, BT)
    if NESTEROV:
        u = _rounded(_lerp(g, b, mu, MU_LOW), PT, CT)
    else:
        u = b
    _store(u_ptr, offs, u, mask, ST)
    return acc


@triton.jit
def _muon_momentum_kernel(
    table,  # int64 [n, W]: momentum buffer, update; numel
    grads,  # int64 [n]: address of each grad
    chunks,  # int64 [programs, 2]: (table row, first element)
    grad_scale_ptr,  # (HAS_GRAD_SCALE)
    found_inf_ptr,  # (HAS_FOUND_INF)
    momentum: tl.float64,
    PT: tl.constexpr,  # the grads' dtype (the params')
    ST: tl.constexpr,  # the updates' dtype
    BT: tl.constexpr,  # the momentum buffers' dtype (Muon's state dtype)
    CT: tl.constexpr,  # the grads' compute dtype
    W: tl.constexpr,
    NESTEROV: tl.constexpr,
    OMM_LOW: tl.constexpr,  # 1 - momentum < 0.5 (in CT)
    MU_LOW: tl.constexpr,  # momentum < 0.5 (in CT)
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, start, end = _chunk(chunks, table, W, found_inf_ptr, HAS_FOUND_INF, CHUNK, ALIGNED)
    b_ptr = _ptr(table, row, W, 0, BT, ALIGNED)
    u_ptr = _ptr(table, row, W, 1, ST, ALIGNED)
    g_ptr = _ptr(grads, row, 1, 0, PT, ALIGNED)
    mu = tl.full((), momentum, tl.float64)
    sc = (_inv_scale(grad_scale_ptr, HAS_GRAD_SCALE).to(CT), mu.to(CT), (1.0 - mu).to(CT))
    _sweep(
        _muon_momentum_tile,
        (b_ptr, g_ptr, u_ptr),
        sc,
        _no_acc(),
        start,
        end,
        PT,
        ST,
        CT,
        (HAS_GRAD_SCALE, NESTEROV, BT, OMM_LOW, MU_LOW),
        BLOCK,
    )


@triton.jit
def _muon_tile(ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F):
    p_ptr, w_ptr, o_ptr = ptrs[0], ptrs[1], ptrs[2]
    key, inv_scale, neg_step, decay = sc
    MASTER: tl.constexpr = F[0]
    SR: tl.constexpr = F[1]
    HAS_GRAD_SCALE: tl.constexpr = F[2]
    p = _load_param(p_ptr, w_ptr, offs, mask, PT, CT, MASTER)
    o = _load(o_ptr, offs, mask, PT, CT)
    if HAS_GRAD_SCALE:
        o = o * inv_scale
    p = p * decay
    p = p + neg_step * o
    _store_param(p_ptr, w_ptr, offs, p, mask, key, PT, MASTER, SR)
    return acc


@triton.jit
def _muon_scalars(hp, key, inv_scale, step, lr, CT: tl.constexpr, LR_T: tl.constexpr):
    """hp: weight_decay, lr_ratio. torch.optim.Muon reads a Tensor lr as a Python float: fp64
    products (make_muon_scalars)."""
    return (key, inv_scale.to(CT), (-(lr * hp[1])).to(CT), (1.0 - lr * hp[0]).to(CT))


# ---------------------------------------------------------------------------------------------
# SophiaG


@triton.jit
def _sophia_tile(
    ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F
):
    p_ptr, w_ptr, g_ptr, m_ptr, h_ptr = ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4]
    key, inv_scale, neg_lr, decay, beta1, omb1, rho_bs, eps = sc
    MASTER: tl.constexpr = F[0]
    SR: tl.constexpr = F[1]
    HAS_GRAD_SCALE: tl.constexpr = F[2]
    MAXIMIZE: tl.constexpr = F[3]
    p = _load_param(p_ptr, w_ptr, offs, mask, PT, CT, MASTER)
    g = _load(g_ptr, offs, mask, PT, CT)
    m = _load(m_ptr, offs, mask, ST, CT)
    h = _load(h_ptr, offs, mask, ST, CT)
    if HAS_GRAD_SCALE:
        g = g * inv_scale
    if MAXIMIZE:
        g = -g
    p = p * decay
    m = m * beta1 + omb1 * g
    if tl.float32 == CT:  # Note [exact rounding]
        ratio = tl.div_rn(tl.abs(m), rho_bs * h + eps)
    else:
        ratio = tl.abs(m) / (rho_bs * h + eps)
    ratio = tl.where(ratio > 1.0, 1.0, ratio)  # lets NaN through, as torch.clamp
    p = p + neg_lr * _sign(m) * ratio
    _store_param(p_ptr, w_ptr, offs, p, mask, key, PT, MASTER, SR)
    _store(m_ptr, offs, m, mask, ST)
    return acc


@triton.jit
def _sophia_scalars(hp, key, inv_scale, step, lr, CT: tl.constexpr, LR_T: tl.constexpr):
    """hp: beta1, rho * bs, weight_decay, eps (the authors' 1e-15)."""
    return (
        key,
        inv_scale.to(CT),
        (-lr).to(CT),
        _lr_decay(lr, hp[2], LR_T).to(CT),
        hp[0].to(CT),
        (1.0 - hp[0]).to(CT),
        hp[1].to(CT),
        hp[3].to(CT),
    )


@triton.jit
def _sophia_update_hessian_tile(
    ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F
):
    h_ptr, g_ptr = ptrs[0], ptrs[2]
    inv_scale, beta2, omb2 = sc
    HAS_GRAD_SCALE: tl.constexpr = F[2]
    h = _load(h_ptr, offs, mask, ST, CT)
    g = _load(g_ptr, offs, mask, PT, CT)
    if HAS_GRAD_SCALE:
        g = g * inv_scale
    h = h * beta2 + omb2 * g * g
    _store(h_ptr, offs, h, mask, ST)
    return acc


@triton.jit
def _sophia_update_hessian_scalars(
    hp, key, inv_scale, step, lr, CT: tl.constexpr, LR_T: tl.constexpr
):
    """hp: beta2."""
    return (inv_scale.to(CT), hp[0].to(CT), (1.0 - hp[0]).to(CT))


# ---------------------------------------------------------------------------------------------
# LAMB: the passes of Note [LAMB passes] (csrc/cpu/lamb.cpp), plus a small kernel between them
# that turns the per-chunk partial sums into one -lr*r per tensor on the device, so nothing
# waits on the host. EXACT (states stored in the compute dtype: fp32 states for fp32/fp16/bf16
# params, fp64 for fp64): pass 1 stores the moments and pass 2 reads them back unchanged.
# Otherwise (fp16/bf16 states) pass 1 only reads and pass 2 recomputes the moments from the
# same old values, so that u is the fp32 u of the unrounded moments in both passes.
#
# Note [LAMB phases]
# phase 0 runs the passes in one call. Phase 1 (steps +1; norms pass; sums) writes each param's
# (sum p^2, sum u^2) into sq_sums instead of the trust ratio, and (EXACT) the moments; phase 2
# (seeds +1; ratio from sqrt(sq_sums); apply pass) does not touch the steps. Split or not, the
# sums are added in the same order: phase 1 then phase 2 gives phase 0's bits. (Phase 2 relies
# on phase 1 having run in this backend: EXACT reads the moments phase 1 stored.)


@triton.jit
def _lamb_dir(p, m, v, sc, WEIGHT_DECAY: tl.constexpr):
    """The update direction u = (m/bc1) / (sqrt(v/bc2) + eps) + wd*p (sc: _lamb_scalars')."""
    bc1, bc2, eps, wd = sc[5], sc[6], sc[7], sc[8]
    if m.dtype == tl.float32:  # Note [exact rounding]
        u = tl.div_rn(tl.div_rn(m, bc1), tl.sqrt_rn(tl.div_rn(v, bc2)) + eps)
    else:
        u = (m / bc1) / (tl.sqrt(v / bc2) + eps)
    if WEIGHT_DECAY:
        u = u + wd * p
    return u


@triton.jit
def _lamb_u(
    p,
    g,
    m,
    v,
    sc,
    MAXIMIZE: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,
):
    """(m, v, u): the new moments and the update direction (sc: _lamb_scalars')."""
    inv_scale, beta1, omb1, beta2, omb2 = sc[0], sc[1], sc[2], sc[3], sc[4]
    if HAS_GRAD_SCALE:
        g = g * inv_scale
    if MAXIMIZE:
        g = -g
    m = m * beta1 + omb1 * g
    v = v * beta2 + omb2 * g * g
    return m, v, _lamb_dir(p, m, v, sc, WEIGHT_DECAY)


@triton.jit
def _lamb_scalars(
    table,
    row,
    grad_scale_ptr,
    W: tl.constexpr,
    STEP_T: tl.constexpr,
    hp,
    BIAS_CORRECTION: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    CT: tl.constexpr,
):
    """(inv_scale, beta1, 1-beta1, beta2, 1-beta2, bc1, bc2, eps, wd) in the compute type, from
    hp = (beta1, beta2, log2(beta1), log2(beta2), eps, weight_decay)."""
    beta1, beta2, log2_beta1, log2_beta2, eps, weight_decay = hp
    bc1 = tl.full((), 1.0, tl.float64)
    bc2 = tl.full((), 1.0, tl.float64)
    if BIAS_CORRECTION:
        step = _step(table, row, W, STEP_T)
        bc1 = 1.0 - tl.exp2(step * tl.full((), log2_beta1, tl.float64))
        bc2 = 1.0 - tl.exp2(step * tl.full((), log2_beta2, tl.float64))
    b1 = tl.full((), beta1, tl.float64)
    b2 = tl.full((), beta2, tl.float64)
    return (
        _inv_scale(grad_scale_ptr, HAS_GRAD_SCALE).to(CT),
        b1.to(CT),
        (1.0 - b1).to(CT),
        b2.to(CT),
        (1.0 - b2).to(CT),
        bc1.to(CT),
        bc2.to(CT),
        tl.full((), eps, tl.float64).to(CT),
        tl.full((), weight_decay, tl.float64).to(CT),
    )


@triton.jit
def _lamb_norms_tile(
    ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F
):
    p_ptr, w_ptr, g_ptr, m_ptr, v_ptr = ptrs
    MASTER: tl.constexpr = F[0]
    HAS_GRAD_SCALE: tl.constexpr = F[1]
    EXACT: tl.constexpr = F[2]
    MAXIMIZE: tl.constexpr = F[3]
    WEIGHT_DECAY: tl.constexpr = F[4]
    acc_pp, acc_uu = acc
    p = _load_param(p_ptr, w_ptr, offs, mask, PT, CT, MASTER)
    g = _load(g_ptr, offs, mask, PT, CT)
    m = _load(m_ptr, offs, mask, ST, CT)
    v = _load(v_ptr, offs, mask, ST, CT)
    m, v, u = _lamb_u(p, g, m, v, sc, MAXIMIZE, HAS_GRAD_SCALE, WEIGHT_DECAY)
    if EXACT:
        _store(m_ptr, offs, m, mask, ST)
        _store(v_ptr, offs, v, mask, ST)
    p64 = p.to(tl.float64)
    u64 = u.to(tl.float64)
    if mask is not None:
        p64 = tl.where(mask, p64, 0.0)
        u64 = tl.where(mask, u64, 0.0)
    return acc_pp + p64 * p64, acc_uu + u64 * u64


@triton.jit
def _lamb_pointers(
    table,
    grads,
    row,
    W: tl.constexpr,
    PT: tl.constexpr,
    ST: tl.constexpr,
    MASTER: tl.constexpr,
    MASTER_COL: tl.constexpr,
    SEED_COL: tl.constexpr,
    SR: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """((param, master, grad, exp_avg, exp_avg_sq) pointers, SR key) of a row."""
    p_ptr, w_ptr, key = _param_ptrs(table, row, W, PT, MASTER, MASTER_COL, SEED_COL, SR, ALIGNED)
    m_ptr = _ptr(table, row, W, 1, ST, ALIGNED)
    v_ptr = _ptr(table, row, W, 2, ST, ALIGNED)
    g_ptr = _ptr(grads, row, 1, 0, PT, ALIGNED)
    return (p_ptr, w_ptr, g_ptr, m_ptr, v_ptr), key


@triton.jit
def _lamb_norms_kernel(
    table,  # int64 [n, W]: param, exp_avg, exp_avg_sq[, master][, seed], step; numel
    grads,  # int64 [n]: address of each grad
    chunks,  # int64 [programs, 2]: (table row, first element)
    partials,  # fp64 [programs, 2]: out, this chunk's sums of p^2 and u^2
    grad_scale_ptr,  # (HAS_GRAD_SCALE)
    found_inf_ptr,  # (HAS_FOUND_INF)
    beta1: tl.float64,
    beta2: tl.float64,
    log2_beta1: tl.float64,
    log2_beta2: tl.float64,
    weight_decay: tl.float64,
    eps: tl.float64,
    PT: tl.constexpr,
    ST: tl.constexpr,
    CT: tl.constexpr,
    MASTER: tl.constexpr,
    MASTER_COL: tl.constexpr,
    STEP_T: tl.constexpr,
    W: tl.constexpr,
    EXACT: tl.constexpr,  # state dtype == compute dtype: store the moments in this pass
    BIAS_CORRECTION: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,  # weight_decay != 0
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, start, end = _chunk(chunks, table, W, found_inf_ptr, HAS_FOUND_INF, CHUNK, ALIGNED)
    ptrs, _ = _lamb_pointers(table, grads, row, W, PT, ST, MASTER, MASTER_COL, 0, False, ALIGNED)
    hp = (beta1, beta2, log2_beta1, log2_beta2, eps, weight_decay)
    sc = _lamb_scalars(
        table, row, grad_scale_ptr, W, STEP_T, hp, BIAS_CORRECTION, HAS_GRAD_SCALE, CT
    )
    acc = (tl.zeros((BLOCK,), tl.float64), tl.zeros((BLOCK,), tl.float64))
    # (the flags as a literal: a tuple held in a variable loses its constexpr-ness)
    acc_pp, acc_uu = _sweep(
        _lamb_norms_tile,
        ptrs,
        sc,
        acc,
        start,
        end,
        PT,
        ST,
        CT,
        (MASTER, HAS_GRAD_SCALE, EXACT, MAXIMIZE, WEIGHT_DECAY),
        BLOCK,
    )
    pid = tl.program_id(0).to(tl.int64)
    tl.store(partials + 2 * pid, tl.sum(acc_pp, axis=0))
    tl.store(partials + 2 * pid + 1, tl.sum(acc_uu, axis=0))


@triton.jit
def _lamb_ratio_kernel(
    ranges,  # int64 [n, 2]: (first chunk, number of chunks) of each param
    partials,  # fp64 [programs, 2]: from _lamb_norms_kernel (PHASE 0 and 1)
    neg_steps,  # fp64 [n]: out, -lr * trust ratio of each param (PHASE 0 and 2)
    norms_ptr,  # (||p||, ||u||) of each param (WANT_NORMS)
    norms_stride0,
    norms_stride1,
    sq_ptr,  # fp64 (sum p^2, sum u^2) of each param: out (PHASE 1), in (PHASE 2)
    sq_stride0,
    sq_stride1,
    lr_ptr,  # (LR_FROM_PTR)
    found_inf_ptr,  # (HAS_FOUND_INF): nothing is written on a skipped step
    lr_value: tl.float64,
    trust_clip: tl.float64,  # (HAS_CLIP)
    PHASE: tl.constexpr,  # Note [LAMB phases]
    LR_FROM_PTR: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    WANT_NORMS: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    BLOCK: tl.constexpr,  # partials summed per iteration
):
    i = tl.program_id(0).to(tl.int64)
    if HAS_FOUND_INF:
        write = tl.load(found_inf_ptr) == 0
    else:
        write = tl.full((), 1, tl.int1)
    if PHASE == 2:
        sum_pp = tl.load(sq_ptr + i * sq_stride0).to(tl.float64)
        sum_uu = tl.load(sq_ptr + i * sq_stride0 + sq_stride1).to(tl.float64)
    else:
        first = tl.load(ranges + 2 * i)
        count = tl.load(ranges + 2 * i + 1)
        pp = tl.zeros((BLOCK,), tl.float64)
        uu = tl.zeros((BLOCK,), tl.float64)
        for c in range(0, count, BLOCK):
            k = c + tl.arange(0, BLOCK)
            mask = k < count
            pp += tl.load(partials + 2 * (first + k), mask=mask, other=0.0)
            uu += tl.load(partials + 2 * (first + k) + 1, mask=mask, other=0.0)
        sum_pp = tl.sum(pp, axis=0)
        sum_uu = tl.sum(uu, axis=0)
    if PHASE == 1:
        tl.store(sq_ptr + i * sq_stride0, sum_pp, mask=write)
        tl.store(sq_ptr + i * sq_stride0 + sq_stride1, sum_uu, mask=write)
    else:
        p_norm = tl.sqrt(sum_pp)
        u_norm = tl.sqrt(sum_uu)
        ok = (p_norm > 0.0) & (u_norm > 0.0)
        ratio = tl.where(ok, p_norm / tl.where(ok, u_norm, 1.0), 1.0)
        if HAS_CLIP:
            clip = tl.full((), trust_clip, tl.float64)
            ratio = tl.where(clip < ratio, clip, ratio)  # std::min: a NaN ratio stays NaN
        lr = _lr(lr_ptr, lr_value, LR_FROM_PTR)
        tl.store(neg_steps + i, -(lr * ratio))
        if WANT_NORMS:
            tl.store(norms_ptr + i * norms_stride0, p_norm, mask=write)
            tl.store(norms_ptr + i * norms_stride0 + norms_stride1, u_norm, mask=write)


@triton.jit
def _lamb_apply_tile(
    ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F
):
    p_ptr, w_ptr, g_ptr, m_ptr, v_ptr = ptrs
    key, neg_step, lamb = sc
    MASTER: tl.constexpr = F[0]
    SR: tl.constexpr = F[1]
    HAS_GRAD_SCALE: tl.constexpr = F[2]
    EXACT: tl.constexpr = F[3]
    MAXIMIZE: tl.constexpr = F[4]
    WEIGHT_DECAY: tl.constexpr = F[5]
    p = _load_param(p_ptr, w_ptr, offs, mask, PT, CT, MASTER)
    m = _load(m_ptr, offs, mask, ST, CT)
    v = _load(v_ptr, offs, mask, ST, CT)
    if EXACT:  # the moments pass 1 stored; u from them, as pass 1 computed it
        u = _lamb_dir(p, m, v, lamb, WEIGHT_DECAY)
    else:  # the old moments: recompute the new ones and u exactly as pass 1 did
        g = _load(g_ptr, offs, mask, PT, CT)
        m, v, u = _lamb_u(p, g, m, v, lamb, MAXIMIZE, HAS_GRAD_SCALE, WEIGHT_DECAY)
        _store(m_ptr, offs, m, mask, ST)
        _store(v_ptr, offs, v, mask, ST)
    p = p + neg_step * u
    _store_param(p_ptr, w_ptr, offs, p, mask, key, PT, MASTER, SR)
    return acc


@triton.jit
def _lamb_apply_kernel(
    table,  # int64 [n, W]: as _lamb_norms_kernel's
    grads,  # int64 [n]: address of each grad (read unless EXACT)
    chunks,  # int64 [programs, 2]
    neg_steps,  # fp64 [n]: from _lamb_ratio_kernel
    grad_scale_ptr,  # (HAS_GRAD_SCALE)
    found_inf_ptr,  # (HAS_FOUND_INF)
    beta1: tl.float64,
    beta2: tl.float64,
    log2_beta1: tl.float64,
    log2_beta2: tl.float64,
    weight_decay: tl.float64,
    eps: tl.float64,
    PT: tl.constexpr,
    ST: tl.constexpr,
    CT: tl.constexpr,
    MASTER: tl.constexpr,
    MASTER_COL: tl.constexpr,
    SR: tl.constexpr,
    SEED_COL: tl.constexpr,
    STEP_T: tl.constexpr,
    W: tl.constexpr,
    EXACT: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, start, end = _chunk(chunks, table, W, found_inf_ptr, HAS_FOUND_INF, CHUNK, ALIGNED)
    ptrs, key = _lamb_pointers(
        table, grads, row, W, PT, ST, MASTER, MASTER_COL, SEED_COL, SR, ALIGNED
    )
    hp = (beta1, beta2, log2_beta1, log2_beta2, eps, weight_decay)
    sc = _lamb_scalars(
        table, row, grad_scale_ptr, W, STEP_T, hp, BIAS_CORRECTION, HAS_GRAD_SCALE, CT
    )
    sc = (key, tl.load(neg_steps + row).to(CT), sc)
    _sweep(
        _lamb_apply_tile,
        ptrs,
        sc,
        _no_acc(),
        start,
        end,
        PT,
        ST,
        CT,
        (MASTER, SR, HAS_GRAD_SCALE, EXACT, MAXIMIZE, WEIGHT_DECAY),
        BLOCK,
    )


# ---------------------------------------------------------------------------------------------
# sum of squares (the global grad norm)


@triton.jit
def _sum_sq_tile(
    ptrs, offs, mask, sc, acc, PT: tl.constexpr, ST: tl.constexpr, CT: tl.constexpr, F
):
    (x_ptr,) = ptrs
    x = _load(x_ptr, offs, mask, ST, CT).to(tl.float64)
    if mask is not None:
        x = tl.where(mask, x, 0.0)
    return acc + x * x


@triton.jit
def _sum_sq_kernel(
    table,  # int64 [n, W]: address of each tensor; numel
    chunks,  # int64 [programs, 2]: (table row, first element)
    partials,  # fp64 [programs]: out, this chunk's sum of squares
    ST: tl.constexpr,
    CT: tl.constexpr,
    W: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row, start, end = _chunk(chunks, table, W, table, False, CHUNK, ALIGNED)
    x_ptr = _ptr(table, row, W, 0, ST, ALIGNED)
    acc = tl.zeros((BLOCK,), tl.float64)
    acc = _sweep(_sum_sq_tile, (x_ptr,), (), acc, start, end, ST, ST, CT, (), BLOCK)
    tl.store(partials + tl.program_id(0).to(tl.int64), tl.sum(acc, axis=0))


@triton.jit
def _sum_kernel(
    x,  # fp64 [n]
    n,
    out,  # fp64 0-d: out = sum(x), in a fixed order
    BLOCK: tl.constexpr,
):
    acc = tl.zeros((BLOCK,), tl.float64)
    for c in range(0, n, BLOCK):
        k = c + tl.arange(0, BLOCK)
        acc += tl.load(x + k, mask=k < n, other=0.0)
    tl.store(out, tl.sum(acc, axis=0))


# ---------------------------------------------------------------------------------------------
# Adafactor (fusedopt/triton/_launch.py: _adafactor; the passes: Note [Adafactor passes] in
# csrc/cpu/adafactor.cpp). One program per BR rows of one matrix of a batch of matrices
# [B, M, N], looping over column tiles of BC; the partial sums are stored per program and added
# up in a fixed order by the host.


@triton.jit
def _adafactor_direction(v, g, eps1_sq, CT: tl.constexpr):
    v = tl.where(v < eps1_sq, eps1_sq, v)  # clamp_(min=): NaN stays NaN
    if tl.float32 == CT:  # Note [exact rounding]
        return tl.div_rn(1.0, tl.sqrt_rn(v)) * g
    return (1.0 / tl.sqrt(v)) * g


@triton.jit
def _adafactor_rows(pid, RB, M, N, BR: tl.constexpr):
    b = pid // RB
    rows = (pid % RB) * BR + tl.arange(0, BR)
    return b, rows, rows < M


@triton.jit
def _adafactor_sums_kernel(
    p, g, rowsum, colpart, pp_part, s, M, N, RB, CT: tl.constexpr, BR: tl.constexpr,
    BC: tl.constexpr,
):  # fmt: skip
    """Pass 1: the row sums of (s g)^2 (rowsum[b, rows]), this program's column sums
    (colpart[pid, :]) and sum p^2 (pp_part[pid])."""
    pid = tl.program_id(0)
    b, rows, rmask = _adafactor_rows(pid, RB, M, N, BR)
    racc = tl.zeros((BR,), CT)
    pacc = tl.zeros((BR,), CT)
    for c0 in range(0, N, BC):
        cols = c0 + tl.arange(0, BC)
        cmask = cols < N
        m = rmask[:, None] & cmask[None, :]
        off = b * M * N + rows[:, None] * N + cols[None, :]
        gv = tl.load(g + off, mask=m, other=0.0).to(CT) * s
        gg = gv * gv
        racc += tl.sum(gg, axis=1)
        tl.store(colpart + pid * N + cols, tl.sum(gg, axis=0), mask=cmask)
        pv = tl.load(p + off, mask=m, other=0.0).to(CT)
        pacc += tl.sum(pv * pv, axis=1)
    tl.store(rowsum + b * M + rows, racc, mask=rmask)
    tl.store(pp_part + pid, tl.sum(pacc, axis=0))


@triton.jit
def _adafactor_norm_kernel(
    g, r, c, rmean, uu_part, s, eps1_sq, M, N, RB, CT: tl.constexpr, BR: tl.constexpr,
    BC: tl.constexpr,
):  # fmt: skip
    """Pass 2: this program's sum of u^2 (uu_part[pid])."""
    pid = tl.program_id(0)
    b, rows, rmask = _adafactor_rows(pid, RB, M, N, BR)
    rv = tl.load(r + b * M + rows, mask=rmask, other=0.0).to(CT)
    rm = tl.load(rmean + b).to(CT)
    acc = tl.zeros((BR,), CT)
    for c0 in range(0, N, BC):
        cols = c0 + tl.arange(0, BC)
        cmask = cols < N
        m = rmask[:, None] & cmask[None, :]
        cv = tl.load(c + b * N + cols, mask=cmask, other=0.0).to(CT)
        gv = tl.load(g + b * M * N + rows[:, None] * N + cols[None, :], mask=m, other=0.0)
        if tl.float32 == CT:
            v = tl.div_rn(rv[:, None] * cv[None, :], rm)
        else:
            v = (rv[:, None] * cv[None, :]) / rm
        u = _adafactor_direction(v, gv.to(CT) * s, eps1_sq, CT)
        acc += tl.sum(tl.where(m, u * u, 0.0), axis=1)
    tl.store(uu_part + pid, tl.sum(acc, axis=0))


@triton.jit
def _adafactor_apply_kernel(
    p, g, r, c, rmean, s, eps1_sq, decay, neg_step_ptr, M, N, RB, CT: tl.constexpr,
    BR: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """Pass 3: p = p * decay + neg_step * u."""
    pid = tl.program_id(0)
    b, rows, rmask = _adafactor_rows(pid, RB, M, N, BR)
    rv = tl.load(r + b * M + rows, mask=rmask, other=0.0).to(CT)
    rm = tl.load(rmean + b).to(CT)
    neg_step = tl.load(neg_step_ptr).to(CT)
    for c0 in range(0, N, BC):
        cols = c0 + tl.arange(0, BC)
        cmask = cols < N
        m = rmask[:, None] & cmask[None, :]
        off = b * M * N + rows[:, None] * N + cols[None, :]
        cv = tl.load(c + b * N + cols, mask=cmask, other=0.0).to(CT)
        gv = tl.load(g + off, mask=m, other=0.0).to(CT) * s
        if tl.float32 == CT:
            v = tl.div_rn(rv[:, None] * cv[None, :], rm)
        else:
            v = (rv[:, None] * cv[None, :]) / rm
        u = _adafactor_direction(v, gv, eps1_sq, CT)
        pv = tl.load(p + off, mask=m, other=0.0).to(CT)
        pv = pv * decay
        pv = pv + neg_step * u
        tl.store(p + off, pv.to(p.dtype.element_ty), mask=m)


@triton.jit
def _adafactor_vector_kernel(
    p, g, v, pp_part, uu_part, s, w_ptr, eps1_sq, n, CT: tl.constexpr, BLOCK: tl.constexpr
):
    """A vector's pass 1: v lerped toward (s g)^2 and stored, sums of p^2 and u^2 per
    program."""
    pid = tl.program_id(0)
    k = pid * BLOCK + tl.arange(0, BLOCK)
    m = k < n
    w = tl.load(w_ptr).to(CT)
    gv = tl.load(g + k, mask=m, other=0.0).to(CT) * s
    vv = tl.load(v + k, mask=m, other=0.0).to(CT)
    gg = gv * gv
    # torch.lerp (ATen Lerp.h): the form depends on the weight
    vv = tl.where(w < 0.5, vv + w * (gg - vv), gg - (gg - vv) * (1 - w))
    tl.store(v + k, vv.to(v.dtype.element_ty), mask=m)
    u = _adafactor_direction(vv, gv, eps1_sq, CT)
    pv = tl.load(p + k, mask=m, other=0.0).to(CT)
    tl.store(pp_part + pid, tl.sum(pv * pv, axis=0))
    tl.store(uu_part + pid, tl.sum(tl.where(m, u * u, 0.0), axis=0))


@triton.jit
def _adafactor_vector_apply_kernel(
    p, g, v, s, eps1_sq, decay, neg_step_ptr, n, CT: tl.constexpr, BLOCK: tl.constexpr
):
    pid = tl.program_id(0)
    k = pid * BLOCK + tl.arange(0, BLOCK)
    m = k < n
    neg_step = tl.load(neg_step_ptr).to(CT)
    gv = tl.load(g + k, mask=m, other=0.0).to(CT) * s
    u = _adafactor_direction(tl.load(v + k, mask=m, other=1.0).to(CT), gv, eps1_sq, CT)
    pv = tl.load(p + k, mask=m, other=0.0).to(CT)
    pv = pv * decay
    pv = pv + neg_step * u
    tl.store(p + k, pv.to(p.dtype.element_ty), mask=m)
