"""Where a training step's GPU time goes: torch.profiler table of the top kernels (diagnostic, not a target).

    python benchmarks/profile_step.py [--batch 128] [--stages 2 3 4]
    python benchmarks/profile_step.py --cpu   # where the host's time goes: ops by self CPU time, and the host's
                                              # time to issue one step while the GPU waits behind a long kernel
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import aa_modules as A  # noqa: E402
from benchmarks.common import host_times, measure  # noqa: E402
from benchmarks.resnet import train_step_fn  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--torchvision", action="store_true", help="profile torchvision's ResNet-50 instead")
    p.add_argument("--cpu", action="store_true", help="profile the host's time instead of the GPU's")
    a = p.parse_args(argv)
    import torchvision

    model = (torchvision.models.resnet50() if a.torchvision
             else A.aa_resnet50(kappa=0.25, num_heads=8, stages=a.stages, pos_enc="relative"))
    step = train_step_fn(model, a.batch, 224, "cuda")
    wall = measure(step, warmup=3, repeats=5)[0] * 1000  # ms, median step (CUDA events)
    if a.cpu:
        return host(step, wall, a.rows)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu = sum(e.self_device_time_total for e in events) / 3 / 1000
    print(f"step: {wall:.1f} ms wall (median of 5, CUDA events), {gpu:.1f} ms of kernels "
          f"({a.batch / wall * 1000:.0f} images/s)")
    print(events.table(sort_by="self_cuda_time_total", row_limit=a.rows, max_name_column_width=90))


def host(step, wall: float, rows: int):
    """The host's time to issue a step, measured while the GPU is kept busy by a long matmul queued before it (so
    no issue waits for the GPU), and its ops by self CPU time."""
    issue = [t * 1000 for t in host_times(step, repeats=5, busy_matmuls=40, size=8192)]  # 100+ ms of GPU work ahead
    print(f"step: {wall:.1f} ms wall (median of 5, CUDA events); host issues it in {issue[2]:.1f} ms "
          f"(median of 5, GPU busy ahead of it: {', '.join(f'{x:.1f}' for x in issue)})")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
