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
def _offsets_t(RT, stride, n, DK, dtype, BN2: tl.constexpr, BLOCK_DK: tl.constexpr):
    """An offset table (r^W or r^H, n = 2W - 1 or 2H - 1 rows) transposed, (BLOCK_DK, BN2), zero-padded, in the
    dots' dtype."""
    offs_dk = tl.arange(0, BLOCK_DK)
    offs = tl.arange(0, BN2)
    return tl.load(RT + offs[None, :] * stride + offs_dk[:, None],
                   mask=(offs[None, :] < n) & (offs_dk[:, None] < DK), other=0.0).to(dtype)


@triton.jit
def _a_of(q, rwt, offs_m, W, BW: tl.constexpr, BW2: tl.constexpr, PRECISION: tl.constexpr):
    """a (BLOCK_M, BW) fp32: a_i[x] = q_i . r^W[x - x_i + W - 1], from q . r^W at every offset (one small dot)
    gathered per query."""
    qw = tl.dot(q, rwt, input_precision=PRECISION)  # (BLOCK_M, BW2)
    offs_x = tl.arange(0, BW)
    return tl.gather(qw, tl.minimum(offs_x[None, :] - (offs_m % W)[:, None] + W - 1, BW2 - 1), 1)


@triton.jit
def _spread(t, BLOCK_M: tl.constexpr, R: tl.constexpr, BW: tl.constexpr):
    """(BLOCK_M, BW) -> (BLOCK_M, R * BW): the same columns for each of the tile's R rows."""
    return tl.reshape(tl.broadcast_to(t[:, None, :], (BLOCK_M, R, BW)), (BLOCK_M, R * BW))


@triton.jit
def _b_of(RH, srh, q, y_last, y0, H, DK, NB: tl.constexpr, BLOCK_DK: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_M, NB) fp32: q_i . r^H[o] for the NB offsets o = y0 - y_last + H - 1 + n, n < NB. A query block spans
    few image rows (its last is y_last) and a key block R rows from y0, so every offset y - y_i + H - 1 between
    them is among these NB: one small dot per key block, against a window of r^H's rows (cache-resident)."""
    offs = y0 - y_last + H - 1 + tl.arange(0, NB)
    offs_dk = tl.arange(0, BLOCK_DK)
    rsel = tl.load(RH + offs[:, None] * srh + offs_dk[None, :],
                   mask=(offs[:, None] >= 0) & (offs[:, None] < 2 * H - 1) & (offs_dk[None, :] < DK), other=0.0)
    return tl.dot(q, tl.trans(rsel.to(q.dtype)), input_precision=PRECISION)


@triton.jit
def _b_pick(qr, y_i, y_last, r, NB: tl.constexpr):
    """(BLOCK_M,) b_i at key row y0 + r, y0 the row `_b_of` was called with: column r + y_last - y_i of its table."""
    return tl.sum(tl.where(tl.arange(0, NB)[None, :] == (r + y_last - y_i)[:, None], qr, 0.0), 1)


@triton.jit
def _with_rel(s, a, qr, y_i, y_last, col_r, qk_scale, BLOCK_M: tl.constexpr, R: tl.constexpr, NB: tl.constexpr):
    """(scores + a + b, row_b): the tile's relative logits added to its scaled scores s, with a pre-scaled and b
    picked from `_b_of`'s table qr. A one-row key block's b is a per-query constant of the tile: returned as row_b
    (BLOCK_M,), for the caller to fold into the softmax's shift, instead of added to every score; else row_b is 0
    and b is added, row by row of the block (a select per score: no reshape of the tile)."""
    if R == 1:
        return s + a, _b_pick(qr, y_i, y_last, 0, NB) * qk_scale
    b = tl.zeros_like(s)
    for r in tl.static_range(R):
        b = tl.where(col_r[None, :] == r, (_b_pick(qr, y_i, y_last, r, NB) * qk_scale)[:, None], b)
    return s + a + b, tl.zeros([BLOCK_M], tl.float32)


