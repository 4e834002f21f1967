"""Which optimizers get benchmark rows, their implementations, and their bytes models.

Note [bytes models]
An optimizer step is memory-bound, so the benchmark's figure of merit is bytes moved per second
against the machine's measured bandwidth. A bytes model counts the DRAM traffic of one step per
parameter as the fewest bytes any implementation must move: every array read once and every
array written once, with nothing left in cache from the previous step. An implementation that
makes more passes (torch's for-loop and foreach run one pass per arithmetic op) moves more than
the model and shows up as a lower GB/s: the model is what the work *needs*, not what a given
implementation does. Per-tensor scalars (the ``step`` counter) are ignored. State is kept in the
param's dtype, as torch.optim does, so bf16 params halve every count. An optimizer whose pass
structure is not known is marked as an estimate; an optimizer that cannot be one pass (LAMB: its
trust ratio needs per-tensor norms before the update) counts the passes its kernel makes.

To add an optimizer: write its bytes model as a function here, then one OptimizerSpec entry in
OPTIMIZERS. It gets rows as soon as ``fusedopt`` has a class of that name, here and in the GPU
benchmark (benchmarks/gpu_bench.py).

Note [train loop]
The ``train-loop`` rows time the optimizer's part of one mixed-precision training iteration, end
to end, as users write it -- not one ``step()``. Every row holds a torch.amp.GradScaler whose grads
are scaled by it (``scaler.scale(grads)``: what ``scaler.scale(loss).backward()`` leaves in
``.grad``) and an lr schedule of linear warmup + cosine decay, and runs, timed:
  torch-fused / torch-foreach (torch.optim.AdamW(fused=True) / (foreach=True)):
      scaler.unscale_(opt); clip_grad_norm_(params, 1.0); scaler.step(opt); scaler.update();
      sched.step()                    # torch.optim.lr_scheduler.LambdaLR, host-side lr
  fusedopt (fusedopt.AdamW(lr=torch.tensor(...), max_grad_norm=1.0), fusedopt.amp.GradScaler):
      scaler.step(opt); scaler.update(); sched.step()
                                      # fusedopt.schedules.WarmupCosine(device=True)
fusedopt sets ``_step_supports_amp_scaling``, so GradScaler hands it grad_scale and found_inf and
the update kernel unscales; the clip factor comes from one fused sum-of-squares reduction over
the grads inside the step and rides into the update (Note [clipping inside the step] in
fusedopt/optim/_norms.py), and fusedopt.amp.GradScaler (torch's GradScaler, subclassed) takes
its inf check from that same sum instead of its own pass over the grads (Note [inf check in the
norm pass]). Every row has its own GradScaler with torch's defaults.

The steps modify the grads in place (torch's unscale and clip), so before every step, untimed,
``TrainLoop.prepare`` copies the scaled grads back: every step, of every row, starts from the same
scaled grads. (The copy leaves the end of the grad list in the last-level cache; on ``gpt`` the
step's first pass, reading from the start, has mostly evicted it by the time it gets there, and it
does so alike for every row.) The grads' global norm is ~0.01 * sqrt(params) >> 1, so clipping is active, and
all grads are finite, so no step is skipped. Only the bytes the work needs go into ``B/param``
(``train_loop_bytes``, as for every other row); what each implementation moves is in
``TRAIN_LOOP_MOVED``, reported under the table.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import torch
from torch import Tensor

import fusedopt


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def adamw_bytes(dtype: torch.dtype) -> float:
    """AdamW (and Adam): read p, g, exp_avg, exp_avg_sq; write p, exp_avg, exp_avg_sq.

    7 arrays: 28 B/param in fp32, 14 B/param with bf16 params and state.
    """
    return 7 * _itemsize(dtype)


def sgd_momentum_bytes(dtype: torch.dtype) -> float:
    """SGD with momentum: read p, g, momentum_buffer; write p, momentum_buffer.

    5 arrays: 20 B/param in fp32, 10 B/param in bf16.
    """
    return 5 * _itemsize(dtype)


def lion_bytes(dtype: torch.dtype) -> float:
    """Lion: read p, g, exp_avg; write p, exp_avg. 5 arrays: 20 B/param in fp32."""
    return 5 * _itemsize(dtype)


def schedule_free_bytes(dtype: torch.dtype) -> float:
    """Schedule-Free AdamW: read y (the param), g, z, exp_avg_sq; write y, z, exp_avg_sq.

    7 arrays: 28 B/param in fp32, as AdamW (z takes exp_avg's place). schedulefree's foreach
    path makes about ten passes (exp_avg_sq *=, addcmul, denom = div, sqrt, +eps, grad /=, +wd*y,
    lerp, y +=, z -=), each reading or writing whole lists.
    """
    return 7 * _itemsize(dtype)


def sophia_bytes(dtype: torch.dtype) -> float:
    """SophiaG ``step()``: read p, g, exp_avg, hessian; write p, exp_avg (hessian is read-only).

    6 arrays: 24 B/param in fp32. ``update_hessian()`` (read g, hessian; write hessian: 12 B/param)
    runs every k steps in training and is not part of the timed step.
    """
    return 6 * _itemsize(dtype)


def lamb_bytes(dtype: torch.dtype) -> float:
    """LAMB: the trust ratio ||p|| / ||u|| is known only after a whole tensor is seen, so the
    kernel makes two passes (csrc/cpu/lamb.cpp, Note [LAMB passes]), recomputing u in the second
    rather than storing it:
      pass 1: read p, g, exp_avg, exp_avg_sq; write exp_avg, exp_avg_sq; reduce ||p||, ||u||  (6)
      pass 2: read p, exp_avg, exp_avg_sq; recompute u; write p                              (4)
    10 arrays: 40 B/param in fp32, 20 B/param in bf16. With ``max_grad_norm`` a first pass reads
    g for the global norm (11 arrays); the benchmark uses the default (None).
    """
    return 10 * _itemsize(dtype)


def adafactor_bytes(dtype: torch.dtype) -> float:
    """Adafactor on a matrix: the update needs the row and column means of g^2 over the whole
    matrix, and its RMS over the whole update, before any element of p may change, so the
    kernel makes three passes over each param (csrc/cpu/adafactor.cpp, Note [Adafactor passes]):
      pass 1: read p, g; reduce sum p^2, the row and the column sums of g^2   (2, memory)
      pass 2: read g; reduce sum u^2                                         (cache)
      pass 3: read p, g; write p, u recomputed                               (1, memory)
    u = g min(a_i b_j, rsqrt(eps1^2)) from per-row and per-column factors (Note [factored
    direction] in csrc/include/fusedopt/math.h): two products and a min, so it is recomputed in
    pass 3 rather than stored by pass 2 and read back (8 B/param less traffic with the cache).
    Each thread runs all three passes of one param before the next, so passes 2 and 3 read p
    and g from the cache pass 1 left them in: 3 arrays from and to memory, 12 B/param in fp32
    (the row/column statistics are O(m + n)), the fewest any implementation can move. A param
    too large for that (over 4M elements, or over a thread's share of the call) is stepped
    pass by pass by all threads and moves 6 arrays (24 B/param). A vector (bias, norm weight)
    also reads and writes its variance; a GPT's vectors are under 0.5% of its params.
    torch's foreach step moves about 21 arrays per matrix element (84 B/param in fp32).
    """
    return 3 * _itemsize(dtype)


def adamw_8bit_bytes(dtype: torch.dtype) -> float:
    """AdamW with 8-bit moments (Note [8-bit states] in fusedopt/reference/quant.py): read p, g
    and the two uint8 codes, write p and the codes (3S + 4), and each block of 256 elements
    reads and writes its two fp32 absmax (16 / 256). 16.06 B/param for fp32 params, against 28
    with fp32 moments: a memory-bound step should take about 0.57 of the fp32 one's time."""
    return 3 * _itemsize(dtype) + 4 + 16 / 256


def momentum_8bit_bytes(dtype: torch.dtype) -> float:
    """Lion or SGD (momentum) with an 8-bit momentum (Note [8-bit states]): read p, g and the
    uint8 codes, write p and the codes (3S + 2), and each block of 256 elements reads and writes
    its fp32 absmax (8 / 256). 14.03 B/param for fp32 params, against 20 with an fp32 momentum
    (lion_bytes, sgd_momentum_bytes): a memory-bound step should take about 0.70 of the fp32
    one's time. (SGD's first step does not read the codes: 13 B.)"""
    return 3 * _itemsize(dtype) + 2 + 8 / 256


def _8bit_rows(cls: str, kw: dict[str, Any]) -> Callable[[str], dict[str, Factory]]:
    """fusedopt's ``cls`` with 8-bit states, and with fp32 states, the ratio's base (a GPT's
    vectors under 4,096 elements keep fp32 states in both, as in bitsandbytes)."""

    def rows(label: str) -> dict[str, Factory]:
        backend = fusedopt_backend()
        make = getattr(fusedopt, cls)
        return {
            label: lambda ps: make(ps, state_dtype="int8_blockwise", backend=backend, **kw),
            "fusedopt-fp32": lambda ps: make(ps, backend=backend, **kw),
        }

    return rows


def _bitsandbytes(cls: str, kw: dict[str, Any]) -> Factory:
    def make(ps: list[Tensor]) -> Any:
        import bitsandbytes as bnb

        return getattr(bnb.optim, cls)(ps, **kw)

    return make


def _torch_adafactor(**flags: bool) -> Factory:
    return lambda ps: torch.optim.Adafactor(ps, lr=1e-2, **flags)


# -- fp32 master weights for bf16 params (Note [mixed precision] in fusedopt/math.h) ------------


def muon_bytes(dtype: torch.dtype) -> float:
    """Muon's elementwise passes (csrc/cpu/muon.cpp): the momentum op reads g, b and writes b
    and the bf16 matrix (3S + 2); the update op reads p and O and writes p (3S), and O is
    first converted from the bf16 stack into the params' dtype (2 + S) unless that is bf16.
    The Newton-Schulz matmuls (bf16, 5 iterations of three batched products) are compute-bound
    and dominate: this model is not what bounds the step (benchmarks/README.md, Muon)."""
    s = _itemsize(dtype)
    return 3 * s + 2 + 3 * s + (0 if dtype == torch.bfloat16 else 2 + s)


def _torch_muon(kw: Mapping[str, Any]) -> Factory:
    return lambda ps: torch.optim.Muon(ps, **kw)


def master_weights_bytes(dtype: torch.dtype) -> float:
    """AdamW with fp32 master weights and fp32 moments for half-precision params, in one pass:
    read g (half), master, exp_avg, exp_avg_sq (fp32); write master, exp_avg, exp_avg_sq (fp32)
    and the rounded param (half; never read). 2 + 12 + 12 + 2 = 28 B/param for bf16 params.
    """
    h = _itemsize(dtype)
    return h + 3 * 4 + 3 * 4 + h


def master_weights_torch_moved(dtype: torch.dtype) -> float:
    """torch has no master-weights option; the recipe (apex, Megatron) keeps fp32 copies with
    fp32 grads beside the half-precision model and copies both ways around the fused step:
      torch._foreach_copy_(master grads, grads)   read g (half), write fp32 g     (h + 4)
      AdamW(fused=True) on the masters            adamw_bytes(fp32)               (28)
      torch._foreach_copy_(params, masters)       read master, write param        (4 + h)
    40 B/param for bf16 params.
    """
    h = _itemsize(dtype)
    return (h + 4) + adamw_bytes(torch.float32) + (4 + h)


class MasterCopyStep:
    """torch's way to fp32 master weights (master_weights_torch_moved) as ``step()``."""

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.masters = [p.detach().float() for p in params]
        for m, p in zip(self.masters, params):
            m.grad = p.grad.float()
        self.opt = torch.optim.AdamW(self.masters, lr=1e-3, fused=True)

    def step(self) -> None:
        torch._foreach_copy_([m.grad for m in self.masters], [p.grad for p in self.params])
        self.opt.step()
        torch._foreach_copy_([p.detach() for p in self.params], self.masters)


def master_weights_rows(label: str) -> dict[str, Factory]:
    backend = fusedopt_backend()
    return {
        label: lambda ps: fusedopt.AdamW(ps, lr=1e-3, master_weights=True, backend=backend),
        "torch-fused": MasterCopyStep,
    }


# -- the end-to-end rows: unscale + clip + AdamW step + scheduler (Note [train loop]) ------------
# Per param, in arrays of the param's dtype (x4 for fp32 bytes). Each count was read off the code
# that runs: torch 2.x torch/amp/grad_scaler.py, torch/nn/utils/clip_grad.py, torch/optim/adam.py
# and ATen's CPU kernels; fusedopt/optim/ and csrc/.


def train_loop_bytes(dtype: torch.dtype) -> float:
    """unscale + clip + AdamW, the traffic the work needs: the clip factor needs the global norm
    of all grads before any param is updated, so two passes are the minimum:
      1. read g: sum of squares of the scaled grads (an inf/NaN grad makes it non-finite, so
         this pass is also GradScaler's inf check)                                          (1)
      2. AdamW's pass, with 1/scale and the clip factor applied to g in registers           (7)
    8 arrays: 32 B/param in fp32. This is the ``B/param`` of every train-loop row.
    """
    return adamw_bytes(dtype) + _itemsize(dtype)


def train_loop_torch_fused_moved(dtype: torch.dtype) -> float:
    """What torch moves with AdamW(fused=True):
      scaler.unscale_: torch._amp_foreach_non_finite_check_and_unscale_ (read g, write g)  (2)
      clip_grad_norm_: torch._foreach_norm (read g)                                         (1)
          then torch._foreach_mul_(grads, coef), unconditionally, also when coef is 1
          (no host sync to test it)                                    (read g, write g)  (2)
      scaler.step: torch._fused_adamw_, grad_scale None (already unscaled)                  (7)
    12 arrays: 48 B/param in fp32.
    """
    return 12 * _itemsize(dtype)


def train_loop_fusedopt_moved(dtype: torch.dtype) -> float:
    """What fusedopt moves with AdamW(max_grad_norm=...) and fusedopt.amp.GradScaler:
      scaler.step: the inf check is fusedopt's sum_sq over the grads (Note [inf check in the
          norm pass]), kept for the clip                  (read g)                         (1)
      opt.step: the AdamW kernel, unscaling and clipping g in registers                     (7)
    8 arrays: 32 B/param in fp32, what the work needs (train_loop_bytes). With torch's
    GradScaler instead, its _check_inf_per_device runs _amp_foreach_non_finite_check_and_unscale_
    with inv_scale 1.0, which reads and writes every grad: 40 B/param.
    """
    return 8 * _itemsize(dtype)


def train_loop_torch_foreach_moved(dtype: torch.dtype) -> float:
    """What torch moves with AdamW(foreach=True) (weight decay on, not capturable): the unscale
    and clip passes of train_loop_torch_fused_moved (5), then one pass per foreach op of
    _multi_tensor_adam:
      _foreach_mul_(p, 1 - lr*wd)                         (read p, write p)                (2)
      _foreach_lerp_(exp_avg, g, 1 - beta1)               (read m, g; write m)             (3)
      _foreach_mul_(exp_avg_sq, beta2)                    (read v, write v)                (2)
      _foreach_addcmul_(exp_avg_sq, g, g, 1 - beta2)      (read v, g; write v)             (3)
      d = _foreach_sqrt(exp_avg_sq)                       (read v, write d: a new tensor)  (2)
      _foreach_div_(d, sqrt(bias_correction2)); _foreach_add_(d, eps)       (2 x 2 passes) (4)
      _foreach_addcdiv_(p, exp_avg, d, step_size)         (read p, m, d; write p)          (4)
    25 arrays: 100 B/param in fp32 (GradScaler's step does no pass here: torch's foreach AdamW
    does not support AMP scaling, so step() reads found_inf on the host and calls opt.step()).
    """
    return 25 * _itemsize(dtype)


#: Bytes each train-loop row moves (more than train_loop_bytes: GradScaler and clip_grad_norm_
#: make passes of their own), by row name; reported under the table.
TRAIN_LOOP_MOVED: Mapping[str, Callable[[torch.dtype], float]] = MappingProxyType(
    {
        "fusedopt": train_loop_fusedopt_moved,
        "torch-fused": train_loop_torch_fused_moved,
        "torch-foreach": train_loop_torch_foreach_moved,
    }
)


class Steppable(Protocol):
    """What a row times: ``step()``. A row may also have ``prepare()``, run untimed before each
    step (TrainLoop restores its grads there)."""

    def step(self) -> Any: ...


Factory = Callable[[list[Tensor]], Steppable]


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer's benchmark rows.

    name: the fusedopt class (``fusedopt.<name>``); rows appear only when it exists.
    bytes_model: bytes per parameter moved by one step, given the param dtype (Note [bytes models]).
    workloads: the workloads it runs on (names from workloads.py).
    kwargs: hyperparameters, passed to every implementation.
    torch_name: the torch.optim class, which adds the rows torch-forloop (foreach=False),
        torch-foreach (foreach=True) and torch-fused (fused=True) -- the last is the baseline of
        the ratio column. Without it, fusedopt's own reference backend (plain PyTorch) is the
        comparison row.
    extra: more implementations by row name, e.g. a torch._foreach version of the update.
    setup: called once per optimizer after the grads are set, before warm-up (e.g. Sophia's
        ``update_hessian`` so its hessian state is not all zeros).
    estimate: the bytes model is an estimate (marked "~" in the table).
    rows: builds every row itself, given the fusedopt row's name, instead of the rows above
        (the end-to-end train-loop rows, which time more than ``opt.step``).
    requires: what must exist under ``fusedopt`` for the rows to appear (dotted names);
        default: ``(name,)``.
    moved: bytes per parameter each row actually moves, by row name, where it differs from
        ``bytes_model`` (the rows that make extra passes by design); noted under the table.
    baseline: the row the ``vs fused`` column divides by (noted under the table when it is not
        torch-fused).
    """

    name: str
    bytes_model: Callable[[torch.dtype], float]
    workloads: tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    torch_name: str | None = None
    extra: Mapping[str, Factory] = field(default_factory=dict)
    setup: Callable[[torch.optim.Optimizer], None] | None = None
    estimate: bool = False
    rows: Callable[[str], dict[str, Factory]] | None = None
    requires: tuple[str, ...] = ()
    moved: Mapping[str, Callable[[torch.dtype], float]] = field(default_factory=dict)
    baseline: str = "torch-fused"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        object.__setattr__(self, "moved", MappingProxyType(dict(self.moved)))
        object.__setattr__(self, "requires", self.requires or (self.name,))


def _update_hessian(opt: torch.optim.Optimizer) -> None:
    if hasattr(opt, "update_hessian"):
        opt.update_hessian()


# The train loop's settings (Note [train loop]): the usual clip norm, and a schedule whose warmup
# ends within the warm-up and timed steps of a run, so both branches of the formula are exercised.
CLIP_NORM = 1.0
TRAIN_LOOP_LR = 1e-3
SCHEDULE_WARMUP_STEPS = 5
SCHEDULE_TOTAL_STEPS = 100_000


class TrainLoop:
    """The optimizer's part of one AMP training iteration (Note [train loop]) as ``step()``.

    ``clip_norm`` set: the torch way (``scaler.unscale_`` and ``clip_grad_norm_`` before
    ``scaler.step``); None: the optimizer clips and unscales inside its step. The grads found in
    ``params`` are scaled by a fresh GradScaler and kept; ``prepare()`` copies them back.
    """

    def __init__(
        self,
        params: list[Tensor],
        opt: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        clip_norm: float | None,
        scaler_cls: type = torch.amp.GradScaler,
    ) -> None:
        self.params = params
        self.opt = opt
        self.scheduler = scheduler
        self.clip_norm = clip_norm
        self.scaler = scaler_cls(params[0].device.type)
        # As backward() of scaler.scale(loss) would leave them: every grad times the scale (2^16).
        self.scaled_grads: list[Tensor] = self.scaler.scale([p.grad for p in params])
        self.prepare()

    def prepare(self) -> None:
        """Untimed, before each step: the scaled grads, as the next backward would leave them."""
        torch._foreach_copy_([p.grad for p in self.params], self.scaled_grads)

    def step(self) -> None:
        if self.clip_norm is not None:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.scheduler.step()


def _torch_train_loop(**flags: bool) -> Factory:
    def make(ps: list[Tensor]) -> TrainLoop:
        from fusedopt.schedules import warmup_cosine

        opt = torch.optim.AdamW(ps, lr=TRAIN_LOOP_LR, **flags)
        factor = functools.partial(
            warmup_cosine,
            base_lr=1.0,
            warmup_steps=SCHEDULE_WARMUP_STEPS,
            total_steps=SCHEDULE_TOTAL_STEPS,
        )
        return TrainLoop(ps, opt, torch.optim.lr_scheduler.LambdaLR(opt, factor), CLIP_NORM)

    return make


def _fusedopt_train_loop(ps: list[Tensor]) -> TrainLoop:
    from fusedopt.schedules import WarmupCosine

    opt = fusedopt.AdamW(
        ps,
        lr=torch.tensor(TRAIN_LOOP_LR),
        max_grad_norm=CLIP_NORM,
        backend=fusedopt_backend(),
    )
    sched = WarmupCosine(opt, SCHEDULE_WARMUP_STEPS, SCHEDULE_TOTAL_STEPS, device=True)
    return TrainLoop(ps, opt, sched, clip_norm=None, scaler_cls=fusedopt.amp.GradScaler)


def train_loop_rows(label: str) -> dict[str, Factory]:
    """The train-loop rows: fusedopt in one pass, torch as users write it (Note [train loop])."""
    return {
        label: _fusedopt_train_loop,
        "torch-fused": _torch_train_loop(fused=True),
        "torch-foreach": _torch_train_loop(foreach=True),
    }


# -- peers: what users would pick instead of fusedopt (Note [peers]) ----------------------------
#
# Note [peers]
# Besides torch.optim's three implementations, a row for each CPU optimizer a user could pick
# instead, where its package is installed: DeepSpeed's DeepSpeedCPUAdam / DeepSpeedCPULion (what
# ZeRO-Offload steps on the host), lion-pytorch's Lion, and torch.optim's step under
# torch.compile. Each gets the same hyperparameters as the fusedopt row (betas and weight decay
# passed explicitly where the peer's defaults differ) and keeps its state in the params' dtype.
# Setup that happens once, on first use -- DeepSpeed JIT-builds its C++ op when the optimizer is
# built, torch.compile compiles on the first step -- runs before the warm-up, untimed, and is
# reported under the table. Those two are slow to set up (tens of seconds to minutes), so they
# run only with ``--peers``; a peer whose package is missing is listed as not installed.


class Peer:
    """A peer package: its name, the module it needs, whether its setup is slow (then its rows
    run only with ``--peers``), and (row name, factory) per optimizer spec name."""

    def __init__(
        self, name: str, module: str, pip: str, slow: bool, rows: dict[str, tuple[str, Factory]]
    ) -> None:
        self.name, self.module, self.pip, self.slow = name, module, pip, slow
        self.rows = rows

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


class _Timed:
    """A peer row whose construction plus first step (JIT build, compile) is its setup time."""

    def __init__(self, make: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        self.opt = make()
        self.opt.step()
        self.setup_seconds = time.perf_counter() - t0

    def step(self) -> None:
        self.opt.step()


def _deepspeed(kind: str, kw: Mapping[str, Any]) -> Factory:
    def make(ps: list[Tensor]) -> _Timed:
        def build() -> Any:
            if kind == "adam":
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                return DeepSpeedCPUAdam(ps, adamw_mode=True, fp32_optimizer_states=False, **kw)
            from deepspeed.ops.lion import DeepSpeedCPULion

            return DeepSpeedCPULion(ps, fp32_optimizer_states=False, **kw)

        return _Timed(build)

    return make


def _schedulefree_foreach(ps: list[Tensor]) -> Any:
    """schedulefree's AdamWScheduleFree on its foreach path (its default), the package users
    run; in train mode by the spec's setup."""
    from schedulefree import AdamWScheduleFree

    return AdamWScheduleFree(ps, foreach=True, **SCHEDULE_FREE_KW)


def _train_mode(opt: Any) -> None:
    opt.train()  # a schedule-free optimizer steps only in train mode


def _lion_pytorch(kw: Mapping[str, Any]) -> Factory:
    def make(ps: list[Tensor]) -> Any:
        from lion_pytorch import Lion

        return Lion(ps, use_triton=False, **kw)

    return make


class _CompiledStep:
    """torch.optim's step under torch.compile (the recipe of torch's "compiling the optimizer"
    tutorial); the first call compiles."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt
        self._step = torch.compile(opt.step, fullgraph=False)

    def step(self) -> None:
        self._step()


def _torch_compiled(name: str, kw: Mapping[str, Any]) -> Factory:
    def make(ps: list[Tensor]) -> _Timed:
        return _Timed(lambda: _CompiledStep(getattr(torch.optim, name)(ps, **kw)))

    return make


ADAMW_KW = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
LION_KW = {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}
SGD_KW = {"lr": 1e-2, "momentum": 0.9}
SCHEDULE_FREE_KW = {"lr": 2.5e-3, "weight_decay": 0.01, "warmup_steps": 100}

PEERS: tuple[Peer, ...] = (
    Peer(
        "deepspeed", "deepspeed", "deepspeed", True,
        {
            "AdamW": ("deepspeed-cpuadam", _deepspeed("adam", ADAMW_KW)),
            "Lion": ("deepspeed-cpulion", _deepspeed("lion", LION_KW)),
        },
    ),
    Peer(
        "lion-pytorch", "lion_pytorch", "lion-pytorch", False,
        {"Lion": ("lion-pytorch", _lion_pytorch(LION_KW))},
    ),
    Peer(
        "bitsandbytes", "bitsandbytes", "bitsandbytes", False,
        {
            "AdamW-8bit": ("bitsandbytes", _bitsandbytes("AdamW8bit", ADAMW_KW)),
            "Lion-8bit": ("bitsandbytes", _bitsandbytes("Lion8bit", LION_KW)),
            "SGD-8bit": ("bitsandbytes", _bitsandbytes("SGD8bit", SGD_KW)),
        },
    ),
    Peer(
        "torch.compile", "torch", "torch", True,
        {
            "AdamW": ("torch-compiled", _torch_compiled("AdamW", ADAMW_KW)),
            "SGD": ("torch-compiled", _torch_compiled("SGD", {"lr": 1e-2, "momentum": 0.9})),
        },
    ),
)  # fmt: skip
# torch.compile traces one graph over every tensor: on `tiny` (2,000 tensors) that compile takes
# many minutes, so the compiled rows run on the other workloads only.
PEER_WORKLOADS = {"torch.compile": ("flat", "gpt", "gpt-bf16")}


def peer_status(peers: bool) -> list[str]:
    """One line per peer: installed (and run or not), or not installed."""
    out = []
    for peer in PEERS:
        if not peer.installed():
            out.append(f"{peer.name}: not installed (pip install {peer.pip})")
        elif peer.slow and not peers:
            out.append(f"{peer.name}: installed, not run (slow setup: pass --peers)")
    return out


def peer_rows(spec: OptimizerSpec, workload: str, peers: bool) -> dict[str, Factory]:
    """The peer rows of ``spec`` on ``workload``: installed peers, the slow ones with ``peers``."""
    out = {}
    for peer in PEERS:
        if spec.name not in peer.rows or (peer.slow and not peers) or not peer.installed():
            continue
        if workload in PEER_WORKLOADS.get(peer.name, (workload,)):
            name, factory = peer.rows[spec.name]
            out[name] = factory
    return out


def _8bit_spec(
    cls: str,
    model: Callable[[torch.dtype], float],
    kw: dict[str, Any],
    fp32: Callable[[torch.dtype], float],
) -> OptimizerSpec:
    """The ``<cls>-8bit`` row: fusedopt's ``cls`` with 8-bit states (bytes ``model``) against
    itself with fp32 states (``fp32``) in the same run, on the GPT-like list."""
    return OptimizerSpec(
        f"{cls}-8bit",
        model,
        ("gpt",),
        rows=_8bit_rows(cls, kw),
        requires=(cls, "state_bytes"),
        moved={"fusedopt-fp32": fp32},
        baseline="fusedopt-fp32",
    )


OPTIMIZERS: tuple[OptimizerSpec, ...] = (
    OptimizerSpec(
        "AdamW",
        adamw_bytes,
        ("flat", "gpt", "tiny", "tiny-flat", "gpt-bf16"),
        {"lr": 1e-3},
        torch_name="AdamW",
    ),
    OptimizerSpec("SGD", sgd_momentum_bytes, ("gpt",), SGD_KW, torch_name="SGD"),
    OptimizerSpec("Lion", lion_bytes, ("gpt",), {"lr": 1e-4}),
    OptimizerSpec(
        "ScheduleFreeAdamW",
        schedule_free_bytes,
        ("gpt",),
        SCHEDULE_FREE_KW,
        extra={"schedulefree-foreach": _schedulefree_foreach},
        setup=_train_mode,
    ),
    OptimizerSpec("LAMB", lamb_bytes, ("gpt",), {"lr": 1e-3}),
    OptimizerSpec("Sophia", sophia_bytes, ("gpt",), {"lr": 1e-4}, setup=_update_hessian),
    # torch.optim.Adafactor has no fused=True: its default (the for-loop) and foreach=True
    OptimizerSpec(
        "Adafactor",
        adafactor_bytes,
        ("gpt",),
        {"lr": 1e-2},
        extra={
            "torch-forloop": _torch_adafactor(),
            "torch-foreach": _torch_adafactor(foreach=True),
        },
    ),
    # torch.optim.Muon has only its for-loop (foreach=True raises): that is its row.
    OptimizerSpec(
        "Muon",
        muon_bytes,
        ("gpt-2d",),
        {"lr": 0.02},
        extra={"torch-forloop": _torch_muon({"lr": 0.02})},
    ),
    OptimizerSpec(
        "AdamW-master",
        master_weights_bytes,
        ("gpt-bf16",),
        rows=master_weights_rows,
        requires=("AdamW",),
        moved={"torch-fused": master_weights_torch_moved},
    ),
    _8bit_spec("AdamW", adamw_8bit_bytes, ADAMW_KW, adamw_bytes),
    _8bit_spec("Lion", momentum_8bit_bytes, LION_KW, lion_bytes),
    _8bit_spec("SGD", momentum_8bit_bytes, SGD_KW, sgd_momentum_bytes),
    OptimizerSpec(
        "train-loop",
        train_loop_bytes,
        ("gpt",),
        rows=train_loop_rows,
        requires=("AdamW", "schedules.WarmupCosine", "amp.GradScaler"),
        moved=TRAIN_LOOP_MOVED,
    ),
)

BASELINE = "torch-fused"


def _exists(dotted: str) -> bool:
    obj: Any = fusedopt
    for part in dotted.split("."):
        if not hasattr(obj, part):
            try:  # a submodule not imported by fusedopt/__init__.py
                importlib.import_module(f"{obj.__name__}.{part}")
            except ImportError:
                return False
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return True


def available(specs: tuple[OptimizerSpec, ...] = OPTIMIZERS) -> list[OptimizerSpec]:
    """The specs whose fusedopt class (or whatever they require) exists in this version."""
    return [s for s in specs if all(_exists(r) for r in s.requires)]


def fusedopt_backend() -> str:
    """The backend of the "fusedopt" rows: the compiled CPU kernels when they are available."""
    return "cpu" if fusedopt.backends()["cpu"].available else "reference"


def implementations(spec: OptimizerSpec) -> dict[str, Factory]:
    """Row name -> factory building that implementation of ``spec`` over a list of params."""
    backend = fusedopt_backend()
    label = "fusedopt" if backend == "cpu" else "fusedopt-reference"
    if spec.rows is not None:
        return {**spec.rows(label), **spec.extra}
    cls = getattr(fusedopt, spec.name)
    kw = dict(spec.kwargs)
    impls: dict[str, Factory] = {label: lambda ps: cls(ps, backend=backend, **kw)}
    if spec.torch_name is not None:
        tcls = getattr(torch.optim, spec.torch_name)
        impls["torch-forloop"] = lambda ps: tcls(ps, foreach=False, **kw)
        impls["torch-foreach"] = lambda ps: tcls(ps, foreach=True, **kw)
        impls["torch-fused"] = lambda ps: tcls(ps, fused=True, **kw)
    elif backend == "cpu":
        impls["fusedopt-reference"] = lambda ps: cls(ps, backend="reference", **kw)
    impls.update(spec.extra)
    return impls
