"""Correctness sweep of the Triton relative-attention kernels (`aa_modules.flash_relative`) against the reference.

    python3 benchmarks/kernel_sweep.py [--shapes 500] [--seed 0] [--workers 12] [--cases random|issue|both]
                                       [--variant NAME] [--out FILE]

Every case draws fresh random inputs: map H x W (non-square too), batch B, heads N_h, key and value depths per
head (any, d_k != d_v included), encoding (relative or none) and dtype (bf16, fp16, fp32). The triton output and
all five gradients (q, k, v, r^W, r^H) are compared with `implementation="reference"` run in float64 on the same
(dtype-rounded) inputs, by the norm-relative error |x - ref| / |ref|. A case passes where every error is within
the dtype's tolerance (TOLERANCE), or within twice the reference path's own error run in that dtype, whichever
is larger; where both backward passes give bitwise equal gradients; and where nothing is NaN. Every failure is
printed, and the last line counts them.

Each worker is a process of its own: a kernel that faults (an illegal memory access loses the CUDA context) is
recorded as CRASH for its case and the worker is restarted for the rest. Run this before any GPU timing is
reported; it needs CUDA (on the CPU the interpreter tests in tests/networks/test_flash_relative.py cover the
kernels).

``--variant`` runs every case under a diagnostic change of the launch (VARIANTS), for bisecting a failure.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DTYPES = ("bfloat16", "float16", "float32")
# norm-relative error allowed per dtype: bf16 keeps 8 mantissa bits (2^-9 = 2e-3 per rounding, a few roundings
# per path: scores, probabilities, output), fp16 11 bits, fp32 IEEE dots
TOLERANCE = {"bfloat16": 2e-2, "float16": 3e-3, "float32": 1e-4}
SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 20, 24, 28, 31, 32, 33, 40, 56, 64)
DEPTHS = (1, 2, 3, 4, 5, 8, 12, 16, 17, 20, 24, 31, 32, 33, 40, 48, 64, 96, 128)
# the rows of the kernel-correctness issue (B 8, N_h 8; B 1 at 56 x 56, where the float64 reference would need
# 40 GB), each in bf16 as there, and in fp16 and fp32
ISSUE_ROWS = [(28, 28, 20, 4, True), (28, 28, 20, 4, False), (14, 14, 20, 4, True), (14, 14, 40, 8, True),
              (7, 7, 20, 8, True), (28, 28, 20, 20, True), (28, 28, 16, 4, True), (28, 28, 4, 4, True),
              (28, 28, 24, 24, True), (28, 28, 4, 20, True), (56, 56, 20, 8, True), (7, 7, 8, 40, True)]
MAX_ELEMENTS = 1 << 26  # B * N_h * L^2 of one case: the float64 reference materialises (B, N_h, L, L) tensors


def issue_cases():
    return [dict(B=8 if h * w <= 1024 else 1, N=8, H=h, W=w, dk=dk, dv=dv, rel=rel, dtype=dt)
            for dt in DTYPES for (h, w, dk, dv, rel) in ISSUE_ROWS]


def random_cases(n: int, seed: int):
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        H, W = rng.choice(SIZES), rng.choice(SIZES)
        if rng.random() < 0.3:
            W = H
        case = dict(B=rng.randint(1, 8), N=rng.choice((1, 2, 3, 4, 8)), H=H, W=W, dk=rng.choice(DEPTHS),
                    dv=rng.choice(DEPTHS), rel=rng.random() < 0.7, dtype=rng.choice(DTYPES))
        if case["B"] * case["N"] * (H * W) ** 2 <= MAX_ELEMENTS:
            cases.append(case)
    return cases


def describe(c):
    return (f"B{c['B']} Nh{c['N']} {c['H']}x{c['W']} dk{c['dk']} dv{c['dv']} "
            f"{'relative' if c['rel'] else 'none'} {c['dtype']}")


# diagnostic launch changes, applied in the worker before any kernel runs
def _variant_unequal_blocks(F):
    """Key and value depths padded each to its own power of two (the kernels' launch before the fix)."""
    F._head_blocks = lambda dk, dv: (F._pow2(dk), F._pow2(dv))


def _variant_one_stage(F):
    for t in F.TUNING.values():
        t["num_stages"] = 1
        t.pop("multirow_stages", None)


def _variant_one_group(F):
    F._groups = lambda *a, **k: 1


VARIANTS = {"unequal_blocks": _variant_unequal_blocks, "one_stage": _variant_one_stage, "one_group": _variant_one_group}


def check_case(c, device):
    import torch
    from aa_modules.attention import relative_attention
    dtype = getattr(torch, c["dtype"])
    B, N, H, W, dk, dv, rel = c["B"], c["N"], c["H"], c["W"], c["dk"], c["dv"], c["rel"]
    L = H * W
    shapes = [(B, N, L, dk), (B, N, L, dk), (B, N, L, dv)] + ([(2 * W - 1, dk), (2 * H - 1, dk)] if rel else [])
    base = [torch.randn(s, device=device).to(dtype) for s in shapes]
    upstream = torch.randn(B, N, L, dv, device=device).to(dtype)

    def run(impl, cast):
        ins = [t.detach().to(cast).requires_grad_() for t in base]
        q, k, v, *tables = ins
        rw, rh = tables if rel else (None, None)
        out = relative_attention(q, k, v, rw, rh, H, W, implementation=impl)
        grads = torch.autograd.grad(out, ins, upstream.to(cast))
        return [out.detach()] + [g.detach() for g in grads]

    from aa_modules import flash_relative
    probe = base[0][:1, :1]
    reason = flash_relative.unsupported(probe, base[2][:1, :1], rel, H, W)
    if reason is not None:  # the guard would send it elsewhere: the kernels would not be what is checked
        return dict(case=c, errors={}, stock={}, failures=[f"not run by the kernels: {reason}"])
    truth = run("reference", torch.float64)
    mine = run("triton", dtype)
    again = run("triton", dtype)
    stock = run("reference", dtype)
    names = ["out", "dq", "dk", "dv", "drw", "drh"][: len(truth)]

    def err(x, ref):
        x = x.double()
        if not torch.isfinite(x).all():
            return float("nan")
        # where the true tensor is (nearly) zero (a one-column map's width logits and a one-position map's
        # gradients: the softmax is constant), its own norm is no scale: 0.01 per element is
        floor = 0.01 * ref.numel() ** 0.5
        return ((x - ref).norm() / ref.norm().clamp_min(floor)).item()

    row = dict(case=c, errors={}, stock={}, failures=[])
    for name, x, y, r, s in zip(names, mine, again, truth, stock):
        e, es = err(x, r), err(s, r)
        row["errors"][name], row["stock"][name] = e, es
        limit = max(TOLERANCE[c["dtype"]], 2 * es if es == es else 0.0)
        if not (e <= limit):
            row["failures"].append(f"{name} error {e:.3g} > {limit:.3g} (reference in {c['dtype']}: {es:.3g})")
        if name != "out" and not torch.equal(x, y):
            row["failures"].append(f"{name} differs between two backward passes")
    return row


def worker(args):
    import torch
    from aa_modules import flash_relative
    if args.variant:
        VARIANTS[args.variant](flash_relative)
    cases = json.loads(sys.stdin.read())
    device = torch.device(os.environ.get("KERNEL_SWEEP_DEVICE", "cuda"))  # cpu: a smoke test of this script
    for index, c in cases:
        print(json.dumps({"start": index}), flush=True)
        torch.manual_seed(1000 + index)
        row = check_case(c, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        row["index"] = index
        print(json.dumps(row), flush=True)


def run_workers(cases, n_workers, variant, log=None):
    """Cases spread over worker processes; a worker that dies marks its case CRASH and a new one takes the rest.
    Each finished case is also appended to ``log`` (a file object) as it arrives."""
    import tempfile
    pending = list(enumerate(cases))
    chunks = [pending[i::n_workers] for i in range(n_workers)]
    results = {}
    cmd = [sys.executable, __file__, "--worker"] + (["--variant", variant] if variant else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def spawn(chunk):
        err = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty worker cannot block on it
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        p.stdin.write(json.dumps(chunk))
        p.stdin.close()
        return p, chunk, err

    procs = [spawn(c) for c in chunks if c]
    while procs:
        p, chunk, err = procs.pop(0)
        started = None
        for line in p.stdout:
            msg = json.loads(line)
            if "start" in msg:
                started = msg["start"]
            else:
                results[msg["index"]] = msg
                if log is not None:
                    log.write(line)
                    log.flush()
                started = None
        p.wait()
        err.seek(0)
        tail = err.read().strip().splitlines()
        err.close()
        if p.returncode != 0:
            done = set(results)
            if started is not None:
                last = next((t for t in reversed(tail) if "Error" in t), tail[-1] if tail else f"exit {p.returncode}")
                results[started] = dict(index=started, case=dict(cases[started]), errors={}, stock={},
                                        failures=[f"CRASH: {last[:300]}"])
            rest = [(i, c) for i, c in chunk if i not in done and i != started]
            if rest:
                procs.append(spawn(rest))
    return [results[i] for i in sorted(results)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--cases", choices=("random", "issue", "both"), default="both")
    ap.add_argument("--variant", choices=sorted(VARIANTS))
    ap.add_argument("--cases-file", help="run the cases of this JSON-lines file (an --out of an earlier sweep, or "
                                         "one {B, N, H, W, dk, dv, rel, dtype} object per line) instead")
    ap.add_argument("--out", help="also write every case's errors here (JSON lines)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    import torch
    if not torch.cuda.is_available() and os.environ.get("KERNEL_SWEEP_DEVICE") != "cpu":
        sys.exit("kernel_sweep.py: needs a CUDA GPU (the CPU tests run the kernels through Triton's interpreter)")
    cases = (issue_cases() if args.cases in ("issue", "both") else []) + \
        (random_cases(args.shapes, args.seed) if args.cases in ("random", "both") else [])
    if args.cases_file:
        rows = [json.loads(line) for line in open(args.cases_file) if line.strip()]
        cases = [r.get("case", r) for r in rows]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "the CPU (Triton's interpreter)"
    print(f"# kernel sweep: {len(cases)} cases on {gpu}, torch {torch.__version__}, "
          f"variant {args.variant or 'none'}, seed {args.seed}")
    print("# tolerance (norm-relative, or twice the reference's own error in that dtype): "
          + ", ".join(f"{k} {v:g}" for k, v in TOLERANCE.items()))
    t0 = time.time()
    log = open(args.out, "w") if args.out else None
    rows = run_workers(cases, args.workers, args.variant, log)
    worst = {}
    for r in rows:
        for name, e in r["errors"].items():
            key = (r["case"]["dtype"], name)
            worst[key] = max(worst.get(key, 0.0), e) if e == e else float("nan")
    failed = [r for r in rows if r["failures"]]
    for r in failed:
        print(f"FAIL {describe(r['case'])}: " + "; ".join(r["failures"]))
    if log is not None:
        log.close()
    print("# worst error per dtype and tensor: " + "; ".join(
        f"{dt} {name} {worst[(dt, name)]:.2e}" for dt in DTYPES for name in ("out", "dq", "dk", "dv", "drw", "drh")
        if (dt, name) in worst))
    print(f"# {time.time() - t0:.0f} s")
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