@triton.jit
def _fwd_kernel(
    Q, K, V, RW, RH, O, LSE,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, srw, srh, sob, soh, sol, sod,
    NH, L, H, W, DK, DV, qk_scale,
    HAS_REL: tl.constexpr, BLOCK_M: tl.constexpr, BW: tl.constexpr, R: tl.constexpr,
    BW2: tl.constexpr, BH2: tl.constexpr, BH: tl.constexpr, NB: tl.constexpr,
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
        # a_i[x] = q_i . r^W[x - x_i + W - 1] for the query block, built here (fp32, in registers) and pre-scaled;
        # b at each key block's rows from a small dot with a window of r^H (`_b_of`): no per-query table in memory
        rwt = _offsets_t(RW, srw, 2 * W - 1, DK, q.dtype, BW2, BLOCK_DK)
        a = _spread(_a_of(q, rwt, offs_m, W, BW, BW2, PRECISION) * qk_scale, BLOCK_M, R, BW)  # pre-scaled
        y_i = offs_m // W
        y_last = (tl.minimum((pid_m + 1) * BLOCK_M, L) - 1) // W
    row_b = tl.zeros([BLOCK_M], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for y0 in range(0, H, R):
        rows = y0 + col_r
        offs_n = rows * W + col_x
        n_ok = (col_x < W) & (rows < H) & (offs_n < L)
        kt = tl.load(k_base + offs_n[None, :] * skl + offs_dk[:, None] * skd,
                     mask=n_ok[None, :] & (offs_dk[:, None] < DK), other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        if HAS_REL:
            qr = _b_of(RH, srh, q, y_last, y0, H, DK, NB, BLOCK_DK, PRECISION)
            s, row_b = _with_rel(s, a, qr, y_i, y_last, col_r, qk_scale, BLOCK_M, R, NB)
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) + row_b)
        p = tl.math.exp2(s - (m_new - row_b)[:, None])
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
    Q, K, V, RW, RH, O, DO, LSE, DELTA, DQ, DRW, DRH, A, DBS, DAS,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, srw, srh, sob, soh, sol, sod,
    sdob, sdoh, sdol, sdod,
    NH, L, H, W, DK, DV, qk_scale, sm_scale, G, ZERO,
    HAS_REL: tl.constexpr, BLOCK_M: tl.constexpr, BW: tl.constexpr, R: tl.constexpr,
    BW2: tl.constexpr, BH2: tl.constexpr, BH: tl.constexpr, NB: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (query block, group of G batch-heads): dq, delta, and this program's share of dr^W, dr^H."""
    BLOCK_N: tl.constexpr = R * BW
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    offs_c = tl.arange(0, BLOCK_N)
    col_x = offs_c % BW
    col_r = offs_c // BW
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    if HAS_REL:
        offs_r = tl.arange(0, R)
    for g in range(G):
        # `+ g * ZERO` (ZERO is 0 at run time): what derives from the query positions is rebuilt per batch-head
        # instead of being hoisted out of this loop, where its index and pointer tiles would hold registers
        # across the key loop and spill (measured: 418 spilled registers at 56 x 56 without it)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M) + g * ZERO
        m_ok = offs_m < L
        pid_bh = pid_g * G + g
        ib = pid_bh // NH
        ih = pid_bh % NH
        q = tl.load(Q + ib * sqb + ih * sqh + offs_m[:, None] * sql + offs_dk[None, :] * sqd,
                    mask=m_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
        do = tl.load(DO + ib * sdob + ih * sdoh + offs_m[:, None] * sdol + offs_dv[None, :] * sdod,
                     mask=m_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
        o = tl.load(O + ib * sob + ih * soh + offs_m[:, None] * sol + offs_dv[None, :] * sod,
                    mask=m_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + pid_bh * L + offs_m, delta, mask=m_ok)  # for the dk/dv kernel, which runs next
        lse = tl.load(LSE + pid_bh * L + offs_m, mask=m_ok, other=0.0)
        k_base = K + ib * skb + ih * skh
        v_base = V + ib * svb + ih * svh
        dq = tl.zeros([BLOCK_M, BLOCK_DK], tl.float32)
        if HAS_REL:
            rwt = _offsets_t(RW, srw, 2 * W - 1, DK, q.dtype, BW2, BLOCK_DK)
            a_x = _a_of(q, rwt, offs_m, W, BW, BW2, PRECISION) * qk_scale  # pre-scaled
            # a, kept for the dk/dv kernel that runs next (it cannot rebuild it cheaply: the gather is per query)
            offs_x = tl.arange(0, BW)
            tl.store(A + (pid_bh * L + offs_m[:, None]) * W + offs_x[None, :], a_x.to(A.dtype.element_ty),
                     mask=m_ok[:, None] & (offs_x[None, :] < W))
            a = _spread(a_x, BLOCK_M, R, BW)
            y_i = offs_m // W
            y_last = (tl.minimum((pid_m + 1) * BLOCK_M, L) - 1) // W
            da = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            # the score gradients' row sums, db[i, y], go to this program's scratch (BLOCK_M, BH), one column per
            # key row, each written once: cheaper than accumulating a (BLOCK_M, BH) tile in registers
            prog = pid_g * tl.num_programs(0) + pid_m
            dbs = DBS + (prog * BLOCK_M + tl.arange(0, BLOCK_M) + g * ZERO)[:, None] * BH
        row_b = tl.zeros([BLOCK_M], tl.float32)
        for y0 in range(0, H, R):
            rows = y0 + col_r
            offs_n = rows * W + col_x
            n_ok = (col_x < W) & (rows < H) & (offs_n < L)
            k = tl.load(k_base + offs_n[:, None] * skl + offs_dk[None, :] * skd,
                        mask=n_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
            vt = tl.load(v_base + offs_n[None, :] * svl + offs_dv[:, None] * svd,
                         mask=n_ok[None, :] & (offs_dv[:, None] < DV), other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            if HAS_REL:  # a one-row block's b folded into the log-sum-exp
                qr = _b_of(RH, srh, q, y_last, y0, H, DK, NB, BLOCK_DK, PRECISION)
                s, row_b = _with_rel(s, a, qr, y_i, y_last, col_r, qk_scale, BLOCK_M, R, NB)
            p = tl.math.exp2(s - (lse - row_b)[:, None])
            p = tl.where(n_ok[None, :] & m_ok[:, None], p, 0.0)
            dp = tl.dot(do, vt, input_precision=PRECISION)
            ds = p * (dp - delta[:, None]) * sm_scale  # d loss / d (q.k + a + b)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            if HAS_REL:
                da += ds
                db_rows = tl.sum(tl.reshape(ds, (BLOCK_M, R, BW)), 2)  # (BLOCK_M, R): rows y0 .. y0 + R - 1
                tl.store(dbs + (y0 + offs_r)[None, :], db_rows.to(DBS.dtype.element_ty),
                         mask=(y0 + offs_r)[None, :] < H)
        if HAS_REL:
            da_x = tl.sum(tl.reshape(da, (BLOCK_M, R, BW)), 1)  # fold the R rows: (BLOCK_M, BW)
            # the same gradients by relative offset, d(q . r^W[m]) and d(q . r^H[m]): offset m meets query i at
            # key column x = m + x_i - (W - 1) (row y = m + y_i - (H - 1))
            # (the shift by x_i goes through the program's scratch, as db's does: a store and a load cost less than
            # tl.gather of the (BLOCK_M, BW) tile in registers)
            das = DAS + (prog * BLOCK_M + tl.arange(0, BLOCK_M) + g * ZERO)[:, None] * BW
            tl.store(das + tl.arange(0, BW)[None, :], da_x.to(DAS.dtype.element_ty))
            tl.debug_barrier()  # every thread's da and db columns are in the scratch
            src_x = tl.arange(0, BW2)[None, :] + (offs_m % W)[:, None] - (W - 1)
            dqw = tl.load(das + tl.minimum(tl.maximum(src_x, 0), BW - 1), mask=(src_x >= 0) & (src_x < W), other=0.0)
            src_y = tl.arange(0, BH2)[None, :] + (offs_m // W)[:, None] - (H - 1)
            y_ok = (src_y >= 0) & (src_y < H)
            dqh = tl.load(dbs + tl.minimum(tl.maximum(src_y, 0), BH - 1), mask=y_ok, other=0.0).to(q.dtype)
            rwt = _offsets_t(RW, srw, 2 * W - 1, DK, q.dtype, BW2, BLOCK_DK)
            rht = _offsets_t(RH, srh, 2 * H - 1, DK, q.dtype, BH2, BLOCK_DK)
            dq += tl.dot(dqw, tl.trans(rwt), input_precision=PRECISION)
            dq += tl.dot(dqh, tl.trans(rht), input_precision=PRECISION)
            # this program's share of dr^W and dr^H (written by its first batch-head, g = 0, added to by the next;
            # summed over programs after it in a fixed order: no atomics), accumulated in memory rather than in
            # registers the key loop needs
            part = pid_g * tl.num_programs(0) + pid_m
            offs_w2 = tl.arange(0, BW2) + g * ZERO
            offs_h2 = tl.arange(0, BH2) + g * ZERO
            drw_ptr = DRW + (part * (2 * W - 1) + offs_w2[:, None]) * DK + offs_dk[None, :]
            drw_ok = (offs_w2[:, None] < 2 * W - 1) & (offs_dk[None, :] < DK)
            drw = tl.load(drw_ptr, mask=drw_ok & (g > 0), other=0.0) + tl.dot(tl.trans(dqw), q,
                                                                                input_precision=PRECISION)
            tl.store(drw_ptr, drw, mask=drw_ok)
            drh_ptr = DRH + (part * (2 * H - 1) + offs_h2[:, None]) * DK + offs_dk[None, :]
            drh_ok = (offs_h2[:, None] < 2 * H - 1) & (offs_dk[None, :] < DK)
            drh = tl.load(drh_ptr, mask=drh_ok & (g > 0), other=0.0) + tl.dot(tl.trans(dqh), q,
                                                                                input_precision=PRECISION)
            tl.store(drh_ptr, drh, mask=drh_ok)
            tl.debug_barrier()  # the next batch-head's read-back of the shares sees every thread's store
        tl.store(DQ + pid_bh * L * DK + offs_m[:, None] * DK + offs_dk[None, :], dq.to(DQ.dtype.element_ty),
                 mask=m_ok[:, None] & (offs_dk[None, :] < DK))


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, RW, RH, DO, LSE, DELTA, DK_, DV_, A,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, srw, srh, sdob, sdoh, sdol, sdod,
    NH, L, H, W, DK, DV, qk_scale, sm_scale,
    HAS_REL: tl.constexpr, BLOCK_M: tl.constexpr, BW: tl.constexpr, R: tl.constexpr,
    BW2: tl.constexpr, BH2: tl.constexpr, BH: tl.constexpr, NB: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):
    BLOCK_N: tl.constexpr = R * BW
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    ib = pid_bh // NH
    ih = pid_bh % NH
    offs_c = tl.arange(0, BLOCK_N)
    col_x = offs_c % BW
    row_r = offs_c // BW
    rows = pid_n * R + row_r
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
        a_base = A + pid_bh * L * W + offs_x[:, None]
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
        qt = tl.trans(q)
        st = tl.dot(k, qt, input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        if HAS_REL:
            # a^T (BW, M) as the dq kernel left it (pre-scaled), the same for each of the block's R rows; b at each
            # row from `_b_of`'s table, added with a select (no reshape)
            at = tl.load(a_base + offs_m[None, :] * W, mask=(offs_x[:, None] < W) & m_ok[None, :], other=0.0)
            st += tl.reshape(tl.broadcast_to(at.to(tl.float32)[None, :, :], (R, BW, BLOCK_M)), (BLOCK_N, BLOCK_M))
            y_last = (tl.minimum(m0 + BLOCK_M, L) - 1) // W
            qr = _b_of(RH, srh, q, y_last, pid_n * R, H, DK, NB, BLOCK_DK, PRECISION)
            if R == 1:
                st += (_b_pick(qr, offs_m // W, y_last, 0, NB) * qk_scale)[None, :]
            else:
                bt = tl.zeros_like(st)
                for r in tl.static_range(R):
                    bb = _b_pick(qr, offs_m // W, y_last, r, NB) * qk_scale
                    bt = tl.where(row_r[:, None] == r, bb[None, :], bt)
                st += bt
        pt = tl.math.exp2(st - lse[None, :])
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
