"""Timing helpers shared by the benchmarks: CUDA events, median of repeats, peak memory."""
from __future__ import annotations

import platform
import statistics
import time

import torch


def environment() -> str:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
    return (f"{time.strftime('%Y-%m-%d')} | {dev} | torch {torch.__version__} | "
            f"CUDA {torch.version.cuda} | Python {platform.python_version()}")


def measure(step, warmup: int = 3, repeats: int = 10):
    """Median seconds of ``step()`` and the peak bytes allocated during it (CUDA) or None (CPU)."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return statistics.median(times), peak


def host_times(fn, repeats: int = 20, busy_matmuls: int = 30, size: int = 4096):
    """Seconds the host takes to issue ``fn()`` (perf_counter), sorted: each time behind ``busy_matmuls`` bf16
    matmuls of ``size`` queued on the GPU first, so that nothing in fn waits for the GPU. The host's cost of the work,
    apart from the GPU's (CUDA only)."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        for _ in range(busy_matmuls):
            a @ a
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    return sorted(times)


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
