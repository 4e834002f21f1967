from __future__ import annotations

import torch
from torch import Tensor


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: fp32 for half-precision storage, else the storage dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def skip_step(found_inf: Tensor | None) -> bool:
    """GradScaler found inf/NaN in the grads: the step must change nothing."""
    return found_inf is not None and bool(found_inf.item() != 0)


def inv_scale(grad_scale: Tensor | None) -> float:
    return 1.0 if grad_scale is None else 1.0 / float(grad_scale.item())


def scalar(x: float | Tensor) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def sum_sq(tensors: list[Tensor]) -> Tensor:
    """Sum of squares of every element of every tensor, accumulated in fp64."""
    total = torch.zeros((), dtype=torch.float64, device=tensors[0].device if tensors else "cpu")
    for t in tensors:
        total += t.double().square().sum().to(total.device)
    return total


def check_like_params(op: str, params: list[Tensor], **lists: list[Tensor]) -> None:
    """Each list has one tensor per param, of its shape, as the compiled ops require.

    Checked before anything is written, so that a bad call changes nothing (broadcasting would
    otherwise let some mismatches through silently).
    """
    for name, tensors in lists.items():
        if len(tensors) != len(params):
            raise RuntimeError(
                f"{op}: expected {name} to have {len(params)} tensors (one per param), "
                f"got {len(tensors)}"
            )
        for i, (p, t) in enumerate(zip(params, tensors)):
            if t.shape != p.shape:
                raise RuntimeError(
                    f"{op}: {name}[{i}] has shape {tuple(t.shape)} but its param has shape "
                    f"{tuple(p.shape)}"
                )
