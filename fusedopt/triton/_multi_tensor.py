"""Host side of the Triton backend: validation, staging, and the cached pointer tables.

Note [table cache]
A call's tables (Note [pointer tables] in _kernels.py) are built once and reused while the
tensors are the same. The cache key is the op, the names of its lists (which lists a call has:
amsgrad's max_exp_avg_sqs, master_params, sr_seeds), and for every tensor of every list the kernel
writes or reads except the grads its (address, dtype, strides, numel), and each step counter's
and SR seed's (address, dtype[, numel]): exactly what the table encodes and what was validated
when it was built, so a table can only be reused for tensors it describes correctly. Adding
a param group or loading a state_dict brings new state tensors, ``p.data = ...`` gives the param
new storage: each changes the key and the table is rebuilt (and the new tensors validated).
Checking the key costs about half a microsecond per tensor per step, far less than a launch.
Grads change every backward pass, so their addresses are a second, smaller table, rebuilt
whenever they change (keyed the same way). Nothing in a cache entry refers to the caller's
tensors: only their addresses, and our own staging buffers.

Note [staging]
Elementwise updates only need element j of every list to belong to element j of the param
(Note [any layout] in csrc/common/multi_tensor.h). A param that is not dense is staged in a
contiguous buffer; any other tensor whose layout differs from the param's (or the staged
param's) is staged in a buffer with that layout (and its own dtype). Staged tensors are copied in
before the launch and the ones the kernel writes copied back after it. The buffers live in the
cache entry. The element index of stochastic rounding's noise (Note [mixed precision] in
csrc/include/fusedopt/math.h) is the offset in the param as the kernel sees it: its memory
order for a dense param, row-major for a staged one, as fusedopt.reference.memory_index.

Note [CUDA graphs]
A graph captured around a call keeps the raw addresses of that call's tables, staging buffers and
scratch tensors, and reads them at every replay. So an entry created or used during a capture is
marked ``captured`` and is never evicted (the LRU limit counts the other entries only), and a
grad table (with its staging buffers) used during a capture is kept alive when later grads
replace it. Only clear_cache() drops them: call it once no graph that ran these ops will be
replayed again. A table built during a capture is copied to the device from pageable memory
(allocating pinned memory is not allowed while a stream captures; the pageable host table is
kept with the entry, since every replay copies it again), and that copy only runs when the graph
does: the first call outside a capture (prepare) copies every such table itself.

Note [mixed dtypes]
A table row holds the param's list, the state lists and the fp32 master copies (the last list,
when given); the SR seeds and step counters are extra columns. Each list has one dtype: the
params' P (grads too), the states' S (the first state tensor's; S == P, or float32 / bfloat16
for P != float64), float32 for masters. These are checked when the table is built, with the
mixed-precision rules of fusedopt.reference._common.check_mixed, before anything is written.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference._common import check_unshared, state_dtype_ok

# Elements per tile: a power of two that keeps each of the up to five streams of a tile in
# registers at 4 warps (8 fp32 per thread and stream). Not measured on a GPU yet (no GPU was at
# hand when this was written): the GPU check script should sweep it and record the result here.
BLOCK = 1024
# Under TRITON_INTERPRET=1 a tile costs about 5 ms of Python whatever its size (measured on the
# 2-core CI machine: ~10 nested @triton.jit calls at ~0.5 ms each), so tiles are larger there.
INTERPRET_BLOCK = 8192
# Elements per program (a multiple of BLOCK). Large enough that the per-program work of reading
# the table and computing the per-tensor scalars is noise (64 tiles), small enough that a
# 1M-element tensor still spreads over 16 programs and a 1B-parameter step launches ~16K.
CHUNK = 65536
# Step counters per program in the increment kernel.
STEP_BLOCK = 256
# Cached tables kept (one per (optimizer bucket, op) in use; SGD's first step uses two).
MAX_ENTRIES = 64

ST = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}

#: counters for tests: tables and grad tables built since import
stats = {"builds": 0, "grad_builds": 0}


def compute_type(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def block() -> int:
    """Elements per tile for this mode (a divisor of CHUNK)."""
    return INTERPRET_BLOCK if interpreting() else BLOCK


def _is_dense(t: Tensor) -> bool:
    """Non-overlapping and dense: the elements fill one range of memory, in some order."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _dense_with(t: Tensor, strides: tuple[int, ...]) -> bool:
    return t.stride() == strides and _is_dense(t)


