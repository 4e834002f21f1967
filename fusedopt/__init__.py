"""fusedopt: fused multi-tensor optimizer kernels for PyTorch, a drop-in for torch.optim.

    optimizer = fusedopt.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

Backends: compiled C++ SIMD kernels on the CPU, CUDA and Triton kernels on GPUs, and a plain
PyTorch reference that is the specification. ``fusedopt.backends()`` says what runs here and why.
"""

from __future__ import annotations

from . import amp, schedules
from ._dispatch import BackendInfo, backends
from ._ext import LOAD_ERROR as _LOAD_ERROR
from .clip import clip_grad_norm_
from .optim import (
    LAMB,
    SGD,
    Adam,
    AdamW,
    Lion,
    Muon,
    MuonWithAuxAdam,
    Sophia,
    muon_param_groups,
)

__version__ = "0.1.0"

__all__ = [
    "LAMB",
    "SGD",
    "Adam",
    "AdamW",
    "Lion",
    "Muon",
    "MuonWithAuxAdam",
    "Sophia",
    "muon_param_groups",
    "BackendInfo",
    "amp",
    "backends",
    "clip_grad_norm_",
    "schedules",
    "__version__",
]

if _LOAD_ERROR is not None:
    import os
    import warnings

    _fix = "Reinstall with `pip install --no-build-isolation .` against this torch."
    if os.path.exists(os.path.join(os.path.dirname(os.path.dirname(__file__)), "setup.py")):
        # Imported from a source checkout: Python run in the repository root finds the tree's
        # fusedopt/ before an installed one, so a non-editable install does not help here.
        _fix = (
            "This is the source tree's fusedopt/: build it in place with "
            "`pip install --no-build-isolation -e .` (or run from another folder)."
        )
    warnings.warn(
        f"fusedopt: compiled kernels unavailable ({_LOAD_ERROR}); using the reference backend. "
        + _fix,
        RuntimeWarning,
        stacklevel=2,
    )
