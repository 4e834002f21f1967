"""8-bit blockwise states: the quantization maps and the one rounding rule every backend follows.

Note [8-bit states]
A moment kept in 8 bits is a uint8 code per element, shaped like the param, plus one fp32
absmax per block of ``BLOCK`` (256) elements, decoded through a 256-entry map: bitsandbytes'
dynamic map (``dynamic_map``), signed for first moments, unsigned for second moments. The
rule, bit for bit on every backend:

- blocks: the elements of the param in row-major order (``reshape(-1)``), cut every 256
  elements; the last block may be partial. The codes tensor is contiguous; a param of any
  layout keeps its codes in row-major order.
- decode: ``map[code] * absmax``, one fp32 multiplication.
- encode, after the fp32 update of a block: ``absmax`` = the largest |value| of the block in
  fp32 (NaN if the block holds a NaN); each value is normalized by one fp32 multiplication
  ``x = value * r`` with the block's reciprocal ``r = 1 / absmax``, an exactly rounded fp32
  division once per block (``r = 1`` where absmax is 0, so that a zero block codes its zeros as
  the map's 0). bitsandbytes normalizes the same way, and it keeps the divider out of the
  per-element work; the code is the number of midpoints strictly below x, where the
  255 midpoints ``mid[k] = (map[k] + map[k + 1]) * 0.5`` (fp32, the map sorted ascending) are
  padded with +inf to 256 and searched branch-free in eight halvings (``encode``): the nearest
  entry, a value exactly on a midpoint taking the lower entry, and NaN taking code 0 (its
  comparisons are false).
- a step that GradScaler skips (found_inf) changes neither codes nor absmax.

Params below a size threshold (bitsandbytes' 4,096 elements) keep fp32 states: the
optimizers decide which (Note [8-bit optimizer states] in fusedopt/optim/_q8.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._opdefs import OPS
from ._common import begin

#: Elements per quantization block.
BLOCK = 256


def dynamic_map(signed: bool, max_exponent_bits: int = 7, total_bits: int = 8) -> Tensor:
    """bitsandbytes' dynamic quantization map (``create_dynamic_map``), 256 fp32 values sorted
    ascending: for each decade exponent e = -6..0, the midpoints of an evenly spaced split of
    [0.1, 1] scaled by 10^e, the finer the larger e (the signed map spends a bit on the sign
    and mirrors them), then 0 and 1.

    The arithmetic is bitsandbytes': fp32 linspace and midpoints, scaled by a Python float in
    fp32."""
    fraction_bits = total_bits - 1
    data: list[float] = []

    def split(items: int, scale: float) -> None:
        bounds = torch.linspace(0.1, 1, items + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data.extend((scale * means).tolist())
        if signed:
            data.extend((-scale * means).tolist())

    for i in range(max_exponent_bits):
        split(
            2 ** (i + fraction_bits - max_exponent_bits + (0 if signed else 1)),
            10.0 ** (i + 1 - max_exponent_bits),
        )
    extra = 2 ** (fraction_bits - max_exponent_bits) - 1
    if extra > 0:  # the codes left where every exponent bit is 0 (none with the defaults)
        split(extra, 1.0)
    data += [0.0, 1.0]
    data += [0.0] * (2**total_bits - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


def midpoints(qmap: Tensor) -> Tensor:
    """The 256 search keys of ``encode``: the fp32 midpoints between adjacent entries, +inf last."""
    mid = (qmap[:-1] + qmap[1:]) * 0.5
    return torch.cat([mid, torch.full((1,), math.inf, dtype=torch.float32, device=qmap.device)])


#: The maps the optimizers use, (2, 256) fp32: row 0 signed (first moments), row 1 unsigned
#: (second moments).
QMAPS = torch.stack([dynamic_map(True), dynamic_map(False)])


def encode(x: Tensor, mid: Tensor) -> Tensor:
    """The codes (int64) of normalized fp32 values ``x``: the branch-free search of Note [8-bit
    states] (a lower bound over the sorted midpoints ``mid``)."""
    c = torch.zeros(x.shape, dtype=torch.int64, device=x.device)
    for step in (128, 64, 32, 16, 8, 4, 2, 1):
        c = c + (mid[c + (step - 1)] < x).to(torch.int64) * step
    return c


def quantize(values: Tensor, qmap: Tensor) -> tuple[Tensor, Tensor]:
    """(codes uint8 of ``values``' shape, absmax fp32 of ceil(n / BLOCK) blocks) of fp32
    ``values``, blocks in row-major order."""
    flat = values.detach().reshape(-1).to(torch.float32)
    n = flat.numel()
    nblocks = -(-n // BLOCK)
    padded = torch.zeros(nblocks * BLOCK, dtype=torch.float32, device=flat.device)
    padded[:n] = flat
    blocks = padded.view(nblocks, BLOCK)
    absmax = blocks.abs().amax(dim=1)  # NaN where the block holds one
    recip = 1.0 / torch.where(absmax == 0, 1.0, absmax)  # fp32, exactly rounded
    x = blocks * recip[:, None]
    codes = encode(x, midpoints(qmap.to(flat.device)))
    return codes.reshape(-1)[:n].to(torch.uint8).view(values.shape), absmax


def dequantize(codes: Tensor, absmax: Tensor, qmap: Tensor) -> Tensor:
    """The fp32 values of ``codes`` (any shape, row-major blocks) and their blocks' ``absmax``."""
    flat = codes.reshape(-1).to(torch.int64)
    scale = absmax.to(torch.float32).repeat_interleave(BLOCK)[: flat.numel()]
    return (qmap.to(codes.device)[flat] * scale).view(codes.shape)


def num_blocks(numel: int) -> int:
    return -(-numel // BLOCK)


_Q8_PARAMS = (torch.float32, torch.bfloat16, torch.float16)


def check_8bit(op: str, a: Any) -> None:
    """The 8-bit states of a call of registry op ``op``, its auxiliary state lists: per param
    uint8 codes of its shape and fp32 absmax (the lists whose key ends in ``_absmax``), one per
    block, all contiguous; params of an fp32 opmath; the maps (2, 256) fp32."""
    n = len(a.params)
    where = f"fusedopt.{op}"
    if a.qmaps.dtype != torch.float32 or tuple(a.qmaps.shape) != (2, BLOCK):
        raise RuntimeError(
            f"{where}: qmaps must be a float32 tensor of shape (2, 256), got {a.qmaps.dtype} "
            f"{tuple(a.qmaps.shape)}"
        )
    for arg in OPS[op].aux_state:
        blocks = arg.key.endswith("_absmax")  # type: ignore[union-attr]
        dtype = torch.float32 if blocks else torch.uint8
        tensors = getattr(a, arg.name)
        if len(tensors) != n:
            raise RuntimeError(
                f"{where}: expected {arg.name} to have {n} tensors (one per param), got "
                f"{len(tensors)}"
            )
        for i, (p, t) in enumerate(zip(a.params, tensors)):
            shape = (num_blocks(p.numel()),) if blocks else tuple(p.shape)
            if t.dtype != dtype or tuple(t.shape) != shape or not t.is_contiguous():
                raise RuntimeError(
                    f"{where}: {arg.name}[{i}] must be a contiguous {dtype} tensor of shape "
                    f"{shape}, got {t.dtype} {tuple(t.shape)}"
                    + ("" if t.is_contiguous() else " (not contiguous)")
                )
    for i, p in enumerate(a.params):
        if p.dtype not in _Q8_PARAMS:
            raise RuntimeError(
                f"{where}: 8-bit states need float32, bfloat16 or float16 params; params[{i}] is "
                f"{p.dtype}"
            )
        if a.sr_seeds and not p.is_contiguous() and p.numel() > 1:
            from torch._prims_common import is_non_overlapping_and_dense_or_false

            if is_non_overlapping_and_dense_or_false(p):
                raise NotImplementedError(
                    f"{where}: stochastic rounding of a param that is dense but not contiguous "
                    f"(params[{i}], strides {p.stride()}) with 8-bit states"
                )


def prologue(op: str) -> Callable[[Any], tuple | None]:
    """The reference prologue of an 8-bit op: its 8-bit arguments checked (``check_8bit``)
    before the shared prologue writes anything (step counters, seeds)."""

    def run(a: Any) -> tuple | None:
        check_8bit(op, a)
        return begin(op, *a)

    return run


def update(codes: Tensor, absmax: Tensor, values: Tensor, qmap: Tensor) -> None:
    """Encodes the updated fp32 ``values`` into ``codes`` and ``absmax`` in place."""
    c, am = quantize(values, qmap)
    codes.copy_(c)
    absmax.copy_(am)
