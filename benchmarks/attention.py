"""Relative attention, forward + backward: reference, fused (SDPA on one-hot keys), triton (our kernel pair),
FlexAttention with a score_mod over the same per-query tables, against SDPA without positions (the floor).

    python benchmarks/attention.py [--sizes 7 14 28 56] [--batch 32] [--heads 4] [--dk 64] [--dv 64]

bf16 autocast on CUDA (float32 on CPU), inputs q, k, v (and r^W, r^H) created in float32 with gradients.
Time: median of repeats (CUDA events). Memory: peak allocated during a step, inputs and their gradients
included (so the floor is the same for every row). Ratios are to the no-position row of the same size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aa_modules.attention import relative_attention  # noqa: E402
from benchmarks.common import environment, markdown_table, measure  # noqa: E402


def variants():
    def reference(q, k, v, rw, rh, h, w):
        return relative_attention(q, k, v, rw, rh, h, w, implementation="reference")

    def fused(q, k, v, rw, rh, h, w):
        return relative_attention(q, k, v, rw, rh, h, w, implementation="fused")

    def triton(q, k, v, rw, rh, h, w):
        return relative_attention(q, k, v, rw, rh, h, w, implementation="triton")

    def triton_content(q, k, v, rw, rh, h, w):
        return relative_attention(q, k, v, None, None, h, w, implementation="triton")

    def no_positions(q, k, v, rw, rh, h, w):
        return F.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5)

    flex_compiled = {}

    def flex(q, k, v, rw, rh, h, w):
        from torch.nn.attention.flex_attention import flex_attention
        from aa_modules.attention import relative_tables
        if "fn" not in flex_compiled:
            flex_compiled["fn"] = torch.compile(flex_attention, dynamic=False)
        a, b = relative_tables(q, rw, rh, h, w)
        scale = q.shape[-1] ** -0.5

        def score_mod(score, bi, hi, qi, kvi):
            return score + (a[bi, hi, qi, kvi % w] + b[bi, hi, qi, kvi // w]).to(score.dtype) * scale

        return flex_compiled["fn"](q, k.to(q.dtype), v.to(q.dtype), score_mod=score_mod, scale=scale)

    return {"reference": reference, "fused": fused, "flex (score_mod on the tables)": flex, "triton": triton,
            "triton, no positions": triton_content, "no positions (floor)": no_positions}


def explore_variants():
    """Backend and memory variants of the fused path, to choose its defaults (``--explore``)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.checkpoint import checkpoint

    def fused(q, k, v, rw, rh, h, w):
        return relative_attention(q, k, v, rw, rh, h, w, implementation="fused")

    def with_backend(backend):
        def fn(*a):
            with sdpa_kernel([backend]):
                return fused(*a)
        return fn

    def padded_v_flash(q, k, v, rw, rh, h, w):
        # flash needs equal head dims: pad v to the augmented width, slice the output
        from aa_modules import attention as at
        dq = -(-(q.shape[-1] + h + w) // 8) * 8
        vp = F.pad(v, (0, dq - v.shape[-1]))
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return at._attention_fused(q, k, vp, rw, rh, h, w)[..., : v.shape[-1]]

    def chunked_checkpoint(q, k, v, rw, rh, h, w, chunks=4):
        outs = [checkpoint(fused, *t, rw, rh, h, w, use_reentrant=False)
                for t in zip(q.chunk(chunks), k.chunk(chunks), v.chunk(chunks))]
        return torch.cat(outs)

    from aa_modules import flash_relative

    def tuned(phase, **cfg):
        def fn(q, k, v, rw, rh, h, w):
            saved = dict(flash_relative.TUNING[phase])
            flash_relative.TUNING[phase].update(cfg)
            try:
                return relative_attention(q, k, v, rw, rh, h, w, implementation="triton")
            finally:
                flash_relative.TUNING[phase].update(saved)
        return fn

    sweeps = {f"triton {ph} {k}={v}": tuned(ph, **{k: v}) for ph in ("fwd", "bwd") for k, v in
              [("block_m", 32), ("block_m", 128), ("block_n", 32), ("block_n", 128), ("num_warps", 8),
               ("num_stages", 3), ("num_stages", 1)]}
    return {
        **sweeps,
        "fused, efficient kernel": with_backend(SDPBackend.EFFICIENT_ATTENTION),
        "fused, cuDNN kernel": with_backend(SDPBackend.CUDNN_ATTENTION),
        "fused, v padded, flash": padded_v_flash,
        "fused, 4 checkpointed chunks": chunked_checkpoint,
    }


def run(sizes, batch, heads, dk, dv, skip_reference_above, extra=None):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    rows, results = [], {}
    todo = dict(variants(), **(extra or {}))
    for n in sizes:
        L, dkh, dvh = n * n, dk // heads, dv // heads
        q, k = (torch.randn(batch, heads, L, dkh, device=dev, requires_grad=True) for _ in range(2))
        v = torch.randn(batch, heads, L, dvh, device=dev, requires_grad=True)
        rw, rh = (torch.randn(2 * n - 1, dkh, device=dev, requires_grad=True) for _ in range(2))
        for name, fn in todo.items():
            if name == "reference" and n > skip_reference_above:
                results[(n, name)] = None
                continue

            def step():
                with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                    out = fn(q, k, v, rw, rh, n, n)
                out.float().sum().backward()
                for t in (q, k, v, rw, rh):
                    t.grad = None

            try:
                results[(n, name)] = measure(step, warmup=3, repeats=10 if dev == "cuda" else 3)
            except torch.OutOfMemoryError:
                results[(n, name)] = "OOM"
                torch.cuda.empty_cache()
            except RuntimeError as e:  # a kernel that refuses these shapes
                results[(n, name)] = "error: " + str(e).splitlines()[0][:60]
        floor_t, floor_m = results[(n, "no positions (floor)")]
        for name in todo:
            r = results[(n, name)]
            if r is None or isinstance(r, str):
                rows.append([f"{n}x{n}", name, r or "skipped", "", "", ""])
                continue
            t, m = r
            mem = f"{m / 2**30:.3f}" if m is not None else "n/a"
            mratio = f"{m / floor_m:.2f}x" if m is not None else "n/a"
            rows.append([f"{n}x{n}", name, f"{t * 1e3:.2f}", mem, f"{t / floor_t:.2f}x", mratio])
    return markdown_table(["H=W", "implementation", "fwd+bwd ms", "peak GiB", "time / floor", "memory / floor"], rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[7, 14, 28, 56])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dk", type=int, default=64)
    p.add_argument("--dv", type=int, default=64)
    p.add_argument("--skip-reference-above", type=int, default=10_000)
    p.add_argument("--explore", action="store_true", help="also time backend/memory variants of fused")
    a = p.parse_args(argv)
    print(f"# relative attention fwd+bwd, B={a.batch}, N_h={a.heads}, d_k={a.dk}, d_v={a.dv}\n")
    print(environment() + "\n")
    print(run(a.sizes, a.batch, a.heads, a.dk, a.dv, a.skip_reference_above, explore_variants() if a.explore else None))


if __name__ == "__main__":
    main()
