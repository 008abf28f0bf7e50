"""Correctness and run-to-run determinism of the attention implementations on the GPU.

    python benchmarks/determinism.py [--sizes 7 14 28 56] [--repeats 5]

1. Correctness: each implementation's output and five gradients (q, k, v, r^W, r^H) against the reference
   computed in float64, as ||x - ref|| / ||ref||, for float32 and bf16 inputs (batch 2: the float64
   reference materialises the (HW)^2 logits).
2. Determinism: at each size (B=32, N_h=4, d_k=d_v=64, bf16 autocast, as benchmarks/attention.py), the
   gradients of the first backward pass on an idle GPU are compared bitwise with `--repeats` further passes on
   the idle GPU, then with `--repeats` passes while another process keeps the GPU busy with bf16 matmuls.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aa_modules.attention import relative_attention  # noqa: E402
from benchmarks.common import environment, markdown_table  # noqa: E402

BUSY = """
import time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + {seconds}
while time.time() < end:
    for _ in range(20):
        a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
"""


def impls():
    def rel(name):
        return lambda q, k, v, rw, rh, h, w: relative_attention(q, k, v, rw, rh, h, w, implementation=name)

    def content(name):
        return lambda q, k, v, rw, rh, h, w: relative_attention(q, k, v, None, None, h, w, implementation=name)

    def sdpa(q, k, v, rw, rh, h, w):  # PyTorch's default backend choice (flash on an H100 for bf16)
        return F.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5)

    return {"triton relative": (rel("triton"), True), "fused relative (SDPA)": (rel("fused"), True),
            "reference relative": (rel("reference"), True), "triton content-only": (content("triton"), False),
            "SDPA content-only (default backend)": (sdpa, False)}


def inputs(B, N, n, dkh, dvh, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, device="cuda", generator=g, dtype=dtype).requires_grad_()
    return mk(B, N, n * n, dkh), mk(B, N, n * n, dkh), mk(B, N, n * n, dvh), mk(2 * n - 1, dkh), mk(2 * n - 1, dkh)


def grads(fn, tensors, n, upstream, autocast):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = fn(*tensors, n, n)
    g = torch.autograd.grad(out.float(), tensors, upstream, allow_unused=True)
    return (out.detach().float(),) + tuple(x if x is not None else torch.zeros_like(t) for x, t in zip(g, tensors))


def correctness(sizes):
    rows = []
    for n in sizes:
        for dtype in (torch.float32, torch.bfloat16):
            base = inputs(2, 4, n, 16, 16, torch.float32, seed=n)
            up = torch.randn(2, 4, n * n, 16, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
            for name, (fn, rel) in impls().items():
                if name.startswith("reference"):
                    continue
                ref_t = [t.detach().double().requires_grad_() for t in base]
                ref_fn = (impls()["reference relative"][0] if rel else
                          (lambda q, k, v, rw, rh, h, w: relative_attention(q, k, v, None, None, h, w,
                                                                            implementation="reference")))
                ref = grads(ref_fn, ref_t, n, up.double(), autocast=False)
                ts = [t.detach().to(dtype).requires_grad_() for t in base]
                got = grads(fn, ts, n, up.to(dtype), autocast=False)
                errs = []
                for label, a, b in zip(["out", "dq", "dk", "dv", "dr^W", "dr^H"], got, ref):
                    if not rel and label.startswith("dr"):
                        continue
                    a, b = a.double(), b.double()
                    errs.append(f"{label} {float((a - b).norm() / b.norm().clamp_min(1e-30)):.1e}")
                rows.append([f"{n}x{n}", str(dtype).replace("torch.", ""), name, ", ".join(errs)])
    return markdown_table(["H=W", "inputs", "implementation", "||x - ref|| / ||ref|| (float64 reference)"], rows)


def determinism(sizes, repeats, batch=32, heads=4, dk=64, dv=64):
    cases = []
    for n in sizes:
        tensors = inputs(batch, heads, n, dk // heads, dv // heads, torch.float32, seed=100 + n)
        up = torch.randn(batch, heads, n * n, dv // heads, device="cuda")
        for name, (fn, rel) in impls().items():
            if name.startswith("reference") and n > 28:
                continue
            cases.append(dict(n=n, name=name, fn=fn, rel=rel, tensors=tensors, up=up,
                              first=grads(fn, tensors, n, up, autocast=True)))

    def compare(c):
        again = grads(c["fn"], c["tensors"], c["n"], c["up"], autocast=True)
        diff = max(float((a - b).abs().max()) for a, b in zip(again, c["first"]))
        return all(torch.equal(a, b) for a, b in zip(again, c["first"])), diff

    for c in cases:
        c["idle"] = [compare(c) for _ in range(repeats)]
    # One neighbour for the whole busy phase: a process looping over bf16 matmuls on the same GPU.
    proc = subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=3600)])
    try:
        time.sleep(12)  # its CUDA context and first kernels
        if proc.poll() is not None:
            raise RuntimeError("the busy neighbour process died")
        for c in cases:
            c["busy"] = [compare(c) for _ in range(repeats)]
    finally:
        proc.kill()
        proc.wait()
    fmt = lambda r: (f"{sum(e for e, _ in r)}/{len(r)} bitwise equal"
                     + (f", max diff {max(d for _, d in r):.1e}" if not all(e for e, _ in r) else ""))
    rows = [[f"{c['n']}x{c['n']}", c["name"], fmt(c["idle"]), fmt(c["busy"])] for c in cases]
    return markdown_table(["H=W", "implementation", "idle GPU", "beside a busy process"], rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[7, 14, 28, 56])
    p.add_argument("--check-sizes", type=int, nargs="+", default=[5, 14, 28])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    print(environment() + "\n")
    print("## Correctness against a float64 reference (B=2, N_h=4, d_kh=d_vh=16)\n")
    print(correctness(a.check_sizes) + "\n")
    print(f"## Determinism: gradients of {a.repeats} further backward passes vs the first "
          "(B=32, N_h=4, d_k=d_v=64, bf16 autocast)\n")
    print(determinism(a.sizes, a.repeats))


if __name__ == "__main__":
    main()
