"""Fused attention with decomposed 2D relative logits: a Triton kernel pair, deterministic by construction.

    o_i = sum_j softmax_j( s * (q_i . k_j + a_i[x_j] + b_i[y_j]) ),   a_i[x] = q_i . r^W[x - x_i + W - 1],
                                                                       b_i[y] = q_i . r^H[y - y_i + H - 1]

for every query i of an H x W map (positions flattened row-major, j = y_j * W + x_j), with the offset tables
r^W (2W - 1, d) and r^H (2H - 1, d) shared by every batch element and head. The kernels take q, k, v, r^W and
r^H and build a and b inside each program: no per-query table (B, N_h, HW, W + H) is ever materialised in
forward, and backward keeps only a, transiently. Without r^W, r^H (content-only attention) the kernel is plain
attention.

Why by hand: no public kernel takes a query-dependent bias indexed by the key's column and row *with a
fused backward* (FlashAttention and NATTEN take no such bias, xformers rejects bias gradients on its flash
path, FlexAttention scatters captured-buffer gradients with atomics), and the content-only backward of
PyTorch's flash SDPA accumulates dq with atomics, so its result depends on how the GPU schedules blocks.

Design: a key block is ``R`` whole image rows (``R * BW`` columns, ``BW`` = W padded to a power of two),
so column c of every score tile is key column ``x = c % BW`` of row ``y0 + c // BW``:

* forward, one program per query block: ``a`` (BLOCK_M, BW) from one small dot, q @ r^W^T at every offset,
  gathered per query (``tl.gather``) and added to every score tile as it is; ``b`` at the tile's R rows from
  one small dot per key block, q against the window of NB rows of r^H that holds every offset between the
  block's query rows and its key rows, and a select per query (``_b_of``, ``_b_pick``); online softmax in exp2;
  writes o and the log-sum-exp (log2 units).
* backward, one program per (query block, group of G batch-heads) (dq, delta = rowsum(o * do), dr^W, dr^H):
  it walks every key block in a fixed order; the score gradients summed per key column (da) and per key
  row (db) are turned back into gradients by offset, shifted per query through the program's scratch, which
  give dq's relative part (times r^W, r^H) and the program's share of dr^W, dr^H (times q). The shares, one per
  program, fp32, are summed afterwards in a fixed order: no atomics. G trades their memory for parallelism (`_groups`).
  It also leaves ``a`` for the next kernel (B, N_h, HW, W in q's dtype; freed after the backward).
* backward, one program per key block (dk, dv): walks every query block in a fixed order, reading ``a`` and
  rebuilding ``b`` as the forward does.

No atomics, no split reductions in nondeterministic order: every output element is written by one program
whose accumulation order is fixed, so two backward passes on the same inputs are bitwise equal, whatever
else runs on the GPU. No (HW)^2 tensor exists in forward or backward. Head dims are zero-padded inside the
kernel (masked loads) to a power of two >= 16; bf16/fp16 inputs accumulate in fp32 (r^W, r^H are rounded
to q's dtype, as the stock paths do under autocast); fp32 inputs use IEEE fp32 dots.

On a machine without CUDA the same kernels run through Triton's interpreter (numpy, slow: tests on small
shapes; see `aa_modules._flash_kernels`): that is how CI checks them against the reference.

`flash_relative_attention` is a PyTorch custom op (``aa_study::flash_rel_fwd`` / ``flash_rel_bwd``) with a
fake implementation and a registered autograd formula, so ``torch.compile`` traces through it without a
graph break.
"""
from __future__ import annotations

import functools
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
COMPILED = {}  # kernel name -> its last compiled launch (registers and spills: benchmarks/kernel_parts.py)


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


# What the kernels take: benchmarks/kernel_sweep.py checks them on the GPU over random shapes up to these limits
# (head depths to MAX_HEAD_DIM, map sides to MAX_SIDE with relative logits), so a call outside them goes elsewhere
# (`unsupported`).
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
MAX_SIDE = 64


