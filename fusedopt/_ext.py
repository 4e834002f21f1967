"""Loads the compiled extension, or records why it could not be loaded."""

from __future__ import annotations

import importlib
from types import ModuleType

_C: ModuleType | None
LOAD_ERROR: str | None

try:
    # Importing the module also runs the TORCH_LIBRARY registrations of torch.ops.fusedopt.*.
    _C = importlib.import_module("fusedopt._C")
    LOAD_ERROR = None
except ImportError as e:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = f"{type(e).__name__}: {e}"
