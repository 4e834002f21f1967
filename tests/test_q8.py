"""8-bit blockwise optimizer states (Note [8-bit states] in fusedopt/reference/quant.py): the
maps against bitsandbytes', the rounding rule, the reference, the CPU kernel and the optimizers'
option, checkpoints and accounting."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fusedopt.reference import quant

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
