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

On the CPU the kernels run through Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is
imported): that is how CI checks them against the reference.

`flash_relative_attention` is a PyTorch custom op (``aa_study::flash_rel_fwd`` / ``flash_rel_bwd``) with a
fake implementation and a registered autograd formula, so ``torch.compile`` traces through it without a
graph break.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # pragma: no cover - platforms without a Triton wheel
    HAVE_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device: torch.device) -> bool:
    """Can the kernels run on tensors of this device (CUDA, or the CPU through the interpreter)?"""
    if not HAVE_TRITON:
        return False
    return device.type == "cuda" or (device.type == "cpu" and INTERPRET)


def _pow2(n: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(n))


if HAVE_TRITON:

    @triton.jit
    def _fwd_kernel(
        Q, K, V, A, Bt, O, LSE,
        sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd,
        sab, sah, sal, sax, sbb, sbh, sbl, sby, sob, soh, sol, sod,
        NH, L, H, W, DK, DV, qk_scale,
        HAS_REL: tl.constexpr, BLOCK_M: tl.constexpr, BW: tl.constexpr, R: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
    ):
        BLOCK_N: tl.constexpr = R * BW
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        ib = pid_bh // NH
        ih = pid_bh % NH
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_c = tl.arange(0, BLOCK_N)
        col_x = offs_c % BW
        col_r = offs_c // BW
        offs_dk = tl.arange(0, BLOCK_DK)
        offs_dv = tl.arange(0, BLOCK_DV)
        m_ok = offs_m < L
        q = tl.load(Q + ib * sqb + ih * sqh + offs_m[:, None] * sql + offs_dk[None, :] * sqd,
                    mask=m_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
        k_base = K + ib * skb + ih * skh
        v_base = V + ib * svb + ih * svh
        if HAS_REL:
            a = tl.load(A + ib * sab + ih * sah + offs_m[:, None] * sal + col_x[None, :] * sax,
                        mask=m_ok[:, None] & (col_x[None, :] < W), other=0.0).to(tl.float32)
            b_base = Bt + ib * sbb + ih * sbh + offs_m[:, None] * sbl
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        for y0 in range(0, H, R):
            rows = y0 + col_r
            offs_n = rows * W + col_x
            n_ok = (col_x < W) & (rows < H) & (offs_n < L)
            kt = tl.load(k_base + offs_n[None, :] * skl + offs_dk[:, None] * skd,
                         mask=n_ok[None, :] & (offs_dk[:, None] < DK), other=0.0)
            s = tl.dot(q, kt, input_precision=PRECISION)
            if HAS_REL:
                bb = tl.load(b_base + rows[None, :] * sby, mask=m_ok[:, None] & n_ok[None, :], other=0.0)
                s = s + a + bb.to(tl.float32)
            s = tl.where(n_ok[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + offs_n[:, None] * svl + offs_dv[None, :] * svd,
                        mask=n_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(O + ib * sob + ih * soh + offs_m[:, None] * sol + offs_dv[None, :] * sod,
                 acc.to(O.dtype.element_ty), mask=m_ok[:, None] & (offs_dv[None, :] < DV))
        tl.store(LSE + pid_bh * L + offs_m, m_i + tl.math.log2(l_i), mask=m_ok)

    @triton.jit
    def _bwd_dq_kernel(
        Q, K, V, A, Bt, DO, LSE, DELTA, DQ, DA, DB,
        sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd,
        sab, sah, sal, sax, sbb, sbh, sbl, sby, sdob, sdoh, sdol, sdod,
        NH, L, H, W, DK, DV, qk_scale, sm_scale,
        HAS_REL: tl.constexpr, BLOCK_M: tl.constexpr, BW: tl.constexpr, R: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
    ):
        BLOCK_N: tl.constexpr = R * BW
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        ib = pid_bh // NH
        ih = pid_bh % NH
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_c = tl.arange(0, BLOCK_N)
        col_x = offs_c % BW
        col_r = offs_c // BW
        offs_dk = tl.arange(0, BLOCK_DK)
        offs_dv = tl.arange(0, BLOCK_DV)
        m_ok = offs_m < L
        q = tl.load(Q + ib * sqb + ih * sqh + offs_m[:, None] * sql + offs_dk[None, :] * sqd,
                    mask=m_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
        do = tl.load(DO + ib * sdob + ih * sdoh + offs_m[:, None] * sdol + offs_dv[None, :] * sdod,
                     mask=m_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
        lse = tl.load(LSE + pid_bh * L + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + pid_bh * L + offs_m, mask=m_ok, other=0.0)
        k_base = K + ib * skb + ih * skh
        v_base = V + ib * svb + ih * svh
        dq = tl.zeros([BLOCK_M, BLOCK_DK], tl.float32)
        if HAS_REL:
            a = tl.load(A + ib * sab + ih * sah + offs_m[:, None] * sal + col_x[None, :] * sax,
                        mask=m_ok[:, None] & (col_x[None, :] < W), other=0.0).to(tl.float32)
            b_base = Bt + ib * sbb + ih * sbh + offs_m[:, None] * sbl
            da = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            offs_r = tl.arange(0, R)
            db_base = DB + pid_bh * L * H + offs_m[:, None] * H
        for y0 in range(0, H, R):
            rows = y0 + col_r
            offs_n = rows * W + col_x
            n_ok = (col_x < W) & (rows < H) & (offs_n < L)
            k = tl.load(k_base + offs_n[:, None] * skl + offs_dk[None, :] * skd,
                        mask=n_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
            vt = tl.load(v_base + offs_n[None, :] * svl + offs_dv[:, None] * svd,
                         mask=n_ok[None, :] & (offs_dv[:, None] < DV), other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            if HAS_REL:
                bb = tl.load(b_base + rows[None, :] * sby, mask=m_ok[:, None] & n_ok[None, :], other=0.0)
                s = s + a + bb.to(tl.float32)
            p = tl.math.exp2(s * qk_scale - lse[:, None])
            p = tl.where(n_ok[None, :] & m_ok[:, None], p, 0.0)
            dp = tl.dot(do, vt, input_precision=PRECISION)
            ds = p * (dp - delta[:, None]) * sm_scale  # d loss / d (q.k + a + b)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            if HAS_REL:
                da += ds
                db_rows = tl.sum(tl.reshape(ds, (BLOCK_M, R, BW)), 2)  # (BLOCK_M, R)
                r_ok = (y0 + offs_r) < H
                tl.store(db_base + (y0 + offs_r)[None, :], db_rows, mask=m_ok[:, None] & r_ok[None, :])
        tl.store(DQ + pid_bh * L * DK + offs_m[:, None] * DK + offs_dk[None, :], dq.to(DQ.dtype.element_ty),
                 mask=m_ok[:, None] & (offs_dk[None, :] < DK))
        if HAS_REL:
            da_x = tl.sum(tl.reshape(da, (BLOCK_M, R, BW)), 1)  # fold the R rows: (BLOCK_M, BW)
            offs_x = tl.arange(0, BW)
            tl.store(DA + pid_bh * L * W + offs_m[:, None] * W + offs_x[None, :], da_x,
                     mask=m_ok[:, None] & (offs_x[None, :] < W))

    @triton.jit
    def _bwd_dkdv_kernel(
        Q, K, V, A, Bt, DO, LSE, DELTA, DK_, DV_,
        sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd,
        sab, sah, sal, sax, sbb, sbh, sbl, sby, sdob, sdoh, sdol, sdod,
        NH, L, H, W, DK, DV, qk_scale, sm_scale,
        HAS_REL: tl.constexpr, BLOCK_M: tl.constexpr, BW: tl.constexpr, R: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
    ):
        BLOCK_N: tl.constexpr = R * BW
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        ib = pid_bh // NH
        ih = pid_bh % NH
        offs_c = tl.arange(0, BLOCK_N)
        col_x = offs_c % BW
        rows = pid_n * R + offs_c // BW
        offs_n = rows * W + col_x
        n_ok = (col_x < W) & (rows < H) & (offs_n < L)
        offs_dk = tl.arange(0, BLOCK_DK)
        offs_dv = tl.arange(0, BLOCK_DV)
        k = tl.load(K + ib * skb + ih * skh + offs_n[:, None] * skl + offs_dk[None, :] * skd,
                    mask=n_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
        v = tl.load(V + ib * svb + ih * svh + offs_n[:, None] * svl + offs_dv[None, :] * svd,
                    mask=n_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
        q_base = Q + ib * sqb + ih * sqh
        do_base = DO + ib * sdob + ih * sdoh
        if HAS_REL:
            a_base = A + ib * sab + ih * sah + col_x[:, None] * sax
            b_base = Bt + ib * sbb + ih * sbh + rows[:, None] * sby
        dk = tl.zeros([BLOCK_N, BLOCK_DK], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
        for m0 in range(0, L, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            m_ok = offs_m < L
            q = tl.load(q_base + offs_m[:, None] * sql + offs_dk[None, :] * sqd,
                        mask=m_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
            do = tl.load(do_base + offs_m[:, None] * sdol + offs_dv[None, :] * sdod,
                         mask=m_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
            lse = tl.load(LSE + pid_bh * L + offs_m, mask=m_ok, other=0.0)
            delta = tl.load(DELTA + pid_bh * L + offs_m, mask=m_ok, other=0.0)
            st = tl.dot(k, tl.trans(q), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
            if HAS_REL:
                both = n_ok[:, None] & m_ok[None, :]
                at = tl.load(a_base + offs_m[None, :] * sal, mask=both, other=0.0)
                bt = tl.load(b_base + offs_m[None, :] * sbl, mask=both, other=0.0)
                st = st + at.to(tl.float32) + bt.to(tl.float32)
            pt = tl.math.exp2(st * qk_scale - lse[None, :])
            pt = tl.where(n_ok[:, None] & m_ok[None, :], pt, 0.0)
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dst = pt * (dpt - delta[None, :]) * sm_scale
            dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
        base = pid_bh * L
        tl.store(DK_ + (base + offs_n[:, None]) * DK + offs_dk[None, :], dk.to(DK_.dtype.element_ty),
                 mask=n_ok[:, None] & (offs_dk[None, :] < DK))
        tl.store(DV_ + (base + offs_n[:, None]) * DV + offs_dv[None, :], dv.to(DV_.dtype.element_ty),
                 mask=n_ok[:, None] & (offs_dv[None, :] < DV))


LOG2E = 1.4426950408889634


def _geometry(L: int, height: int, width: int, has_rel: bool, block_n: int = 64):
    """(H, W, BW, R) of the key blocks: R whole rows of BW (>= W, a power of two) columns.

    Content-only attention has no row structure to respect: the keys are cut into rows of ``block_n``.
    """
    if not has_rel:
        width = min(block_n, triton.next_power_of_2(L))
        height = -(-L // width)
    bw = _pow2(width, least=8)
    rows = max(1, block_n // bw) if bw < block_n else 1
    rows = max(rows, 16 // bw) if bw < 16 else rows  # tl.dot needs a block of >= 16 keys
    return height, width, bw, rows


def _config(q: torch.Tensor, L: int, height: int, width: int, has_rel: bool):
    h, w, bw, r = _geometry(L, height, width, has_rel)
    block_m = min(64, _pow2(L))
    if INTERPRET and not q.is_cuda:
        block_m = min(block_m, 32)  # the interpreter runs blocks as numpy arrays: smaller is faster
    return dict(H=h, W=w, BW=bw, R=r, BLOCK_M=block_m)


def _strides(t: Optional[torch.Tensor], fallback: torch.Tensor):
    return tuple((t if t is not None else fallback).stride())


def _precision(q: torch.Tensor) -> str:
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _launch_opts(q: torch.Tensor) -> dict:
    return {} if not q.is_cuda else dict(num_warps=4, num_stages=2)


def _forward(q, k, v, a, b, height, width, scale):
    B, NH, L, DK = q.shape
    DV = v.shape[-1]
    has_rel = a is not None
    cfg = _config(q, L, height, width, has_rel)
    o = torch.empty((B, NH, L, DV), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, NH, L), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(L, cfg["BLOCK_M"]), B * NH)
    _fwd_kernel[grid](
        q, k, v, a if has_rel else q, b if has_rel else q, o, lse,
        *q.stride(), *k.stride(), *v.stride(), *_strides(a, q), *_strides(b, q), *o.stride(),
        NH, L, cfg["H"], cfg["W"], DK, DV, scale * LOG2E,
        HAS_REL=has_rel, BLOCK_M=cfg["BLOCK_M"], BW=cfg["BW"], R=cfg["R"],
        BLOCK_DK=_pow2(DK), BLOCK_DV=_pow2(DV), PRECISION=_precision(q), **_launch_opts(q),
    )
    return o, lse


def _backward(do, q, k, v, a, b, o, lse, height, width, scale):
    B, NH, L, DK = q.shape
    DV = v.shape[-1]
    has_rel = a is not None
    cfg = _config(q, L, height, width, has_rel)
    do = do.to(q.dtype)
    delta = (o.float() * do.float()).sum(-1)  # (B, NH, L), contiguous
    dq = torch.empty((B, NH, L, DK), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, NH, L, DK), dtype=q.dtype, device=q.device)
    dv = torch.empty((B, NH, L, DV), dtype=q.dtype, device=q.device)
    if has_rel:
        da = torch.empty((B, NH, L, width), dtype=torch.float32, device=q.device)
        db = torch.empty((B, NH, L, height), dtype=torch.float32, device=q.device)
    else:
        da, db = q.new_empty(0), q.new_empty(0)
    common = (*q.stride(), *k.stride(), *v.stride(), *_strides(a, q), *_strides(b, q), *do.stride(),
              NH, L, cfg["H"], cfg["W"], DK, DV, scale * LOG2E, scale)
    meta = dict(HAS_REL=has_rel, BLOCK_M=cfg["BLOCK_M"], BW=cfg["BW"], R=cfg["R"],
                BLOCK_DK=_pow2(DK), BLOCK_DV=_pow2(DV), PRECISION=_precision(q), **_launch_opts(q))
    aa, bb = (a, b) if has_rel else (q, q)
    _bwd_dq_kernel[(triton.cdiv(L, cfg["BLOCK_M"]), B * NH)](
        q, k, v, aa, bb, do, lse, delta, dq, da if has_rel else q, db if has_rel else q, *common, **meta)
    _bwd_dkdv_kernel[(triton.cdiv(cfg["H"], cfg["R"]), B * NH)](
        q, k, v, aa, bb, do, lse, delta, dk, dv, *common, **meta)
    if has_rel:
        da, db = da.to(a.dtype), db.to(b.dtype)
    return dq, dk, dv, da, db


@torch.library.custom_op("aa_study::flash_rel_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: Optional[torch.Tensor],
            b: Optional[torch.Tensor], height: int, width: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, a, b, height, width, scale)


@_fwd_op.register_fake
def _(q, k, v, a, b, height, width, scale):
    B, NH, L, _ = q.shape
    return q.new_empty((B, NH, L, v.shape[-1])), q.new_empty((B, NH, L), dtype=torch.float32)


@torch.library.custom_op("aa_study::flash_rel_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: Optional[torch.Tensor],
            b: Optional[torch.Tensor], o: torch.Tensor, lse: torch.Tensor, height: int, width: int,
            scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(do, q, k, v, a, b, o, lse, height, width, scale)


@_bwd_op.register_fake
def _(do, q, k, v, a, b, o, lse, height, width, scale):
    da = torch.empty_like(a) if a is not None else q.new_empty(0)
    db = torch.empty_like(b) if b is not None else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), da, db


def _setup_context(ctx, inputs, output):
    q, k, v, a, b, height, width, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, a, b, o, lse)
    ctx.geometry = (height, width, scale)
    ctx.has_rel = a is not None


def _backward_formula(ctx, do, _dlse):
    q, k, v, a, b, o, lse = ctx.saved_tensors
    height, width, scale = ctx.geometry
    dq, dk, dv, da, db = _bwd_op(do.contiguous(), q, k, v, a, b, o, lse, height, width, scale)
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
        raise RuntimeError("flash_relative_attention needs a CUDA device, or TRITON_INTERPRET=1 set before "
                           "aa_modules is imported (CPU, for tests)")
    L = q.shape[2]
    if height is None or width is None:
        height, width = 1, L
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    k, v = k.to(q.dtype), v.to(q.dtype)
    o, _ = _fwd_op(q, k, v, a, b, int(height), int(width), scale)
    return o
