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