def chunk_table(numels: list[int], chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """(chunks, ranges): int64 [programs, 2] of (row, first element) for every chunk of every
    non-empty row, and int64 [rows, 2] of (first chunk, number of chunks) of each row."""
    n = torch.tensor(numels, dtype=torch.int64)
    counts = (n + chunk - 1) // chunk
    first = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())
    rows = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int64), counts)
    starts = (torch.arange(total, dtype=torch.int64) - first[rows]) * chunk
    return torch.stack([rows, starts], 1), torch.stack([first, counts], 1)


@dataclass(eq=False)
class Entry:
    """The tables of one set of tensors (Note [table cache])."""

    device: torch.device
    dtype: torch.dtype  # the params' (and grads')
    state_dtype: torch.dtype  # the state lists' (the params' if there are none)
    n: int
    table: Tensor  # int64 [n, W] on the device
    width: int
    chunks: Tensor  # int64 [programs, 2] on the device
    programs: int
    ranges: Tensor  # int64 [n, 2] on the device
    aligned: bool  # every address in table is 16-byte aligned
    step_type: tl.dtype | None
    master_col: int  # the master_params column, or -1 (Note [mixed dtypes])
    seed_col: int  # the SR seeds' column, or -1
    step_col: int  # the step counters' column (W - 2), or -1
    ref_strides: list[tuple[int, ...] | None]  # layout grads must have to be used in place
    numels: list[int]
    staged: list[tuple[int, int, Tensor]]  # (list, index, buffer)
    chunk: int  # elements per program (CHUNK when the table was built)
    grad_sig: tuple | None = None
    grad_table: Tensor | None = None
    grad_staged: list[tuple[int, Tensor]] = field(default_factory=list)
    grads_aligned: bool = True
    scratch: dict[str, Tensor] = field(default_factory=dict)
    # Note [CUDA graphs]
    captured: bool = False  # created or used during a capture: never evicted
    capture: bool = False  # the current call is being captured (set by prepare)
    grad_captured: bool = False  # grad_table was used during a capture
    kept: list = field(default_factory=list)  # what a captured graph may still read
    pending: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (host, device) copies

    def stage_in(self, lists: list[list[Tensor]], grads: list[Tensor] | None) -> None:
        for k, i, buf in self.staged:
            buf.copy_(lists[k][i])
        if grads is not None:
            for i, buf in self.grad_staged:
                buf.copy_(grads[i])

    def stage_out(self, lists: list[list[Tensor]], written: tuple[bool, ...]) -> None:
        for k, i, buf in self.staged:
            if written[k]:
                lists[k][i].copy_(buf)


_cache: OrderedDict[tuple, Entry] = OrderedDict()


def clear_cache() -> None:
    """Drop every cached table (and staging buffer), those of CUDA graph captures too: only once
    no captured graph that ran these ops will be replayed (Note [CUDA graphs])."""
    _cache.clear()


def capturing(device: torch.device) -> bool:
    """Whether the current stream of ``device`` is capturing a CUDA graph."""
    if device.type != "cuda":
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_current_stream_capturing()


def _upload(t: Tensor, device: torch.device, pending: list | None = None) -> Tensor:
    """A host-built table on the device, without a host sync: a copy from pageable memory would
    wait for the stream (CUDA's rules for pageable transfers), one from pinned memory doesn't
    (and torch's pinned-memory cache keeps the buffer until the copy is done). During a capture
    (``pending`` given), from pageable memory, and (host, device) is added to ``pending``
    (Note [CUDA graphs])."""
    if pending is not None:
        dev = t.to(device, non_blocking=True, copy=True)
        pending.append((t, dev))
        return dev
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _sig(t: Tensor) -> tuple:
    return (t.data_ptr(), t.dtype, t.stride(), t.numel())


def _fail(op: str, msg: str) -> None:
    raise RuntimeError(f"{op}: {msg}")


