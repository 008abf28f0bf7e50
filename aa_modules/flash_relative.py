"""Fused attention with decomposed 2D relative logits: a Triton kernel pair, deterministic by construction.

    o_i = sum_j softmax_j( s * (q_i . k_j + a_i[x_j] + b_i[y_j]) ) v_j

for every query i of an H x W map (positions flattened row-major, j = y_j * W + x_j). ``a`` (B, N_h, HW, W)
and ``b`` (B, N_h, HW, H) are the per-query relative tables (q_i . r^W at every key column, q_i . r^H at
every key row) that `aa_modules.attention` computes from q, r^W and r^H; without them (content-only
attention) the kernel is plain attention.

Why by hand: no public kernel takes a query-dependent bias indexed by the key's column and row *with a
fused backward* (FlashAttention and NATTEN take no such bias, xformers rejects bias gradients on its flash
path, FlexAttention scatters captured-buffer gradients with atomics), and the content-only backward of
PyTorch's flash SDPA accumulates dq with atomics, so its result depends on how the GPU schedules blocks.

Design: a key block is ``R`` whole image rows (``R * BW`` columns, ``BW`` = W padded to a power of two),
so column c of every score tile is key column ``x = c % BW`` of row ``y0 + c // BW``:

* forward: the ``a`` tile of a query block is loaded once and added to every score tile as it is (no
  gather), ``b`` at the tile's rows; online softmax in exp2; writes o and the log-sum-exp (log2 units).
* backward, one program per query block (dq, da, db): it walks every key block in a fixed order;
  ``da`` is the running sum of the score-gradient tiles folded over their R rows, ``db[:, y]`` the row
  sums of each tile, written once by the only program that owns those queries.
* backward, one program per key block (dk, dv): walks every query block in a fixed order.

No atomics, no split reductions: every output element is written by one program whose accumulation order
is fixed, so two backward passes on the same inputs are bitwise equal, whatever else runs on the GPU.
No (HW)^2 tensor exists in forward or backward. Head dims are zero-padded inside the kernel (masked
loads) to a power of two >= 16; bf16/fp16 inputs accumulate in fp32; fp32 inputs use IEEE fp32 dots.

On a machine without CUDA the same kernels run through Triton's interpreter (numpy, slow: tests on small
shapes; see `aa_modules._flash_kernels`): that is how CI checks them against the reference.

`flash_relative_attention` is a PyTorch custom op (``aa_study::flash_rel_fwd`` / ``flash_rel_bwd``) with a
fake implementation and a registered autograd formula, so ``torch.compile`` traces through it without a
graph break.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional, Tuple

import torch

# Without CUDA, Triton can only interpret: switch its interpreter on before anything imports Triton
# (torch's custom-op machinery below does). Triton wraps its own library functions for one mode or the
# other when it loads, so this cannot be decided later, per call.
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAVE_TRITON = importlib.util.find_spec("triton") is not None
_K = None


def _kernels():
    """The kernel module, imported on first use (it chooses compiled or interpreted Triton)."""
    global _K
    if _K is None:
        from . import _flash_kernels
        _K = _flash_kernels
    return _K


def available(device: torch.device) -> bool:
    """Can the kernels run on tensors of this device? CUDA compiled, or the CPU through Triton's
    interpreter (on machines without CUDA, or with ``TRITON_INTERPRET=1`` set before Triton's import)."""
    if not HAVE_TRITON:
        return False
    interpret = _kernels().INTERPRET
    return (device.type == "cuda" and not interpret) or (device.type == "cpu" and interpret)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _pow2(n: int, least: int = 16) -> int:
    return max(least, _next_pow2(n))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


LOG2E = 1.4426950408889634


# Launch parameters (benchmarks/attention.py --explore sweeps them on the GPU). block_n: keys per block
# (whole rows, so the real count is R * BW); fwd and bwd may differ.
TUNING = {"fwd": dict(block_m=64, block_n=64, num_warps=4, num_stages=2),
          "bwd": dict(block_m=64, block_n=64, num_warps=4, num_stages=2)}


def _geometry(L: int, height: int, width: int, has_rel: bool, block_n: int = 64):
    """(H, W, BW, R) of the key blocks: R whole rows of BW (>= W, a power of two) columns.

    Content-only attention has no row structure to respect: the keys are cut into rows of ``block_n``.
    """
    if not has_rel:
        width = min(block_n, _next_pow2(L))
        height = -(-L // width)
    bw = _pow2(width, least=8)
    rows = max(1, block_n // bw) if bw < block_n else 1
    rows = max(rows, 16 // bw) if bw < 16 else rows  # tl.dot needs a block of >= 16 keys
    return height, width, bw, rows


def _config(q: torch.Tensor, L: int, height: int, width: int, has_rel: bool, phase: str):
    tune = TUNING[phase]
    h, w, bw, r = _geometry(L, height, width, has_rel, tune["block_n"])
    block_m = min(tune["block_m"], _pow2(L))
    launch = dict(num_warps=tune["num_warps"], num_stages=tune["num_stages"])
    if not q.is_cuda:  # the interpreter runs blocks as numpy arrays: smaller is faster
        block_m, launch = min(block_m, 32), {}
    return dict(H=h, W=w, BW=bw, R=r, BLOCK_M=block_m), launch


def _strides(t: Optional[torch.Tensor], fallback: torch.Tensor):
    return tuple((t if t is not None else fallback).stride())


def _precision(q: torch.Tensor) -> str:
    """fp32 dots follow PyTorch's own matmul setting: IEEE fp32 unless TF32 was allowed."""
    if q.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _output(q, B, NH, L, DV):
    """o as (B, N_h, L, d_v) over (B, L, N_h, d_v) memory: the heads-concatenated, channels-last layout the AA
    layer reshapes it to next, so that reshape is free (no transpose copy after the kernel)."""
    return torch.empty((B, L, NH, DV), dtype=q.dtype, device=q.device).permute(0, 2, 1, 3)


def _forward(q, k, v, a, b, height, width, scale):
    B, NH, L, DK = q.shape
    DV = v.shape[-1]
    has_rel = a is not None
    cfg, launch = _config(q, L, height, width, has_rel, "fwd")
    o = _output(q, B, NH, L, DV)
    lse = torch.empty((B, NH, L), dtype=torch.float32, device=q.device)
    grid = (_cdiv(L, cfg["BLOCK_M"]), B * NH)
    _kernels()._fwd_kernel[grid](
        q, k, v, a if has_rel else q, b if has_rel else q, o, lse,
        *q.stride(), *k.stride(), *v.stride(), *_strides(a, q), *_strides(b, q), *o.stride(),
        NH, L, cfg["H"], cfg["W"], DK, DV, scale * LOG2E,
        HAS_REL=has_rel, BLOCK_M=cfg["BLOCK_M"], BW=cfg["BW"], R=cfg["R"],
        BLOCK_DK=_pow2(DK), BLOCK_DV=_pow2(DV), PRECISION=_precision(q), **launch,
    )
    return o, lse


def _backward(do, q, k, v, a, b, o, lse, height, width, scale):
    B, NH, L, DK = q.shape
    DV = v.shape[-1]
    has_rel = a is not None
    cfg, launch = _config(q, L, height, width, has_rel, "bwd")
    do = do.to(q.dtype)
    delta = (o.float() * do.float()).sum(-1).contiguous()  # (B, NH, L); the kernels index it densely
    dq = torch.empty((B, NH, L, DK), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, NH, L, DK), dtype=q.dtype, device=q.device)
    dv = torch.empty((B, NH, L, DV), dtype=q.dtype, device=q.device)
    if has_rel:
        # written in the tables' own dtype (the kernel accumulates in fp32 and rounds once on store)
        da = torch.empty((B, NH, L, width), dtype=a.dtype, device=q.device)
        db = torch.empty((B, NH, L, height), dtype=b.dtype, device=q.device)
    else:
        da, db = q.new_empty(0), q.new_empty(0)
    common = (*q.stride(), *k.stride(), *v.stride(), *_strides(a, q), *_strides(b, q), *do.stride(),
              NH, L, cfg["H"], cfg["W"], DK, DV, scale * LOG2E, scale)
    meta = dict(HAS_REL=has_rel, BLOCK_M=cfg["BLOCK_M"], BW=cfg["BW"], R=cfg["R"],
                BLOCK_DK=_pow2(DK), BLOCK_DV=_pow2(DV), PRECISION=_precision(q), **launch)
    aa, bb = (a, b) if has_rel else (q, q)
    _kernels()._bwd_dq_kernel[(_cdiv(L, cfg["BLOCK_M"]), B * NH)](
        q, k, v, aa, bb, do, lse, delta, dq, da if has_rel else q, db if has_rel else q, *common, **meta)
    _kernels()._bwd_dkdv_kernel[(_cdiv(cfg["H"], cfg["R"]), B * NH)](
        q, k, v, aa, bb, do, lse, delta, dk, dv, *common, **meta)
    return dq, dk, dv, da, db


@torch.library.custom_op("aa_study::flash_rel_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: Optional[torch.Tensor],
            b: Optional[torch.Tensor], height: int, width: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, a, b, height, width, scale)


@_fwd_op.register_fake
def _(q, k, v, a, b, height, width, scale):
    B, NH, L, _ = q.shape
    return _output(q, B, NH, L, v.shape[-1]), q.new_empty((B, NH, L), dtype=torch.float32)


@torch.library.custom_op("aa_study::flash_rel_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: Optional[torch.Tensor],
            b: Optional[torch.Tensor], o: torch.Tensor, lse: torch.Tensor, height: int, width: int,
            scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(do, q, k, v, a, b, o, lse, height, width, scale)


@_bwd_op.register_fake
def _(do, q, k, v, a, b, o, lse, height, width, scale):
    # contiguous, as `_backward` allocates them (empty_like would copy the strides of q's view)
    da = a.new_empty(a.shape) if a is not None else q.new_empty(0)
    db = b.new_empty(b.shape) if b is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), da, db


def _setup_context(ctx, inputs, output):
    q, k, v, a, b, height, width, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, a, b, o, lse)
    ctx.geometry = (height, width, scale)
    ctx.has_rel = a is not None


def _backward_formula(ctx, do, _dlse):
    q, k, v, a, b, o, lse = ctx.saved_tensors
    height, width, scale = ctx.geometry
    dq, dk, dv, da, db = _bwd_op(do, q, k, v, a, b, o, lse, height, width, scale)
    if not ctx.has_rel:
        da = db = None
    return dq, dk, dv, da, db, None, None, None


_fwd_op.register_autograd(_backward_formula, setup_context=_setup_context)


def flash_relative_attention(q, k, v, a=None, b=None, height=None, width=None, scale=None):
    """softmax_j(scale * (q_i.k_j + a_i[x_j] + b_i[y_j])) v_j over an H x W map (see the module docstring).

    q, k: (B, N_h, H*W, d_k); v: (B, N_h, H*W, d_v); a: (B, N_h, H*W, W) and b: (B, N_h, H*W, H), or both
    None for content-only attention. Last dims must be contiguous (stride 1); other strides are free.
    """
    if (a is None) != (b is None):
        raise ValueError("a and b must be given together (or both None)")
    if not available(q.device):
        raise RuntimeError(f"flash_relative_attention needs Triton and a CUDA or CPU tensor; got {q.device}")
    L = q.shape[2]
    if height is None or width is None:
        height, width = 1, L
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if torch.is_autocast_enabled(q.device.type):  # as SDPA: attention runs in autocast's lower precision
        q = q.to(torch.get_autocast_dtype(q.device.type))
    k, v = k.to(q.dtype), v.to(q.dtype)
    o, _ = _fwd_op(q, k, v, a, b, int(height), int(width), scale)
    return o
