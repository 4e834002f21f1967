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

    __slots__ = (
        "backend",
        "cplan",
        "device",
        "fresh",
        "idx",
        "masters",
        "mesh_dims",
        "params",
        "seeds",
        "states",
        "steps",
    )

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
        # Note [mixed-precision options]: fp32 master copies (master_weights) or stochastic
        # rounding seeds (stochastic_rounding), one per param; None when the mode is off.
        self.masters: list[Tensor] | None = None
        self.seeds: list[Tensor] | None = None
        self.cplan: Any = None  # the C++ StepPlan (Note [C++ step plans] in csrc/plan.cpp)

    def select(self, idx: list[int]) -> tuple[list[Tensor] | None, list[Tensor] | None]:
        """(masters, seeds) of the bucket's params ``idx``."""
        masters = None if self.masters is None else [self.masters[i] for i in idx]
        seeds = None if self.seeds is None else [self.seeds[i] for i in idx]
        return masters, seeds


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


_HALF = (torch.float16, torch.bfloat16)


def _check_mixed_options(
    master_weights: bool, stochastic_rounding: bool, sd: torch.dtype | None, where: str
) -> None:
    """The mixed-precision options (Note [mixed-precision options])."""
    if sd is not None and sd not in (torch.float32, torch.bfloat16):
        raise ValueError(
            f"{where}: Invalid state_dtype: {sd} (supported: None for the params' dtype, "
            "torch.float32, torch.bfloat16)"
        )
    if master_weights and stochastic_rounding:
        raise ValueError(
            f"{where}: master_weights and stochastic_rounding are exclusive: stochastic "
            "rounding replaces the fp32 master copy"
        )


def _new_seed(p: Tensor, mesh: Any) -> Tensor:
    """A stochastic-rounding seed for p (Note [mixed-precision options]), drawn from torch's
    default generator, so torch.manual_seed makes a run reproducible. Every rank holding a
    replica of a param must round it the same way: for DTensor params the seed is broadcast over
    the mesh (all shards and replicas share it); for plain params under DDP, seed torch
    identically on every rank (as DDP's identical initialisation usually does already)."""
    device = p.device if mesh is None else _local(p).device
    seed = torch.randint(0, 2**62, (), dtype=torch.int64).to(device)
    if mesh is not None:
        for d in range(mesh.ndim):
            group = mesh.get_group(d)
            torch.distributed.broadcast(
                seed, src=torch.distributed.get_global_rank(group, 0), group=group
            )
    return seed


def _sync_masters(params: list[Tensor], masters: list[Tensor]) -> None:
    """Note [stale master weights]
    The fp32 master is the param's value only while nothing else writes the param: a model
    checkpoint loaded into the params, ``p.data`` edits, or an optimizer checkpoint that went
    through torch.optim (which keeps our ``master_param`` but never updates it) leave masters
    that no longer round to their params. Whenever a plan is built (the first step, and after
    ``load_state_dict``, ``add_param_group`` or ``invalidate_plans()``), every element whose
    master does not round to the param takes the param's value, so the param wins; elements
    that do round to it keep the master's extra bits. One elementwise pass, no host sync. Params
    written by hand between steps need ``opt.invalidate_plans()`` (as do replaced state tensors),
    else the next step continues from the masters.
    """
    for p, m in zip(params, masters):
        m.copy_(torch.where(m.to(p.dtype) == p, m, p.to(m.dtype)))


def _local(t: Tensor) -> Tensor:
    return t._local_tensor  # type: ignore[attr-defined]


