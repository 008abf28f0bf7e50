"""Where a training step's GPU time goes: torch.profiler table of the top kernels (diagnostic, not a target).

    python benchmarks/profile_step.py [--batch 128] [--stages 2 3 4]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import aa_modules as A  # noqa: E402
from benchmarks.resnet import train_step_fn  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--rows", type=int, default=25)
    a = p.parse_args(argv)
    step = train_step_fn(A.aa_resnet50(kappa=0.25, num_heads=8, stages=a.stages), a.batch, 224, "cuda")
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