def unsupported(q: torch.Tensor, v: torch.Tensor, has_rel: bool, height: int, width: int) -> Optional[str]:
    """Why the kernels cannot take this call (one line), or None where they can."""
    if not available(q.device):
        return f"Triton cannot run on {q.device.type} tensors in this process"
    if q.dtype not in DTYPES and not torch.is_autocast_enabled(q.device.type):  # k, v are cast to q's dtype
        return f"dtype {q.dtype} (the kernels take float16, bfloat16 and float32)"
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return (f"head depths d_k {q.shape[-1]}, d_v {v.shape[-1]} per head (the kernels take up to "
                f"{MAX_HEAD_DIM})")
    if has_rel and max(height, width) > MAX_SIDE:
        return f"a {height} x {width} map with relative logits (the kernels take sides up to {MAX_SIDE})"
    return None


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _pow2(n: int, least: int = 16) -> int:
    return max(least, _next_pow2(n))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


LOG2E = 1.4426950408889634


# Launch parameters (benchmarks/attention.py --explore and benchmarks/kernel_parts.py sweep them on the GPU).
# block_n: keys per block (whole rows, so the real count is R * BW); fwd and bwd may differ. multirow_stages: the
# software-pipelining stages where a key block holds several image rows (W <= 32 at block_n 64): 1 there, 2 for
# one-row blocks. Measured on an H200 (kernel_parts.py, fwd / dq ms): AA-ResNet-50's stage 2 shape (B=128, N_h=8,
# 28 x 28, d=4) 2.97 / 4.22 with 2 stages, 2.16 / 2.37 with 1; 14 x 14 (d=8) 0.49 / 0.66 -> 0.23 / 0.25; 7 x 7
# 0.09 / 0.09 -> 0.02 / 0.02; but at 56 x 56 (one row a block) the forward took 2.40 ms with 1 stage against 1.12.
# programs_per_sm (dq: see `_groups`), multirow_programs_per_sm where a key block holds several rows: 8 programs per SM
# took dq from 1.99 to 1.77 ms at stage 2's shape, 2.17 -> 2.18 at 56 x 56, where it would double the dq programs'
# scratch and shares (+24 MB, over the 0.3 GiB the benchmark shape must stay within) for nothing.
TUNING = {"fwd": dict(block_m=64, block_n=64, num_warps=4, num_stages=2, multirow_stages=1),
          "bwd": dict(block_m=64, block_n=64, num_warps=4, num_stages=2, multirow_stages=1,
                      programs_per_sm=4, multirow_programs_per_sm=8),  # the dq kernel
          # 128 keys, 1 stage: 2.34 -> 1.68 ms for this kernel at 56 x 56 (H200, benchmarks/kernel_parts.py)
          "dkdv": dict(block_m=64, block_n=128, num_warps=4, num_stages=1)}


# The interpreter (CPU) normally runs smaller query blocks and one SM's worth of dq programs (it is faster so);
# tests set these to run the very block sizes, launch options and batch-head groups the GPU path chooses.
GPU_LAUNCH_IN_INTERPRETER = False
INTERPRETER_SMS = 1


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


def _num_stages(tune: dict, has_rel: bool, rows: int) -> int:
    """The software-pipelining stages of a phase: `multirow_stages` where a key block holds several image rows."""
    return tune.get("multirow_stages", tune["num_stages"]) if has_rel and rows > 1 else tune["num_stages"]


def _config(q: torch.Tensor, L: int, height: int, width: int, has_rel: bool, phase: str):
    tune = TUNING[phase]
    h, w, bw, r = _geometry(L, height, width, has_rel, tune["block_n"])
    block_m = min(tune["block_m"], _pow2(L))
    launch = dict(num_warps=tune["num_warps"], num_stages=_num_stages(tune, has_rel, r))
    if tune.get("maxnreg"):  # a register cap: more programs per SM, at the price of spills
        launch["maxnreg"] = tune["maxnreg"]
    if not q.is_cuda and not GPU_LAUNCH_IN_INTERPRETER:  # the interpreter runs blocks as numpy arrays: smaller
        block_m, launch = min(block_m, 32), {}             # is faster
    return dict(H=h, W=w, BW=bw, R=r, BLOCK_M=block_m), launch


