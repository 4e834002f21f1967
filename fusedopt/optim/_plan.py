"""Per-group step plans: the params bucketed by (device, dtype) with their state lists.

Note [step plans]
torch.optim walks every parameter in Python on every step (grad check, state lookup, list
appends): about 1-2 microseconds per parameter, which dominates for models with thousands of
small tensors. A fusedopt group instead keeps a *plan*: its params bucketed by (device, dtype),
with the state tensors of each bucket already in lists, and, on the compiled backends, the
bucket's C++ StepPlan over those lists (Note [C++ step plans] in csrc/plan.cpp). Each step only
reads the grads (`p.grad`, which changes identity every backward) and reuses the plan while the
set of params that have a grad is unchanged. There is one cache, ``_plans``, and one rule: a
group's plan (its buckets and their StepPlans with it) is rebuilt when that set changes (a
frozen param, a param without a grad this step), and all are dropped on add_param_group,
load_state_dict and unpickling. State tensors replaced by hand
(``opt.state[p]["exp_avg"] = t``), or given new memory in place (``.data = ...``, ``set_()``),
need ``opt.invalidate_plans()``.

Note [auxiliary state]
Some state is per param but not param-shaped: Adafactor's row and column statistics, the
per-block scales of quantized states. The op registry marks such a list as auxiliary state
(an AUX list with a state key, fusedopt/_opdefs.py); the optimizer class says per param which
of those keys it keeps and their shapes (``_aux_shape``) and dtype (``_aux_dtype``). A bucket
carries them like the other state lists, one slot per param: state[p][key] where the param
keeps it, else an empty placeholder tensor the op does not read (Adafactor's 1-D params keep
a ``variance`` and no row/column statistics, its matrices the reverse). They are created,
checked against their shapes, saved and loaded (Note [damaged checkpoints]) as the other
state is; the StepPlans hold them as any other list. For DTensor params an optimizer whose
auxiliary state is per local shard (``_aux_per_shard``: 8-bit states, whose blocks lie within
each shard, Note [8-bit optimizer states]) makes it with ``_aux_zeros`` as DTensors and gives
the kernels the local part (``_aux_local``); the others refuse DTensor params: a shard's
statistics would need reductions across the ranks (the row sums of a row-sharded matrix are
local, its column sums are not).
"""

from __future__ import annotations

import itertools
import operator
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from .. import _dispatch
from .._opdefs import OPS, STATE
from . import _dtensor, _mixed


class Bucket:
    """The params of one group that share (device, dtype), with their state lists."""

    __slots__ = ("backend", "cplan", "device", "fresh", "idx", "lists", "mesh_dims", "op", "params")

    def __init__(self, backend: str, device: torch.device, mesh_dims: Any, op: str) -> None:
        self.backend = backend
        self.device = device
        self.op = op  # the registry op updating these params (Note [8-bit optimizer states])
        # DTensor params (Note [DTensor params]): params and lists below are then the local
        # shards. None for plain tensors.
        self.mesh_dims: _dtensor.MeshDims | None = mesh_dims
        self.idx: list[int] = []  # positions in group["params"]
        self.params: list[Tensor] = []
        # One per-param list per state key the bucket keeps: the op's state keys, "step", and
        # "master_param" or "sr_seed" when that mode is on (Note [mixed-precision options]).
        self.lists: dict[str, list[Tensor]] = {}
        # Per param, whether its state was created by this plan's build; None when none was.
        self.fresh: list[bool] | None = None
        self.cplan: Any = None  # the C++ StepPlan over the lists, made by the first step

    @property
    def sharded(self) -> bool:
        """Some params are shards: norms over them need an all-reduce."""
        return self.mesh_dims is not None and bool(self.mesh_dims[1])


def _placeholder(p: Tensor, dtype: torch.dtype) -> Tensor:
    """The slot of an auxiliary state a param does not keep: empty, never read."""
    return torch.empty(0, dtype=dtype, device=p.device)


