"""`python -m fusedopt env`: versions, backends and why some are unavailable.

Paste its output into bug reports. ``--json`` gives the same facts as one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import fusedopt

from .. import _dispatch, _ext

PROG = "python -m fusedopt env"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_compiler() -> str | None:
    """The compiler torch was built with, from torch.__config__.show() ("GCC 13.3")."""
    m = re.search(
        r"^\s*-\s*((?:GCC|Clang|clang|MSVC|Apple clang)[^\n]*)$",
        torch.__config__.show(),
        re.MULTILINE,
    )
    return m.group(1).strip() if m else None


def _extension_compiler(path: str | None) -> str | None:
    """The compiler that built fusedopt._C, from the ELF .comment strings the compiler leaves."""
    if not path or not os.path.isfile(path):
        return None
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    found = re.findall(rb"GCC: \(([^)\x00]*)\) ([\w.\-]+)|(clang version [\w.\-]+)", raw)
    if not found:
        return None
    # The last one is the compiler of the extension's own objects (crt files come first).
    distro, version, clang = (x.decode(errors="replace") for x in found[-1])
    return clang or f"GCC {version} ({distro})"


def _cudnn() -> str | None:
    if not torch.backends.cudnn.is_available():
        return None
    v = torch.backends.cudnn.version()
    if v is None:
        return None
    major = v // 10000 if v >= 90000 else v // 1000  # cuDNN 9 packs as MMmmpp, 8 as Mmpp
    rest = v % 10000 if v >= 90000 else v % 1000
    return f"{major}.{rest // 100}.{rest % 100}"


def _tool_version(exe: str, pattern: str) -> str | None:
    """``exe --version`` matched against ``pattern``, or None when not found or it fails."""
    path = shutil.which(exe)
    if path is None:
        return None
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(pattern, out)
    return f"{m.group(0).strip()} ({path})" if m else path


def _gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        prop = torch.cuda.get_device_properties(i)
        gpus.append(
            {
                "index": i,
                "name": prop.name,
                "capability": f"sm_{prop.major}{prop.minor}",
                "memory_gib": round(prop.total_memory / 2**30, 1),
                "multiprocessors": prop.multi_processor_count,
            }
        )
    return gpus


def collect() -> dict[str, Any]:
    """Everything ``env`` reports, as plain JSON-able data."""
    C = _ext._C
    so_path = getattr(C, "__file__", None)
    backends = fusedopt.backends()
    auto = {"cpu": _dispatch.resolve("auto", torch.device("cpu"))}
    if torch.cuda.is_available():
        auto["cuda"] = _dispatch.resolve("auto", torch.device("cuda"))
    return {
        "fusedopt": {
            "version": fusedopt.__version__,
            "path": str(Path(fusedopt.__file__).parent),
            "extension": so_path if C is not None else None,
            "extension_error": _ext.LOAD_ERROR,
            "extension_compiler": _extension_compiler(so_path),
            "cuda_compiled": bool(C is not None and C.with_cuda),
            "cuda_archs": (C.cuda_archs() or None) if C is not None and C.with_cuda else None,
        },
        "simd": {
            "chosen": C.cpu_capability() if C is not None else None,
            "detected": C.cpu_capability_detected() if C is not None else None,
            "torch": torch.backends.cpu.get_cpu_capability(),
        },
        "backends": {
            name: {"available": b.available, "reason": b.reason} for name, b in backends.items()
        },
        "auto": auto,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": {
            "version": torch.__version__,
            "git": torch.version.git_version,
            "cuda": torch.version.cuda,
            "hip": torch.version.hip,
            "cudnn": _cudnn(),
            "compiler": _torch_compiler(),
            "cxx11_abi": torch.compiled_with_cxx11_abi(),
            "threads": torch.get_num_threads(),
        },
        "triton": _version("triton"),
        "compilers": {
            "c++": _tool_version(os.environ.get("CXX", "c++"), r"^[^\n]+"),
            "nvcc": _tool_version("nvcc", r"release [\d.]+, V[\d.]+"),
        },
        "gpus": _gpus(),
        "env": {
            k: os.environ[k]
            for k in (
                "FUSEDOPT_BUILD_CUDA",
                "TRITON_INTERPRET",
                "CUDA_VISIBLE_DEVICES",
                "OMP_NUM_THREADS",
            )
            if k in os.environ
        },
    }


def render(info: dict[str, Any]) -> str:
    """The plain-text report."""
    fo, th, simd = info["fusedopt"], info["torch"], info["simd"]
    na = "not found"
    lines = [f"fusedopt     {fo['version']}  ({fo['path']})"]
    if fo["extension"]:
        lines.append(f"  fusedopt._C  {fo['extension']}")
        lines.append(f"  built with   {fo['extension_compiler'] or 'unknown compiler'}")
    else:
        lines.append(f"  fusedopt._C  not loaded: {fo['extension_error']}")
    if fo["cuda_compiled"]:
        lines.append(f"  CUDA archs   {fo['cuda_archs'] or 'unknown'}")
    else:
        lines.append("  CUDA archs   none (fusedopt._C was built without CUDA)")
    if simd["chosen"] is not None:
        same = simd["chosen"] == simd["detected"]
        lines.append(
            f"  SIMD         {simd['chosen']}"
            + ("" if same else f" (the CPU supports {simd['detected']})")
            + f"; torch's own kernels: {simd['torch']}"
        )
    lines += [
        f"python       {info['python']}  ({info['platform']}, {info['cpu_count']} CPUs)",
        f"torch        {th['version']}  (git {th['git'][:10] if th['git'] else '?'}, built with "
        f"{th['compiler'] or 'unknown compiler'}, {th['threads']} threads)",
        f"  CUDA       {th['cuda'] or 'none (CPU-only build)'}"
        + (f", cuDNN {th['cudnn']}" if th["cudnn"] else "")
        + (f"; HIP {th['hip']}" if th["hip"] else ""),
        f"triton       {info['triton'] or 'not installed'}",
        f"c++          {info['compilers']['c++'] or na}",
        f"nvcc         {info['compilers']['nvcc'] or na}",
    ]
    if info["gpus"]:
        for g in info["gpus"]:
            lines.append(
                f"GPU {g['index']}        {g['name']} ({g['capability']}, "
                f"{g['memory_gib']} GiB, {g['multiprocessors']} SMs)"
            )
    else:
        lines.append("GPU          none visible (torch.cuda.is_available() is False)")
    for k, v in info["env"].items():
        lines.append(f"${k:<11} {v}")
    lines += ["", "backends:"]
    width = max(len(n) for n in info["backends"])
    for name, b in info["backends"].items():
        mark = "yes" if b["available"] else "no "
        lines.append(f"  {name:<{width}}  {mark}  {b['reason']}")
    auto = ", ".join(f"{name} for {dev.upper()} tensors" for dev, name in info["auto"].items())
    lines.append(f"  {'auto':<{width}}  picks {auto}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Report fusedopt's environment: versions (fusedopt, torch, CUDA, Triton, "
        "compilers), which backends can run and why the others can't, the SIMD level, the CUDA "
        "architectures compiled in and the GPUs.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0
