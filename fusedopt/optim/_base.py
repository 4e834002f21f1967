"""FusedOptimizer: a torch.optim.Optimizer whose step runs one registry op per bucket.

Note [declarative optimizers]
An optimizer class declares what differs: the op it calls (``_op``, a name of
fusedopt._opdefs.OPS), how the group's options map to the op's scalars (``_scalars``), and its
param-group keys. The rest is derived from the registry: the state keys (each state list's
``Arg.key``) and which of them a group keeps (``Arg.when``: Adam's max_exp_avg_sq under
amsgrad), whether there is a per-param ``step``, every call (``fn(*OPS[op].bind(**values))``,
or the bucket's StepPlan), and the two-phase step of sharded params for an op with
``phase``/``sq_sums`` arguments. The
concerns around the call live in their own modules: plans (_plan.py), norms and AMP
(_norms.py), checkpoints (_checkpoint.py), DTensor params (_dtensor.py) and the mixed-precision
options (_mixed.py).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import _dispatch
from .._opdefs import AUX, GRAD, OPS, PARAM, SCALAR, STEP
from . import _dtensor, _mixed
from ._checkpoint import Checkpoints
from ._norms import NormsAndAmp
from ._plan import Bucket, Plans, registry_keys

#: The optimizer-wide options (not param-group keys): their defaults, also their values in an
#: old pickle, and their annotations (Note [optimizer-wide options]).
_OPTIONS = {
    "backend": "auto",
    "max_grad_norm": None,
    "master_weights": False,
    "stochastic_rounding": False,
    "state_dtype": None,
    "fused_amp": True,
    "min_8bit_size": 4096,
}
_OPTION_TYPES = {
    "backend": "str",
    "max_grad_norm": "float | None",
    "master_weights": "bool",
    "stochastic_rounding": "bool",
    "state_dtype": "torch.dtype | str | None",
    "fused_amp": "bool",
    "min_8bit_size": "int",
}
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "float": float,
    "float?": lambda v: None if v is None else float(v),
    "bool": bool,
    "int": int,
}
# Per op, read every step: its list arguments as (name, role, state key, absent value: None for
# an optional list, else empty), its scalars as (name, conversion to the registry's type).
_LISTS = {
    op: tuple(
        (a.name, a.role, a.key, None if a.type.endswith("?") else []) for a in d.args if a.is_list
    )
    for op, d in OPS.items()
}
# Per op, for its StepPlan: the names of the lists it keeps, the positions of the grads and of
# the arguments after them (OpDef.plan_lists, OpDef.plan_rest) in a call's arguments.
_PLAN = {
    op: (
        d.plan_lists,
        d.names.index(d.role(GRAD)[0].name),
        tuple(d.names.index(n) for n in d.plan_rest),
    )
    for op, d in OPS.items()
}
_SCALARS = {op: tuple((a.name, _CONVERT[a.type]) for a in d.role(SCALAR)) for op, d in OPS.items()}
# Per op, whether its StepPlan may run a bucket as one range (Note [one-range steps] in
# csrc/plan.cpp): elementwise ops, whose lists are all param-shaped (no auxiliary lists) and
# whose per-param scalars come from the step counters alone; with the index of the counters
# among the StepPlan's lists (-1: none).
_ONE_RANGE = {
    op: (
        not d.role(AUX) and d.args[0].role == PARAM,
        next((i for i, n in enumerate(d.plan_lists) if d.arg(n).role == STEP), -1),
    )
    for op, d in OPS.items()
}


class FusedOptimizer(Checkpoints, NormsAndAmp, Plans, Optimizer):
    """Base class (Note [declarative optimizers])."""

    _op: str = ""
    _sparse_error: str = ""
    #: Group keys an older or foreign state dict may lack, with the value they then take.
    _group_fallbacks: dict[str, Any] = {}
    _has_step: bool = True  # derived from the op: it has a step list
    #: The optimizer-wide options the constructor takes (Note [optimizer-wide options]); an
    #: optimizer with 8-bit states adds min_8bit_size.
    _options: tuple[str, ...] = tuple(k for k in _OPTIONS if k != "min_8bit_size")
    #: The op of its params with 8-bit states (Note [8-bit optimizer states]), if it has them.
    _op_8bit: str | None = None

    def __init__(self, params: Any, defaults: dict[str, Any], options: dict[str, Any]) -> None:
        """``options``: the optimizer-wide options the subclass constructor was given (its
        ``**options``); the others take their defaults."""
        args = {**_OPTIONS, **options}
        backend = args["backend"]
        max_grad_norm = args["max_grad_norm"]
        _dispatch.require(backend)
        if max_grad_norm is not None and not max_grad_norm > 0.0:
            raise ValueError(f"Invalid max_grad_norm value: {max_grad_norm}")
        _mixed.check_options(
            args["master_weights"], args["stochastic_rounding"], args["state_dtype"], self._where()
        )
        if args["state_dtype"] == _mixed.INT8 and self._op_8bit is None:
            raise ValueError(
                f"{self._where()}: state_dtype={_mixed.INT8!r} is not supported by this "
                "optimizer (8-bit states: fusedopt.AdamW, Adam, Lion and SGD)"
            )
        if not isinstance(args["min_8bit_size"], int) or args["min_8bit_size"] < 0:
            raise ValueError(f"Invalid min_8bit_size value: {args['min_8bit_size']}")
        # Optimizer-wide, so that param_groups keep torch.optim's keys (Note [mixed-precision
        # options]).
        for k in _OPTIONS:
            setattr(self, k, args[k])
        self.fused_amp = bool(self.fused_amp)
        self._plans = {}
        super().__init__(params, defaults)
        first = next((p for g in self.param_groups for p in g["params"]), None)
        device = first.device if first is not None else torch.device("cpu")
        #: 0-d bool tensor on the params' device: True when the last step was skipped because
        #: GradScaler found inf/NaN grads. Updated every step without a host sync.
        self.step_skipped = torch.zeros((), dtype=torch.bool, device=device)
        self._by_step: dict[str, Any] = _by_step_init()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _with_options(cls, cls.__dict__["__init__"])  # type: ignore[misc]
        if cls._op:
            cls._has_step = bool(OPS[cls._op].role(STEP))
        if "_state_when" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__}._state_when: say it in the op registry (Arg.when of the state "
                "list in fusedopt/_opdefs.py)"
            )
        _lr_sched_marker(cls)

    @property
    def _opt_called(self) -> bool:
        """Read by torch's LRScheduler (Note [schedulers and torch.compile])."""
        return self._by_step["opt_called"]

    @_opt_called.setter
    def _opt_called(self, value: bool) -> None:
        self._by_step["opt_called"] = value

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update((k, getattr(self, k)) for k in _OPTIONS)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for k, v in _OPTIONS.items():
            self.__dict__.setdefault(k, v)
        self.__dict__.setdefault("_by_step", _by_step_init())
        if "step_skipped" not in self.__dict__:
            self.step_skipped = torch.zeros((), dtype=torch.bool)
        self.invalidate_plans()
        for group in self.param_groups:
            for k, v in self._group_fallbacks.items():
                group.setdefault(k, v)
        self._setstate_groups()

    def _setstate_groups(self) -> None:
        """Group keys of an older or foreign state dict that _group_fallbacks cannot say."""

    # -- what the class declares --------------------------------------------------------------
    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The op's state keys this group keeps."""
        return registry_keys(self._op, group)[0]

    def _aux_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The op's auxiliary state keys (Note [auxiliary state] in _plan.py); the class says
        their shapes (``_aux_shape``)."""
        return registry_keys(self._op, group)[1]

    def _scalars(self, group: dict[str, Any]) -> dict[str, Any]:
        """The op's scalar arguments by registry name: each from the group option of that name
        (beta1/beta2 from ``betas``) in the registry's type; subclasses add the others."""
        out = {}
        for name, convert in _SCALARS[self._op]:
            if name in group:
                value = group[name]
            elif name in ("beta1", "beta2") and "betas" in group:
                value = group["betas"][0 if name == "beta1" else 1]
            else:
                continue
            out[name] = convert(value)
        return out

    # -- the calls ----------------------------------------------------------------------------
    def _lists(self, op: str, b: Bucket, grads: list[Tensor] | None) -> dict[str, Any]:
        """The op's list arguments for bucket ``b``, by name: an optional list the bucket does
        not keep is None, another one empty (Adam's max_exp_avg_sqs without amsgrad)."""
        out: dict[str, Any] = {}
        for name, role, key, absent in _LISTS[op]:
            if role == PARAM:
                out[name] = b.params
            elif role == GRAD:
                out[name] = grads
            else:
                out[name] = b.lists.get(key, absent)  # type: ignore[arg-type]
        return out

    def _launch(self, b: Bucket, values: dict[str, Any]) -> None:
        """Runs the bucket's step (SGD overrides it: Note [skipped first SGD step])."""
        self._call(b.op, b, values)

    def _call(self, op: str, b: Bucket, values: dict[str, Any], plan: bool = True) -> None:
        """Note [sharded two-phase ops]
        An op whose per-param result needs norms of whole params (LAMB's trust ratio) has
        ``phase`` and ``sq_sums`` arguments. For a bucket of shards (FSDP2), phase 1 writes each
        shard's sums of squares into sq_sums (one row per param), which are all-reduced over
        the ranks holding the other shards before phase 2 applies them; other buckets run
        phase 0, both at once."""
        if b.sharded and "sq_sums" in OPS[op].names:
            sq_sums = torch.zeros((len(b.params), 2), dtype=torch.float64, device=b.device)
            self._call_once(op, b, {**values, "phase": 1, "sq_sums": sq_sums}, plan)
            _dtensor.all_reduce(sq_sums, b.mesh_dims)  # type: ignore[arg-type]
            values = {**values, "phase": 2, "sq_sums": sq_sums}
        self._call_once(op, b, values, plan)

    def _call_once(self, op: str, b: Bucket, values: dict[str, Any], plan: bool) -> None:
        """``fn(*OPS[op].bind(**values))``, or the same call through the bucket's StepPlan,
        in eager mode on the compiled backends (Note [C++ step plans] in csrc/plan.cpp: only
        the grads cross from Python); torch.compile traces the op itself, and the Triton and
        reference backends are Python."""
        args = OPS[op].bind(**values)
        cplan = self._step_plan(b) if plan and op == b.op else None
        if cplan is None:
            _dispatch.kernel(b.backend, op)(*args)
            return
        _, grads, rest = _PLAN[op]
        cplan.call(args[grads], *(args[i] for i in rest))

    def _step_plan(self, b: Bucket) -> Any:
        """The bucket's StepPlan over its lists (made once per plan), or None."""
        if b.backend not in ("cpu", "cuda") or torch.compiler.is_compiling():
            return None
        if b.cplan is None:
            lists = self._lists(b.op, b, None)
            eligible, steps = _ONE_RANGE[b.op]
            # Stochastic rounding draws its bits by the index within each param: never one range.
            flat = eligible and "sr_seed" not in b.lists and b.device.type == "cpu"
            b.cplan = _dispatch.step_plan(b.op, [lists[n] for n in _PLAN[b.op][0]], flat, steps)
        return b.cplan

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
        if amp is not None:
            work, total = amp
        else:  # clipping reads the grads, and torch.compile traces the op: grads from Python
            own = self.max_grad_norm is None and not torch.compiler.is_compiling()
            work, total = self._plan_work(own_grads=own), None
        grad_scale, found_inf = self._amp_scale(work, total)
        for group, b, bgrads in work:
            lr = group["lr"]
            if not isinstance(lr, Tensor):
                lr = torch.tensor(lr, dtype=torch.float64)
            lr, gs, fi = self._on_device(b, lr, grad_scale, found_inf)
            values = {
                **self._lists(b.op, b, bgrads),
                **self._scalars(group),
                "lr": lr,
                "grad_scale": gs,
                "found_inf": fi,
            }
            try:
                self._launch(b, values)
            except RuntimeError:
                if bgrads is not None and any(g.is_sparse for g in bgrads):
                    raise RuntimeError(self._sparse_error) from None
                raise
        return loss


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


