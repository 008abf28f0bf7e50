"""The host's time to issue the relative-attention op, part by part (diagnostic): while the GPU is kept busy by
matmuls queued ahead, so that nothing waits for it, time on the host (perf_counter, median of 20) the op's forward
and backward through autograd, the op's Python bodies called directly, and each Triton launch inside them.

    python benchmarks/host_overhead.py [--size 28 --batch 128 --heads 8 --dim 4]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aa_modules import flash_relative as F  # noqa: E402
from benchmarks.common import environment, host_times, markdown_table  # noqa: E402


class _Timed:
    """Stands in for a Triton kernel: times on the host each launch, ``kernel[grid](...)``."""

    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            t = time.perf_counter()
            out = self.kernel[grid](*args, **kwargs)
            self.log.append(time.perf_counter() - t)
            return out
        return launch


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=4)
    args = ap.parse_args()
    print(environment())
    n, B, NH, d = args.size, args.batch, args.heads, args.dim
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, NH, n * n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    rw, rh = (torch.randn(2 * n - 1, d, device="cuda", requires_grad=True) for _ in range(2))
    out = F.flash_relative_attention(q, k, v, rw, rh, n, n)
    g = torch.randn_like(out)
    out.backward(g)
    K = F._kernels()
    logs = {name: [] for name in ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel")}
    shipped = {name: getattr(K, name) for name in logs}
    qd, kd, vd, rwd, rhd = (t.detach() for t in (q, k, v, rw.to(torch.bfloat16), rh.to(torch.bfloat16)))
    o, lse = F._forward(qd, kd, vd, rwd, rhd, n, n, d ** -0.5)
    scale = d ** -0.5
    rows = []
    for name, fn in [
        ("forward through the op (autograd recorded)", lambda: F.flash_relative_attention(q, k, v, rw, rh, n, n)),
        ("forward + backward through autograd",
         lambda: F.flash_relative_attention(q, k, v, rw, rh, n, n).backward(g)),
        ("_forward (the op's body)", lambda: F._forward(qd, kd, vd, rwd, rhd, n, n, scale)),
        ("_backward (the op's body)", lambda: F._backward(g, qd, kd, vd, rwd, rhd, o, lse, n, n, scale)),
        ("_groups", lambda: F._groups(qd, F._cdiv(n * n, 64), B * NH, True, 2)),
        ("SDPA forward + backward, no positions (reference)",
         lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).backward(g)),
    ]:
        for kname in logs:
            logs[kname].clear()
            setattr(K, kname, _Timed(shipped[kname], logs[kname]))
        try:
            us = statistics.median(host_times(fn)) * 1e6
        finally:
            for kname in logs:
                setattr(K, kname, shipped[kname])
        launches = ", ".join(f"{k.strip('_')} {statistics.median(v) * 1e6:.0f}" for k, v in logs.items() if v)
        rows.append([name, f"{us:.0f}", launches])
        for t in (q, k, v, rw, rh):
            t.grad = None
    print(f"B={B}, N_h={NH}, {n}x{n}, d={d}, bf16: host microseconds to issue (median of 20, GPU busy ahead)")
    print(markdown_table(["what", "host us", "of which each Triton launch, us (median)"], rows))


if __name__ == "__main__":
    main()
