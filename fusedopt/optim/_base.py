"""The machinery every fusedopt optimizer shares: per-group plans, state init, validation.

Note [step plans]
torch.optim walks every parameter in Python on every step (grad check, state lookup, list
appends): about 1-2 microseconds per parameter, which dominates for models with thousands of
small tensors. A fusedopt group instead keeps a *plan*: its params bucketed by (device, dtype),
with the state tensors of each bucket already in lists. Each step only reads the grads
(`p.grad`, which changes identity every backward) and reuses the plan while the set of params
that have a grad is unchanged. A plan is rebuilt when that set changes (a frozen param, a param
without a grad this step), and dropped on add_param_group, load_state_dict and unpickling.
State tensors replaced by hand (``opt.state[p]["exp_avg"] = t``) need ``opt.invalidate_plans()``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _get_scalar_dtype

from .. import _dispatch


class _Bucket:
    """The params of one group that share (device, dtype), with their state lists."""

    __slots__ = ("backend", "device", "fresh", "idx", "mesh_dims", "params", "states", "steps")

    def __init__(self, backend: str, device: torch.device) -> None:
        self.backend = backend
        self.device = device
        # DTensor params (Note [DTensor params]): (mesh, the mesh dims the params are sharded
        # over); params and states below are then the local shards. None for plain tensors.
        self.mesh_dims: tuple[Any, tuple[int, ...]] | None = None
        self.idx: list[int] = []  # positions in group["params"]
        self.params: list[Tensor] = []
        self.states: list[list[Tensor]] = []  # one list per state key
        self.steps: list[Tensor] = []
        self.fresh: list[bool] | None = None  # state created by this step (SGD's first step)


class _Plan:
    __slots__ = ("buckets", "dtensor", "missing", "n")

    def __init__(
        self, n: int, missing: list[int], buckets: list[_Bucket], dtensor: bool = False
    ) -> None:
        self.n = n
        self.missing = missing
        self.buckets = buckets
        self.dtensor = dtensor  # the grads are DTensors: the kernels get their local shards


def _dtensor_type() -> type | None:
    """DTensor, if torch.distributed.tensor was imported (else no param can be one)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None) if mod is not None else None


def _group_mesh(params: list[Tensor], where: str) -> Any:
    """Note [DTensor params]
    Under FSDP2 (``fully_shard``) and tensor parallelism, params are DTensors. A group's params
    must be all DTensors on one device mesh, or all plain tensors: the plan then holds the
    local shards (``_local_tensor``) of params, grads and state, and the fused kernels update
    those; state tensors are created with ``zeros_like(param)``, so they are DTensors sharded
    like their params and ``state_dict()`` / torch.distributed.checkpoint see DTensors, as with
    torch.optim. Anything needing a norm over all params (``max_grad_norm``) all-reduces its
    sum of squares over the mesh dims the params are sharded on. Returns the group's mesh, or
    None for plain tensors; raises ValueError for a mixed group, before anything changes.
    """
    dtensor = _dtensor_type()
    if dtensor is None:
        return None
    meshes = [p.device_mesh if isinstance(p, dtensor) else None for p in params]
    if all(m is None for m in meshes):
        return None
    if any(m is None for m in meshes):
        i = meshes.index(None)
        j = next(k for k, m in enumerate(meshes) if m is not None)
        raise ValueError(
            f"{where}: a param group mixes DTensor params (e.g. param {j}) with plain tensors "
            f"(e.g. param {i}); put the DTensors (FSDP2/tensor-parallel params) and the plain "
            "tensors in separate optimizers, or make all of them DTensors"
        )
    first = meshes[0]
    for k, m in enumerate(meshes):
        if m != first:
            raise ValueError(
                f"{where}: param group has DTensor params on different device meshes "
                f"(param 0 on {first}, param {k} on {m}); use one param group per mesh"
            )
    return first


def _local(t: Tensor) -> Tensor:
    return t._local_tensor  # type: ignore[attr-defined]


