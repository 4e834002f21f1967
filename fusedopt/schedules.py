r"""Learning-rate schedules: linear warmup + cosine decay, on the host or on the device.

The post behind this project trains Transformers with *linear warmup then cosine decay*:

.. math::
    \eta_t = \begin{cases}
        \eta_{\max}\, t / W & t < W \\
        \eta_{\min} + (\eta_{\max} - \eta_{\min})\,\tfrac12\left(1 + \cos\left(\pi
            \frac{t - W}{T - W}\right)\right) & W \le t \le T \\
        \eta_{\min} & t > T
    \end{cases}

(with :math:`W = 0` this is the post's :math:`\eta_{\max}\frac12(1+\cos(\pi t/T))`). Step
decay, exponential decay, cyclical and one-cycle schedules exist in torch.optim.lr_scheduler
(StepLR, ExponentialLR, CyclicLR, OneCycleLR) and work with every fusedopt optimizer unchanged.

:class:`WarmupCosine` is a regular :class:`torch.optim.lr_scheduler.LRScheduler` (state_dict,
any optimizer). With ``device=True`` and Tensor learning rates (``lr=torch.tensor(...)``) it
keeps its step count in a tensor and writes each group's lr tensor with tensor ops on the lr's
device: no host-side lr value exists, so a captured (CUDA graph) or compiled training step that
includes ``scheduler.step()`` replays the schedule without recompiling or re-capturing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupCosine", "warmup_cosine"]


def warmup_cosine(
    step: float, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0
) -> float:
    """The schedule's lr at `step` (0-based), in float64: the formula of this module."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _warmup_cosine_tensor(
    step: Tensor, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float
) -> Tensor:
    """The same formula with tensor ops only (no host sync); `step` is a float64 tensor."""
    warm = step * (base_lr / max(1, warmup_steps))
    progress = ((step - warmup_steps) / max(1, total_steps - warmup_steps)).clamp(0.0, 1.0)
    cos = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + torch.cos(math.pi * progress))
    return torch.where(step < warmup_steps, warm, cos)


class WarmupCosine(LRScheduler):
    """Linear warmup for ``warmup_steps`` steps, then cosine decay to ``min_lr`` at
    ``total_steps`` (the formula in this module's docstring).

    Args:
        optimizer (Optimizer): wrapped optimizer (fusedopt or torch.optim).
        warmup_steps (int): steps of linear warmup from 0 to each group's initial lr.
        total_steps (int): the step at which the decay reaches ``min_lr``.
        min_lr (float): the final learning rate (default: 0).
        last_epoch (int): the index of the last step, for resuming (default: -1).
        device (bool): keep the count on the device and write Tensor lrs with tensor ops, no
            host sync (default: False). Needs every group's lr to be a Tensor.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        min_lr: float = 0.0,
        last_epoch: int = -1,
        device: bool = False,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"Invalid warmup_steps value: {warmup_steps}")
        if total_steps < warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps})"
            )
        if min_lr < 0:
            raise ValueError(f"Invalid min_lr value: {min_lr}")
        if device and not all(isinstance(g["lr"], Tensor) for g in optimizer.param_groups):
            raise ValueError(
                "WarmupCosine(device=True) needs Tensor learning rates "
                "(construct the optimizer with lr=torch.tensor(...))"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr = min_lr
        self.device = device
        self._count: Tensor | None = None
        self._bases: list[float] | None = None  # read once (a sync) on the first step
        if device:
            lr0 = optimizer.param_groups[0]["lr"]
            self._count = torch.full((), float(last_epoch), dtype=torch.float64, device=lr0.device)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [
            warmup_cosine(self.last_epoch, base, self.warmup_steps, self.total_steps, self.min_lr)
            for base in self.base_lrs
        ]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        if not self.device:
            super().step(epoch)
            return
        # Device mode: every value stays a tensor; last_epoch (a host int) is kept for
        # state_dict compatibility only.
        assert self._count is not None
        if self._bases is None:
            self._bases = [float(b) for b in self.base_lrs]
        self._count += 1
        self.last_epoch += 1
        for group, base in zip(self.optimizer.param_groups, self._bases):
            lr = group["lr"]
            lr.copy_(
                _warmup_cosine_tensor(
                    self._count.to(lr.device),
                    base,
                    self.warmup_steps,
                    self.total_steps,
                    self.min_lr,
                )
            )
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
