"""Where the relative-attention kernel's time goes: each kernel's GPU time (torch.profiler), registers and
spills, under launch-parameter variants, at the sizes given (default B=32, N_h=4, d_kh=d_vh=16, bf16).

    python benchmarks/kernel_parts.py [--sizes 28 56] [--batch 32 --heads 4 --dim 16]
    # AA-ResNet-50's stage 2 (batch 128, kappa = 0.25, N_h = 8: 28 x 28, 4 dims a head):
    python benchmarks/kernel_parts.py --sizes 28 --batch 128 --heads 8 --dim 4

Variants named "ablate: ..." run the kernels with one part of the relative work cut out of their source (a patched
copy of aa_modules/_flash_kernels.py): their results are wrong and only their times mean anything. They say
what each part costs, which launch parameters cannot.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aa_modules import flash_relative  # noqa: E402
from aa_modules.attention import relative_attention  # noqa: E402
from benchmarks.common import environment, markdown_table  # noqa: E402

# Source patches (old text, new text) of the timing-only ablations. `HAS_REL == 2` is a compile-time False.
_NO_B = [("return s + a, _b_pick(qr, y_i, y_last, 0, NB) * qk_scale", "return s + a, tl.zeros([BLOCK_M], tl.float32)"),
         ("return s + a + b, tl.zeros", "return s + a, tl.zeros"),
         ("            if R == 1:\n                st += (_b_pick", "            if R == 0:\n                st += (_b_pick"),
         ("                st += bt\n", "                st = st\n")]
_NO_A = [("return s + a, _b_pick", "return s, _b_pick"),
         ("return s + a + b, tl.zeros", "return s + b, tl.zeros"),
         ("at = tl.load(a_base + offs_m[None, :] * W, mask=(offs_x[:, None] < W) & m_ok[None, :], other=0.0)",
          "at = tl.zeros([BW, BLOCK_M], tl.float32)")]
_NO_B_AFTER_A = [("return s, _b_pick(qr, y_i, y_last, 0, NB) * qk_scale", "return s, tl.zeros([BLOCK_M], tl.float32)"),
                 ("return s + b, tl.zeros", "return s, tl.zeros")] + _NO_B[2:]
_NO_DA = [("            if HAS_REL:\n                da += ds", "            if HAS_REL == 2:\n                da += ds")]
_NO_EPI = [("        if HAS_REL:\n            da_x = ", "        if HAS_REL == 2:\n            da_x = ")]
_NO_ASTORE = [("            tl.store(A + (pid_bh", "            if HAS_REL == 2:\n                tl.store(A + (pid_bh")]
_DKDV_B_T = [
    ("@triton.jit\ndef _b_pick(", '''@triton.jit
def _b_of_t(RH, srh, qt, y_last, y0, H, DK, NB: tl.constexpr, BLOCK_DK: tl.constexpr, PRECISION: tl.constexpr):
    offs = y0 - y_last + H - 1 + tl.arange(0, NB)
    offs_dk = tl.arange(0, BLOCK_DK)
    rsel = tl.load(RH + offs[:, None] * srh + offs_dk[None, :],
                   mask=(offs[:, None] >= 0) & (offs[:, None] < 2 * H - 1) & (offs_dk[None, :] < DK), other=0.0)
    return tl.dot(rsel.to(qt.dtype), qt, input_precision=PRECISION)


@triton.jit
def _b_pick_t(qrt, y_i, y_last, r, NB: tl.constexpr):
    return tl.sum(tl.where(tl.arange(0, NB)[:, None] == (r + y_last - y_i)[None, :], qrt, 0.0), 0)


@triton.jit
def _b_pick('''),
    ("qr = _b_of(RH, srh, q, y_last, pid_n * R, H, DK, NB, BLOCK_DK, PRECISION)",
     "qr = _b_of_t(RH, srh, qt, y_last, pid_n * R, H, DK, NB, BLOCK_DK, PRECISION)"),
    ("st += (_b_pick(qr, offs_m // W, y_last, 0, NB) * qk_scale)[None, :]",
     "st += (_b_pick_t(qr, offs_m // W, y_last, 0, NB) * qk_scale)[None, :]"),
    ("bb = _b_pick(qr, offs_m // W, y_last, r, NB) * qk_scale",
     "bb = _b_pick_t(qr, offs_m // W, y_last, r, NB) * qk_scale"),
]
_DQ_ONEHOT = [
    ("            da = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)\n",
     "            da = tl.zeros([BLOCK_M, BW], tl.float32)\n"
     "            ex = tl.where(col_x[:, None] == tl.arange(0, BW)[None, :], 1.0, 0.0).to(q.dtype)\n"
     "            er = tl.where(col_r[:, None] == tl.arange(0, 16)[None, :], 1.0, 0.0).to(q.dtype)\n"),
    ("""                da += ds
                db_rows = tl.sum(tl.reshape(ds, (BLOCK_M, R, BW)), 2)  # (BLOCK_M, R): rows y0 .. y0 + R - 1
                tl.store(dbs + (y0 + offs_r)[None, :], db_rows.to(DBS.dtype.element_ty),
                         mask=(y0 + offs_r)[None, :] < H)""",
     """                dsc = ds.to(k.dtype)
                da = tl.dot(dsc, ex, da, input_precision=PRECISION)
                db16 = tl.dot(dsc, er, input_precision=PRECISION)
                offs_r16 = tl.arange(0, 16)
                tl.store(dbs + (y0 + offs_r16)[None, :], db16.to(DBS.dtype.element_ty),
                         mask=((offs_r16 < R) & (y0 + offs_r16 < H))[None, :])"""),
    ("            da_x = tl.sum(tl.reshape(da, (BLOCK_M, R, BW)), 1)  # fold the R rows: (BLOCK_M, BW)",
     "            da_x = da"),
]
ABLATIONS = {
    "ablate: no b (r^H) terms": _NO_B,
    "ablate: no a (r^W) terms": _NO_A,
    "ablate: dq without da, db sums": _NO_DA,
    "ablate: dq without its epilogue": _NO_EPI,
    "ablate: dq without storing a": _NO_ASTORE,
    "ablate: all five": _NO_A + _NO_B_AFTER_A + _NO_DA + _NO_EPI + _NO_ASTORE,
    # not ablations (their results are right): alternatives measured against the shipped code
    "dkdv b from r^H @ q^T": _DKDV_B_T,
    # da and db (the score gradients' sums per key column and per key row) by dots against one-hot tables, instead of
    # a (BLOCK_M, BLOCK_N) fp32 accumulator and a reshaped sum per key block (needs BW >= 16)
    "dq da, db by one-hot dots": _DQ_ONEHOT,
    # v8's shift of da by tl.gather in registers, against the scratch
    "dq shifts da by tl.gather (v8)": [(
        "            dqw = tl.load(das + tl.minimum(tl.maximum(src_x, 0), BW - 1), mask=(src_x >= 0) & (src_x < W), "
        "other=0.0)",
        "            dqw = tl.where((src_x >= 0) & (src_x < W), tl.gather(da_x, tl.minimum(tl.maximum(src_x, 0), BW - 1), 1),"
        " 0.0).to(q.dtype)")],
}


def patched_kernels(patches):
    """A copy of aa_modules/_flash_kernels.py with `patches` applied, imported as a module of its own (Triton's jit
    reads a kernel's source from its file)."""
    src = (Path(__file__).resolve().parents[1] / "aa_modules" / "_flash_kernels.py").read_text()
    for old, new in patches:
        if old not in src:
            raise ValueError(f"ablation patch no longer matches the kernel source: {old[:60]!r}")
        src = src.replace(old, new)
    path = Path(tempfile.mkdtemp()) / f"_flash_kernels_ablated_{abs(hash(src))}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


VARIANTS = {
    "as shipped": {},
    "content-only (no r^W, r^H)": {"content": True},
    "SDPA, no positions (the floor)": {"sdpa": True},
    "fwd 8 warps": {"fwd": dict(num_warps=8)},
    "bwd 8 warps": {"bwd": dict(num_warps=8), "dkdv": dict(num_warps=8)},
    "block_m 32": {"fwd": dict(block_m=32), "bwd": dict(block_m=32), "dkdv": dict(block_m=32)},
    "block_n 128": {"fwd": dict(block_n=128), "bwd": dict(block_n=128), "dkdv": dict(block_n=128)},
    "bwd 2 programs/SM": {"bwd": dict(programs_per_sm=2)},
    "bwd 8 programs/SM": {"bwd": dict(programs_per_sm=8)},
    "multi-row blocks 4 programs/SM (v9)": {"bwd": dict(multirow_programs_per_sm=4)},
    "stages 1": {"fwd": dict(num_stages=1), "bwd": dict(num_stages=1), "dkdv": dict(num_stages=1)},
    "fwd stages 1": {"fwd": dict(num_stages=1)},
    "multi-row blocks 2 stages (v7)": {"fwd": dict(multirow_stages=2), "bwd": dict(multirow_stages=2)},
    "block_n 32": {"fwd": dict(block_n=32), "bwd": dict(block_n=32)},
    "block_n 32, stages 1": {"fwd": dict(block_n=32, num_stages=1), "bwd": dict(block_n=32, num_stages=1)},
    "block_n 16, stages 1": {"fwd": dict(block_n=16, num_stages=1), "bwd": dict(block_n=16, num_stages=1)},
    "dkdv stages 1": {"dkdv": dict(num_stages=1)},
    "dkdv block_n 128": {"dkdv": dict(block_n=128)},
    "dkdv block_n 64": {"dkdv": dict(block_n=64)},
    "dkdv block_n 32": {"dkdv": dict(block_n=32)},
    "dkdv block_n 128, stages 1": {"dkdv": dict(block_n=128, num_stages=1)},
    "dkdv block_n 128, block_m 32": {"dkdv": dict(block_n=128, block_m=32)},
    "dq stages 1": {"bwd": dict(num_stages=1)},
    "dq block_m 32": {"bwd": dict(block_m=32)},
    "dq block_m 32, stages 1": {"bwd": dict(block_m=32, num_stages=1)},
    "dq block_m 32, 2 warps": {"bwd": dict(block_m=32, num_warps=2)},
    "dq block_m 128, 8 warps": {"bwd": dict(block_m=128, num_warps=8)},
    "fwd block_m 128, 8 warps": {"fwd": dict(block_m=128, num_warps=8)},
    "dq block_m 128, 8 warps, 8 programs/SM": {"bwd": dict(block_m=128, num_warps=8, programs_per_sm=8)},
    "dq block_m 128, 8 warps, 2 programs/SM": {"bwd": dict(block_m=128, num_warps=8, programs_per_sm=2)},
    "dkdv 8 warps": {"dkdv": dict(num_warps=8)},
    "dkdv block_m 128": {"dkdv": dict(block_m=128)},
    "dkdv block_m 128, 8 warps": {"dkdv": dict(block_m=128, num_warps=8)},
    "dq maxnreg 128": {"bwd": dict(maxnreg=128)},
    "dq maxnreg 168": {"bwd": dict(maxnreg=168)},
    "fwd maxnreg 128": {"fwd": dict(maxnreg=128)},
    "fwd maxnreg 168": {"fwd": dict(maxnreg=168)},
    "dkdv maxnreg 128": {"dkdv": dict(maxnreg=128)},
    "dkdv maxnreg 168": {"dkdv": dict(maxnreg=168)},
    **{name: {"patches": patches} for name, patches in ABLATIONS.items()},
}


def profile(fn, repeats=10):
    from torch.profiler import ProfilerActivity, profile as prof
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in p.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t:
            out[e.key] = t / repeats / 1e3  # ms per step
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[28, 56])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=16, help="d_k = d_v of a head")
    args = ap.parse_args()
    print(environment())
    rows = []
    for n in args.sizes:
        torch.manual_seed(0)
        B, NH, d = args.batch, args.heads, args.dim
        print(f"B={B}, N_h={NH}, d={d}, {n}x{n}", flush=True)
        q, k, v = (torch.randn(B, NH, n * n, d, device="cuda", requires_grad=True) for _ in range(3))
        rw, rh = (torch.randn(2 * n - 1, d, device="cuda", requires_grad=True) for _ in range(2))

        def step():
            tables = (None, None) if content else (rw, rh)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if sdpa:
                    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                else:
                    out = relative_attention(q, k, v, *tables, n, n, implementation="triton")
            out.float().sum().backward()
            for t in (q, k, v, rw, rh):
                t.grad = None

        for name in args.variants:
            saved = {ph: dict(flash_relative.TUNING[ph]) for ph in flash_relative.TUNING}
            content = VARIANTS[name].get("content", False)
            sdpa = VARIANTS[name].get("sdpa", False)
            for ph, cfg in VARIANTS[name].items():
                if ph not in ("content", "sdpa", "patches"):
                    flash_relative.TUNING[ph].update(cfg)
            shipped = flash_relative._kernels()
            try:
                if "patches" in VARIANTS[name]:
                    flash_relative._K = patched_kernels(VARIANTS[name]["patches"])
                times = profile(step)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(20):
                    step()
                end.record()
                torch.cuda.synchronize()
                wall = start.elapsed_time(end) / 20
            except Exception as e:  # a variant the compiler refuses
                rows.append([f"{n}x{n}", name, "error: " + str(e).splitlines()[0][:80], "", "", "", ""])
                continue
            finally:
                flash_relative._K = shipped
                for ph in saved:
                    flash_relative.TUNING[ph].clear()
                    flash_relative.TUNING[ph].update(saved[ph])
            kern = {kname: sum(t for key, t in times.items() if kname in key)
                    for kname in ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel")}
            other = sum(times.values()) - sum(kern.values())  # SDPA's kernels, PyTorch's ops around ours
            regs = " / ".join(f"{getattr(c, 'n_regs', '?')}r {getattr(c, 'n_spills', '?')}s"
                              for c in (flash_relative.COMPILED.get(x) for x in ("fwd", "bwd_dq", "bwd_dkdv")))
            rows.append([f"{n}x{n}", name, f"{wall:.2f}"] + [f"{kern[x]:.2f}" for x in kern] + [f"{other:.2f}", regs])
    print(markdown_table(["H=W", "variant", "step ms (events)", "fwd ms", "dq ms", "dk/dv ms", "other ms",
                          "regs/spills fwd / dq / dkdv"], rows))


if __name__ == "__main__":
    main()
