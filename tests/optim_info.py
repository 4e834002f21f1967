"""The tests' optimizer registry, one entry per optimizer (as torch's OptimizerInfo in
torch/testing/_internal/common_optimizers.py): the class, its torch.optim twin, its op, its state,
its named constructor configs and the test matrices each config belongs to, its bad arguments.

The parity, checkpoint, validation, mixed-precision, compile and backend matrices of tests/ are
built from it with ``cases(matrix)`` / ``matrix(name, *fields)``; a config is addressed by name
(``INFO["adam"].configs["all"]``), never by position, so adding one changes no other case. A new
optimizer adds one OptimInfo to OPTIMS with configs in every matrix tests/test_optim_info.py
requires.

Matrices (``Config.use``; "matrix:dtype" puts a config in a per-dtype matrix for that dtype):
  parity         vs torch.optim's for-loop, every backend x dtype        test_parity, test_cuda
  tensor_lr      the same with a Tensor lr (fp32)                         test_parity
  simd           every CPU SIMD level                                     test_parity
  sim_torch      the simulated CUDA kernels vs torch.optim                test_cuda_planner
  wrong_lr       the checker flags an lr 1% too large (kwargs without lr) test_parity
  checkpoint     checkpoints move to and from torch.optim                 test_state_dict
  training       GradScaler / clipping loops vs torch.optim               test_training_loop
  damaged        damaged checkpoints are refused (torch's twin too)       test_state_dict
  compile        fullgraph torch.compile == eager (lr set by the test)    test_compile
  mixed          master weights, SR, state dtypes                         test_mixed_precision
  mixed_checkpoint  checkpoints of every mixed mode                       test_mixed_precision
  fp64ref        every backend x dtype vs the fp64 reference              test_lion_lamb_sophia
  cuda           CPU == CUDA (and its simulation) bit for bit             test_cuda_planner, test_cuda
  cuda_graph     a captured CUDA graph replays == eager                   test_cuda
  triton_torch:<dtype>  Triton vs torch.optim                             test_triton
  triton_ref:<dtype>    Triton vs the reference backend                   test_triton
  triton_cpu     Triton == the CPU backend                                test_triton

Tolerances: ``tolerance`` names the table a parity comparison uses (helpers.TOL_VS_TORCH against
torch.optim, or test_lion_lamb_sophia.bound against the fp64 reference); the tables themselves
stay next to the code that applies them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import schedulefree
import torch

import fusedopt
from fusedopt._opdefs import OPS
from helpers import DTYPE_IDS, make_matrices

_DTYPE_BY_ID = {v: k for k, v in DTYPE_IDS.items()}


@dataclass(frozen=True)
class Config:
    kwargs: dict[str, Any]
    use: tuple[str, ...]
    step: dict[str, Any] = field(default_factory=dict)  # step()'s kwargs (Sophia's bs)


@dataclass(frozen=True)
class OptimInfo:
    name: str  # the test id prefix
    cls: type
    op: str  # its update op in fusedopt._opdefs.OPS
    state_keys: tuple[str, ...]  # per-param state with the default options, in torch's order
    supports: frozenset[str]  # options beyond lr / weight_decay / maximize
    tolerance: str  # "vs_torch" (helpers.TOL_VS_TORCH) or "vs_fp64" (test_lion_lamb_sophia.bound)
    configs: dict[str, Config]
    torch_cls: type | None = None  # torch.optim's twin: the parity judge and the checkpoint partner
    # state a checkpoint may lack (made again at load, as torch or the common twin does)
    optional_state: tuple[str, ...] = ()
    # (kwargs, exception type): refused with torch.optim's exception and message
    bad_args: tuple[tuple[dict[str, Any], type[Exception]], ...] = ()
    # (kwargs, message pattern): refused with a ValueError (no torch.optim twin to compare with)
    bad_args_own: tuple[tuple[dict[str, Any], str], ...] = ()
    # matrix -> the message pattern of the error by which the optimizer refuses that setting
    # (tests/test_optim_info.py excuses it from the matrix, the matrix's test file checks it)
    unsupported: dict[str, str] = field(default_factory=dict)
    # matrix -> why the optimizer is not in it (tests/test_optim_info.py requires a reason)
    exempt: dict[str, str] = field(default_factory=dict)
    # (dtype) -> leaf params, for an optimizer that takes only some layouts (Muon: matrices);
    # the matrices that make their own params (damaged, mixed, the state keys) step these, with
    # grads like them. None: any param (the tests' own lists, vectors and 0-d ones included).
    params: Callable[[torch.dtype], list[torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        assert self.op in OPS, self.op
        keys = {a.key for a in OPS[self.op].args if a.role in ("state", "step", "aux")}
        assert set(self.state_keys) <= keys, (self.name, keys)


class TrainingScheduleFreeAdamW(fusedopt.ScheduleFreeAdamW):
    """fusedopt.ScheduleFreeAdamW put in train mode by its constructor: a schedule-free step
    raises in eval mode (its initial one), and every matrix steps right after constructing."""

    @functools.wraps(fusedopt.ScheduleFreeAdamW.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train()


class TrainingAdamWScheduleFree(schedulefree.AdamWScheduleFree):
    """The judge, schedulefree.AdamWScheduleFree, in train mode from its constructor, stepping
    on copies of the grads, which it divides in place (``grad.div_(denom)``): the matrices hand
    both implementations the same grad tensors."""

    @functools.wraps(schedulefree.AdamWScheduleFree.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        for p in params:
            p.grad = p.grad.clone()
        try:
            return super().step(closure)
        finally:
            for p, g in zip(params, grads):
                p.grad = g


_ADAM_BAD = (
    ({"lr": -1.0}, ValueError),
    ({"lr": torch.tensor([1e-3, 1e-3])}, ValueError),
    ({"eps": -1e-8}, ValueError),
    ({"betas": (1.0, 0.999)}, ValueError),
    ({"betas": (0.9, -0.1)}, ValueError),
    ({"betas": (0.9, torch.tensor(0.999))}, ValueError),
    ({"weight_decay": -0.1}, ValueError),
    ({"fused": True, "foreach": True}, RuntimeError),
)
# What every optimizer takes (beside lr, weight_decay, maximize).
_COMMON = frozenset(
    {"master_weights", "stochastic_rounding", "state_dtype", "tensor_lr", "max_grad_norm"}
)
# What Adam and AdamW share: the op, the state, the options, torch's checks.
_ADAM = {
    "op": "adam_",
    "state_keys": ("step", "exp_avg", "exp_avg_sq"),
    "supports": _COMMON | {"amsgrad"},
    "tolerance": "vs_torch",
    "bad_args": _ADAM_BAD,
}
# What SGD and Muon share: a momentum buffer that a checkpoint may lack (made again, as torch
# does: SGD's from the grad, Muon's from zeros), Nesterov.
_MOMENTUM = {
    "state_keys": ("momentum_buffer",),
    "optional_state": ("momentum_buffer",),
    "supports": _COMMON | {"nesterov"},
}
_ADAM_ALL = {"lr": 3e-2, "weight_decay": 0.05, "amsgrad": True, "maximize": True, "eps": 1e-6}

OPTIMS = [
    OptimInfo(
        name="adam",
        cls=fusedopt.Adam,
        torch_cls=torch.optim.Adam,
        **_ADAM,
        configs={
            "default": Config({"lr": 1e-2}, ("parity", "triton_torch:fp32")),
            "wd": Config({"lr": 1e-2, "weight_decay": 0.1}, ("parity",)),
            "amsgrad": Config({"lr": 1e-2, "amsgrad": True}, ("parity", "checkpoint", "training")),
            "maximize": Config({"lr": 1e-2, "maximize": True}, ("parity",)),
            "all": Config(
                _ADAM_ALL, ("parity", "tensor_lr", "simd", "sim_torch", "triton_torch:bf16")
            ),
            # 1 - beta1 >= 0.5: the other form of torch.lerp
            "lowbetas": Config({"lr": 1e-2, "betas": (0.3, 0.6)}, ("parity", "triton_torch:fp16")),
            "tensor_lr": Config(
                {"lr": torch.tensor(1e-2), "weight_decay": 0.1}, ("triton_torch:fp32",)
            ),
            "wd-amsgrad": Config(
                {"lr": 3e-2, "weight_decay": 0.05, "amsgrad": True}, ("triton_cpu",)
            ),
            "l2": Config({"weight_decay": 0.1}, ("wrong_lr",)),
            "amsgrad-defaults": Config({"amsgrad": True}, ("damaged",)),
            "amsgrad-wd": Config({"amsgrad": True, "weight_decay": 0.1}, ("compile",)),
            "amsgrad-l2": Config({"lr": 1e-2, "amsgrad": True, "weight_decay": 0.01}, ("mixed",)),
        },
    ),
    OptimInfo(
        name="adamw",
        cls=fusedopt.AdamW,
        torch_cls=torch.optim.AdamW,
        **_ADAM,
        configs={
            "default": Config({"lr": 1e-2}, ("parity",)),
            "wd-amsgrad": Config(
                {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True},
                ("parity", "tensor_lr", "simd", "sim_torch", "triton_torch:fp64"),
            ),
            "maximize": Config(
                {"lr": 1e-2, "weight_decay": 0.1, "maximize": True},
                ("parity", "triton_torch:fp32", "triton_cpu"),
            ),
            "wd": Config(
                {"lr": 1e-2, "weight_decay": 0.1},
                ("checkpoint", "training", "mixed", "mixed_checkpoint", "cuda", "cuda_graph"),
            ),
            "wd-only": Config({"weight_decay": 0.1}, ("wrong_lr",)),
            "defaults": Config({}, ("damaged", "compile")),
            "clip": Config({"max_grad_norm": 0.5}, ("compile",)),
            # sum_sq and grad_scale inside the step
            "max_grad_norm": Config({"lr": 1e-2, "max_grad_norm": 0.5}, ("triton_ref:bf16",)),
        },
    ),
    OptimInfo(
        name="sgd",
        cls=fusedopt.SGD,
        torch_cls=torch.optim.SGD,
        op="sgd_",
        **_MOMENTUM,
        tolerance="vs_torch",
        configs={
            "default": Config({"lr": 0.1}, ("parity", "checkpoint", "triton_torch:fp16")),
            "wd-maximize": Config(
                {"lr": 0.1, "weight_decay": 0.1, "maximize": True},
                ("parity", "triton_torch:fp32"),
            ),
            "momentum": Config(
                {"lr": 0.1, "momentum": 0.9},
                ("parity", "checkpoint", "training", "damaged", "triton_torch:bf16"),
            ),
            "dampening": Config(
                {"lr": 0.1, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.01},
                ("parity", "simd", "sim_torch", "triton_torch:fp64"),
            ),
            "nesterov": Config(
                {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True},
                ("parity", "tensor_lr", "sim_torch", "triton_torch:fp32"),
            ),
            "nesterov-plain": Config(
                {"lr": 0.1, "momentum": 0.9, "nesterov": True},
                ("cuda", "cuda_graph", "triton_cpu"),
            ),
            "momentum-wd": Config({"momentum": 0.9, "weight_decay": 0.1}, ("wrong_lr",)),
            "nesterov-maximize": Config(
                {"momentum": 0.9, "nesterov": True, "maximize": True}, ("wrong_lr",)
            ),
            "damp": Config({"dampening": 0.5, "momentum": 0.5}, ("wrong_lr",)),
            "nesterov-defaults": Config({"momentum": 0.9, "nesterov": True}, ("compile",)),
            "plain": Config({}, ("compile",)),
            "mixed-nesterov": Config(
                {"lr": 0.05, "momentum": 0.9, "nesterov": True}, ("mixed", "mixed_checkpoint")
            ),
            # no state at all: states take the params' dtype
            "mixed-plain": Config({"lr": 0.05}, ("mixed",)),
        },
        bad_args=(
            ({"lr": -1.0}, ValueError),
            ({"momentum": -0.5}, ValueError),
            ({"weight_decay": -0.1}, ValueError),
            ({"nesterov": True}, ValueError),
            ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError),
            ({"fused": True, "foreach": True}, RuntimeError),
        ),
    ),
    OptimInfo(
        name="sfadamw",
        cls=TrainingScheduleFreeAdamW,
        torch_cls=TrainingAdamWScheduleFree,
        op="schedule_free_adamw_",
        state_keys=("z", "exp_avg_sq"),
        optional_state=("z",),  # without it, schedulefree starts the param's state over
        supports=_COMMON,
        tolerance="vs_torch",
        configs={
            "default": Config({"lr": 1e-2}, ("parity", "triton_torch:fp32", "cuda")),
            # warmup over the test's steps, r and the lr weight: every scalar of the group
            "warmup-wd": Config(
                {"lr": 1e-2, "weight_decay": 0.05, "warmup_steps": 5, "r": 0.5},
                (
                    "parity",
                    "tensor_lr",
                    "simd",
                    "sim_torch",
                    "checkpoint",
                    "training",
                    "triton_torch:bf16",
                    "triton_cpu",
                ),
            ),
            # ckp1 >= 0.5 at the second step: the other form of torch.lerp
            "lowbeta": Config(
                {"lr": 1e-2, "betas": (0.3, 0.6), "weight_lr_power": 0.0},
                ("parity", "triton_torch:fp16", "triton_torch:fp64"),
            ),
            "wd": Config({"lr": 1e-2, "weight_decay": 0.1}, ("mixed", "mixed_checkpoint")),
            "defaults": Config({}, ("damaged", "compile")),
            # the warmup ends inside the compiled run: the counters are the graph's inputs
            "warmup-r": Config(
                {"weight_decay": 0.05, "warmup_steps": 5, "r": 0.5, "weight_lr_power": 1.5},
                ("compile",),
            ),
        },
        bad_args_own=(
            ({"lr": -1.0}, "Invalid learning rate: -1.0"),
            ({"eps": -1e-8}, "Invalid epsilon value: -1e-08"),
            ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0: 1.0"),
            ({"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
            ({"warmup_steps": -1}, "Invalid warmup_steps value: -1"),
        ),
    ),
    # Lion and Sophia always with non-zero (decoupled) weight decay in the fp64 matrix: a
    # coupled/decoupled mix-up is invisible at zero.
    OptimInfo(
        name="lion",
        cls=fusedopt.Lion,
        op="lion_",
        state_keys=("step", "exp_avg"),
        optional_state=("step",),  # lion-pytorch's and timm's checkpoints have no step
        supports=_COMMON,
        tolerance="vs_fp64",
        configs={
            "wd": Config(
                {"lr": 1e-3, "weight_decay": 0.1},
                ("fp64ref", "mixed", "cuda", "cuda_graph", "triton_ref:fp32", "triton_cpu"),
            ),
            "maximize": Config(
                {"lr": 1e-3, "betas": (0.8, 0.95), "weight_decay": 0.5, "maximize": True},
                ("fp64ref", "triton_ref:bf16"),
            ),
            "tensor_lr": Config({"lr": torch.tensor(2e-3), "weight_decay": 0.1}, ("fp64ref",)),
            "wd0.3": Config(
                {"lr": 1e-3, "weight_decay": 0.3}, ("triton_ref:fp16", "triton_ref:fp64")
            ),
            "defaults": Config({}, ("damaged",)),
            "wd-defaults": Config({"weight_decay": 0.1}, ("compile",)),
        },
        bad_args_own=(
            ({"lr": -1.0}, "Invalid learning rate: -1.0"),
            ({"betas": (1.0, 0.99)}, "Invalid beta parameter at index 0: 1.0"),
            ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
            ({"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
            ({"backend": "gpu"}, "Invalid backend"),
        ),
    ),
    OptimInfo(
        name="lamb",
        cls=fusedopt.LAMB,
        op="lamb_",
        state_keys=("step", "exp_avg", "exp_avg_sq"),
        supports=_COMMON | {"trust_clip", "bias_correction"},
        tolerance="vs_fp64",
        configs={
            "default": Config({"lr": 1e-2}, ("fp64ref", "triton_ref:fp32")),
            "maximize": Config(
                {"lr": 1e-2, "weight_decay": 0.1, "maximize": True},
                ("fp64ref", "triton_ref:fp16"),
            ),
            "max_grad_norm": Config(
                {"lr": torch.tensor(1e-2), "max_grad_norm": 1.0}, ("fp64ref", "triton_ref:fp32")
            ),
            "trust_clip": Config({"lr": 1e-2, "trust_clip": 0.5}, ("fp64ref", "triton_ref:fp64")),
            "no_bias_correction": Config(
                {"lr": 1e-2, "weight_decay": 0.0, "bias_correction": False},
                ("fp64ref", "triton_ref:bf16"),
            ),
            "clip": Config({"lr": 1e-2, "max_grad_norm": 1.0}, ("cuda", "cuda_graph")),
            "wd": Config({"lr": 1e-2, "weight_decay": 0.01}, ("mixed", "mixed_checkpoint")),
            "wd-trust_clip": Config(
                {"lr": 1e-2, "weight_decay": 0.01, "trust_clip": 0.8}, ("triton_cpu",)
            ),
            "defaults": Config({}, ("damaged", "compile")),
        },
        bad_args_own=(
            ({"eps": -1e-6}, "Invalid epsilon value"),
            ({"trust_clip": 0.0}, "Invalid trust_clip value: 0.0"),
            ({"max_grad_norm": -1.0}, "Invalid max_grad_norm value"),
            ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
        ),
    ),
    OptimInfo(
        name="sophia",
        cls=fusedopt.Sophia,
        op="sophia_",
        state_keys=("step", "exp_avg", "hessian"),
        supports=_COMMON | {"update_hessian"},
        tolerance="vs_fp64",
        configs={
            "default": Config({"lr": 1e-3}, ("fp64ref", "triton_ref:fp32")),
            "maximize": Config(
                {"lr": 1e-3, "rho": 0.1, "weight_decay": 0.2, "maximize": True},
                ("fp64ref", "triton_ref:fp64"),
                step={"bs": 1000},
            ),
            "tensor_lr": Config(
                {"lr": torch.tensor(2e-3), "betas": (0.9, 0.95)}, ("fp64ref",), step={"bs": 256}
            ),
            "betas": Config(
                {"lr": 2e-3, "betas": (0.9, 0.95)}, ("triton_ref:fp16",), step={"bs": 256}
            ),
            "wd": Config({"lr": 1e-3, "weight_decay": 0.1}, ("cuda",)),
            "wd-bs512": Config(
                {"lr": 1e-3, "weight_decay": 0.1}, ("triton_cpu",), step={"bs": 512}
            ),
            "mixed-wd": Config({"lr": 1e-2, "weight_decay": 0.1}, ("mixed",)),
            "defaults": Config({}, ("damaged", "compile")),
        },
        bad_args_own=(
            ({"rho": -0.04}, "Invalid rho value: -0.04"),
            ({"betas": (0.965, 1.5)}, "Invalid beta parameter at index 1: 1.5"),
            ({"weight_decay": -1.0}, "Invalid weight_decay value"),
        ),
    ),
    OptimInfo(
        name="adafactor",
        cls=fusedopt.Adafactor,
        torch_cls=torch.optim.Adafactor,
        op="adafactor_",
        # a vector's state (row_var, col_var for params of 2 or more dims)
        state_keys=("step", "variance"),
        supports=frozenset({"tensor_lr", "max_grad_norm"}),
        tolerance="vs_torch",
        configs={
            "defaults": Config({}, ("compile",)),
            "wd-maximize": Config({"weight_decay": 0.1, "maximize": True}, ("compile",)),
        },
        bad_args=(
            ({"lr": -1.0}, ValueError),
            ({"lr": torch.tensor([1e-3, 1e-3])}, ValueError),
            ({"beta2_decay": 0.5}, ValueError),
            ({"eps": (-1.0, 1e-3)}, ValueError),
            ({"eps": (None, -1e-3)}, ValueError),
            ({"d": 0.5}, ValueError),
            ({"weight_decay": -0.1}, ValueError),
        ),
        exempt={
            **{
                m: "torch.optim.Adafactor cannot step the matrix's empty param (it divides by "
                "its size: ZeroDivisionError); tests/test_adafactor.py compares without it"
                for m in ("parity", "tensor_lr", "checkpoint", "triton_torch")
            },
            "damaged": "its checks take master_weights/stochastic_rounding, which Adafactor "
            "does not offer (tests/test_adafactor.py checks its damaged checkpoints)",
            "mixed": "no master weights, stochastic rounding or state dtypes",
            "triton_cpu": "its reductions run in another order in Triton than on the CPU; "
            "tests/test_adafactor.py compares both with the reference",
            "cuda": "its CUDA kernels sum in another order than the CPU kernel (Note [Adafactor on "
            "the GPU]); tests/test_cuda_planner.py compares their simulation with the reference",
        },
    ),
    OptimInfo(
        name="muon",
        params=make_matrices,  # 2-D only
        cls=fusedopt.Muon,
        torch_cls=torch.optim.Muon,
        # the op that keeps its state (muon_ applies the orthogonalized update)
        op="muon_momentum_",
        **_MOMENTUM,
        tolerance="vs_torch",
        configs={
            "defaults": Config({}, ("damaged",)),
            "plain-wd": Config({"lr": 0.02, "nesterov": False, "weight_decay": 0.05}, ("mixed",)),
        },
        bad_args=(
            ({"lr": -1.0}, ValueError),
            ({"weight_decay": -0.1}, ValueError),
            ({"momentum": -0.5}, ValueError),
        ),
        exempt={
            **{
                m: "its bf16 Newton-Schulz iteration rounds differently from torch.optim.Muon's "
                "(a batched matmul for each shape): they agree to a few lr x 2^-8 per step, not "
                "to fp32 ulps; tests/test_muon.py compares them (parity, checkpoints both ways, "
                "Tensor lr) with that bound"
                for m in ("parity", "tensor_lr", "checkpoint", "triton_torch")
            },
            "compile": "test_compile.py's test_muon_fullgraph_matches_eager_and_never_recompiles "
            "runs Muon (and MuonWithAuxAdam) through the same checks on matrices",
            "triton_cpu": "tests/test_muon.py compares its ops on every backend (the CPU, the "
            "CUDA simulation, Triton) with the reference; the Newton-Schulz matmuls are torch's "
            "on all of them",
            "cuda": "its ops are in the CUDA planner's op matrix (tests/test_cuda_planner.py), "
            "and tests/test_muon.py compares the simulated kernels with the reference",
        },
    ),
]
INFO = {i.name: i for i in OPTIMS}


def cases(matrix: str) -> list:
    """pytest params (info, config name, config[, dtype]) of every config in ``matrix``, with
    the id "<optimizer>-<config>[-<dtype>]"; for a per-dtype matrix ("triton_torch") the dtype
    is the fourth value."""
    out = []
    for info in OPTIMS:
        for cname, cfg in info.configs.items():
            for use in cfg.use:
                m, _, dt = use.partition(":")
                if m != matrix:
                    continue
                name = f"{info.name}-{cname}"
                if dt:
                    dtype = _DTYPE_BY_ID[dt]
                    out.append(pytest.param(info, cname, cfg, dtype, id=f"{name}-{dt}"))
                else:
                    out.append(pytest.param(info, cname, cfg, id=name))
    return out


def matrix(name: str, *fields: str) -> list:
    """``cases(name)`` as pytest params of the named fields: info, config (its name), cls,
    torch_cls, kwargs, step, dtype (per-dtype matrices), name (the case id)."""
    out = []
    for c in cases(name):
        info, cname, cfg, *dtype = c.values
        values = {
            "info": info,
            "config": cname,
            "cls": info.cls,
            "torch_cls": info.torch_cls,
            "kwargs": cfg.kwargs,
            "step": cfg.step,
            "dtype": dtype[0] if dtype else None,
            "name": c.id,
        }
        out.append(pytest.param(*(values[f] for f in fields), id=c.id))
    return out


def with_torch() -> list[OptimInfo]:
    return [i for i in OPTIMS if i.torch_cls is not None]


# The compiled CPU kernels and the reference: the backends every machine runs.
BACKENDS = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            not fusedopt.backends()["cpu"].available, reason="compiled CPU kernels unavailable"
        ),
    ),
    "reference",
]
