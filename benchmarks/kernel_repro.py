"""One kernel-sweep case on its own, forward or forward + backward (for compute-sanitizer or cuda-gdb).

    python3 benchmarks/kernel_repro.py H W DK DV {relative|none} {bfloat16|float16|float32} [fwd|bwd] [B] [N_h]
"""
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from aa_modules.attention import relative_attention  # noqa: E402

H, W, dk, dv = map(int, sys.argv[1:5])
rel, dtype = sys.argv[5] == "relative", getattr(torch, sys.argv[6])
phase = sys.argv[7] if len(sys.argv) > 7 else "bwd"
B, N = (int(sys.argv[8]), int(sys.argv[9])) if len(sys.argv) > 9 else (8, 8)
L = H * W
mk = lambda *s: torch.randn(*s, device="cuda", dtype=dtype, requires_grad=True)  # noqa: E731
q, k, v = mk(B, N, L, dk), mk(B, N, L, dk), mk(B, N, L, dv)
rw, rh = (mk(2 * W - 1, dk), mk(2 * H - 1, dk)) if rel else (None, None)
out = relative_attention(q, k, v, rw, rh, H, W, implementation="triton")
torch.cuda.synchronize()
ref = relative_attention(q.double(), k.double(), v.double(), rw.double() if rel else None, rh.double() if rel else None, H, W,
                         implementation="reference")
print("forward max |diff|", (out.double() - ref).abs().max().item())
if phase == "bwd":
    out.backward(torch.randn_like(out))
    torch.cuda.synchronize()
    print("backward ran")
