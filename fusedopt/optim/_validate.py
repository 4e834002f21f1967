"""Constructor checks with torch.optim's exception types and messages."""

from __future__ import annotations

from torch import Tensor


def check_lr(lr: float | Tensor) -> None:
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_fused_flags(foreach: bool | None, differentiable: bool, fused: bool | None) -> None:
    """fusedopt is always fused; the flags are accepted so torch.optim call sites work as is."""
    if differentiable:
        raise RuntimeError("`fused` does not support `differentiable`")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def check_betas(betas: tuple[float | Tensor, float | Tensor]) -> tuple[float, float]:
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    if not (
        (isinstance(betas[0], float) and isinstance(betas[1], float))
        or (isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor))
    ):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, b in enumerate(betas):
        if isinstance(b, Tensor) and b.numel() != 1:
            raise ValueError(f"Tensor betas[{i}] must be 1-element")
    return (float(betas[0]), float(betas[1]))


def check_args(
    lr: float | Tensor,
    betas: tuple[float | Tensor, float | Tensor],
    eps: float | None = None,
    weight_decay: float = 0.0,
) -> tuple[float, float]:
    """lr, eps (if the optimizer has one), betas and weight_decay, in torch.optim's order;
    returns the betas as floats."""
    check_lr(lr)
    if eps is not None and not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    out = check_betas(betas)
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    return out
