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


# Under `pytest -n`, the workers share the cores: give each its share of torch's threads, or
# their OpenMP threads spin-wait on each other's cores (the whole suite took twice as long on 2
# cores with 2 workers of 2 threads each). Tests that need more threads set them.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, torch.get_num_threads() // _workers))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per available core, at most 8. Each worker imports torch and Triton
    and compiles its own Triton kernels, and the tests are small, so more workers mostly add
    start-up time and memory."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