def _validate(
    op: str,
    names: tuple[str, ...],
    lists: list[list[Tensor]],
    steps: list[Tensor] | None,
    master: bool,
    seeds: list[Tensor] | None,
) -> tuple[torch.device, torch.dtype, torch.dtype]:
    """The checks of the compiled ops (csrc/common/multi_tensor.cpp, csrc/common/mixed.cpp), before
    anything is written. Returns (device, param dtype, state dtype)."""
    params = lists[0]
    n = len(params)
    for name, lst in zip(names, lists):
        if len(lst) != n:
            _fail(op, f"expected {name} to have {n} tensors (one per param), got {len(lst)}")
    if steps is not None and len(steps) != n:
        _fail(op, f"expected state_steps to have {n} tensors (one per param), got {len(steps)}")
    if seeds is not None and len(seeds) != n:
        _fail(op, f"expected sr_seeds to have {n} tensors (one per param), got {len(seeds)}")
    if master and seeds is not None:
        _fail(op, "master_params and sr_seeds are exclusive")
    device, dtype = params[0].device, params[0].dtype
    if dtype not in ST:
        _fail(op, f"{names[0]} must be float16, bfloat16, float32 or float64, got {dtype}")
    states = lists[1 : len(lists) - 1 if master else len(lists)]
    state_names = names[1 : len(names) - 1 if master else len(names)]
    state_dtype = states[0][0].dtype if states else dtype
    for name, lst in zip(state_names, states):
        for i, t in enumerate(lst):
            if t.dtype != state_dtype:
                _fail(
                    op,
                    f"{name}[{i}] has dtype {t.dtype} but the first state tensor has dtype "
                    f"{state_dtype} (all state tensors of a call share one dtype)",
                )
    if not state_dtype_ok(dtype, state_dtype):
        _fail(
            op,
            f"state dtype {state_dtype} is not supported with param dtype {dtype} (supported: "
            "the params' dtype, or float32 / bfloat16 for float32, float16 and bfloat16 params)",
        )
    if master and dtype not in (torch.float16, torch.bfloat16):
        _fail(op, f"master_params need float16 or bfloat16 params; params[0] is {dtype}")
    if seeds is not None and dtype != torch.bfloat16:
        _fail(op, f"stochastic rounding (sr_seeds) needs bfloat16 params; params[0] is {dtype}")
    expected = [dtype] + [state_dtype] * len(states) + ([torch.float32] if master else [])
    for i, p in enumerate(params):
        if p.device != device or p.dtype != dtype:
            _fail(
                op,
                f"all {names[0]} of one call must share a device and dtype: {names[0]}[{i}] is "
                f"{p.dtype} on {p.device}, {names[0]}[0] is {dtype} on {device}",
            )
        for name, lst, want in zip(names, lists, expected):
            _check_like(op, name, i, lst[i], p, want)
    if device.type == "cpu" and not interpreting():
        _fail(op, "Triton kernels need GPU tensors (set TRITON_INTERPRET=1 to run on the CPU)")
    if steps is not None:
        for i, s in enumerate(steps):
            if s.numel() != 1:
                _fail(op, f"state_steps[{i}] must be a one-element tensor")
            if s.device != device:
                _fail(op, f"state_steps[{i}] is on {s.device}, expected {device}")
            if s.dtype not in (torch.float32, torch.float64) or s.dtype != steps[0].dtype:
                _fail(
                    op,
                    f"state_steps must all be float32 or all float64, state_steps[{i}] is "
                    f"{s.dtype}",
                )
    if seeds is not None:
        for i, s in enumerate(seeds):
            if s.dtype != torch.int64 or s.numel() != 1:
                _fail(
                    op,
                    f"sr_seeds[{i}] must be a one-element int64 tensor, got {s.dtype} with "
                    f"{s.numel()} elements",
                )
            if s.device != device:
                _fail(op, f"sr_seeds[{i}] is on {s.device}, expected {device}")
        check_unshared(op, "sr_seeds", seeds, "seed")
    if steps is not None:
        check_unshared(op, "state_steps", steps, "step counter")
    return device, dtype, state_dtype


def _check_like(
    op: str, name: str, i: int, t: Tensor, p: Tensor, dtype: torch.dtype | None = None
) -> None:
    """t goes with param p: strided, on its device, of its shape, of ``dtype`` (default: p's)."""
    if t.layout != torch.strided:
        _fail(op, f"{name}[{i}] is sparse; fused optimizers do not support sparse tensors")
    if t.device != p.device:
        _fail(op, f"{name}[{i}] is on {t.device}, but its param is on {p.device}")
    if dtype is None or dtype == p.dtype:
        if t.dtype != p.dtype:
            _fail(op, f"{name}[{i}] has dtype {t.dtype} but its param has dtype {p.dtype}")
    elif t.dtype != dtype:
        _fail(op, f"{name}[{i}] has dtype {t.dtype}, expected {dtype}")
    if t.shape != p.shape:
        _fail(op, f"{name}[{i}] has shape {list(t.shape)} but its param has shape {list(p.shape)}")