def _adjacent_runs(tensors: list[Tensor]) -> list[tuple[int, int]]:
    """The [start, end) index ranges, of two non-empty tensors or more, of contiguous tensors
    that lie end to end in memory, each after the one before (an empty tensor has no elements:
    it neither ends a run nor breaks one)."""
    runs = []
    start, last, count, end_ptr = 0, 0, 0, -1
    for j, t in enumerate(tensors):
        if not t.numel():
            continue
        ptr = t.data_ptr() if t.is_contiguous() else -1
        if ptr < 0 or ptr != end_ptr:
            if count > 1:
                runs.append((start, last + 1))
            start, count = j, 0
        if ptr < 0:
            end_ptr = -1
            continue
        end_ptr = ptr + t.numel() * t.element_size()
        last, count = j, count + 1
    if count > 1:
        runs.append((start, last + 1))
    return runs


def _flatten_states(state: dict[Any, Any], b: Bucket, keys: tuple[str, ...]) -> None:
    """Note [flat states]
    Params that lie end to end in memory (views of one flat buffer) are updated as one range
    when their grads and states lie end to end too (Note [adjacent tensors] in
    csrc/common/multi_tensor.h). So the states of such a run of params are moved into one
    buffer per state key, each param's state a view of its part: state_dict keeps torch's
    per-param layout (a checkpoint holds the views, torch.save stores their buffer once) and the
    values are copied, so a loaded checkpoint, whose tensors are separate, is flattened again
    when the plan is rebuilt. The step counters too (0-d views of one buffer): a bucket whose
    lists all lie end to end then steps as one range, without a check per tensor in the op
    (Note [one-range steps] in csrc/plan.cpp). Nothing depends on it for correctness: the
    kernels check that every list is adjacent on every step, and update tensor by tensor where
    one is not."""
    # Under torch.compile addresses are not traceable: the states stay as they are.
    if torch.compiler.is_compiling() or b.device.type == "meta" or len(b.params) < 2:
        return
    for start, end in _adjacent_runs(b.params):
        for k in keys:
            ts = b.lists.get(k)
            if ts is None or _adjacent_runs(ts[start:end]) == [(0, end - start)]:
                continue
            first = ts[start]
            # Step counters are not checked against their param: one buffer holds one kind.
            if any(t.dtype != first.dtype or t.device != first.device for t in ts[start:end]):
                continue
            flat = torch.empty(
                sum(t.numel() for t in ts[start:end]), dtype=first.dtype, device=first.device
            )
            views = torch.split(flat, [t.numel() for t in ts[start:end]])
            for j, (p, t, v) in enumerate(zip(b.params[start:end], ts[start:end], views), start):
                v = v.view(t.shape)
                v.copy_(t)
                ts[j] = state[p][k] = v


