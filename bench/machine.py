"""The machine's physical limits, measured in the same run: fp32 GEMM rate and memory bandwidth.

``python -m bench.machine THREADS`` prints them as JSON (a process of its own, so its threads are its own).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np


def gemm_gflops(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """Best fp32 matrix-multiply rate of torch (oneDNN/MKL), the roofline for encoder inference."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def memory_gbps(mbytes: int = 256, repeats: int = 6) -> float:
    """Best copy bandwidth (read + write) over arrays far larger than the caches: the roofline for decode."""
    src = np.ones(mbytes * (1 << 20) // 8)
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - start) / 1e9)
    return best


def describe(threads: int) -> dict:
    from onnxforge.cpu import this_cpu

    cpu = this_cpu()
    return {
        "cpu": cpu.model, "class": cpu.kernel_class, "cores_usable": len(os.sched_getaffinity(0)), "threads": threads,
        "isa": list(cpu.flags),
        "python": platform.python_version(), "gemm_fp32_gflops": gemm_gflops(threads), "memory_gbps": memory_gbps(),
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(describe(int(sys.argv[1]) if len(sys.argv) > 1 else 2)))
