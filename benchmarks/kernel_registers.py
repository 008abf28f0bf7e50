"""Registers and spills of the relative-attention kernels, compiled for an H100/H200 (sm_90a) on any machine,
no GPU needed: Triton compiles the kernels for the target and the ptxas it ships reports what each uses.

    python benchmarks/kernel_registers.py [--size 56] [--dk 16] [--maxnreg N]

The launch parameters are `aa_modules.flash_relative.TUNING`'s, for B x N_h x (size x size) bf16 inputs with head
dims --dk. The numbers come from this machine's Triton, which may differ from the GPU host's (2026-11-26: this
machine's Triton 3.8 gave the forward 237 registers where the H200's Triton 3.6 gave 158), so compare variants
compiled here with each other; measure time on the GPU (benchmarks/kernel_parts.py).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret: import Triton before aa_modules does
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aa_modules import _flash_kernels as K  # noqa: E402
from aa_modules import flash_relative as F  # noqa: E402

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def compile_kernel(fn, consts: dict, opts: dict) -> str:
    """ptxas's one-line summary (registers, spills) for fn specialised with consts."""
    fp32 = {"RW", "RH", "LSE", "DELTA", "DRW", "DRH"}  # the fp32 tensors (r^W, r^H: parameters under autocast)
    bf16 = {"Q", "K", "V", "O", "DO", "DQ", "A", "DBS", "DAS", "DK_", "DV_"}
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in fp32 | bf16:
            sig[name] = "*fp32" if name in fp32 else "*bf16"
        else:
            sig[name] = "fp32" if "scale" in name else "i32"
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ck.asm["ptx"])
    out = subprocess.run([str(PTXAS), "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True,
                         text=True).stderr
    os.unlink(f.name)
    regs = next(line.split("Used")[1].split(",")[0].strip() for line in out.splitlines() if "Used" in line)
    spills = next(line.strip() for line in out.splitlines() if "spill" in line)
    return f"{regs}; {spills}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--dk", type=int, default=16)
    ap.add_argument("--maxnreg", type=int, default=None, help="cap every kernel's registers")
    args = ap.parse_args()
    n, L = args.size, args.size * args.size
    print(f"Triton {triton.__version__}, sm_90a, {n}x{n}, head dims {args.dk}, bf16")
    for name, fn, phase in (("forward", K._fwd_kernel, "fwd"), ("dq", K._bwd_dq_kernel, "bwd"),
                            ("dk/dv", K._bwd_dkdv_kernel, "dkdv")):
        tune = F.TUNING[phase]
        h, w, bw, r = F._geometry(L, n, n, True, tune["block_n"])
        cfg = dict(H=h, W=w, BW=bw, R=r, BLOCK_M=min(tune["block_m"], F._pow2(L)))
        consts = dict(HAS_REL=True, BLOCK_M=cfg["BLOCK_M"], BW=bw, R=r, **F._rel_consts(cfg, True),
                      BLOCK_DK=F._pow2(args.dk), BLOCK_DV=F._pow2(args.dk), PRECISION="tf32")
        opts = dict(num_warps=tune["num_warps"], num_stages=F._num_stages(tune, True, r))
        if args.maxnreg or tune.get("maxnreg"):
            opts["maxnreg"] = args.maxnreg or tune["maxnreg"]
        print(f"{name:8} {compile_kernel(fn, consts, opts)}")


if __name__ == "__main__":
    main()