def _precision(q: torch.Tensor) -> str:
    """fp32 dots follow PyTorch's own matmul setting: IEEE fp32 unless TF32 was allowed."""
    if q.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _head_blocks(dk: int, dv: int) -> Tuple[int, int]:
    """(BLOCK_DK, BLOCK_DV): both head dims zero-padded to one power of two >= 16 (a dot's least), the larger
    one's. One block for both: compiled for Hopper, the kernels with unequal key and value blocks give wrong
    outputs or fault, while Triton's interpreter (what CI runs) computes either right; benchmarks/kernel_sweep.py
    checks the GPU path (``--variant unequal_blocks`` runs the other launch)."""
    block = max(_pow2(dk), _pow2(dv))
    return block, block


def _output(q, B, NH, L, DV):
    """o as (B, N_h, L, d_v) over (B, L, N_h, d_v) memory: the heads-concatenated, channels-last layout the AA
    layer reshapes it to next, so that reshape is free (no transpose copy after the kernel)."""
    return torch.empty((B, L, NH, DV), dtype=q.dtype, device=q.device).permute(0, 2, 1, 3)


def _window(cfg) -> int:
    """NB, the rows of r^H a key block's b needs (`_b_of`): its R rows against every image row a query block of
    BLOCK_M positions can touch, (BLOCK_M - 1) // W + 2 (at most H), as a power of two >= 16 (a dot's least)."""
    return _pow2(cfg["R"] + min(cfg["H"], (cfg["BLOCK_M"] - 1) // cfg["W"] + 2) - 1)


def _rel_consts(cfg, has_rel: bool) -> dict:
    """The kernels' compile-time widths of the offset tables r^W (2W - 1, d) and r^H (2H - 1, d) for one phase's
    geometry ``cfg``, and NB (`_window`); placeholders without tables."""
    if not has_rel:
        return dict(BW2=16, BH2=16, BH=16, NB=16)
    return dict(BW2=_pow2(2 * cfg["W"] - 1), BH2=_pow2(2 * cfg["H"] - 1), BH=_pow2(cfg["H"]), NB=_window(cfg))


def _rel_meta(rw, rh, cfg):
    """Strides of the offset tables and `_rel_consts`."""
    strides = (0, 0) if rw is None else (rw.stride(0), rh.stride(0))
    return strides, _rel_consts(cfg, rw is not None)


def _sm_count(q: torch.Tensor) -> int:
    """The GPU's multiprocessors (the interpreter counts as one, unless ``INTERPRETER_SMS`` says otherwise)."""
    if q.is_cuda:
        return torch.cuda.get_device_properties(q.device).multi_processor_count
    return INTERPRETER_SMS


def _groups(q: torch.Tensor, n_m: int, bnh: int, has_rel: bool, rows: int = 1) -> int:
    """G, the batch-heads one dq program walks: each program leaves one share of dr^W and dr^H (summed after,
    in a fixed order), so fewer, longer programs mean a smaller buffer of shares. G divides B * N_h and
    leaves at least TUNING['bwd']['programs_per_sm'] programs per SM (all of them when there are fewer), or
    ``multirow_programs_per_sm`` where a key block holds ``rows`` > 1 image rows."""
    if not has_rel:
        return 1
    sms = _sm_count(q)
    tune = TUNING["bwd"]
    per_sm = tune.get("multirow_programs_per_sm", tune["programs_per_sm"]) if rows > 1 else tune["programs_per_sm"]
    return _largest_group(n_m, bnh, min(bnh * n_m, per_sm * sms))


@functools.lru_cache(maxsize=256)
def _largest_group(n_m: int, bnh: int, want: int) -> int:
    # cached: a walk over B * N_h candidates costs the host about 50 us a backward (B * N_h = 1024)
    return max(g for g in range(1, bnh + 1) if bnh % g == 0 and n_m * (bnh // g) >= want)


def _forward(q, k, v, rw, rh, height, width, scale):
    B, NH, L, DK = q.shape
    DV = v.shape[-1]
    has_rel = rw is not None
    cfg, launch = _config(q, L, height, width, has_rel, "fwd")
    rstrides, rmeta = _rel_meta(rw, rh, cfg)
    o = _output(q, B, NH, L, DV)
    lse = torch.empty((B, NH, L), dtype=torch.float32, device=q.device)
    grid = (_cdiv(L, cfg["BLOCK_M"]), B * NH)
    COMPILED["fwd"] = _kernels()._fwd_kernel[grid](
        q, k, v, rw if has_rel else q, rh if has_rel else q, o, lse,
        *q.stride(), *k.stride(), *v.stride(), *rstrides, *o.stride(),
        NH, L, cfg["H"], cfg["W"], DK, DV, scale * LOG2E,
        HAS_REL=has_rel, BLOCK_M=cfg["BLOCK_M"], BW=cfg["BW"], R=cfg["R"], **rmeta,
        **dict(zip(("BLOCK_DK", "BLOCK_DV"), _head_blocks(DK, DV))), PRECISION=_precision(q), **launch,
    )
    return o, lse


def _backward(do, q, k, v, rw, rh, o, lse, height, width, scale):
    B, NH, L, DK = q.shape
    DV = v.shape[-1]
    has_rel = rw is not None
    cfg, launch = _config(q, L, height, width, has_rel, "bwd")
    rstrides, rmeta = _rel_meta(rw, rh, cfg)
    do = do.to(q.dtype)
    delta = torch.empty((B, NH, L), dtype=torch.float32, device=q.device)  # written by the dq kernel
    dq = torch.empty((B, NH, L, DK), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, NH, L, DK), dtype=q.dtype, device=q.device)
    dv = torch.empty((B, NH, L, DV), dtype=q.dtype, device=q.device)
    n_m = _cdiv(L, cfg["BLOCK_M"])
    groups = _groups(q, n_m, B * NH, has_rel, cfg["R"])
    programs = n_m * (B * NH // groups)  # of the dq kernel
    if has_rel:
        # one fp32 share per dq program (its first batch-head writes it, the others add), summed below in a fixed order
        drw = torch.empty((programs, 2 * width - 1, DK), dtype=torch.float32, device=q.device)
        drh = torch.empty((programs, 2 * height - 1, DK), dtype=torch.float32, device=q.device)
        # a, the per-query column logits, left by the dq kernel for the dk/dv kernel (q's dtype; freed after)
        a = torch.empty((B, NH, L, width), dtype=q.dtype, device=q.device)
        # each dq program's scratch of score-gradient row sums (BLOCK_M, BH), rounded to q's dtype once
        dbs = torch.empty((programs, cfg["BLOCK_M"], rmeta["BH"]), dtype=q.dtype, device=q.device)
        # and of the score gradients' column sums (BLOCK_M, BW), which it reads back shifted per query
        das = torch.empty((programs, cfg["BLOCK_M"], cfg["BW"]), dtype=q.dtype, device=q.device)
    else:
        drw, drh = q.new_empty(0), q.new_empty(0)
        a = dbs = das = q
    strides = (*q.stride(), *k.stride(), *v.stride(), *rstrides)
    meta = dict(HAS_REL=has_rel, BLOCK_M=cfg["BLOCK_M"], BW=cfg["BW"], R=cfg["R"], **rmeta,
                **dict(zip(("BLOCK_DK", "BLOCK_DV"), _head_blocks(DK, DV))), PRECISION=_precision(q), **launch)
    rr = (rw, rh) if has_rel else (q, q)
    COMPILED["bwd_dq"] = _kernels()._bwd_dq_kernel[(n_m, B * NH // groups)](
        q, k, v, *rr, o, do, lse, delta, dq, drw, drh, a, dbs, das, *strides, *o.stride(), *do.stride(),
        NH, L, cfg["H"], cfg["W"], DK, DV, scale * LOG2E, scale, groups, 0, **meta)
    kv, kv_launch = _config(q, L, height, width, has_rel, "dkdv")  # its own key blocks: same H, W, BW
    kv_meta = {k: v for k, v in meta.items() if k not in launch}  # the dq kernel's launch options are its own
    kv_meta.update(BLOCK_M=kv["BLOCK_M"], R=kv["R"], BW=kv["BW"], **_rel_consts(kv, has_rel), **kv_launch)
    COMPILED["bwd_dkdv"] = _kernels()._bwd_dkdv_kernel[(_cdiv(kv["H"], kv["R"]), B * NH)](
        q, k, v, *rr, do, lse, delta, dk, dv, a, *strides, *do.stride(),
        NH, L, kv["H"], kv["W"], DK, DV, scale * LOG2E, scale, **kv_meta)
    if has_rel:
        drw, drh = drw.sum(0).to(rw.dtype), drh.sum(0).to(rh.dtype)
    return dq, dk, dv, drw, drh


@torch.library.custom_op("aa_study::flash_rel_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rw: Optional[torch.Tensor],
            rh: Optional[torch.Tensor], height: int, width: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, rw, rh, height, width, scale)


@_fwd_op.register_fake
def _(q, k, v, rw, rh, height, width, scale):
    B, NH, L, _ = q.shape
    return _output(q, B, NH, L, v.shape[-1]), q.new_empty((B, NH, L), dtype=torch.float32)


@torch.library.custom_op("aa_study::flash_rel_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rw: Optional[torch.Tensor],
            rh: Optional[torch.Tensor], o: torch.Tensor, lse: torch.Tensor, height: int, width: int,
            scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(do, q, k, v, rw, rh, o, lse, height, width, scale)


@_bwd_op.register_fake
def _(do, q, k, v, rw, rh, o, lse, height, width, scale):
    # contiguous, as `_backward` allocates them (empty_like would copy the strides of q's view)
    drw = rw.new_empty(rw.shape) if rw is not None else q.new_empty(0)
    drh = rh.new_empty(rh.shape) if rh is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), drw, drh


def _setup_context(ctx, inputs, output):
    q, k, v, rw, rh, height, width, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, rw, rh, o, lse)
    ctx.geometry = (height, width, scale)
    ctx.has_rel = rw is not None


def _backward_formula(ctx, do, _dlse):
    q, k, v, rw, rh, o, lse = ctx.saved_tensors
    height, width, scale = ctx.geometry
    dq, dk, dv, drw, drh = _bwd_op(do, q, k, v, rw, rh, o, lse, height, width, scale)
    if not ctx.has_rel:
        drw = drh = None
    return dq, dk, dv, drw, drh, None, None, None


_fwd_op.register_autograd(_backward_formula, setup_context=_setup_context)


def flash_relative_attention(q, k, v, rel_width=None, rel_height=None, height=None, width=None, scale=None):
    """softmax_j(scale * (q_i.k_j + q_i.r^W[x_j - x_i] + q_i.r^H[y_j - y_i])) v_j over an H x W map (see the
    module docstring).

    q, k: (B, N_h, H*W, d_k); v: (B, N_h, H*W, d_v); rel_width (2W - 1, d_k) and rel_height (2H - 1, d_k), row m
    at offset m - (W - 1) (resp. H), or both None for content-only attention. Last dims must be contiguous
    (stride 1); other strides are free.
    """
    if (rel_width is None) != (rel_height is None):
        raise ValueError("rel_width and rel_height must be given together (or both None)")
    if not available(q.device):
        raise RuntimeError(f"flash_relative_attention needs Triton and a CUDA or CPU tensor; got {q.device}")
    L = q.shape[2]
    if height is None or width is None:
        height, width = 1, L
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if torch.is_autocast_enabled(q.device.type):  # as SDPA: attention runs in autocast's lower precision
        q = q.to(torch.get_autocast_dtype(q.device.type))
    k, v = k.to(q.dtype), v.to(q.dtype)
    if rel_width is not None:  # the kernels read them row by row
        rel_width, rel_height = rel_width.contiguous(), rel_height.contiguous()
    o, _ = _fwd_op(q, k, v, rel_width, rel_height, int(height), int(width), scale)
    return o
