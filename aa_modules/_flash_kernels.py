"""The Triton kernels of `aa_modules.flash_relative` (see its docstring for the algorithm).

Imported on first use only. On a machine without CUDA, `aa_modules.flash_relative` switches Triton's
interpreter on (``TRITON_INTERPRET=1``) before Triton is first imported, so the very kernels the GPU
compiles run on CPU tensors (numpy, slow: tests on small shapes).
"""
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# The mode Triton actually loaded in (its library functions were wrapped for it at import).
INTERPRET = isinstance(tl.standard.sum, InterpretedFunction)



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
        offs_x = tl.arange(0, BW)
        a = tl.load(A + ib * sab + ih * sah + offs_m[:, None] * sal + offs_x[None, :] * sax,
                    mask=m_ok[:, None] & (offs_x[None, :] < W), other=0.0).to(tl.float32)
        a = tl.reshape(tl.broadcast_to(a[:, None, :], (BLOCK_M, R, BW)), (BLOCK_M, BLOCK_N))
        offs_r = tl.arange(0, R)
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
            # b at the block's R rows, loaded once per (query, row) and spread over the row's columns
            bb = tl.load(b_base + (y0 + offs_r)[None, :] * sby, mask=m_ok[:, None] & ((y0 + offs_r)[None, :] < H),
                         other=0.0)
            bb = tl.reshape(tl.broadcast_to(bb[:, :, None], (BLOCK_M, R, BW)), (BLOCK_M, BLOCK_N))
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
        offs_x = tl.arange(0, BW)
        a = tl.load(A + ib * sab + ih * sah + offs_m[:, None] * sal + offs_x[None, :] * sax,
                    mask=m_ok[:, None] & (offs_x[None, :] < W), other=0.0).to(tl.float32)
        a = tl.reshape(tl.broadcast_to(a[:, None, :], (BLOCK_M, R, BW)), (BLOCK_M, BLOCK_N))
        offs_r = tl.arange(0, R)
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
            # b at the block's R rows, loaded once per (query, row) and spread over the row's columns
            bb = tl.load(b_base + (y0 + offs_r)[None, :] * sby, mask=m_ok[:, None] & ((y0 + offs_r)[None, :] < H),
                         other=0.0)
            bb = tl.reshape(tl.broadcast_to(bb[:, :, None], (BLOCK_M, R, BW)), (BLOCK_M, BLOCK_N))
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
            tl.store(db_base + (y0 + offs_r)[None, :], db_rows.to(DB.dtype.element_ty), mask=m_ok[:, None] & r_ok[None, :])
    tl.store(DQ + pid_bh * L * DK + offs_m[:, None] * DK + offs_dk[None, :], dq.to(DQ.dtype.element_ty),
             mask=m_ok[:, None] & (offs_dk[None, :] < DK))
    if HAS_REL:
        da_x = tl.sum(tl.reshape(da, (BLOCK_M, R, BW)), 1)  # fold the R rows: (BLOCK_M, BW)
        offs_x = tl.arange(0, BW)
        tl.store(DA + pid_bh * L * W + offs_m[:, None] * W + offs_x[None, :], da_x.to(DA.dtype.element_ty),
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
        offs_x = tl.arange(0, BW)
        row_r = pid_n * R + tl.arange(0, R)
        a_base = A + ib * sab + ih * sah + offs_x[:, None] * sax
        b_base = Bt + ib * sbb + ih * sbh + row_r[:, None] * sby
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
            # a^T as (BW, M) and b^T at the block's R rows as (R, M), spread over the (R * BW) key columns
            at = tl.load(a_base + offs_m[None, :] * sal, mask=(offs_x[:, None] < W) & m_ok[None, :], other=0.0)
            bt = tl.load(b_base + offs_m[None, :] * sbl, mask=(row_r[:, None] < H) & m_ok[None, :], other=0.0)
            at = tl.reshape(tl.broadcast_to(at.to(tl.float32)[None, :, :], (R, BW, BLOCK_M)), (BLOCK_N, BLOCK_M))
            bt = tl.reshape(tl.broadcast_to(bt.to(tl.float32)[:, None, :], (R, BW, BLOCK_M)), (BLOCK_N, BLOCK_M))
            st = st + at + bt
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