def group_defaults(args: dict[str, Any]) -> dict[str, Any]:
    """The param-group defaults of a constructor from its ``locals()`` ``args``, taken before
    anything but its arguments is assigned: every argument but ``params`` and the
    optimizer-wide ``options``, in order, as validated (the betas as floats)."""
    skip = ("self", "params", "options", "__class__")
    return {k: v for k, v in args.items() if k not in skip}


def _with_options(cls: type, init: Callable[..., None]) -> Callable[..., None]:
    """Note [optimizer-wide options]
    Every constructor ends with the same keyword-only options (backend, max_grad_norm, the
    mixed-precision options, fused_amp: ``cls._options`` of _OPTIONS), handled by the base
    class. A constructor takes them as ``**options``; this wraps it so that its signature
    (``inspect.signature``) names them in place of ``**options``, with their defaults, and any
    other keyword raises Python's TypeError before the constructor runs."""
    sig = inspect.signature(init)
    params = list(sig.parameters.values())
    if not params or params[-1].kind is not inspect.Parameter.VAR_KEYWORD:
        return init
    names = set(sig.parameters) - {params[-1].name}
    allowed = set(cls._options)  # type: ignore[attr-defined]
    kw = inspect.Parameter.KEYWORD_ONLY
    options = [
        inspect.Parameter(k, kw, default=_OPTIONS[k], annotation=_OPTION_TYPES[k])
        for k in _OPTIONS
        if k in allowed
    ]

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        for k in kwargs:
            if k not in names and k not in allowed:
                raise TypeError(f"{init.__qualname__}() got an unexpected keyword argument {k!r}")
        init(self, *args, **kwargs)

    checked.__signature__ = sig.replace(parameters=params[:-1] + options)  # type: ignore[attr-defined]
    return checked


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
