"""The op registry: every fusedopt op described once, as data.

Note [op registry]
~~~~~~~~~~~~~~~~~~
Each op is an :class:`OpDef`: its name and its arguments in order, each with a schema type, a
role and whether the op writes it. Everything that restates an op's signature is derived from
this one description:

- the TORCH_LIBRARY schemas of ``fusedopt::`` (csrc/ops.cpp) and ``fusedopt_triton::``
  (fusedopt/triton/__init__.py), alias annotations included;
- the C++ header ``fusedopt/ops_generated.h`` (written at build time by setup.py and CMake with
  ``python fusedopt/_opdefs.py --header PATH``): per op its schema, its unboxed signature, an
  argument struct with the arguments as named fields, which arguments it writes and which is
  the grads list, plus ``FUSEDOPT_FOR_EACH_OP``; and beside it ``fusedopt/mixed_generated.h``
  with ``FUSEDOPT_FOR_EACH_MIXED`` alone (no ATen: fusedopt/math.h includes it). The autograd
  kernels, the StepPlan entries and the CPU/CUDA/simulation registrations are templates over
  them;
- the Python wrappers and fake kernels (fusedopt/_ops.py) and the optimizers' calls
  (fusedopt/optim), which bind arguments by name through :meth:`OpDef.bind`.

The plain-PyTorch reference (fusedopt/reference) is the specification and is written by hand;
tests/test_registry.py checks that its signatures are the registry's.

This module imports nothing but the standard library, so the build can run it before torch or
the package is importable.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

# Roles of the arguments.
PARAM = "param"  # the params, updated in place
GRAD = "grad"  # the grads, read (passed anew every step: p.grad changes)
STATE = "state"  # per-param optimizer state, param-shaped (key: its torch.optim state_dict key)
STEP = "step"  # per-param step counters (state["step"]), incremented by the op
MASTER = "master"  # fp32 master copies of half-precision params (state["master_param"])
SEED = "seed"  # stochastic-rounding seeds (state["sr_seed"]), advanced by the op
AUX = "aux"  # other tensors: per-param or per-op outputs and inputs that are not param-shaped
# A list of role AUX with a ``key`` is *auxiliary state*: per-param state kept in state[p][key]
# like STATE, but whose tensors have their own shapes (Adafactor's row/column statistics), given
# per param by the optimizer class (Note [auxiliary state] in fusedopt/optim/_plan.py). A slot
# whose param keeps no such state holds an empty placeholder tensor.
LR = "lr"  # the learning rate, a one-element Tensor
AMP = "amp"  # GradScaler's grad_scale / found_inf
SCALAR = "scalar"  # hyperparameters: float, bool, int

_CPP_TYPES = {
    # schema type: (C++ unboxed argument type, Python annotation)
    "Tensor[]": ("at::TensorList", "list[Tensor]"),
    "Tensor[]?": ("const std::optional<at::TensorList>&", "list[Tensor] | None"),
    "Tensor": ("const at::Tensor&", "Tensor"),
    "Tensor?": ("const std::optional<at::Tensor>&", "Tensor | None"),
    "float": ("double", "float"),
    "float?": ("std::optional<double>", "float | None"),
    "bool": ("bool", "bool"),
    "int": ("int64_t", "int"),
}
_CPP_RETURNS = {"()": "void", "Tensor": "at::Tensor"}


@dataclass(frozen=True)
class Arg:
    """One argument of an op."""

    name: str
    type: str  # a key of _CPP_TYPES
    role: str = SCALAR
    write: bool = False
    default: str | None = None  # schema text of the default ("None", "0"); None: required
    key: str | None = None  # STATE lists: the per-param state key (e.g. "exp_avg")
    # STATE lists: the scalar that says whether a call has the list (empty when the scalar is
    # false or 0; Adam's max_exp_avg_sqs: amsgrad); a group keeps the state under the option
    # of that name. None: always.
    when: str | None = None

    @property
    def is_list(self) -> bool:
        return self.type.startswith("Tensor[]")

    @property
    def cpp_type(self) -> str:
        return _CPP_TYPES[self.type][0]

    @property
    def py_type(self) -> str:
        """The Python annotation of the argument (``list[Tensor] | None``)."""
        return _CPP_TYPES[self.type][1]

    @property
    def py_default(self) -> object:
        """The Python value of ``default`` (None or an int); only for arguments with one."""
        assert self.default is not None, f"{self.name} has no default"
        return None if self.default == "None" else int(self.default)


@dataclass(frozen=True)
class OpDef:
    """One op: ``name`` (with the trailing underscore of an in-place op), its arguments in
    schema order, its return type ("()" or "Tensor") and a line of documentation; ``kernels``:
    its CUDA backend runs the shared multi-tensor kernels (csrc/cuda/runner.cuh), each op in a
    generated translation unit, else a host op of its own (csrc/cuda/glue.h's HostOp);
    ``cpu``: it has a CPU kernel (csrc/cpu), else the optimizers run its reference on the CPU
    (fusedopt._dispatch.resolve) and a direct call of ``torch.ops.fusedopt.<op>`` on CPU
    tensors raises torch's NotImplementedError."""

    name: str
    args: tuple[Arg, ...]
    returns: str = "()"
    doc: str = ""
    kernels: bool = True
    cpu: bool = True

    def schema(self, with_name: bool = True) -> str:
        """The TORCH_LIBRARY schema; written lists and tensors get alias annotations (a!)..."""
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        parts = []
        for a in self.args:
            t = a.type
            if a.write:
                base, _, rest = t.partition("[")
                base = base.rstrip("?")
                t = f"{base}({next(letters)}!)" + (f"[{rest}" if rest else t[len(base) :])
            default = f"={a.default}" if a.default is not None else ""
            parts.append(f"{t} {a.name}{default}")
        head = self.name if with_name else ""
        return f"{head}({', '.join(parts)}) -> {self.returns}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args)

    def arg(self, name: str) -> Arg:
        for a in self.args:
            if a.name == name:
                return a
        raise KeyError(f"{self.name} has no argument {name!r}")

    def role(self, role: str) -> tuple[Arg, ...]:
        return tuple(a for a in self.args if a.role == role)

    @property
    def plan_lists(self) -> tuple[str, ...]:
        """The tensor lists a StepPlan keeps between steps: every list but the grads."""
        return tuple(a.name for a in self.args if a.is_list and a.role != GRAD)

    @property
    def plan_rest(self) -> tuple[str, ...]:
        """The arguments a StepPlan call passes after the grads: every non-list argument."""
        return tuple(a.name for a in self.args if not a.is_list)

    @property
    def aux_state(self) -> tuple[Arg, ...]:
        """The auxiliary state lists (AUX lists with a state key)."""
        return tuple(a for a in self.args if a.role == AUX and a.is_list and a.key is not None)

    @property
    def written(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args if a.write)

    def bind(self, **values: object) -> tuple[object, ...]:
        """The positional arguments of a call from keyword values; missing arguments with a
        default take it (None / the int), a missing required one raises TypeError."""
        unknown = set(values) - set(self.names)
        if unknown:
            raise TypeError(f"{self.name}: unknown arguments {sorted(unknown)}")
        out = []
        for a in self.args:
            if a.name in values:
                out.append(values[a.name])
            elif a.default is not None:
                out.append(a.py_default)
            else:
                raise TypeError(f"{self.name}: missing argument {a.name!r}")
        return tuple(out)


def _params() -> Arg:
    return Arg("params", "Tensor[]", PARAM, write=True)


def _grads() -> Arg:
    return Arg("grads", "Tensor[]", GRAD)


def _state(name: str, key: str, write: bool = True, when: str | None = None) -> Arg:
    return Arg(name, "Tensor[]", STATE, write=write, key=key, when=when)


def _aux_state(name: str, key: str) -> Arg:
    return Arg(name, "Tensor[]", AUX, write=True, key=key)


def _steps() -> Arg:
    return Arg("state_steps", "Tensor[]", STEP, write=True, key="step")


def _lr() -> Arg:
    return Arg("lr", "Tensor", LR)


def _f(name: str) -> Arg:
    return Arg(name, "float")


def _b(name: str) -> Arg:
    return Arg(name, "bool")


def _adam_head(*more_states: Arg) -> tuple[Arg, ...]:
    """What Adam's and LAMB's signatures begin with: the lists, two moments (and ``more_states``),
    the steps, lr, betas, weight decay and eps."""
    moments = (_state("exp_avgs", "exp_avg"), _state("exp_avg_sqs", "exp_avg_sq"), *more_states)
    scalars = (_f("beta1"), _f("beta2"), _f("weight_decay"), _f("eps"))
    return (_params(), _grads(), *moments, _steps(), _lr(), *scalars)


_AMP = (
    Arg("grad_scale", "Tensor?", AMP, default="None"),
    Arg("found_inf", "Tensor?", AMP, default="None"),
)
_MIXED = (
    Arg("master_params", "Tensor[]?", MASTER, write=True, default="None", key="master_param"),
    Arg("sr_seeds", "Tensor[]?", SEED, write=True, default="None", key="sr_seed"),
)

_DEFS = (
    OpDef(
        "sum_sq",
        (Arg("tensors", "Tensor[]", GRAD),),
        returns="Tensor",
        doc="Sum of squares of every element of every tensor, in fp64 (the global grad norm).",
    ),
    OpDef(
        "adam_",
        (
            *_adam_head(_state("max_exp_avg_sqs", "max_exp_avg_sq", when="amsgrad")),
            _b("amsgrad"),
            _b("maximize"),
            _b("decoupled_weight_decay"),
            *_AMP,
            *_MIXED,
        ),
        doc="Adam / AdamW.",
    ),
    OpDef(
        "adam8bit_",
        (
            _params(),
            _grads(),
            # the moments in 8 bits (Note [8-bit states] in fusedopt/reference/quant.py): uint8
            # codes shaped like the params (contiguous, row-major blocks), one fp32 absmax per
            # block of 256 elements
            _aux_state("exp_avgs", "exp_avg"),
            _aux_state("exp_avg_sqs", "exp_avg_sq"),
            _aux_state("exp_avg_absmaxs", "exp_avg_absmax"),
            _aux_state("exp_avg_sq_absmaxs", "exp_avg_sq_absmax"),
            _steps(),
            _lr(),
            _f("beta1"),
            _f("beta2"),
            _f("weight_decay"),
            _f("eps"),
            # (2, 256) fp32: the signed map (first moments), then the unsigned one
            Arg("qmaps", "Tensor", AUX),
            _b("maximize"),
            _b("decoupled_weight_decay"),
            *_AMP,
            *_MIXED,
        ),
        doc="Adam / AdamW with 8-bit blockwise moments.",
    ),
    OpDef(
        "sgd_",
        (
            _params(),
            _grads(),
            _state("momentum_buffers", "momentum_buffer", when="momentum"),
            _lr(),
            _f("momentum"),
            _f("dampening"),
            _f("weight_decay"),
            _b("nesterov"),
            _b("maximize"),
            _b("is_first_step"),
            *_AMP,
            *_MIXED,
        ),
        doc="SGD with momentum.",
    ),
    OpDef(
        "sgd8bit_",
        (
            _params(),
            _grads(),
            # the momentum buffers in 8 bits, as adam8bit_'s moments
            _aux_state("momentum_buffers", "momentum_buffer"),
            _aux_state("momentum_buffer_absmaxs", "momentum_buffer_absmax"),
            _lr(),
            _f("momentum"),
            _f("dampening"),
            _f("weight_decay"),
            # (2, 256) fp32, as adam8bit_'s: the buffers use the signed map, row 0
            Arg("qmaps", "Tensor", AUX),
            _b("nesterov"),
            _b("maximize"),
            _b("is_first_step"),
            *_AMP,
            *_MIXED,
        ),
        doc="SGD with 8-bit blockwise momentum buffers.",
    ),
    OpDef(
        "lion_",
        (
            _params(),
            _grads(),
            _state("exp_avgs", "exp_avg"),
            _steps(),
            _lr(),
            _f("beta1"),
            _f("beta2"),
            _f("weight_decay"),
            _b("maximize"),
            *_AMP,
            *_MIXED,
        ),
        doc="Lion (sign of the interpolated momentum).",
    ),
    OpDef(
        "lion8bit_",
        (
            _params(),
            _grads(),
            # the momentum in 8 bits, as adam8bit_'s first moment
            _aux_state("exp_avgs", "exp_avg"),
            _aux_state("exp_avg_absmaxs", "exp_avg_absmax"),
            _steps(),
            _lr(),
            _f("beta1"),
            _f("beta2"),
            _f("weight_decay"),
            # (2, 256) fp32, as adam8bit_'s: the momentum uses the signed map, row 0
            Arg("qmaps", "Tensor", AUX),
            _b("maximize"),
            *_AMP,
            *_MIXED,
        ),
        doc="Lion with an 8-bit blockwise momentum.",
    ),
    OpDef(
        "lamb_",
        (
            *_adam_head(),
            _b("bias_correction"),
            Arg("trust_clip", "float?"),
            _b("maximize"),
            # if given, an (n, 2) float tensor that receives (||p||, ||u||) of each param
            Arg("tensor_norms", "Tensor?", AUX, write=True, default="None"),
            *_AMP,
            *_MIXED,
            # sharded params (Note [LAMB phases] in csrc/cpu/lamb.cpp): 1 increments the steps
            # and writes each param's local (sum p^2, sum u^2) into sq_sums (n x 2, fp64), which
            # the caller all-reduces; 2 takes the norms from sq_sums and updates; 0 does both.
            Arg("phase", "int", default="0"),
            Arg("sq_sums", "Tensor?", AUX, write=True, default="None"),
        ),
        doc="LAMB (layer-wise trust ratio ||p|| / ||u||).",
    ),
    OpDef(
        "schedule_free_adamw_",
        (
            _params(),
            _grads(),
            _state("zs", "z"),
            _state("exp_avg_sqs", "exp_avg_sq"),
            # the warmed-up lr of this step (lr * min(1, (k+1)/warmup_steps))
            _lr(),
            _f("beta1"),
            _f("beta2"),
            _f("eps"),
            _f("weight_decay"),
            # from the group's step counters: the weight of the new point in the average x and
            # 1 - beta2^(k+1), one-element fp64 tensors on the params' device (or the CPU), as
            # the optimizer derives them from its counters without leaving the device
            Arg("ckp1", "Tensor", AUX),
            Arg("bias_correction2", "Tensor", AUX),
            *_AMP,
            *_MIXED,
        ),
        doc="Schedule-Free AdamW's step on y (the params) and z (no per-param step counter).",
    ),
    OpDef(
        "schedule_free_swap_",
        (
            _params(),
            # the z states, read only, in the params' dtype (as Muon's O)
            _grads(),
            _f("weight"),
            # found_inf set: nothing changes; grad_scale is not applied (z is not a grad)
            *_AMP,
            *_MIXED,
        ),
        doc="Schedule-Free's train/eval swap: theta = lerp(theta, z, weight), z in the grads' place.",
    ),
    OpDef(
        "sophia_",
        (
            _params(),
            _grads(),
            _state("exp_avgs", "exp_avg"),
            _state("hessians", "hessian", write=False),
            _steps(),
            _lr(),
            _f("beta1"),
            _f("rho"),
            _f("bs"),
            _f("weight_decay"),
            _b("maximize"),
            *_AMP,
            *_MIXED,
        ),
        doc="Sophia-G's update (the hessian estimate is updated by sophia_update_hessian_).",
    ),
    OpDef(
        "sophia_update_hessian_",
        (
            _state("hessians", "hessian"),
            _grads(),
            _f("beta2"),
            *_AMP,
        ),
        doc="Sophia's hessian EMA: h = beta2 h + (1 - beta2) g*g.",
    ),
    OpDef(
        "adafactor_",
        (
            _params(),
            _grads(),
            # params of 2 or more dims: the means of g^2 over the last dim (shape [..., m, 1])
            # and over the one before it ([..., 1, n]); the others: v, param-shaped
            _aux_state("row_vars", "row_var"),
            _aux_state("col_vars", "col_var"),
            _aux_state("variances", "variance"),
            _steps(),
            _lr(),
            _f("beta2_decay"),
            _f("eps1"),
            _f("eps2"),
            _f("d"),
            _f("weight_decay"),
            _b("maximize"),
            *_AMP,
        ),
        doc="Adafactor (torch.optim.Adafactor: factored second moments, relative step size, "
        "update clipping).",
    ),
    OpDef(
        "muon_momentum_",
        (
            _state("momentum_buffers", "momentum_buffer"),
            _grads(),
            # the matrices Newton-Schulz orthogonalizes, one per param, of its shape (bf16 views
            # of a stacked buffer, in fusedopt.Muon); only written
            Arg("updates", "Tensor[]", AUX, write=True),
            _f("momentum"),
            _b("nesterov"),
            *_AMP,
        ),
        doc="Muon's momentum: b = lerp(b, g, 1 - mu); updates = lerp(g, b, mu) if nesterov else b.",
    ),
    OpDef(
        "muon_",
        (
            _params(),
            # the orthogonalized updates O (Newton-Schulz's output, in the params' dtype)
            _grads(),
            _lr(),
            _f("weight_decay"),
            _f("lr_ratio"),
            *_AMP,
            *_MIXED,
        ),
        doc="Muon's update: p = p (1 - lr wd) - lr lr_ratio O, O the orthogonalized momentum.",
    ),
)

#: Every op by name, in registration order.
OPS: dict[str, OpDef] = {d.name: d for d in _DEFS}

#: The (param dtype, state dtype, ParamMode) combinations the kernels are built for (ParamMode:
#: csrc/include/fusedopt/math.h; "plain" params are read and written in their own dtype,
#: "master" ones through an fp32 master copy, "stochastic" ones with stochastic rounding).
MIXED: tuple[tuple[str, str, str], ...] = (
    ("float32", "float32", "plain"),
    ("float64", "float64", "plain"),
    ("float16", "float16", "plain"),
    ("bfloat16", "bfloat16", "plain"),
    ("float32", "bfloat16", "plain"),
    ("bfloat16", "float32", "plain"),
    ("float16", "float32", "plain"),
    ("float16", "bfloat16", "plain"),
    ("float16", "float16", "master"),
    ("bfloat16", "float32", "master"),
    ("bfloat16", "bfloat16", "master"),
    ("float16", "float32", "master"),
    ("float16", "bfloat16", "master"),
    ("bfloat16", "float32", "stochastic"),
    ("bfloat16", "bfloat16", "stochastic"),
)

_CPP_DTYPES = {
    "float32": ("kFloat", "float"),
    "float64": ("kDouble", "double"),
    "float16": ("kHalf", "at::Half"),
    "bfloat16": ("kBFloat16", "at::BFloat16"),
}
_CPP_MODES = {"plain": "kPlain", "master": "kMaster", "stochastic": "kStochastic"}


def cpp_header() -> str:
    """The text of fusedopt/ops_generated.h (Note [op registry])."""
    out = [
        _GENERATED_LINE,
        "#pragma once",
        "",
        "#include <ATen/core/Tensor.h>",
        "",
        "#include <cstdint>",
        "#include <optional>",
        "",
        '#include "fusedopt/mixed_generated.h"',
        "",
        "namespace fusedopt::ops {",
        "",
    ]
    for d in _DEFS:
        cpp_args = ", ".join(a.cpp_type for a in d.args)
        fields = "".join(f"    {a.cpp_type} {a.name};\n" for a in d.args)
        written = ", ".join("true" if a.write else "false" for a in d.args)
        grads = [i for i, a in enumerate(d.args) if a.is_list and a.role == GRAD]
        assert len(grads) <= 1, f"{d.name}: at most one grads list (plan_lists leaves it out)"
        out += [
            f"// {d.doc}",
            f"struct {d.name} {{",
            f'  static constexpr const char* name = "{d.name}";',
            f'  static constexpr const char* qualified_name = "fusedopt::{d.name}";',
            f'  static constexpr const char* schema = "{d.schema()}";',
            f"  using Sig = {_CPP_RETURNS[d.returns]}({cpp_args});",
            f"  static constexpr int kArgs = {len(d.args)};",
            f"  static constexpr bool kWritten[kArgs] = {{{written}}};",
            "  // The grads list, which a StepPlan takes anew every call (-1: none).",
            f"  static constexpr int kGrads = {grads[0] if grads else -1};",
            "  struct Args {",
            fields.rstrip("\n"),
            "  };",
            "};",
            "",
        ]
    out += [
        "}  // namespace fusedopt::ops",
        "",
        "// X(op) for every op, op a struct name of fusedopt::ops.",
        "#define FUSEDOPT_FOR_EACH_OP(X) " + " ".join(f"X({d.name})" for d in _DEFS),
        "// X(op) for every op with a CPU kernel.",
        "#define FUSEDOPT_FOR_EACH_CPU_OP(X) " + " ".join(f"X({d.name})" for d in _DEFS if d.cpu),
        "",
    ]
    return "\n".join(out)


def cpp_mixed_header() -> str:
    """The text of fusedopt/mixed_generated.h: FUSEDOPT_FOR_EACH_MIXED alone, without ATen, for
    fusedopt/math.h (which CUDA device code includes)."""
    return "\n".join(
        [
            _GENERATED_LINE,
            "#pragma once",
            "",
            "// X(P, PT, S, ST, MODE): every (param dtype, param type, state dtype, state type,",
            "// ParamMode) the kernels are built for, P/S at::ScalarType names.",
            "#define FUSEDOPT_FOR_EACH_MIXED(X) "
            + " ".join(
                f"X({_CPP_DTYPES[p][0]}, {_CPP_DTYPES[p][1]}, {_CPP_DTYPES[s][0]}, "
                f"{_CPP_DTYPES[s][1]}, {_CPP_MODES[m]})"
                for p, s, m in MIXED
            ),
            "",
        ]
    )


_GENERATED_LINE = (
    "// Generated from fusedopt/_opdefs.py (Note [op registry]) by the build: do not edit."
)


def _write_if_changed(path: str, text: str) -> None:
    # An unchanged file keeps its timestamp, so the build does not recompile what includes it.
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)


