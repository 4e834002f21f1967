"""``fusedopt.amp.GradScaler``: torch.amp.GradScaler, with the inf check done by fusedopt.

torch's GradScaler hands fused optimizers the scale and a ``found_inf`` flag (grads are unscaled
inside the kernel), but finds that flag with its own pass over the grads first, one that reads
and writes every grad (``torch._amp_foreach_non_finite_check_and_unscale_`` with a scale of 1:
8 B per fp32 param). This subclass lets a fusedopt optimizer find it in the fp64 sum of squares
of its grads instead (one read, 4 B per fp32 param), the sum that ``max_grad_norm`` needs
anyway, so that clipping and the inf check share one read (Note [inf check in the norm pass] in
fusedopt/optim/_norms.py). Everything else (scale growth and backoff, ``unscale_``, state_dict,
torch.optim optimizers) is torch's GradScaler, unchanged::

    scaler = fusedopt.amp.GradScaler("cuda")
    scaler.scale(loss).backward()
    scaler.step(opt)  # opt = fusedopt.AdamW(..., max_grad_norm=1.0): grads read twice in all
    scaler.update()
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["GradScaler"]


class GradScaler(torch.amp.GradScaler):
    """A drop-in for :class:`torch.amp.GradScaler` (same arguments, API and state_dict).

    With a fusedopt optimizer, ``step()`` skips torch's check-and-unscale pass over the grads:
    the optimizer finds inf/NaN grads in its norm pass. With any other optimizer, or after an
    explicit ``unscale_(optimizer)``, it behaves exactly as torch's.
    """

    def _check_inf_per_device(self, optimizer: torch.optim.Optimizer) -> dict[Any, Any]:
        find = getattr(optimizer, "_amp_found_inf", None)
        if find is None:
            return super()._check_inf_per_device(optimizer)
        self._check_scale_growth_tracker("_check_inf_per_device")
        found = find()
        self._per_optimizer_states[id(optimizer)]["found_inf_per_device"] = found
        return found
