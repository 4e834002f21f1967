"""The GPU check's scripts, where they can run without a GPU: the register check's parsing and
bound (benchmarks/check_registers.py), the benchmark's rows and table (benchmarks/gpu_bench.py),
the kernel list for compute-sanitizer, and the per-test deadline plugin. The whole script runs
in CI as `benchmarks/gpu_check.sh --dry-run`."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from benchmarks import check_registers, gpu_bench, sanitize_kernels
from fusedopt._opdefs import OPS

SAMPLE = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]

Resource usage:
 Common:
  GLOBAL:0
 Function _ZN8fusedopt4cuda19multi_tensor_kernelIA:
  REG:64 STACK:40 SHARED:4112 LOCAL:0 CONSTANT[0]:32764 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN8fusedopt4cuda19sum_partials_kernelEPKdlPd:
  REG:16 STACK:0 SHARED:4096 LOCAL:0 CONSTANT[0]:920 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin elf code:
================
arch = sm_80
 Function _ZN8fusedopt4cuda19multi_tensor_kernelIA:
  REG:83 STACK:0 SHARED:4112 LOCAL:0 CONSTANT[0]:32764 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin ptx code:
================
arch = sm_90
"""


def test_parse_res_usage():
    ks = check_registers.parse_res_usage(SAMPLE)
    assert [(k.arch, k.regs, k.stack) for k in ks] == [
        ("sm_90", 64, 40),
        ("sm_90", 16, 0),
        ("sm_80", 83, 0),
    ]
    assert ks[0].name == "_ZN8fusedopt4cuda19multi_tensor_kernelIA"


def test_plan_bound_is_read_from_the_header():
    threads, blocks, regs = check_registers.plan_bound()
    assert (threads, blocks) == (512, 2) and regs == 64


def test_over_the_bound_fails(monkeypatch, tmp_path, capsys):
    lib = tmp_path / "_C.so"
    lib.write_bytes(b"")
    fake = tmp_path / "cuobjdump"
    fake.write_text(f"#!/bin/sh\ncat <<'X'\n{SAMPLE}\nX\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CUOBJDUMP", str(fake))
    monkeypatch.setattr(check_registers, "demangle", lambda names: {n: n for n in names})
    assert check_registers.main([str(lib)]) == 1
    assert "FAIL: 1 multi-tensor kernels use more than 64 registers" in capsys.readouterr().out


def test_benchmark_blocks_and_table():
    blocks = gpu_bench.blocks("full")
    first = blocks[0]
    assert (first.workload.name, first.dtype, first.opt.name) == ("flat", "fp32", "AdamW")
    assert first.workload.params == 2**28
    names = {(b.workload.name, b.dtype, b.opt.name) for b in blocks}
    assert len(names) == len(blocks) == 3 * 2 * len(gpu_bench.OPTIMIZERS)
    assert next(b for b in blocks if b.workload.name == "tiny").workload.params == 2000 * 1024
    assert "torch-fused" not in next(b for b in blocks if b.opt.name == "Lion").impls()
    rows = [
        {"workload": "flat", "dtype": "fp32", "optimizer": "AdamW", "impl": "fusedopt-cuda",
         "status": "ok", "ms_median": 1.5, "frac_copy": 0.91},
        {"workload": "flat", "dtype": "fp32", "optimizer": "AdamW", "impl": "fusedopt-triton",
         "status": "error: RuntimeError: boom"},
    ]  # fmt: skip
    text = gpu_bench.table(rows, "# header")
    assert "1.500   91.0%" in text and "error" in text and "boom" in text


def test_sanitizer_run_covers_every_op():
    ops = {op for _, op, _ in sanitize_kernels.calls(small=True)}
    # the ops on fusedopt's own CUDA kernels
    assert ops == {name for name, d in OPS.items() if d.kernels}


def test_deadline_plugin(tmp_path):
    test = tmp_path / "test_sleep.py"
    test.write_text(
        textwrap.dedent(
            """
            import time
            def test_slow():
                time.sleep(30)
            def test_fast():
                pass
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "benchmarks.pytest_deadline",
         "--deadline=1", "-p", "no:cacheprovider", str(test)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "1 failed, 1 passed" in out.stdout, out.stdout + out.stderr
    assert "deadline" in out.stdout
