"""Which GPUs a build's CUDA kernels run on (fusedopt/_dispatch.py image_for), and what
`backends()` and backend="auto" do on a GPU without a kernel image: checked here with a mocked
build record and device capability (no GPU needed); tests/test_cuda.py checks the same decision
against the CUDA runtime on a real GPU."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

import fusedopt
from fusedopt import _dispatch
from fusedopt._dispatch import image_for, parse_images

TODAY = "sm80_sm90_ptx90"  # 8.0;9.0+PTX
WIDE = "sm75_sm80_sm90_sm100_sm120_ptx120"  # setup.py's COMMON_ARCHS


@pytest.mark.parametrize(
    "record,cap,expect",
    [
        (TODAY, (7, 5), None),  # a T4: nothing
        (TODAY, (8, 0), "sm_80"),
        (TODAY, (8, 6), "sm_80"),  # native code runs on higher minors of its major
        (TODAY, (8, 9), "sm_80"),
        (TODAY, (9, 0), "sm_90"),
        (TODAY, (10, 0), "compute_90 (JIT)"),  # another major: only the PTX
        (TODAY, (12, 0), "compute_90 (JIT)"),
        ("sm80_sm90", (10, 0), None),
        ("sm80_sm90", (8, 7), "sm_80"),
        ("sm86", (8, 0), None),  # not down to a lower minor
        ("sm90a", (9, 0), "sm_90a"),
        ("sm90a_ptx90a", (10, 0), None),  # arch-specific images: their own version only
        (WIDE, (7, 5), "sm_75"),
        (WIDE, (8, 9), "sm_80"),
        (WIDE, (10, 3), "sm_100"),
        (WIDE, (12, 1), "sm_120"),
        (WIDE, (11, 0), None),  # Thor: below the PTX, another major than sm_100
        (WIDE, (13, 0), "compute_120 (JIT)"),
    ],
)
def test_image_for(record, cap, expect):
    assert image_for(cap, parse_images(record)) == expect


@pytest.mark.parametrize("record", ["", "unknown", "sm8", "gfx90a", "sm80_bogus"])
def test_unknown_records(record):
    assert parse_images(record) is None


def test_parse_images():
    assert parse_images("sm75_sm100_ptx120") == [
        ("sm", 7, 5, ""),
        ("sm", 10, 0, ""),
        ("ptx", 12, 0, ""),
    ]


@pytest.fixture
def gpus(monkeypatch):
    """A CUDA build with the record `TODAY` on mocked GPUs: gpus(cap0, cap1, ...)."""

    def setup(*caps, record=TODAY, triton=True):
        fake = types.SimpleNamespace(
            with_cuda=True,
            cuda_images=lambda: record,
            cuda_archs=lambda: "800,900",
            cpu_capability=lambda: "default",
            cpu_capability_detected=lambda: "default",
        )
        monkeypatch.setattr(_dispatch, "_C", fake)
        monkeypatch.setattr(_dispatch, "_has_kernel", lambda op, key: True)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(caps))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"GPU-{i}")
        monkeypatch.setattr(_dispatch, "_device_capability", lambda i: caps[i])
        monkeypatch.setattr(_dispatch, "_AVAILABLE", {"triton": triton})
        monkeypatch.setattr(_dispatch, "_NO_IMAGE", {})
        monkeypatch.setattr(_dispatch, "_WARNED", set())

    return setup


def test_no_image_on_the_only_gpu(gpus):
    gpus((7, 5))
    info = fusedopt.backends()["cuda"]
    assert not info.available
    assert "sm_75" in info.reason and "no kernel image" in info.reason
    assert "TORCH_CUDA_ARCH_LIST=7.5" in info.reason
    with pytest.raises(RuntimeError, match="no kernel image"):
        _dispatch.require("cuda")


@pytest.mark.parametrize("triton,expect", [(True, "triton"), (False, "reference")])
def test_auto_falls_back_with_one_warning(gpus, triton, expect):
    gpus((7, 5), triton=triton)
    dev = torch.device("cuda", 0)
    with pytest.warns(RuntimeWarning, match="cannot run on GPU 0.*no kernel image"):
        assert _dispatch.resolve("auto", dev) == expect
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve("auto", dev) == expect  # warned once per GPU


def test_mixed_machine(gpus):
    """One GPU with an image, one without: cuda is available, and auto picks per device."""
    gpus((9, 0), (7, 5))
    info = fusedopt.backends()["cuda"]
    assert info.available and "GPU 1" in info.reason and "GPU 0" not in info.reason
    _dispatch._AVAILABLE["cuda"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve("auto", torch.device("cuda", 0)) == "cuda"
        assert _dispatch.resolve("cuda", torch.device("cuda", 0)) == "cuda"
    with pytest.warns(RuntimeWarning, match="GPU 1"):
        assert _dispatch.resolve("auto", torch.device("cuda", 1)) == "triton"
    with pytest.raises(RuntimeError, match="cannot run here.*GPU 1"):
        _dispatch.resolve("cuda", torch.device("cuda", 1))


@pytest.mark.parametrize("cap", [(8, 0), (8, 6), (9, 0), (10, 0), (12, 0)])
def test_gpus_with_an_image(gpus, cap):
    gpus(cap)
    info = fusedopt.backends()["cuda"]
    assert info.available, info.reason
    assert "sm_80, sm_90, compute_90" in info.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve("auto", torch.device("cuda", 0)) == "cuda"


def test_unrecorded_build_is_trusted(gpus):
    """A build without the record (not through setup.py): nothing is known to be missing."""
    gpus((7, 5), record="unknown")
    assert fusedopt.backends()["cuda"].available
