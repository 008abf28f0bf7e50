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


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