def registry_keys(op: str, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(state keys, auxiliary state keys) of registry op ``op`` that ``group`` keeps: its state
    lists but those kept only under an option the group turns off (``when``), and its auxiliary
    state lists."""
    d = OPS[op]
    keys = tuple(a.key for a in d.role(STATE) if a.when is None or group[a.when])
    return keys, tuple(a.key for a in d.aux_state)  # type: ignore[misc]


def _one_range_ready(plan: Plan | None, n: int) -> bool:
    """Whether a group of ``n`` params with this plan steps as one range with the grads its
    StepPlan fetches (Note [one-range steps] in csrc/plan.cpp): the plan is current (every
    param has a grad, as when it was built), one bucket whose last step ran as one range (so
    through its StepPlan: not SGD's first step, which creates the momentum buffers)."""
    if plan is None or plan.n != n or plan.missing or plan.dtensor or len(plan.buckets) != 1:
        return False
    b = plan.buckets[0]
    return b.cplan is not None and b.cplan.last_flat and b.cplan.prepare()


class Plan:
    __slots__ = ("buckets", "dtensor", "missing", "n")

    def __init__(self, n: int, missing: list[int], buckets: list[Bucket], dtensor: bool) -> None:
        self.n = n
        self.missing = missing
        self.buckets = buckets
        self.dtensor = dtensor  # the grads are DTensors: the kernels get their local shards


class Plans:
    """The FusedOptimizer part that builds, caches and drops the plans."""

    backend: str
    master_weights: bool
    stochastic_rounding: bool
    state: dict[Any, Any]
    param_groups: list[dict[str, Any]]
    _plans: dict[int, Plan]
    _has_step: bool
    _sparse_error: str

    def invalidate_plans(self) -> None:
        """Forget the cached per-group plans (they are rebuilt on the next step)."""
        self._plans = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # type: ignore[misc]
        self.invalidate_plans()
        try:
            _dtensor.group_mesh(self.param_groups[-1]["params"], self._where())
        except ValueError:
            self.param_groups.pop()
            raise
        # Resolve "auto" now, eagerly: probing what is available calls into the compiled
        # extension, which torch.compile can't trace if the first step is a compiled one.
        for device in {p.device for p in self.param_groups[-1]["params"]}:
            _dispatch.resolve(self.backend, device)

    def _where(self) -> str:
        return f"fusedopt.{type(self).__name__}"

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        raise NotImplementedError

    def _group_has_step(self, group: dict[str, Any]) -> bool:
        """Whether the group's params keep a ``step`` (per group where one optimizer runs two
        ops: fusedopt.MuonWithAuxAdam)."""
        return self._has_step

    def _state_dtype(self, group: dict[str, Any], p: Tensor) -> torch.dtype:
        return _mixed.state_dtype(self, p)

    def _aux_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The auxiliary state keys this group's op carries (Note [auxiliary state])."""
        return ()

    def _aux_shape(self, key: str, p: Tensor) -> tuple[int, ...] | None:
        """The shape of p's auxiliary state ``key``, or None where p keeps none."""
        raise NotImplementedError

    def _aux_dtype(self, group: dict[str, Any], p: Tensor, key: str) -> torch.dtype:
        return self._state_dtype(group, p)

    #: Whether the auxiliary state of a DTensor param is per local shard (Note [auxiliary
    #: state]); then ``_aux_zeros`` and ``_aux_local`` handle DTensors.
    _aux_per_shard = False

    def _aux_zeros(self, key: str, p: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A new auxiliary state ``key`` of p, of ``shape`` (``_aux_shape``)."""
        return torch.zeros(shape, dtype=dtype, device=p.device)

    def _aux_local(self, key: str, p: Tensor, t: Tensor, i: int) -> Tensor:
        """What the kernels update for auxiliary state ``t`` of DTensor param ``i``."""
        raise NotImplementedError

    def _param_op(self, group: dict[str, Any], p: Tensor) -> str:
        """The registry op that updates p: the class's (``_op``) unless an option gives p
        another (Note [8-bit optimizer states] in _q8.py)."""
        return self._op  # type: ignore[attr-defined]

    def _op_keys(self, group: dict[str, Any], op: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(state keys, auxiliary state keys) the group's params updated by ``op`` keep."""
        if op == self._op:  # type: ignore[attr-defined]  # the class may override its keys
            return self._state_keys(group), self._aux_keys(group)
        return registry_keys(op, group)

    def _kept_shapes(self, group: dict[str, Any], p: Tensor) -> dict[str, tuple[int, ...]]:
        """Every state key param p keeps but "step" (and the mixed-precision ones), with its
        shape."""
        keys, aux = self._op_keys(group, self._param_op(group, p))
        out = {k: tuple(p.shape) for k in keys}
        for k in aux:
            shape = self._aux_shape(k, p)
            if shape is not None:
                out[k] = shape
        return out

    def _zero_step(self, p: Tensor) -> Tensor:
        # torch keeps `step` on the CPU unless fused/capturable; fused kernels on a GPU want it
        # on the param's device, as torch's fused=True does. A meta param has no values to
        # count with (its updates only propagate shapes): its step stays on the CPU, as in
        # torch's for-loop.
        device = p.device if p.device.type not in ("cpu", "meta") else "cpu"
        return torch.zeros(
            (), dtype=_get_scalar_dtype(is_fused=p.device.type != "cpu"), device=device
        )

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Creates p's missing state tensors: zeros of its shape, strides, device (and
        placements, for a DTensor), in its state dtype. (SGD's momentum buffers too: the
        first step fills them, Note [skipped first SGD step].)"""
        keys, aux = self._op_keys(group, self._param_op(group, p))
        for key in keys:
            if state.get(key) is None:
                state[key] = torch.zeros_like(
                    p, dtype=self._state_dtype(group, p), memory_format=torch.preserve_format
                )
        for key in aux:
            shape = self._aux_shape(key, p)
            if shape is not None and state.get(key) is None:
                state[key] = self._aux_zeros(key, p, shape, self._aux_dtype(group, p, key))

    def _build_plan(
        self, group: dict[str, Any], grads: list[Tensor | None], missing: list[int]
    ) -> Plan:
        where = self._where()
        mesh = _dtensor.group_mesh(group["params"], where)
        has_step = self._group_has_step(group)
        op_keys: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        buckets: dict[tuple[Any, ...], Bucket] = {}
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
                    f"{where} does not support complex "
                    "parameters (view them as real with torch.view_as_real)"
                )
            op = self._param_op(group, p)
            if op not in op_keys:
                op_keys[op] = self._op_keys(group, op)
            keys, aux = op_keys[op]
            if aux and mesh is not None and not self._aux_per_shard:
                raise NotImplementedError(
                    f"{where} does not support DTensor params: its state {', '.join(aux)} is "
                    "not shaped like the params (Note [auxiliary state])"
                )
            stateless = not keys and not aux and not has_step  # e.g. SGD without momentum
            key: tuple[Any, ...] = (p.device, p.dtype, repeat, op)
            dims: tuple[int, ...] = ()
            if mesh is not None:
                dims = _dtensor.shard_dims(p, g, i, where)
                key = (*key, dims)
            mode_key = _mixed.mode_key(self, p.dtype)
            b = buckets.get(key)
            if b is None:
                backend = _dispatch.resolve(self.backend, p.device, op)
                mesh_dims = None if mesh is None else (mesh, dims)
                b = buckets[key] = Bucket(backend, p.device, mesh_dims, op)
                kept = (*keys, *aux, "step") if has_step else (*keys, *aux)
                b.lists = {k: [] for k in (*kept, mode_key) if k is not None}
            b.idx.append(i)
            b.params.append(p if mesh is None else _dtensor.local(p))
            if mode_key == "master_param":
                m = self.state[p].get(mode_key)
                if m is None:
                    m = self.state[p][mode_key] = _mixed.new_master(p)
                self._check_state_tensor(i, p, mode_key, m, torch.float32, mesh)
                b.lists[mode_key].append(m if mesh is None else _dtensor.local(m))
            elif mode_key == "sr_seed":
                if self.state[p].get(mode_key) is None:
                    self.state[p][mode_key] = _mixed.new_seed(p, mesh)  # the kernel advances it
                b.lists[mode_key].append(self.state[p][mode_key])
            if stateless:
                continue
            state = self.state[p]
            kept_shapes = self._kept_shapes(group, p) if aux else None
            missing_state = any(state.get(k) is None for k in kept_shapes or keys)
            fresh = first_fresh or missing_state
            repeats[id(p)] = (repeat + 1, fresh)
            if has_step and "step" not in state:
                state["step"] = self._zero_step(p)
            if missing_state:
                self._init_state(p, state, group)
            sdt = self._state_dtype(group, p)
            for k in keys:
                t = state[k]
                self._check_state_tensor(i, p, k, t, sdt, mesh)
                b.lists[k].append(t if mesh is None else _dtensor.local(t))
            for k in aux:
                adt = self._aux_dtype(group, p, k)
                shape = kept_shapes.get(k)  # type: ignore[union-attr]
                if shape is None:
                    b.lists[k].append(_placeholder(p, adt))
                    continue
                t = state[k]
                if tuple(t.shape) != shape or t.dtype != adt or t.device != p.device:
                    raise RuntimeError(
                        f"{where}: state {k!r} of parameter {i} has shape {tuple(t.shape)}, "
                        f"dtype {t.dtype}, device {t.device}, but must have shape {shape}, "
                        f"dtype {adt}, device {p.device}"
                    )
                b.lists[k].append(t if mesh is None else self._aux_local(k, p, t, i))
            if has_step:
                step = state["step"]
                if not torch.is_tensor(step):  # an old checkpoint's float step
                    step = state["step"] = torch.tensor(float(step), dtype=_get_scalar_dtype())
                b.lists["step"].append(step)
            if fresh and b.fresh is None:
                b.fresh = [False] * (len(b.params) - 1)
            if b.fresh is not None:
                b.fresh.append(fresh)
        for b in buckets.values():
            if "master_param" in b.lists:
                _mixed.sync_masters(b.params, b.lists["master_param"])
            if mesh is None:
                _flatten_states(self.state, b, (*op_keys[b.op][0], "master_param", "step"))
        return Plan(len(group["params"]), missing, list(buckets.values()), mesh is not None)

    def _check_state_tensor(
        self, i: int, p: Tensor, k: str, t: Tensor, dtype: torch.dtype, mesh: Any
    ) -> None:
        if t.shape != p.shape or t.dtype != dtype or t.device != p.device:
            raise RuntimeError(
                f"{self._where()}: state {k!r} of parameter {i} has "
                f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}, but the "
                f"parameter has shape {tuple(p.shape)}, device {p.device} and its state "
                f"dtype is {dtype}"
            )
        if mesh is not None:
            _dtensor.check_sharded_like(t, p, i, k, self._where())

    def _plan_work(
        self, own_grads: bool = False
    ) -> list[tuple[dict[str, Any], Bucket, list[Tensor] | None]]:
        """(group, bucket, the bucket's grads) for every bucket with grads, plans reused or built.

        Every group is planned (and so validated) before any group is updated: a step that
        raises changes nothing. ``own_grads`` (for a step that reads the grads in no pass of its
        own): a group that is one bucket whose last step ran as one range, and whose params'
        grads still make one range, gets None for grads: its StepPlan has them (Note [one-range
        steps] in csrc/plan.cpp), and the Python list of its grads is never built.
        """
        seen: list[tuple[dict[str, Any], list[Tensor | None] | None, list[int], bool]] = []
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            if own_grads and _one_range_ready(self._plans.get(gi), len(params)):
                seen.append((group, None, [], False))
                continue
            grads = [p.grad for p in params]
            # The scan for None runs in C (`None in grads` would call Tensor.__eq__).
            none = any(map(operator.is_, grads, itertools.repeat(None)))
            missing = [i for i, g in enumerate(grads) if g is None] if none else []
            plan = self._plans.get(gi)
            stale = plan is None or plan.n != len(params) or plan.missing != missing
            seen.append((group, grads, missing, stale))
        if self.stochastic_rounding and any(stale for *_, stale in seen):
            _mixed.check_sr_params(self, [(group, grads) for group, grads, _, _ in seen])
        work = []
        for gi, (group, grads, missing, stale) in enumerate(seen):
            if grads is None:
                work.append((group, self._plans[gi].buckets[0], None))
                continue
            if stale:
                self._plans[gi] = self._build_plan(group, grads, missing)
            plan = self._plans[gi]
            if plan.dtensor:
                grads = [None if g is None else _dtensor.local(g) for g in grads]
            for b in plan.buckets:
                bgrads = (
                    grads if not missing and len(plan.buckets) == 1 else [grads[i] for i in b.idx]
                )
                work.append((group, b, bgrads))
        return work