def prepare(
    op: str,
    names: tuple[str, ...],
    lists: list[list[Tensor]],
    steps: list[Tensor] | None = None,
    *,
    master: bool = False,
    seeds: list[Tensor] | None = None,
) -> Entry | None:
    """The (cached) tables for ``lists`` and ``steps``; None if there are no params.

    lists[0] is the params, then the state lists, then (``master``) the fp32 master copies;
    ``seeds`` the SR seeds (Note [mixed dtypes]).
    """
    if not lists[0]:
        for name, lst in zip(names, lists):
            if lst:
                _fail(op, f"expected {name} to have 0 tensors (one per param), got {len(lst)}")
        if steps:
            _fail(op, f"expected state_steps to have 0 tensors (one per param), got {len(steps)}")
        if seeds:
            _fail(op, f"expected sr_seeds to have 0 tensors (one per param), got {len(seeds)}")
        return None
    try:
        key = (
            op,
            names,
            CHUNK,
            tuple(len(lst) for lst in lists),
            tuple(_sig(t) for lst in lists for t in lst),
            None if steps is None else tuple((s.data_ptr(), s.dtype) for s in steps),
            None if seeds is None else tuple((s.data_ptr(), s.dtype, s.numel()) for s in seeds),
        )
    except RuntimeError:  # e.g. a sparse tensor has no strides: say so properly
        _validate(op, names, lists, steps, master, seeds)
        raise
    capture = capturing(lists[0][0].device)
    entry = _cache.get(key)
    if entry is None:
        checked = _validate(op, names, lists, steps, master, seeds)
        entry = _build(checked, lists, steps, master, seeds, capture)
        entry.captured = capture
        _cache[key] = entry
        _evict()
    else:
        _cache.move_to_end(key)
        entry.captured |= capture
        # Note [CUDA graphs]: tables built during a capture are filled when a graph replays;
        # this call (or the graph it is captured into) fills them itself
        for host, dev in entry.pending:
            dev.copy_(host, non_blocking=True)
        if not capture:
            entry.pending.clear()
    entry.capture = capture
    return entry


def _evict() -> None:
    """Drops the least recently used entries beyond MAX_ENTRIES, never a captured one (Note
    [CUDA graphs])."""
    free = [k for k, e in _cache.items() if not e.captured]
    for k in free[: max(len(free) - MAX_ENTRIES, 0)]:
        del _cache[k]


def _build(
    checked: tuple[torch.device, torch.dtype, torch.dtype],
    lists: list[list[Tensor]],
    steps: list[Tensor] | None,
    master: bool,
    seeds: list[Tensor] | None,
    capture: bool,
) -> Entry:
    """The tables of a validated call (``checked``: what _validate returned)."""
    device, dtype, state_dtype = checked
    assert CHUNK % 16 == 0, "chunk starts must keep 16-element alignment (ALIGNED)"
    stats["builds"] += 1
    params = lists[0]
    rows: list[list[int]] = []
    staged: list[tuple[int, int, Tensor]] = []
    ref_strides: list[tuple[int, ...] | None] = []
    numels: list[int] = []
    for i, p in enumerate(params):
        numel = p.numel()
        numels.append(numel)
        row = [0] * len(lists)
        if numel == 0:  # no pointer of it is ever formed
            ref_strides.append(None)
        else:
            ref = p
            if not _is_dense(p):
                ref = torch.empty(p.shape, dtype=dtype, device=device)
                staged.append((0, i, ref))
            ref_strides.append(ref.stride())
            row[0] = ref.data_ptr()
            for k in range(1, len(lists)):
                t = lists[k][i]
                if not _dense_with(t, ref.stride()):
                    t = torch.empty_like(ref, dtype=t.dtype)  # a dense ref's layout is kept
                    staged.append((k, i, t))
                row[k] = t.data_ptr()
        if seeds is not None:
            row.append(seeds[i].data_ptr())
        if steps is not None:
            row.append(steps[i].data_ptr())
        row.append(numel)
        rows.append(row)
    width = len(rows[0])
    chunks, ranges = chunk_table(numels, CHUNK)
    addresses = [a for r in rows for a in r[: len(lists)]]
    if steps is not None:
        step_type = tl.float64 if steps[0].dtype == torch.float64 else tl.float32
    else:
        step_type = None
    pending: list[tuple[Tensor, Tensor]] | None = [] if capture else None
    return Entry(
        device=device,
        dtype=dtype,
        state_dtype=state_dtype,
        n=len(params),
        table=_upload(torch.tensor(rows, dtype=torch.int64), device, pending),
        width=width,
        chunks=_upload(chunks, device, pending),
        programs=chunks.shape[0],
        ranges=_upload(ranges, device, pending),
        aligned=all(a % 16 == 0 for a in addresses),
        step_type=step_type,
        master_col=len(lists) - 1 if master else -1,
        seed_col=len(lists) if seeds is not None else -1,
        step_col=width - 2 if steps is not None else -1,
        ref_strides=ref_strides,
        numels=numels,
        staged=staged,
        chunk=CHUNK,
        kept=[host for host, _ in pending or ()],
        pending=pending or [],
    )


