"""Norms and AMP inside the step: global-norm clipping, GradScaler's scale and inf flag."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import _dispatch
from . import _dtensor
from ._plan import Bucket


class NormsAndAmp:
    """The FusedOptimizer part that reads the grads' norm and GradScaler's flags."""

    max_grad_norm: float | None
    fused_amp: bool
    step_skipped: Tensor
    _by_step: dict[str, Any]

    @property
    def last_grad_norm(self) -> Tensor | None:
        """0-d float32 tensor: the global grad norm (after unscaling) of the last step, when
        max_grad_norm is set; None otherwise."""
        return self._by_step["last_grad_norm"]

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Note [fused AMP]
        The flag torch.amp.GradScaler reads: when set, it hands the step its scale and inf flag
        (``grad_scale``, ``found_inf``) instead of unscaling the grads itself, and calls
        ``step()`` on every step (the kernel turns an inf step into a no-op, Note [found_inf
        and grad_scale] in csrc/common/common.h). Frameworks written for torch.optim's default
        optimizers read it too: Lightning refuses gradient clipping under mixed precision for
        any optimizer with it, and accelerate (so the HF Trainer, for its lr schedule) takes a
        ``step()`` call as a step that was not skipped. ``fused_amp=False`` clears it, so that
        GradScaler unscales and skips exactly as for torch.optim.AdamW.
        """
        return self.fused_amp

    def _amp_found_inf(self) -> dict[torch.device, Tensor]:
        """Note [inf check in the norm pass]
        For fusedopt.amp.GradScaler: GradScaler finds inf/NaN grads with a pass that reads and
        writes every grad (it multiplies them by 1, 8 B per fp32 param) before the step.
        Instead, this takes the fp64 sum of squares of all grads (one read, 4 B per fp32
        param; all-reduced over shards), which is non-finite exactly when a grad is (the
        squares of finite fp32/fp16/bf16 values cannot overflow fp64), and keeps it for the
        step's max_grad_norm, which then needs no pass of its own. Returns GradScaler's
        {device: found_inf} (float32, 1 where a grad is inf or NaN).
        """
        work = self._plan_work()  # type: ignore[attr-defined]
        if not work:
            device = self.step_skipped.device
            return {device: torch.zeros((), dtype=torch.float32, device=device)}
        total = self._grad_sum_sq(work)
        self._by_step["amp_work"] = (work, total)
        return {total.device: (~torch.isfinite(total)).to(torch.float32)}

    def _amp_scale(self, work: list, total: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """(grad_scale, found_inf) for the kernels: GradScaler's (Note [fused AMP]), the
        clipping factor folded into the scale (Note [clipping inside the step]); records
        ``step_skipped``. ``total``: the grads' sum of squares if the inf check took it."""
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None:
            self.step_skipped.fill_(False)
        else:
            self.step_skipped.copy_(found_inf.to(self.step_skipped.device, non_blocking=True) != 0)
        if self.max_grad_norm is not None and work:
            grad_scale = self._clip(work, grad_scale, total)
        return grad_scale, found_inf

    @staticmethod
    def _on_device(b: Bucket, lr: Tensor, *amp: Tensor | None) -> tuple[Any, ...]:
        """lr, grad_scale and found_inf where the bucket's kernel reads them. GPU kernels read
        device scalars on the params' GPU (Note [scalars on the device] in
        csrc/cuda/kernel_table.h); a model spread over GPUs has buckets on other devices than
        GradScaler's found_inf or a device lr."""
        gs, fi = amp
        if gs is not None and gs.device != b.device:
            gs = gs.to(b.device, non_blocking=True)
        if b.device.type != "cpu":
            if fi is not None and fi.device != b.device:
                fi = fi.to(b.device, non_blocking=True)
            if lr.device.type != "cpu" and lr.device != b.device:
                lr = lr.to(b.device, non_blocking=True)
        return lr, gs, fi

    def _grad_sum_sq(self, work: list) -> Tensor:
        """The fp64 sum of squares of every grad of ``work`` (all-reduced over the ranks
        holding other shards of sharded params), without a host sync."""
        total: Tensor | None = None
        sharded: dict[_dtensor.MeshDims, Tensor] = {}
        for _, b, bgrads in work:
            sq = _dispatch.kernel(b.backend, "sum_sq")(bgrads)
            if b.sharded:
                prev = sharded.get(b.mesh_dims)
                sharded[b.mesh_dims] = sq if prev is None else prev + sq.to(prev.device)
                continue
            total = sq if total is None else total + sq.to(total.device)
        for mesh_dims, sq in sharded.items():
            _dtensor.all_reduce(sq, mesh_dims)
            total = sq if total is None else total + sq.to(total.device)
        assert total is not None
        return total

    def _clip(self, work: list, grad_scale: Tensor | None, total: Tensor | None = None) -> Tensor:
        """Note [clipping inside the step]
        The global L2 norm of all grads (fp64 sums of squares from one multi-tensor reduction
        per bucket, no host sync), unscaled by the AMP scale, gives the factor
        min(1, max_grad_norm / (norm + 1e-6)) that torch.nn.utils.clip_grad_norm_ would apply.
        Instead of a pass that rewrites every grad, the factor rides into the update kernels
        through their grad_scale argument: the kernels multiply each grad by 1/grad_scale, and
        1/(scale/coef) in fp64 rounds to exactly the fp32 coef. Non-finite norms behave as in
        clip_grad_norm_(error_if_nonfinite=False): an inf norm gives a zero factor, a NaN norm NaN.
        """
        if total is None:
            total = self._grad_sum_sq(work)
        norm = total.sqrt()
        if grad_scale is not None:
            norm = norm / grad_scale.to(norm.device, torch.float64)
        norm = norm.float()
        self._by_step["last_grad_norm"] = norm
        coef = torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0)
        eff = coef.double().reciprocal()
        if grad_scale is not None:
            eff = eff * grad_scale.to(eff.device, torch.float64)
        return eff