def cuda_sources(folder: str) -> list[str]:
    """Writes the GPU kernels' translation units into ``folder`` (a build folder), one per op
    (``<name>.cu``, a ``FUSEDOPT_GPU_KERNELS`` line: csrc/cuda/runner.cuh) so that nvcc compiles
    the ops in parallel, each only if its text changed; returns their paths."""
    import os

    os.makedirs(folder, exist_ok=True)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runner = os.path.relpath(os.path.join(here, "csrc", "cuda", "runner.cuh"), folder)
    paths = []
    for d in (d for d in _DEFS if d.kernels):
        path = os.path.join(folder, d.name.rstrip("_") + ".cu")
        text = f'{_GENERATED_LINE}\n#include "{runner}"\n\nFUSEDOPT_GPU_KERNELS({d.name})\n'
        _write_if_changed(path, text)
        paths.append(path)
    return paths


def write_header(path: str) -> None:
    """Writes the header ``path`` (ops_generated.h) and mixed_generated.h beside it, each only
    if its text changed."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _write_if_changed(path, cpp_header())
    _write_if_changed(os.path.join(folder, "mixed_generated.h"), cpp_mixed_header())


if __name__ == "__main__":
    if (
        len(sys.argv) not in (3, 5)
        or sys.argv[1] != "--header"
        or sys.argv[3:4] not in ([], ["--cuda"])
    ):
        sys.exit("usage: python fusedopt/_opdefs.py --header PATH [--cuda FOLDER]")
    write_header(sys.argv[2])
    if len(sys.argv) == 5:
        print("\n".join(cuda_sources(sys.argv[4])))