def grad_table(
    op: str,
    entry: Entry,
    params: list[Tensor],
    grads: list[Tensor],
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The grads' address table (cached while the grads are the same tensors).

    New grads (every backward pass, unless the allocator hands out the same addresses) are
    checked here: a grad of ``dtype`` (default: the params'), the param's device, numel and
    (dense) layout is used in place; any other grad is checked in full (shape included) and
    staged.
    """
    if dtype is None:
        dtype = entry.dtype
    if len(grads) != len(params):
        _fail(op, f"expected grads to have {len(params)} tensors (one per param), got {len(grads)}")
    try:
        sig = tuple(_sig(g) for g in grads)
    except RuntimeError:
        for i, (p, g) in enumerate(zip(params, grads)):
            _check_like(op, "grads", i, g, p, dtype)
        raise
    if sig == entry.grad_sig and entry.grad_table is not None:
        entry.grad_captured |= entry.capture
        return entry.grad_table
    stats["grad_builds"] += 1
    device_index = entry.device.index if entry.device.type == "cuda" else -1
    if entry.grad_captured:  # a graph may still read them (Note [CUDA graphs])
        entry.kept.append((entry.grad_table, entry.grad_staged))
        old = {}
    else:
        old = dict(entry.grad_staged)
    staged = []
    addresses = []
    for i, g in enumerate(grads):
        strides = entry.ref_strides[i]
        in_place = (
            g.dtype == dtype
            and g.get_device() == device_index
            and g.numel() == entry.numels[i]
            and (strides is None or _dense_with(g, strides))
        )
        if not in_place:  # raises unless only the layout differs
            _check_like(op, "grads", i, g, params[i], dtype)
        if strides is None:  # an empty param: no pointer
            addresses.append(0)
            continue
        if not in_place:
            buf = old.get(i)
            if buf is None or buf.dtype != dtype:
                buf = torch.empty_strided(g.shape, strides, dtype=dtype, device=entry.device)
            staged.append((i, buf))
            g = buf
        addresses.append(g.data_ptr())
    entry.grad_staged = staged
    entry.grads_aligned = all(a % 16 == 0 for a in addresses)
    host = torch.tensor(addresses, dtype=torch.int64)
    entry.grad_table = _upload(host, entry.device, entry.pending if entry.capture else None)
    if entry.capture:
        entry.kept.append(host)
    entry.grad_captured = entry.capture
    entry.grad_sig = sig
    return entry.grad_table


def validate_grads(op: str, params: list[Tensor], grads: list[Tensor]) -> None:
    """The grads of a call without params (no table is built)."""
    if len(grads) != len(params):
        _fail(op, f"expected grads to have {len(params)} tensors (one per param), got {len(grads)}")
    for i, (p, g) in enumerate(zip(params, grads)):
        _check_like(op, "grads", i, g, p)


def device_scalar(t: Tensor | None, name: str, device: torch.device) -> Tensor | None:
    """grad_scale / found_inf: one element, on the params' device."""
    if t is None:
        return None
    if t.numel() != 1:
        raise RuntimeError(f"{name} must have one element")
    return t if t.device == device else t.to(device, non_blocking=True)


def lr_arg(lr: Tensor, device: torch.device) -> tuple[Tensor | None, float, bool]:
    """(pointer, value, from_pointer): a learning rate on the device is read by the kernel (no
    host sync); one on the CPU is passed by value (reading a CPU tensor doesn't sync either)."""
    if lr.numel() != 1:
        raise RuntimeError("Tensor lr must be 1-element")
    if lr.device == device:
        return lr, 0.0, True
    if lr.device.type == "cpu":
        return None, float(lr.item()), False
    return lr.to(device, non_blocking=True), 0.0, True


def lr_type(lr: Tensor) -> tl.dtype:
    """The dtype of the arithmetic on a Tensor lr (Note [Tensor lr arithmetic] in
    fusedopt/reference/_common.py): its own for fp32/fp16/bf16, else fp64."""
    return ST.get(lr.dtype, tl.float64)


def log2(beta: float) -> float:
    """log2(beta) for beta^t = exp2(t*log2(beta)) in the kernels; beta = 0 gives 0^t = 0."""
    return math.log2(beta) if beta > 0 else -math.inf


def in_compute_type(x: float, dtype: torch.dtype) -> float:
    """x as the kernels see it: rounded to fp32 unless the storage is fp64."""
    return x if dtype == torch.float64 else float(np.float32(x))
