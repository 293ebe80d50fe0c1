"""What machine a benchmark ran on, and how fast it multiplies float32 matrices (its practical peak)."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

VECTOR_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_info(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (Linux): "model name", "flags", ...; empty elsewhere.
    The one reader of that file for the benchmarks."""
    info: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_flags(path: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's avx2, fma and avx512* flags, sorted: what ``grep -o 'avx512[a-z_0-9]*\\|avx2\\|fma'
    /proc/cpuinfo | sort -u`` shows (full flag names)."""
    flags = cpu_info(path).get("flags", "").split()
    return sorted({f for f in flags if f.startswith("avx512") or f in ("avx2", "fma")})


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def describe_machine() -> dict[str, Any]:
    """CPU model, cores usable by this process, vector extensions, RAM, library versions."""
    import numpy
    import onnxruntime
    import torch

    cpu = cpu_info()
    flags = set(cpu.get("flags", "").split())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
        "ram_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "numpy": numpy.__version__,
    }


def measured_peak_gflops(threads: int | None = None, sizes: tuple[int, ...] = (512, 1024), repeats: int = 10,
                         max_seconds: float = 10.0) -> float:
    """Best float32 GFLOP/s of n x n @ n x n matmuls in torch (2 n^3 FLOPs per product), over ``sizes``.

    ``threads``: torch threads during the measurement (None: torch's current setting), restored after;
    use the benchmark's own thread count so that "fraction of peak" compares like with like. The best of
    ``repeats`` per size (bounded by ``max_seconds`` in all) is the figure: matmul is the most efficient
    kernel a CPU runs, so this is the practical ceiling of a float32 network on it. 512 is there because
    its operands fit in L2 like a small model's do (here: 201 GFLOP/s at 512, 181 at 1024, 170 at 2048,
    and numpy/onnxruntime matmuls within 5% of torch's).
    """
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    best = 0.0
    deadline = time.perf_counter() + max_seconds
    try:
        for n in sizes:
            a = torch.randn(n, n, dtype=torch.float32)
            b = torch.randn(n, n, dtype=torch.float32)
            out = torch.empty(n, n, dtype=torch.float32)
            torch.mm(a, b, out=out)  # warm-up: thread pool, caches, page faults
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                torch.mm(a, b, out=out)
                best = max(best, 2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
                if time.perf_counter() > deadline:
                    return best
        return best
    finally:
        torch.set_num_threads(previous)