class FusedOptimizer(Optimizer):
    """Base class: a torch.optim.Optimizer whose step runs one fused kernel per bucket.

    Subclasses define the op name, the state keys, state initialisation and the launch.
    """

    _op: str = ""
    _sparse_error: str = ""
    _has_step: bool = True  # keeps a per-param 'step' counter in state

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        backend: str = "auto",
        max_grad_norm: float | None = None,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        fused_amp: bool = True,
    ) -> None:
        _dispatch.require(backend)
        if max_grad_norm is not None and not max_grad_norm > 0.0:
            raise ValueError(f"Invalid max_grad_norm value: {max_grad_norm}")
        _check_mixed_options(
            master_weights, stochastic_rounding, state_dtype, f"fusedopt.{type(self).__name__}"
        )
        # Optimizer-wide, like backend and max_grad_norm, so that param_groups keep
        # torch.optim's keys (Note [mixed-precision options]).
        self.master_weights = master_weights
        self.stochastic_rounding = stochastic_rounding
        self.state_dtype = state_dtype
        self.fused_amp = bool(fused_amp)
        self.backend = backend
        self.max_grad_norm = max_grad_norm
        self._plans: dict[int, _Plan] = {}
        super().__init__(params, defaults)
        first = next((p for g in self.param_groups for p in g["params"]), None)
        device = first.device if first is not None else torch.device("cpu")
        #: 0-d bool tensor on the params' device: True when the last step was skipped because
        #: GradScaler found inf/NaN grads. Updated every step without a host sync.
        self.step_skipped = torch.zeros((), dtype=torch.bool, device=device)
        self._by_step: dict[str, Any] = _by_step_init()

    @property
    def last_grad_norm(self) -> Tensor | None:
        """0-d float32 tensor: the global grad norm (after unscaling) of the last step, when
        max_grad_norm is set; None otherwise."""
        return self._by_step["last_grad_norm"]

    @property
    def _opt_called(self) -> bool:
        """Read by torch's LRScheduler (Note [schedulers and torch.compile])."""
        return self._by_step["opt_called"]

    @_opt_called.setter
    def _opt_called(self, value: bool) -> None:
        self._by_step["opt_called"] = value

    @property
    def _step_supports_amp_scaling(self) -> bool:  # type: ignore[override]
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
        state["master_weights"] = self.master_weights
        state["stochastic_rounding"] = self.stochastic_rounding
        state["state_dtype"] = self.state_dtype
        state["fused_amp"] = self.fused_amp
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("max_grad_norm", None)
        self.__dict__.setdefault("master_weights", False)
        self.__dict__.setdefault("stochastic_rounding", False)
        self.__dict__.setdefault("state_dtype", None)
        self.__dict__.setdefault("fused_amp", True)
        self.__dict__.setdefault("_by_step", _by_step_init())
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
    ) -> bool | None:
        """Runs the bucket's kernel. Returns True to keep ``b.fresh`` for the next step (SGD,
        Note [skipped first SGD step])."""
        raise NotImplementedError

    def _call(
        self,
        fn: Callable[..., None],
        b: _Bucket,
        lists: list[list[Tensor]],
        grads: list[Tensor],
        scalars: tuple[Any, ...],
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
    ) -> None:
        """Runs ``fn(params, grads, *other lists, *scalars, grad_scale, found_inf, masters,
        seeds)``: through the bucket's C++ StepPlan in eager mode on the compiled backends
        (Note [C++ step plans] in csrc/plan.cpp: only the grads cross from Python), else ``fn``
        itself (torch.compile traces the op; the Triton and reference backends are Python)."""
        plan = self._step_plan(b, lists)
        if plan is not None:
            plan.call(grads, *scalars, grad_scale, found_inf)
            return
        fn(lists[0], grads, *lists[1:], *scalars, grad_scale, found_inf, b.masters, b.seeds)

    def _step_plan(self, b: _Bucket, lists: list[list[Tensor]]) -> Any:
        """The bucket's C++ StepPlan over ``lists`` (the op's lists but the grads and the
        mixed-precision lists, which the bucket adds), or None."""
        if b.backend not in ("cpu", "cuda") or torch.compiler.is_compiling():
            return None
        if b.cplan is None:
            b.cplan = _dispatch.step_plan(self._op, [*lists, b.masters, b.seeds])
        return b.cplan

    # -- the step -----------------------------------------------------------------------------
    def _zero_step(self, p: Tensor) -> Tensor:
        # torch keeps `step` on the CPU unless fused/capturable; fused kernels on a GPU want it
        # on the param's device, as torch's fused=True does. A meta param has no values to
        # count with (its updates only propagate shapes): its step stays on the CPU, as in
        # torch's for-loop.
        device = p.device if p.device.type not in ("cpu", "meta") else "cpu"
        return torch.zeros(
            (), dtype=_get_scalar_dtype(is_fused=p.device.type != "cpu"), device=device
        )

    def _state_dtype(self, group: dict[str, Any], p: Tensor) -> torch.dtype:
        """Note [mixed-precision options]
        The options ``master_weights``, ``stochastic_rounding`` and ``state_dtype`` are
        optimizer-wide attributes (not param-group keys, so that ``state_dict()["param_groups"]``
        stays torch.optim's). They add state keys only when on: ``master_param`` (fp32 copy of
        a float16/bfloat16 param) and ``sr_seed`` (int64, advanced by every step).

        The dtype of p's state tensors: ``state_dtype`` if set; float32 for float16/bfloat16
        params with ``master_weights`` or ``stochastic_rounding``; else the param's own dtype
        (as torch.optim). float64 params keep float64 state; float32 params with neither option
        need no master (they are their own).
        """
        if p.dtype == torch.float64:
            return p.dtype
        if self.state_dtype is not None:
            return self.state_dtype
        if p.dtype in _HALF and (self.master_weights or self.stochastic_rounding):
            return torch.float32
        return p.dtype

    def _zeros_state(self, p: Tensor, group: dict[str, Any], empty: bool = False) -> Tensor:
        """A new state tensor for p: its shape, strides, device (and placements, for a
        DTensor), in the group's state dtype."""
        make = torch.empty_like if empty else torch.zeros_like
        return make(p, dtype=self._state_dtype(group, p), memory_format=torch.preserve_format)

    def _build_plan(
        self, group: dict[str, Any], grads: list[Tensor | None], missing: list[int]
    ) -> _Plan:
        mesh = _group_mesh(group["params"], f"fusedopt.{type(self).__name__}")
        keys = self._state_keys(group)
        stateless = not keys and not self._has_step  # e.g. SGD without momentum keeps no state
        buckets: dict[tuple[Any, ...], _Bucket] = {}
        # A param listed twice in a group (torch warns, and steps it twice): its second entry
        # goes to a bucket launched after the first, as one kernel updating the same memory
        # twice would race (and count its step once); it starts as fresh as the first did.
        repeats: dict[int, tuple[int, bool]] = {}
        for i, p in enumerate(group["params"]):
            g = grads[i]
            if g is None:
                continue
            repeat, first_fresh = repeats.get(id(p), (0, False))
            repeats[id(p)] = (repeat + 1, first_fresh)
            if g.is_sparse:
                raise RuntimeError(self._sparse_error)
            if torch.is_complex(p):
                raise RuntimeError(
                    f"fusedopt.{type(self).__name__} does not support complex "
                    "parameters (view them as real with torch.view_as_real)"
                )
            key: tuple[Any, ...] = (p.device, p.dtype, repeat)
            shard_dims: tuple[int, ...] = ()
            if mesh is not None:
                shard_dims = tuple(d for d, pl in enumerate(p.placements) if not pl.is_replicate())
                key = (*key, shard_dims)
                if getattr(g, "placements", None) != p.placements:
                    raise RuntimeError(
                        f"fusedopt.{type(self).__name__}: the grad of DTensor param {i} has "
                        f"placements {getattr(g, 'placements', 'none (a plain tensor)')}, but "
                        f"the param has {p.placements}; fusedopt steps local shards and needs "
                        "them to match (FSDP2 reduce-scatters grads to the params' placements)"
                    )
            master = self.master_weights and p.dtype in _HALF
            stochastic = self.stochastic_rounding and p.dtype in _HALF
            b = buckets.get(key)
            if b is None:
                b = buckets[key] = _Bucket(_dispatch.resolve(self.backend, p.device), p.device)
                b.states = [[] for _ in keys]
                if master:
                    b.masters = []
                if stochastic:
                    b.seeds = []
                if mesh is not None:
                    b.mesh_dims = (mesh, shard_dims)
            b.idx.append(i)
            b.params.append(p if mesh is None else _local(p))
            if master or stochastic:
                state = self.state[p]
                if master:
                    m = state.get("master_param")
                    if m is None:
                        # The update runs on this copy from now on (Note [mixed precision]).
                        m = state["master_param"] = p.detach().to(
                            torch.float32, memory_format=torch.preserve_format, copy=True
                        )
                    self._check_state_tensor(i, p, "master_param", m, torch.float32, mesh)
                    b.masters.append(m if mesh is None else _local(m))  # type: ignore[union-attr]
                else:
                    seed = state.get("sr_seed")
                    if seed is None:
                        # The kernel advances it every step.
                        seed = state["sr_seed"] = _new_seed(p, mesh)
                    b.seeds.append(seed)  # type: ignore[union-attr]
            if stateless:
                continue
            state = self.state[p]
            missing_state = any(state.get(k) is None for k in keys)
            fresh = first_fresh or missing_state
            repeats[id(p)] = (repeat + 1, fresh)
            if self._has_step and "step" not in state:
                state["step"] = self._zero_step(p)
            if missing_state:
                self._init_state(p, state, group)  # creates the missing state tensors
            sdt = self._state_dtype(group, p)
            for lst, k in zip(b.states, keys):
                t = state[k]
                self._check_state_tensor(i, p, k, t, sdt, mesh)
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
        for b in buckets.values():
            if b.masters is not None:
                _sync_masters(b.params, b.masters)
        return _Plan(len(group["params"]), missing, list(buckets.values()), mesh is not None)

    def _check_state_tensor(
        self, i: int, p: Tensor, k: str, t: Tensor, dtype: torch.dtype, mesh: Any
    ) -> None:
        if t.shape != p.shape or t.dtype != dtype or t.device != p.device:
            raise RuntimeError(
                f"fusedopt.{type(self).__name__}: state {k!r} of parameter {i} has "
                f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}, but the "
                f"parameter has shape {tuple(p.shape)}, device {p.device} and its state "
                f"dtype is {dtype}"
            )
        if mesh is not None and getattr(t, "placements", None) != p.placements:
            raise RuntimeError(
                f"fusedopt.{type(self).__name__}: state {k!r} of DTensor parameter {i} "
                f"is not a DTensor sharded like it (placements {p.placements}); load "
                "sharded optimizer state with torch.distributed.checkpoint or "
                "torch.distributed.checkpoint.state_dict.set_optimizer_state_dict"
            )

    def _plan_work(self) -> list[tuple[dict[str, Any], _Bucket, list[Tensor]]]:
        """(group, bucket, the bucket's grads) for every bucket with grads, plans reused or built.

        Every group is planned (and so validated) before any group is updated: a step that
        raises changes nothing.
        """
        seen = []
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            grads = [p.grad for p in params]
            missing = [i for i, g in enumerate(grads) if g is None]
            plan = self._plans.get(gi)
            stale = plan is None or plan.n != len(params) or plan.missing != missing
            seen.append((group, grads, missing, stale))
        if self.stochastic_rounding and any(stale for *_, stale in seen):
            # Every group, before any plan creates state (or draws a seed).
            for group, grads, _, _ in seen:
                for i, p in enumerate(group["params"]):
                    if grads[i] is not None and p.dtype == torch.float16:
                        raise ValueError(
                            f"fusedopt.{type(self).__name__}: stochastic_rounding rounds to "
                            f"bfloat16, but parameter {i} is {p.dtype}; use "
                            "master_weights=True for float16 params"
                        )
        work = []
        for gi, (group, grads, missing, stale) in enumerate(seen):
            if stale:
                self._plans[gi] = self._build_plan(group, grads, missing)
            plan = self._plans[gi]
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
        self._by_step["opt_called"] = True
        # The plan work and sum of squares fusedopt.amp.GradScaler had this optimizer take for
        # its inf check just before this step (Note [inf check in the norm pass]): the same
        # grads, planned and read once for both. Taken first, so that a step that raises
        # leaves none behind.
        amp = self._by_step["amp_work"]
        self._by_step["amp_work"] = None
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            amp = None  # new grads
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        work, cached = amp if amp is not None else (self._plan_work(), None)
        if found_inf is None:
            self.step_skipped.fill_(False)
        else:
            self.step_skipped.copy_(found_inf.to(self.step_skipped.device, non_blocking=True) != 0)
        if self.max_grad_norm is not None and work:
            grad_scale = self._clip(work, grad_scale, cached)
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
                keep_fresh = self._launch(fn, group, b, bgrads, lr, gs, fi)
            except RuntimeError:
                if any(g.is_sparse for g in bgrads):
                    raise RuntimeError(self._sparse_error) from None
                raise
            if not keep_fresh:
                b.fresh = None
        return loss

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _lr_sched_marker(cls)

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
        work = self._plan_work()
        if not work:
            device = self.step_skipped.device
            return {device: torch.zeros((), dtype=torch.float32, device=device)}
        total = self._grad_sum_sq(work)
        self._by_step["amp_work"] = (work, total)
        return {total.device: (~torch.isfinite(total)).to(torch.float32)}

    def _grad_sum_sq(self, work: list) -> Tensor:
        """The fp64 sum of squares of every grad of ``work`` (all-reduced over the ranks
        holding other shards of sharded params), without a host sync."""
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

    # -- checkpoints --------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load torch.optim's state_dict layout (from fusedopt or torch.optim).

        Before anything changes, the state is checked (Note [damaged checkpoints]).
        """
        self._check_loaded_state(state_dict)
        # torch casts every floating-point state tensor to its param's dtype (and an int64
        # seed too, for a floating-point param): keep the originals to restore their dtypes.
        saved = {
            pid: {k: v for k, v in pstate.items() if torch.is_tensor(v) and k != "step"}
            for pid, pstate in state_dict.get("state", {}).items()
            if isinstance(pstate, dict)
        }
        super().load_state_dict(state_dict)
        self.invalidate_plans()
        self._restore_state_dtypes(state_dict, saved)
        # torch keeps a non-fused 'step' on the CPU; our kernels want it where _zero_step puts it
        # (a checkpoint loaded with map_location="cpu" must still work on the GPU).
        for p, pstate in self.state.items():
            step = pstate.get("step") if isinstance(pstate, dict) else None
            if torch.is_tensor(step):
                want = self._zero_step(p)
                if step.device != want.device or step.dtype != want.dtype:
                    pstate["step"] = step.to(device=want.device, dtype=want.dtype)

    def _restore_state_dtypes(
        self, state_dict: dict[str, Any], saved: dict[Any, dict[str, Tensor]]
    ) -> None:
        """Note [state dtypes in checkpoints]
        After torch's load_state_dict: the fp32 master copy stays fp32, a seed stays int64,
        and moments take this optimizer's state dtype for the param (a bf16-param checkpoint
        from torch.optim loads into master_weights=True with fp32 moments, and a fusedopt
        checkpoint with fp32 moments loads into torch.optim as bf16 ones).
        """
        ids = (pid for sg in state_dict["param_groups"] for pid in sg["params"])
        for pid, (p, group) in zip(ids, ((p, g) for g in self.param_groups for p in g["params"])):
            if pid not in saved or p not in self.state:
                continue
            pstate = self.state[p]
            keys = self._state_keys(group)  # other keys stay as torch.optim loads them
            for k, v in saved[pid].items():
                if k == "master_param":
                    want = torch.float32
                elif k == "sr_seed":
                    want = torch.int64
                elif k in keys and v.is_floating_point() and p.is_floating_point():
                    want = self._state_dtype(group, p)
                else:
                    continue
                cur = pstate.get(k)
                if torch.is_tensor(cur) and cur.dtype != want:
                    pstate[k] = v.to(device=p.device, dtype=want, copy=True)

    def _required_state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The keys a loaded param state must have unless it is empty: torch.optim refuses (at
        its next step) a state that lacks one, where a fused step would silently start the
        missing moment from zeros. Subclasses drop the keys that may be missing."""
        keys = self._state_keys(group)
        return (*keys, "step") if self._has_step else keys

    def _check_loaded_state(self, state_dict: dict[str, Any]) -> None:
        """Note [damaged checkpoints]
        Before anything changes, each param's loaded state must have every key this optimizer
        needs (KeyError, as torch.optim raises at its next step), a ``step`` that is a finite
        count >= 0 (ValueError: a negative one makes the bias corrections divide by zero), and
        state tensors shaped like the param (ValueError: the kernels would read out of
        bounds). Keys fusedopt does not use (another optimizer's) are not checked: they are
        kept as they are, as torch.optim keeps them.
        """
        saved_groups = state_dict.get("param_groups", [])
        groups = self.param_groups
        if len(saved_groups) != len(groups):
            return  # torch's own check raises its ValueError
        owner: dict[Any, tuple[Tensor, dict[str, Any]]] = {}
        for g, sg in zip(groups, saved_groups):
            if len(g["params"]) != len(sg["params"]):
                return
            merged = {**self.defaults, **sg}
            owner.update((pid, (p, merged)) for pid, p in zip(sg["params"], g["params"]))
        where = f"fusedopt.{type(self).__name__}: loaded state for parameter"
        for pid, pstate in state_dict.get("state", {}).items():
            if pid not in owner or not isinstance(pstate, dict):
                continue
            p, group = owner[pid]
            if pstate:
                for key in self._required_state_keys(group):
                    if pstate.get(key) is None:
                        raise KeyError(
                            f"{where} {pid} has no {key!r} (it has "
                            f"{', '.join(map(repr, pstate))}): the checkpoint is damaged or "
                            "from another optimizer; nothing was loaded"
                        )
            shaped = {*self._state_keys(group), "master_param"}
            for key, value in pstate.items():
                if key == "step":
                    self._check_loaded_step(where, pid, value)
                if not torch.is_tensor(value):
                    continue
                if key in ("step", "sr_seed"):
                    if value.numel() != 1:
                        raise ValueError(
                            f"loaded state for parameter {pid}: {key!r} must have "
                            f"one element, got shape {tuple(value.shape)}"
                        )
                elif key in shaped and value.shape != p.shape:
                    raise ValueError(
                        f"loaded state for parameter {pid}: {key!r} has shape "
                        f"{tuple(value.shape)}, but the parameter has shape {tuple(p.shape)}"
                    )

    @staticmethod
    def _check_loaded_step(where: str, pid: Any, step: Any) -> None:
        if torch.is_tensor(step):
            if step.numel() != 1 or step.device.type == "meta":
                return  # the shape check says so; a meta tensor has no value yet
            step = step.item()
        if not isinstance(step, (int, float)) or not 0 <= step < float("inf"):
            raise ValueError(
                f"{where} {pid}: 'step' is {step!r}, but a step count must be a finite number "
                ">= 0; nothing was loaded"
            )


def _by_step_init() -> dict[str, Any]:
    """Note [what a step writes on the optimizer]
    The step writes no attribute of the optimizer object: what it records for later
    (``last_grad_norm``, ``_opt_called``, GradScaler's planned work) goes into this dict, which
    properties read. In a compiled step dynamo replays a dict's writes after the graph, but
    not an attribute written on a torch.optim.Optimizer: torch < 2.13 refuses it ("Attempted
    setattr on a user-defined object that does not have an AttributeMutation mutation_type",
    a graph break, an error with fullgraph=True), and 2.14 runs the step but never applies
    the write (dynamo wraps optimizers in a variable of their own that it does not register
    for attribute writes)."""
    return {"last_grad_norm": None, "opt_called": False, "amp_work": None}


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
