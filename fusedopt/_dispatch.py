"""Backend selection: which implementation runs a (device, dtype) group, and why.

Backends compute the same function (fusedopt.reference is its definition):
  cpu        compiled C++ SIMD kernels (fusedopt._C), CPU tensors
  cuda       compiled CUDA kernels (fusedopt._C built with CUDA), CUDA tensors
  triton     Triton kernels, GPU tensors (or the CPU under TRITON_INTERPRET=1)
  reference  plain PyTorch, any device: the specification, slow
``"auto"`` picks, per device, the first available of: cpu (CPU tensors) or cuda, triton (GPU
tensors), then reference.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import _ops, reference
from ._ext import _C, LOAD_ERROR

BACKEND_NAMES = ("auto", "cpu", "cuda", "triton", "reference")


@dataclass(frozen=True)
class BackendInfo:
    """Whether a backend can run here, and if not, why not."""

    name: str
    available: bool
    reason: str


def _has_kernel(op: str, key: str) -> bool:
    return _C is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedopt::{op}", key)


def _cpu_info() -> BackendInfo:
    if _C is None:
        return BackendInfo(
            "cpu", False, f"the compiled extension fusedopt._C is missing ({LOAD_ERROR})"
        )
    simd = _C.cpu_capability()
    detected = _C.cpu_capability_detected()
    note = f"SIMD {simd}" + ("" if simd == detected else f" (CPU supports {detected})")
    return BackendInfo(
        "cpu", True, f"compiled C++ kernels, {note}, {torch.get_num_threads()} threads"
    )


def _cuda_info() -> BackendInfo:
    if _C is None:
        return BackendInfo(
            "cuda", False, f"the compiled extension fusedopt._C is missing ({LOAD_ERROR})"
        )
    if not _C.with_cuda:
        why = {
            1: "FUSEDOPT_BUILD_CUDA=0 at build time",
            2: "the torch it was built against is a CPU-only build",
            3: "no CUDA toolkit (nvcc) was found at build time",
        }.get(getattr(_C, "cuda_skip_code", 0), "unknown reason")
        return BackendInfo("cuda", False, f"fusedopt._C was built without CUDA: {why}")
    if not _has_kernel("adam_", "CUDA"):
        return BackendInfo("cuda", False, "CUDA kernels are not implemented in this version")
    if not torch.cuda.is_available():
        return BackendInfo(
            "cuda", False, f"built for {_C.cuda_archs()}, but no CUDA GPU is visible"
        )
    return BackendInfo(
        "cuda", True, f"compiled CUDA kernels ({_C.cuda_archs()}) on {torch.cuda.get_device_name()}"
    )


def _triton_info() -> BackendInfo:
    if importlib.util.find_spec("triton") is None:
        return BackendInfo("triton", False, "triton is not installed")
    if importlib.util.find_spec("fusedopt.triton") is None:
        return BackendInfo("triton", False, "Triton kernels are not implemented in this version")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not interpret:
        return BackendInfo(
            "triton", False, "no GPU is visible (set TRITON_INTERPRET=1 to run on the CPU)"
        )
    return BackendInfo("triton", True, "Triton kernels" + (" (interpreter)" if interpret else ""))


def backends() -> dict[str, BackendInfo]:
    """What can run on this machine: ``{name: BackendInfo(name, available, reason)}``."""
    return {
        "cpu": _cpu_info(),
        "cuda": _cuda_info(),
        "triton": _triton_info(),
        "reference": BackendInfo(
            "reference", True, "plain PyTorch (the specification), any device"
        ),
    }


def check_backend_name(backend: str) -> None:
    if backend not in BACKEND_NAMES:
        raise ValueError(
            f"Invalid backend: {backend!r} (expected one of {', '.join(BACKEND_NAMES)})"
        )


def require(backend: str) -> None:
    """Raise RuntimeError, saying why, if an explicitly requested backend can't run here."""
    check_backend_name(backend)
    if backend == "auto":
        return
    info = backends()[backend]
    if not info.available:
        raise RuntimeError(f"fusedopt backend {backend!r} is not available: {info.reason}")


_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend for tensors on ``device``."""
    if backend == "auto":
        for name in _AUTO_ORDER.get(device.type, ("reference",)):
            if name == "reference" or _available(name):
                return name
    if backend == "cpu" and device.type != "cpu":
        raise RuntimeError(f"fusedopt backend 'cpu' cannot update tensors on {device}")
    if backend == "cuda" and device.type != "cuda":
        raise RuntimeError(f"fusedopt backend 'cuda' cannot update tensors on {device}")
    return backend


_AVAILABLE: dict[str, bool] = {}


def _available(name: str) -> bool:
    if name not in _AVAILABLE:
        _AVAILABLE[name] = backends()[name].available
    return _AVAILABLE[name]


def kernel(backend: str, op: str) -> Callable[..., None]:
    """The function running ``op`` (e.g. "adam_") on a concrete backend; all share one signature."""
    if backend in ("cpu", "cuda"):
        return getattr(_ops, op)
    if backend == "triton":
        from . import triton as triton_backend

        return getattr(triton_backend, op)
    return getattr(reference, op)


def step_plan(
    lists: list[list[Tensor]], masters: list[Tensor] | None, seeds: list[Tensor] | None
) -> Any:
    """A C++ StepPlan holding a step's lists (Note [C++ step plans] in csrc/plan.cpp), or None
    when the compiled extension has none (an older build)."""
    cls = getattr(_C, "StepPlan", None) if _C is not None else None
    return None if cls is None else cls(lists, masters, seeds)
