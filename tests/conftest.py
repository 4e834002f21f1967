import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Without a GPU, Triton kernels run in Triton's interpreter, which @triton.jit picks when it
# decorates a kernel, from TRITON_INTERPRET: set it for the whole session before any test module
# imports triton (a kernel decorated in compiler mode cannot run on CPU tensors).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
