"""Every SIMD level of the CPU kernels gives the same bits (Note [SIMD by target attribute]).

The AVX-512 level rounds bf16 params and states with vcvtne2ps2bf16 where the CPU has
AVX512-BF16 (Note [bf16 chunks] in csrc/cpu/bf16_simd.h); that instruction differs from
c10::BFloat16 on denormals and NaNs, which the chunked loop must route to c10's rounding. The
inputs here hold both (denormal moments from tiny grads, NaNs of either sign from inf and NaN
grads), odd lengths (a tail after the 32-element chunks) and starts that are not 64-byte aligned.
"""

from __future__ import annotations

import pytest
import torch

import fusedopt
from helpers import cpu_levels

pytestmark = pytest.mark.skipif(not fusedopt.backends()["cpu"].available, reason="no CPU ops")

CONFIGS = {
    "adamw": (fusedopt.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    "adam-amsgrad-maximize": (
        fusedopt.Adam,
        {"lr": 1e-2, "amsgrad": True, "maximize": True},
    ),
    "adamw-beta1-0.6": (fusedopt.AdamW, {"lr": 1e-3, "betas": (0.4, 0.999)}),  # lerp's other form
}


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, offset in ((1000, 0), (77, 3), (64, 1), (31, 0), (4099, 5)):
        base = torch.randn(n + offset, generator=g).to(torch.bfloat16)
        p = base[offset:]  # a view: offset elements into its storage
        grad = torch.randn(n, generator=g) * 10.0 ** torch.randint(-25, 2, (n,), generator=g)
        grad[::97] = float("inf")
        grad[5::101] = float("-inf")
        grad[7::211] = float("nan")
        grad[11::53] = 1e-19  # (1 - beta2) * grad^2 is denormal: so is exp_avg_sq
        p.grad = grad.to(torch.bfloat16)
        out.append(p)
    return out


def _run(cls, kwargs, level: str, state_dtype) -> list[torch.Tensor]:  # noqa: ANN001
    from fusedopt._ext import _C

    saved = _C.cpu_capability()
    _C.set_cpu_capability(level)
    try:
        ps = _params(0)
        opt = cls(ps, backend="cpu", state_dtype=state_dtype, **kwargs)
        for _ in range(3):
            opt.step()
        out = [p.detach().clone() for p in ps]
        for p in ps:
            out += [
                t.clone() for k, t in opt.state[p].items() if torch.is_tensor(t) and k != "step"
            ]
        return out
    finally:
        _C.set_cpu_capability(saved)


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_bf16_params_same_bits_at_every_level(name, state_dtype):  # noqa: ANN001
    levels = cpu_levels()
    if len(levels) < 2:
        pytest.skip("this CPU has one SIMD level")
    cls, kwargs = CONFIGS[name]
    want = _run(cls, kwargs, "default", state_dtype)
    # The inputs reach both rounding cases that differ (Note [bf16 chunks]).
    assert sum(int(t.isnan().sum()) for t in want) > 0
    assert sum(int(((t.float().abs() < 1.1754944e-38) & (t != 0)).sum()) for t in want) > 0
    for level in levels[1:]:
        got = _run(cls, kwargs, level, state_dtype)
        for i, (a, b) in enumerate(zip(want, got)):
            bits = torch.int16 if a.dtype == torch.bfloat16 else torch.int32
            bad = (a.view(bits) != b.view(bits)).nonzero()
            assert bad.numel() == 0, (
                f"{level} differs from default in tensor {i} at {bad[:5].flatten().tolist()}: "
                f"{a[bad[:5].flatten()].tolist()} vs {b[bad[:5].flatten()].tolist()}"
            )
