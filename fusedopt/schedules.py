r"""Learning-rate schedules: linear warmup + cosine decay, on the host or on the device.

The post behind this project trains Transformers with *linear warmup then cosine decay*:

.. math::
    \eta_t = \begin{cases}
        \eta_{\max}\, t / W & t < W \\
        \eta_{\min} + (\eta_{\max} - \eta_{\min})\,\tfrac12\left(1 + \cos\left(\pi
            \frac{t - W}{T - W}\right)\right) & W \le t \le T \\
        \eta_{\min} & t > T
    \end{cases}

(with :math:`W = 0` this is the post's :math:`\eta_{\max}\frac12(1+\cos(\pi t/T))`). The
other schedules the post mentions are here too, with the formulas (and, in host mode, the lr
sequences) of their torch.optim.lr_scheduler counterparts:

=====================  ==============================================  =====================
class                  lr at step t (0-based)                          torch counterpart
=====================  ==============================================  =====================
:class:`StepDecay`     :math:`\eta\,\gamma^{\lfloor t/s \rfloor}`           StepLR
:class:`ExpDecay`      :math:`\eta\,\gamma^t`                            ExponentialLR
:class:`Cyclical`      triangle between base_lr and max_lr (Smith 2017)   CyclicLR (lr only)
:class:`OneCycle`      warm up to max_lr, anneal to max_lr/(div*final)    OneCycleLR (lr only)
=====================  ==============================================  =====================

Note [device schedules]
Every schedule here is a regular :class:`torch.optim.lr_scheduler.LRScheduler` (state_dict, any
optimizer), computed in closed form from the step count in float64. With ``device=True`` and
Tensor learning rates (``lr=torch.tensor(...)``) the count lives in a tensor and each group's lr
tensor is written with tensor ops on its device: no host-side lr value exists, so a captured
(CUDA graph) or compiled training step that includes ``scheduler.step()`` replays the schedule
without recompiling or re-capturing. torch's schedulers compute the lr on the host: with a
Tensor lr they ``fill_`` it, which a captured graph would freeze.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["Cyclical", "ExpDecay", "OneCycle", "StepDecay", "WarmupCosine", "warmup_cosine"]


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


class _ClosedForm(LRScheduler):
    """Base of the schedules here: ``_host(t, base)`` (float64) and ``_tensor(t, base)`` (the same
    formula with tensor ops; ``t`` a float64 tensor) give the lr of a group whose initial lr is
    ``base`` at step ``t`` (Note [device schedules])."""

    def __init__(self, optimizer: Optimizer, last_epoch: int, device: bool) -> None:
        self._check_device(optimizer, device)
        self.device = device
        self._count: Tensor | None = None
        self._bases: list[float] | None = None  # read once (a sync) on the first step
        if device:
            lr0 = optimizer.param_groups[0]["lr"]
            self._count = torch.full((), float(last_epoch), dtype=torch.float64, device=lr0.device)
        super().__init__(optimizer, last_epoch)

    @classmethod
    def _check_device(cls, optimizer: Optimizer, device: bool) -> None:
        if device and not all(isinstance(g["lr"], Tensor) for g in optimizer.param_groups):
            raise ValueError(
                f"{cls.__name__}(device=True) needs Tensor learning rates "
                "(construct the optimizer with lr=torch.tensor(...))"
            )

    def _host(self, t: float, base: float) -> float:
        raise NotImplementedError

    def _tensor(self, t: Tensor, base: float) -> Tensor:
        raise NotImplementedError

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [self._host(self.last_epoch, base) for base in self.base_lrs]

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
            lr.copy_(self._tensor(self._count.to(lr.device), base))
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self._count is not None:
            self._count.fill_(float(self.last_epoch))


class WarmupCosine(_ClosedForm):
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
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch, device)

    def _host(self, t: float, base: float) -> float:
        return warmup_cosine(t, base, self.warmup_steps, self.total_steps, self.min_lr)

    def _tensor(self, t: Tensor, base: float) -> Tensor:
        return _warmup_cosine_tensor(t, base, self.warmup_steps, self.total_steps, self.min_lr)


class StepDecay(_ClosedForm):
    r"""Step decay: :math:`\eta_t = \eta\,\gamma^{\lfloor t / s \rfloor}` (torch's StepLR).

    Args:
        optimizer (Optimizer): wrapped optimizer.
        step_size (int): steps :math:`s` between decays.
        gamma (float): the decay factor (default: 0.1).
        last_epoch (int), device (bool): as :class:`WarmupCosine`.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        step_size: int,
        gamma: float = 0.1,
        last_epoch: int = -1,
        device: bool = False,
    ) -> None:
        if step_size < 1:
            raise ValueError(f"Invalid step_size value: {step_size}")
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch, device)

    def _host(self, t: float, base: float) -> float:
        return base * self.gamma ** (t // self.step_size)

    def _tensor(self, t: Tensor, base: float) -> Tensor:
        return base * torch.pow(self.gamma, torch.floor(t / self.step_size))


class ExpDecay(_ClosedForm):
    r"""Exponential decay: :math:`\eta_t = \eta\,\gamma^t` (torch's ExponentialLR).

    Args:
        optimizer (Optimizer): wrapped optimizer.
        gamma (float): the decay factor per step.
        last_epoch (int), device (bool): as :class:`WarmupCosine`.
    """

    def __init__(
        self, optimizer: Optimizer, gamma: float, last_epoch: int = -1, device: bool = False
    ) -> None:
        if not gamma > 0:
            raise ValueError(f"Invalid gamma value: {gamma}")
        self.gamma = gamma
        super().__init__(optimizer, last_epoch, device)

    def _host(self, t: float, base: float) -> float:
        return base * self.gamma**t

    def _tensor(self, t: Tensor, base: float) -> Tensor:
        return base * torch.pow(self.gamma, t)


class Cyclical(_ClosedForm):
    r"""Cyclical learning rates (Smith, 2017), torch's CyclicLR formula for the lr: a triangle
    rising from ``base_lr`` to ``max_lr`` over ``step_size_up`` steps and falling back over
    ``step_size_down`` (default: the same), its height scaled per ``mode``:
    ``"triangular"`` (1), ``"triangular2"`` (halved every cycle), ``"exp_range"``
    (:math:`\gamma^t`). ``base_lr`` and ``max_lr`` are the same for every group; the groups'
    own initial lrs are not used (as in CyclicLR). Momentum is not cycled.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        base_lr (float), max_lr (float): the bounds of the cycle.
        step_size_up (int), step_size_down (int, optional): steps of the two halves.
        mode (str): ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
        gamma (float): the factor of ``"exp_range"`` (default: 1).
        last_epoch (int), device (bool): as :class:`WarmupCosine`.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        base_lr: float,
        max_lr: float,
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        last_epoch: int = -1,
        device: bool = False,
    ) -> None:
        if mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError(f"mode is invalid and scale_fn is None: {mode}")
        if step_size_up < 1 or (step_size_down is not None and step_size_down < 1):
            raise ValueError("step_size_up and step_size_down must be >= 1")
        down = step_size_up if step_size_down is None else step_size_down
        self.base_lr, self.max_lr = float(base_lr), float(max_lr)
        self.total_size = float(step_size_up + down)
        self.step_ratio = step_size_up / self.total_size
        self.mode = mode
        self.gamma = gamma
        self._check_device(optimizer, device)  # before the groups' lrs change
        if last_epoch == -1:  # as CyclicLR: the groups start at base_lr
            for group in optimizer.param_groups:
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(self.base_lr)
                else:
                    group["lr"] = self.base_lr
        super().__init__(optimizer, last_epoch, device)

    def _host(self, t: float, base: float) -> float:
        cycle = math.floor(1 + t / self.total_size)
        x = 1.0 + t / self.total_size - cycle
        if x <= self.step_ratio:
            scale = x / self.step_ratio
        else:
            scale = (x - 1) / (self.step_ratio - 1)
        if self.mode == "triangular":
            height = 1.0
        elif self.mode == "triangular2":
            height = 1 / (2.0 ** (cycle - 1))
        else:
            height = self.gamma**t
        return self.base_lr + (self.max_lr - self.base_lr) * scale * height

    def _tensor(self, t: Tensor, base: float) -> Tensor:
        cycle = torch.floor(1 + t / self.total_size)
        x = 1.0 + t / self.total_size - cycle
        scale = torch.where(
            x <= self.step_ratio, x / self.step_ratio, (x - 1) / (self.step_ratio - 1)
        )
        if self.mode == "triangular":
            height = torch.ones_like(t)
        elif self.mode == "triangular2":
            height = 1 / torch.pow(2.0, cycle - 1)
        else:
            height = torch.pow(self.gamma, t)
        return self.base_lr + (self.max_lr - self.base_lr) * scale * height


class OneCycle(_ClosedForm):
    r"""The one-cycle policy (Smith & Topin, 2019), torch's OneCycleLR formula for the lr:
    from ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of
    ``total_steps``, then down to ``max_lr / (div_factor * final_div_factor)`` at the last step,
    with cosine (``anneal_strategy="cos"``) or linear annealing; ``three_phase`` as in torch.
    Momentum is not cycled.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        max_lr (float): the peak lr (every group).
        total_steps (int): the number of steps in the cycle.
        pct_start, anneal_strategy, div_factor, final_div_factor, three_phase: as OneCycleLR.
        last_epoch (int), device (bool): as :class:`WarmupCosine`.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float,
        total_steps: int,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
        device: bool = False,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self.total_steps = total_steps
        self.cos = anneal_strategy == "cos"
        initial = max_lr / div_factor
        low = initial / final_div_factor
        up = float(pct_start * total_steps) - 1
        if three_phase:
            self.phases = [
                (up, initial, max_lr),
                (float(2 * pct_start * total_steps) - 2, max_lr, initial),
                (total_steps - 1.0, initial, low),
            ]
        else:
            self.phases = [(up, initial, max_lr), (total_steps - 1.0, max_lr, low)]
        self._check_device(optimizer, device)  # before the groups' lrs change
        if last_epoch == -1:  # as OneCycleLR: the groups start at max_lr / div_factor
            for group in optimizer.param_groups:
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(initial)
                else:
                    group["lr"] = initial
        super().__init__(optimizer, last_epoch, device)

    def _anneal(self, start, end, pct):  # noqa: ANN001, ANN202
        if self.cos:
            cos = torch.cos(math.pi * pct) if isinstance(pct, Tensor) else math.cos(math.pi * pct)
            return end + (start - end) / 2.0 * (cos + 1)
        return (end - start) * pct + start

    def _host(self, t: float, base: float) -> float:
        if t > self.total_steps:
            raise ValueError(
                f"Tried to step {t} times. The specified number of total steps is "
                f"{self.total_steps}"
            )
        start_step = 0.0
        for i, (end_step, lo, hi) in enumerate(self.phases):
            if t <= end_step or i == len(self.phases) - 1:
                return self._anneal(lo, hi, (t - start_step) / (end_step - start_step))
            start_step = end_step
        raise AssertionError("unreachable")

    def _tensor(self, t: Tensor, base: float) -> Tensor:
        # Host mode (and torch) raise past total_steps; a device count cannot raise without a
        # sync, so the lr stays at its value for total_steps there.
        t = t.clamp(max=float(self.total_steps))
        # The phases from the last to the first, each taking over where t is in it.
        start_steps = [0.0] + [p[0] for p in self.phases[:-1]]
        out = None
        for (end_step, lo, hi), start_step in reversed(list(zip(self.phases, start_steps))):
            val = self._anneal(lo, hi, (t - start_step) / (end_step - start_step))
            out = val if out is None else torch.where(t <= end_step, val, out)
        assert out is not None
        return out
