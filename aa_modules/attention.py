"""Multi-head 2D self-attention with relative position logits.

Bello et al., "Attention Augmented Convolutional Networks", ICCV 2019 (arXiv 1904.09925), Section 3.

For a query at pixel i = (y_i, x_i) and a key at j = (y_j, x_j), positions flattened row-major
(i = y * W + x), the logit is

    l_ij = (q_i . k_j + q_i . r^W[x_j - x_i] + q_i . r^H[y_j - y_i]) / sqrt(d_kh)

with learned tables r^W (2W - 1, d_kh) and r^H (2H - 1, d_kh), row m holding offset m - (W - 1).

Three implementations of `relative_attention`, which compute the same function:

* ``reference``: builds the (H*W) x (H*W) relative logits by gathering q @ r^T at the offset of every
  (query, key) pair, adds them to q @ k^T and runs a plain softmax. Memory grows as (H*W)^2.
* ``fused``: never builds an (H*W) x (H*W) tensor. The relative part of l_ij is the dot product of a
  per-query vector (q_i's logits against r^W at every key column, W numbers, and against r^H at every
  key row, H numbers) with a per-key one-hot of (x_j, y_j). Appending those to q and k turns relative
  attention into plain attention, which `torch.nn.functional.scaled_dot_product_attention` runs with
  its fused (flash / memory-efficient / cuDNN) kernels. The per-query vectors are computed directly as
  a batched product of q with the W x W (resp. H x H) windows of r^W (r^H), so the (2W - 1) wide
  intermediate of the rel_to_abs trick is never built either.
* ``triton``: our Triton kernel pair (`aa_modules.flash_relative`), which builds the same per-query logits
  from q, r^W and r^H inside each program and adds them to each score tile, forward and backward, with no
  atomics: bitwise deterministic, no (H*W)^2 tensor, no per-query tables in memory in forward, and no
  one-hot columns widening the dot products. The default on CUDA.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import flash_relative

IMPLEMENTATIONS = ("auto", "reference", "fused", "triton")


def _check_shapes(q, k, v, rel_width, rel_height, height, width):
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, N_h, H*W, d_kh); got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, N_h, H*W, d_vh) matching q; got {tuple(v.shape)} for q {tuple(q.shape)}")
    if q.shape[2] != height * width:
        raise ValueError(f"q has {q.shape[2]} positions but height*width = {height}*{width} = {height * width}")
    dkh = q.shape[-1]
    if rel_width is not None and tuple(rel_width.shape) != (2 * width - 1, dkh):
        raise ValueError(f"rel_width must be (2W-1, d_kh) = ({2 * width - 1}, {dkh}); got {tuple(rel_width.shape)}")
    if rel_height is not None and tuple(rel_height.shape) != (2 * height - 1, dkh):
        raise ValueError(f"rel_height must be (2H-1, d_kh) = ({2 * height - 1}, {dkh}); got {tuple(rel_height.shape)}")


def relative_offsets(n: int, device=None) -> torch.Tensor:
    """(n, n) index into a (2n - 1)-row table: entry [a, b] = b - a + (n - 1)."""
    pos = torch.arange(n, device=device)
    return pos[None, :] - pos[:, None] + (n - 1)


def relative_logits_reference(q, rel_width, rel_height, height, width):
    """Materialised relative logits (B, N_h, H*W, H*W): q_i . r^W[x_j - x_i] + q_i . r^H[y_j - y_i]."""
    B, N, L, _ = q.shape
    ys = torch.arange(height, device=q.device).repeat_interleave(width)  # y of each flattened position
    xs = torch.arange(width, device=q.device).repeat(height)
    idx_w = (xs[None, :] - xs[:, None] + width - 1).expand(B, N, L, L)
    idx_h = (ys[None, :] - ys[:, None] + height - 1).expand(B, N, L, L)
    logits_w = torch.gather(q @ rel_width.t(), -1, idx_w)
    logits_h = torch.gather(q @ rel_height.t(), -1, idx_h)
    return logits_w + logits_h


def _attention_reference(q, k, v, rel_width, rel_height, height, width):
    scale = q.shape[-1] ** -0.5
    logits = q @ k.transpose(-1, -2)
    if rel_width is not None:
        logits = logits + relative_logits_reference(q, rel_width, rel_height, height, width)
    weights = torch.softmax(logits * scale, dim=-1)
    return weights @ v


def _pad_last(x: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = (-x.shape[-1]) % multiple
    return F.pad(x, (0, extra)) if extra else x


# SDPA backends the `fused` path allows on CUDA (the default on CUDA is now the `triton` kernel, which uses no
# SDPA backend). cuDNN's attention is left out: on an H100 (torch 2.11)
# AA-ResNet-18 trainings on the 64 px synthetic task hit a NaN loss within three epochs with it, for
# pos_enc="none" (twice) and "relative" (once), and never with flash / memory-efficient on the same
# configurations (benchmarks/results/h100-2026-11-25.md). The price: flash cannot take the relative
# path's unequal head dims, so it runs on the memory-efficient kernel, 2.8x slower than cuDNN at 56x56.
CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _sdpa_aligned(q, k, v, scale):
    """SDPA with every head dim zero-padded to a multiple of 8 (exact: zeros add nothing to q.k, and the
    padded output columns are dropped). Unaligned head dims (e.g. d_vh = 4) make the fused CUDA kernels
    refuse the call and PyTorch falls back to its math path, which materialises the (H*W)^2 weights."""
    dvh = v.shape[-1]
    q, k, v = _pad_last(q, 8), _pad_last(k, 8), _pad_last(v, 8)
    if q.is_cuda:
        with sdpa_kernel(CUDA_SDPA_BACKENDS):
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out[..., :dvh] if out.shape[-1] != dvh else out


def relative_tables(q, rel_width, rel_height, height, width):
    """Per-query relative logits at every key column and row: a (B, N, H*W, W), b (B, N, H*W, H).

    a[..., i, x] = q_i . r^W[x - x_i + W - 1]; computed as a product batched over x_i (resp. y_i) with
    the W x W (H x H) windows of r^W (r^H), so the (2W - 1) wide intermediate of rel_to_abs never exists.
    """
    B, N, L, dkh = q.shape
    windows_w = rel_width[relative_offsets(width, q.device)].to(q.dtype)  # (W, W, d)
    windows_h = rel_height[relative_offsets(height, q.device)].to(q.dtype)  # (H, H, d)
    q5 = q.reshape(B, N, height, width, dkh)
    a = torch.einsum("bnyxd,xjd->bnyxj", q5, windows_w).reshape(B, N, L, width)
    b = torch.einsum("bnyxd,yid->bnyxi", q5, windows_h).reshape(B, N, L, height)
    return a, b


def _attention_fused(q, k, v, rel_width, rel_height, height, width):
    B, N, L, dkh = q.shape
    scale = dkh ** -0.5
    if rel_width is None:
        return _sdpa_aligned(q, k, v, scale)
    gw, gh = relative_tables(q, rel_width, rel_height, height, width)
    # Key side: one-hot of each key's column and row, shared by every batch element and head.
    eye_w = torch.eye(width, dtype=k.dtype, device=k.device)
    eye_h = torch.eye(height, dtype=k.dtype, device=k.device)
    onehot = torch.cat([eye_w.repeat(height, 1), eye_h.repeat_interleave(width, dim=0)], dim=1)  # (L, W+H)
    q_aug = torch.cat([q, gw.to(q.dtype), gh.to(q.dtype)], dim=-1)
    k_aug = torch.cat([k, onehot.expand(B, N, L, width + height)], dim=-1)
    return _sdpa_aligned(q_aug, k_aug, v, scale)


def _attention_triton(q, k, v, rel_width, rel_height, height, width):
    return flash_relative.flash_relative_attention(q, k, v, rel_width, rel_height, height, width,
                                                   q.shape[-1] ** -0.5)


_WARNED = set()


def _warn_once(message: str):
    """One warning per distinct message in a process (a layer calls attention every step)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def relative_attention(q, k, v, rel_width, rel_height, height, width, *, implementation="auto"):
    """Multi-head self-attention over an H x W map with 2D relative position logits.

    Args:
        q, k: (B, N_h, H*W, d_kh), positions flattened row-major (i = y * W + x).
        v: (B, N_h, H*W, d_vh).
        rel_width: (2W - 1, d_kh); row m holds the offset x_j - x_i = m - (W - 1). ``None`` (with
            ``rel_height`` None too) gives content-only attention.
        rel_height: (2H - 1, d_kh), likewise for y.
        height, width: the map's size.
        implementation: ``"reference"`` (materialised logits), ``"fused"`` (never materialises an
            (H*W)^2 tensor; stock SDPA on one-hot-augmented keys), ``"triton"`` (our fused kernel pair,
            `aa_modules.flash_relative`: deterministic, no (H*W)^2 tensor in forward or backward; CUDA,
            or the CPU under ``TRITON_INTERPRET=1``) or ``"auto"`` (triton on CUDA, reference elsewhere).
            A call the triton kernels do not take (`flash_relative.unsupported`: dtype, head depth, map size)
            runs fused on CUDA, reference elsewhere, with one warning per reason and process.

    Returns:
        (B, N_h, H*W, d_vh): softmax_j(l_ij) v_j with l_ij as in the module docstring.
    """
    if (rel_width is None) != (rel_height is None):
        raise ValueError("rel_width and rel_height must be given together (or both None)")
    _check_shapes(q, k, v, rel_width, rel_height, height, width)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")
    if implementation == "auto":
        implementation = "triton" if q.is_cuda and flash_relative.available(q.device) else "reference"
    if implementation == "triton":
        reason = flash_relative.unsupported(q, v, rel_width is not None, height, width)
        if reason is not None:
            implementation = "fused" if q.is_cuda else "reference"
            _warn_once(f"the triton attention kernel does not take {reason}: using the {implementation} "
                       "implementation for these calls")
    if implementation == "triton":
        return _attention_triton(q, k, v, rel_width, rel_height, height, width)
    if implementation == "fused":
        return _attention_fused(q, k, v, rel_width, rel_height, height, width)
    return _attention_reference(q, k, v, rel_width, rel_height, height, width)


def brute_force_attention(q, k, v, rel_width, rel_height, height, width):
    """Loop-by-loop definition, for tests only: O((H*W)^2) Python iterations."""
    B, N, L, dkh = q.shape
    out = torch.empty(B, N, L, v.shape[-1], dtype=q.dtype)
    for i in range(L):
        yi, xi = divmod(i, width)
        logits = []
        for j in range(L):
            yj, xj = divmod(j, width)
            s = (q[:, :, i] * k[:, :, j]).sum(-1)
            if rel_width is not None:
                s = s + (q[:, :, i] * rel_width[xj - xi + width - 1]).sum(-1)
                s = s + (q[:, :, i] * rel_height[yj - yi + height - 1]).sum(-1)
            logits.append(s / math.sqrt(dkh))
        w = torch.softmax(torch.stack(logits, -1), -1)
        out[:, :, i] = (w[..., None] * v).sum(2)
    return out
