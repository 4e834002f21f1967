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
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import _ops, reference
from ._ext import _C, LOAD_ERROR
from ._opdefs import OPS

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


def parse_images(record: str) -> list[tuple[str, int, int, str]] | None:
    """The images of a build record ("sm75_sm80_sm90_ptx90", csrc/cuda/info.cu) as
    (kind, major, minor, suffix) tuples, kind "sm" (native code) or "ptx"; None if unknown."""
    out = []
    for token in record.split("_") if record and record != "unknown" else []:
        m = re.fullmatch(r"(sm|ptx)(\d+)(\d)([a-z]?)", token)
        if m is None:
            return None
        out.append((m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)))
    return out or None


def image_for(capability: tuple[int, int], images: list[tuple[str, int, int, str]]) -> str | None:
    """The image a GPU of this compute capability runs ("sm_80", "compute_90 (JIT)"), or None.

    Native code runs on its major version at an equal or higher minor (sm_80 on 8.6); an "a"
    (architecture-specific) image only on its exact version. PTX is compiled by the driver for
    any GPU at or above its version (an "a" PTX only for its own)."""
    major, minor = capability
    for kind, ma, mi, suffix in images:
        if kind == "sm" and ma == major and (mi == minor if suffix == "a" else mi <= minor):
            return f"sm_{ma}{mi}{suffix}"
    for kind, ma, mi, suffix in images:
        if kind == "ptx" and ((ma, mi) == capability if suffix == "a" else (ma, mi) <= capability):
            return f"compute_{ma}{mi}{suffix} (JIT)"
    return None


def _images_text(images: list[tuple[str, int, int, str]] | None) -> str:
    if images is None:
        return "unknown architectures"
    return ", ".join(f"{'sm' if k == 'sm' else 'compute'}_{a}{b}{s}" for k, a, b, s in images)


def _device_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _compiled_images() -> list[tuple[str, int, int, str]] | None:
    return parse_images(_C.cuda_images()) if _C is not None and _C.with_cuda else None


def _gpu_problem(index: int) -> str | None:
    """Why the compiled CUDA kernels cannot run on GPU `index`, or None if they can (or if the
    build did not record its images: then nothing is known to be missing)."""
    images = _compiled_images()
    if images is None:
        return None
    cap = _device_capability(index)
    if image_for(cap, images) is not None:
        return None
    name = torch.cuda.get_device_name(index)
    return (
        f"GPU {index} ({name}, sm_{cap[0]}{cap[1]}) has no kernel image in this build "
        f"({_images_text(images)}); rebuild with TORCH_CUDA_ARCH_LIST={cap[0]}.{cap[1]}"
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
    missing = [op for op in OPS if not _has_kernel(op, "CUDA")]
    if missing:
        return BackendInfo(
            "cuda", False, f"fusedopt._C registers no CUDA kernel for {', '.join(missing)}"
        )
    if not torch.cuda.is_available():
        return BackendInfo(
            "cuda", False, f"built for {_C.cuda_archs()}, but no CUDA GPU is visible"
        )
    problems = [p for p in map(_gpu_problem, range(torch.cuda.device_count())) if p is not None]
    if len(problems) == torch.cuda.device_count():
        return BackendInfo("cuda", False, "; ".join(problems))
    images = _images_text(_compiled_images()) if _C.cuda_images() != "unknown" else _C.cuda_archs()
    reason = f"compiled CUDA kernels ({images}) on {torch.cuda.get_device_name()}"
    return BackendInfo("cuda", True, "; ".join([reason, *problems]))


def _triton_info() -> BackendInfo:
    if importlib.util.find_spec("triton") is None:
        return BackendInfo("triton", False, "triton is not installed")
    if importlib.util.find_spec("fusedopt.triton") is None:
        return BackendInfo("triton", False, "the fusedopt.triton package is missing")
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


def resolve(backend: str, device: torch.device, op: str | None = None) -> str:
    """The concrete backend for tensors on ``device`` (updated by registry op ``op``: "cpu"
    runs an op whose registry entry says it has no CPU kernel, ``cpu=False``, by its
    reference)."""
    name = _resolve(backend, device)
    return "reference" if name == "cpu" and op is not None and not OPS[op].cpu else name


def _resolve(backend: str, device: torch.device) -> str:
    if backend == "auto":
        for name in _AUTO_ORDER.get(device.type, ("reference",)):
            if name == "cuda" and _no_image_on(device):
                _warn_no_image(_index(device))
                continue
            if name == "reference" or _available(name):
                return name
    if backend == "cpu" and device.type != "cpu":
        raise RuntimeError(f"fusedopt backend 'cpu' cannot update tensors on {device}")
    if backend == "cuda" and device.type != "cuda":
        raise RuntimeError(f"fusedopt backend 'cuda' cannot update tensors on {device}")
    if backend == "cuda" and _no_image_on(device):
        raise RuntimeError(f"fusedopt backend 'cuda' cannot run here: {_NO_IMAGE[_index(device)]}")
    return backend


# GPU index -> why this build's CUDA kernels cannot run there (only GPUs that were asked about).
_NO_IMAGE: dict[int, str | None] = {}


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _no_image_on(device: torch.device) -> bool:
    """True when fusedopt._C has CUDA kernels but none that this GPU can run: checked once per
    GPU, before any step, so that "auto" moves on (with a warning: the build missed this GPU)
    instead of a launch failing in the middle of a step."""
    if not (_C is not None and _C.with_cuda and torch.cuda.is_available()):
        return False
    index = _index(device)
    if index not in _NO_IMAGE:
        _NO_IMAGE[index] = _gpu_problem(index)
    return _NO_IMAGE[index] is not None


_WARNED: set[int] = set()


def _warn_no_image(index: int) -> None:
    if index not in _WARNED:
        _WARNED.add(index)
        warnings.warn(
            f"fusedopt: the CUDA kernels cannot run on GPU {index}: {_NO_IMAGE[index]}. "
            "backend='auto' uses the next available backend (triton, else reference) there.",
            RuntimeWarning,
            stacklevel=4,
        )


_AVAILABLE: dict[str, bool] = {}


def _available(name: str) -> bool:
    if name not in _AVAILABLE:
        _AVAILABLE[name] = backends()[name].available
    return _AVAILABLE[name]


def kernel(backend: str, op: str) -> Callable[..., None]:
    """The function running ``op`` (e.g. "adam_") on a concrete backend: each takes the op's
    registry arguments (fusedopt/_opdefs.py) positionally, in registry order, with its defaults
    (tests/test_registry.py checks the signatures)."""
    if op not in OPS:
        raise KeyError(f"fusedopt has no op {op!r} (the ops: {', '.join(OPS)})")
    if backend in ("cpu", "cuda"):
        return getattr(_ops, op)
    if backend == "triton":
        from . import triton as triton_backend

        return getattr(triton_backend, op)
    return getattr(reference, op)


def step_plan(
    op: str, lists: list[list[Tensor] | None], flat: bool = False, steps: int = -1
) -> Any:
    """A C++ StepPlan holding ``op``'s lists (Note [C++ step plans] in csrc/plan.cpp): ``lists``
    in ``OPS[op].plan_lists`` order (None for an absent optional list); its
    ``.call(grads, *rest)`` takes the values of ``OPS[op].plan_rest`` in order. ``flat``: a call
    whose lists all lie end to end runs as one range, ``steps`` the index of the step counters
    among ``lists`` (Note [one-range steps]). None when the compiled extension has none."""
    cls = getattr(_C, "StepPlan", None) if _C is not None else None
    return None if cls is None else cls(op, lists, flat, steps)