class FusedOptimizer(Optimizer):
    """Base class: a torch.optim.Optimizer whose step runs one fused kernel per bucket.

    Subclasses define the op name, the state keys, state initialisation and the launch.
    """

    _op: str = ""
    _sparse_error: str = ""
    _has_step: bool = True  # keeps a per-param 'step' counter in state
    # torch.amp.GradScaler hands us grad_scale/found_inf instead of unscaling the grads itself
    # (Note [found_inf and grad_scale] in csrc/cpu/common.h).
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        backend: str = "auto",
        max_grad_norm: float | None = None,
    ) -> None:
        _dispatch.require(backend)
        if max_grad_norm is not None and not max_grad_norm > 0.0:
            raise ValueError(f"Invalid max_grad_norm value: {max_grad_norm}")
        self.backend = backend
        self.max_grad_norm = max_grad_norm
        self._plans: dict[int, _Plan] = {}
        super().__init__(params, defaults)
        first = next((p for g in self.param_groups for p in g["params"]), None)
        device = first.device if first is not None else torch.device("cpu")
        #: 0-d bool tensor on the params' device: True when the last step was skipped because
        #: GradScaler found inf/NaN grads. Updated every step without a host sync.
        self.step_skipped = torch.zeros((), dtype=torch.bool, device=device)
        #: 0-d float32 tensor: the global grad norm (after unscaling) of the last step, when
        #: max_grad_norm is set; None otherwise.
        self.last_grad_norm: Tensor | None = None

    # -- plan bookkeeping ---------------------------------------------------------------------
    def invalidate_plans(self) -> None:
        """Forget the cached per-group plans (they are rebuilt on the next step)."""
        self._plans = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self.invalidate_plans()
        try:
            _group_mesh(self.param_groups[-1]["params"], f"fusedopt.{type(self).__name__}")
        except ValueError:
            self.param_groups.pop()
            raise
        # Resolve "auto" now, eagerly: probing what is available calls into the compiled
        # extension, which torch.compile can't trace if the first step is a compiled one.
        for device in {p.device for p in self.param_groups[-1]["params"]}:
            _dispatch.resolve(self.backend, device)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["backend"] = self.backend
        state["max_grad_norm"] = self.max_grad_norm
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("max_grad_norm", None)
        self.__dict__.setdefault("last_grad_norm", None)
        if "step_skipped" not in self.__dict__:
            self.step_skipped = torch.zeros((), dtype=torch.bool)
        self.invalidate_plans()
        self._setstate_groups()

    def _setstate_groups(self) -> None:
        """Defaults for group keys an older or foreign state dict lacks (subclasses extend)."""

    # -- subclass interface -------------------------------------------------------------------
    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        raise NotImplementedError

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _launch(
        self,
        fn: Callable[..., None],
        group: dict[str, Any],
        b: _Bucket,
        grads: list[Tensor],
        lr: Tensor,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
    ) -> None:
        raise NotImplementedError

    # -- the step -----------------------------------------------------------------------------
    def _zero_step(self, p: Tensor) -> Tensor:
        # torch keeps `step` on the CPU unless fused/capturable; fused kernels on a GPU want it
        # on the param's device, as torch's fused=True does.
        device = p.device if p.device.type != "cpu" else "cpu"
        return torch.zeros(
            (), dtype=_get_scalar_dtype(is_fused=p.device.type != "cpu"), device=device
        )

    #: LAMB's trust ratios need norms of whole params: it can't run on sharded DTensors.
    _needs_whole_params: bool = False

    def _build_plan(
        self, group: dict[str, Any], grads: list[Tensor | None], missing: list[int]
    ) -> _Plan:
        mesh = _group_mesh(group["params"], f"fusedopt.{type(self).__name__}")
        keys = self._state_keys(group)
        stateless = not keys and not self._has_step  # e.g. SGD without momentum keeps no state
        buckets: dict[tuple[Any, ...], _Bucket] = {}
        for i, p in enumerate(group["params"]):
            g = grads[i]
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(self._sparse_error)
            if torch.is_complex(p):
                raise RuntimeError(
                    f"fusedopt.{type(self).__name__} does not support complex "
                    "parameters (view them as real with torch.view_as_real)"
                )
            key: tuple[Any, ...] = (p.device, p.dtype)
            shard_dims: tuple[int, ...] = ()
            if mesh is not None:
                shard_dims = tuple(d for d, pl in enumerate(p.placements) if not pl.is_replicate())
                if shard_dims and self._needs_whole_params:
                    raise NotImplementedError(
                        f"fusedopt.{type(self).__name__} does not support sharded DTensor params "
                        f"(param {i} has placements {p.placements}): its per-tensor trust "
                        "ratios need norms over whole params, which are not reduced across "
                        "ranks yet; use it without FSDP2 sharding"
                    )
                key = (*key, shard_dims)
                if getattr(g, "placements", None) != p.placements:
                    raise RuntimeError(
                        f"fusedopt.{type(self).__name__}: the grad of DTensor param {i} has "
                        f"placements {getattr(g, 'placements', 'none (a plain tensor)')}, but "
                        f"the param has {p.placements}; fusedopt steps local shards and needs "
                        "them to match (FSDP2 reduce-scatters grads to the params' placements)"
                    )
            b = buckets.get(key)
            if b is None:
                b = buckets[key] = _Bucket(_dispatch.resolve(self.backend, p.device), p.device)
                b.states = [[] for _ in keys]
                if mesh is not None:
                    b.mesh_dims = (mesh, shard_dims)
            b.idx.append(i)
            b.params.append(p if mesh is None else _local(p))
            if stateless:
                continue
            state = self.state[p]
            fresh = any(state.get(k) is None for k in keys)
            if self._has_step and "step" not in state:
                state["step"] = self._zero_step(p)
            if fresh:
                self._init_state(p, state, group)  # creates the missing state tensors
            for lst, k in zip(b.states, keys):
                t = state[k]
                if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
                    raise RuntimeError(
                        f"fusedopt.{type(self).__name__}: state {k!r} of parameter {i} has "
                        f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}, but the "
                        f"parameter has shape {tuple(p.shape)}, dtype {p.dtype}, device {p.device}"
                    )
                if mesh is not None and getattr(t, "placements", None) != p.placements:
                    raise RuntimeError(
                        f"fusedopt.{type(self).__name__}: state {k!r} of DTensor parameter {i} "
                        f"is not a DTensor sharded like it (placements {p.placements}); load "
                        "sharded optimizer state with torch.distributed.checkpoint or "
                        "torch.distributed.checkpoint.state_dict.set_optimizer_state_dict"
                    )
                lst.append(t if mesh is None else _local(t))
            if self._has_step:
                step = state["step"]
                if not torch.is_tensor(step):  # an old checkpoint's float step
                    step = state["step"] = torch.tensor(float(step), dtype=_get_scalar_dtype())
                b.steps.append(step)
            if fresh and b.fresh is None:
                b.fresh = [False] * (len(b.params) - 1)
            if b.fresh is not None:
                b.fresh.append(fresh)
        return _Plan(len(group["params"]), missing, list(buckets.values()), mesh is not None)

    def _plan_work(self) -> list[tuple[dict[str, Any], _Bucket, list[Tensor]]]:
        """(group, bucket, the bucket's grads) for every bucket with grads, plans reused or built.

        Every group is planned (and so validated) before any group is updated: a step that
        raises changes nothing.
        """
        work = []
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            grads = [p.grad for p in params]
            missing = [i for i, g in enumerate(grads) if g is None]
            plan = self._plans.get(gi)
            if plan is None or plan.n != len(params) or plan.missing != missing:
                plan = self._plans[gi] = self._build_plan(group, grads, missing)
            if plan.dtensor:
                grads = [None if g is None else _local(g) for g in grads]
            for b in plan.buckets:
                bgrads = (
                    grads if not missing and len(plan.buckets) == 1 else [grads[i] for i in b.idx]
                )
                work.append((group, b, bgrads))
        return work

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        # What the wrapper an LRScheduler would install records (see _lr_sched_marker).
        self._opt_called = True
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        work = self._plan_work()
        if found_inf is None:
            self.step_skipped.fill_(False)
        else:
            self.step_skipped.copy_(found_inf.to(self.step_skipped.device, non_blocking=True) != 0)
        if self.max_grad_norm is not None and work:
            grad_scale = self._clip(work, grad_scale)
        for group, b, bgrads in work:
            lr = group["lr"]
            if not isinstance(lr, Tensor):
                lr = torch.tensor(lr, dtype=torch.float64)
            fn = _dispatch.kernel(b.backend, self._op)
            gs = grad_scale
            if gs is not None and gs.device != b.device:
                gs = gs.to(b.device, non_blocking=True)
            fi = found_inf
            if b.device.type != "cpu":
                # GPU kernels read device scalars on the params' GPU (Note [scalars on the
                # device] in csrc/cuda/kernel_table.h); a model spread over GPUs has buckets
                # on other devices than GradScaler's found_inf or a device lr.
                if fi is not None and fi.device != b.device:
                    fi = fi.to(b.device, non_blocking=True)
                if lr.device.type != "cpu" and lr.device != b.device:
                    lr = lr.to(b.device, non_blocking=True)
            try:
                self._launch(fn, group, b, bgrads, lr, gs, fi)
            except RuntimeError:
                if any(g.is_sparse for g in bgrads):
                    raise RuntimeError(self._sparse_error) from None
                raise
            b.fresh = None
        return loss

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _lr_sched_marker(cls)

    def _clip(self, work: list, grad_scale: Tensor | None) -> Tensor:
        """Note [clipping inside the step]
        The global L2 norm of all grads (fp64 sums of squares from one multi-tensor reduction
        per bucket, no host sync), unscaled by the AMP scale, gives the factor
        min(1, max_grad_norm / (norm + 1e-6)) that torch.nn.utils.clip_grad_norm_ would apply.
        Instead of a pass that rewrites every grad, the factor rides into the update kernels
        through their grad_scale argument: the kernels multiply each grad by 1/grad_scale, and
        1/(scale/coef) in fp64 rounds to exactly the fp32 coef. Non-finite norms behave as in
        clip_grad_norm_(error_if_nonfinite=False): an inf norm gives a zero factor, a NaN norm NaN.
        """
        total: Tensor | None = None
        sharded: dict[tuple[Any, tuple[int, ...]], Tensor] = {}
        for _, b, bgrads in work:
            sq = _dispatch.kernel(b.backend, "sum_sq")(bgrads)
            if b.mesh_dims is not None and b.mesh_dims[1]:
                # A shard's sum of squares: summed over the ranks holding the other shards.
                prev = sharded.get(b.mesh_dims)
                sharded[b.mesh_dims] = sq if prev is None else prev + sq.to(prev.device)
                continue
            total = sq if total is None else total + sq.to(total.device)
        for (mesh, dims), sq in sharded.items():
            for d in dims:
                torch.distributed.all_reduce(sq, group=mesh.get_group(d))
            total = sq if total is None else total + sq.to(total.device)
        assert total is not None
        norm = total.sqrt()
        if grad_scale is not None:
            norm = norm / grad_scale.to(norm.device, torch.float64)
        norm = norm.float()
        self.last_grad_norm = norm
        coef = torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0)
        eff = coef.double().reciprocal()
        if grad_scale is not None:
            eff = eff * grad_scale.to(eff.device, torch.float64)
        return eff

    # -- checkpoints --------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load torch.optim's state_dict layout (from fusedopt or torch.optim).

        Before anything changes, every state tensor is checked against its parameter's shape:
        a mismatch raises ValueError (torch's fused kernels would read out of bounds).
        """
        self._check_state_shapes(state_dict)
        super().load_state_dict(state_dict)
        self.invalidate_plans()
        # torch keeps a non-fused 'step' on the CPU; our kernels want it where _zero_step puts it
        # (a checkpoint loaded with map_location="cpu" must still work on the GPU).
        for p, pstate in self.state.items():
            step = pstate.get("step") if isinstance(pstate, dict) else None
            if torch.is_tensor(step):
                want = self._zero_step(p)
                if step.device != want.device or step.dtype != want.dtype:
                    pstate["step"] = step.to(device=want.device, dtype=want.dtype)

    def _check_state_shapes(self, state_dict: dict[str, Any]) -> None:
        saved_groups = state_dict.get("param_groups", [])
        groups = self.param_groups
        if len(saved_groups) != len(groups):
            return  # torch's own check raises its ValueError
        id_to_param: dict[Any, Tensor] = {}
        for g, sg in zip(groups, saved_groups):
            if len(g["params"]) != len(sg["params"]):
                return
            id_to_param.update(zip(sg["params"], g["params"]))
        for pid, pstate in state_dict.get("state", {}).items():
            p = id_to_param.get(pid)
            if p is None or not isinstance(pstate, dict):
                continue
            for key, value in pstate.items():
                if not torch.is_tensor(value):
                    continue
                if key == "step":
                    if value.numel() != 1:
                        raise ValueError(
                            f"loaded state for parameter {pid}: 'step' must have "
                            f"one element, got shape {tuple(value.shape)}"
                        )
                elif value.shape != p.shape:
                    raise ValueError(
                        f"loaded state for parameter {pid}: {key!r} has shape "
                        f"{tuple(value.shape)}, but the parameter has shape {tuple(p.shape)}"
                    )


def _lr_sched_marker(cls: type) -> None:
    """Note [schedulers and torch.compile]
    An LRScheduler replaces ``optimizer.step`` by a wrapper defined in torch/optim/lr_scheduler.py
    that sets ``optimizer._opt_called``; dynamo never traces that file, so with a scheduler
    attached ``torch.compile(fn, fullgraph=True)`` of a function calling ``opt.step()`` would
    fail. Our ``step`` sets ``_opt_called`` itself and carries the attribute the scheduler checks
    to see that a step is already wrapped, so the scheduler leaves it alone.
    """
    step = cls.__dict__.get("step")
    if step is not None:
        step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]


_lr_sched_marker(FusedOptimizer)
