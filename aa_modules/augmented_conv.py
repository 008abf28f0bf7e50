"""Attention-augmented convolution.

Bello et al., "Attention Augmented Convolutional Networks", ICCV 2019 (arXiv 1904.09925), Section 3.2:

    AAConv(X) = Concat[Conv(X), MHA(X)]

The convolution gives F_out - d_v channels, multi-head self-attention over all H*W positions gives
d_v channels (after its output projection W^O, a 1x1 convolution d_v -> d_v). kappa = d_k / F_out,
upsilon = d_v / F_out. kappa = upsilon = 1 is the fully attentional layer (no convolution branch);
kappa = upsilon = 0 is a plain convolution.

Positional encodings (``pos_enc``), chosen in `AugmentedConv2d.__init__` (``pos_channels``, ``rel``):

* ``none``: content-only attention.
* ``relative``: the paper's 2D relative logits, learned r^W (2W - 1, d_kh) and r^H (2H - 1, d_kh) per
  layer, shared across heads (`RelativePositionTables`).
* ``sine2d``: a fixed 2D sinusoidal encoding of (y, x) (``SINE_CHANNELS`` channels, half for y, half
  for x, wavelengths as in Vaswani et al.) **concatenated to the input of the attention branch's qkv
  1x1 convolution** (after the 2x2 pooling when stride is 2). The convolution branch does not see it.
* ``coordconv``: normalised y and x coordinates in [-1, 1] (2 channels) **concatenated at the same
  place** as sine2d.

Both absolute encodings therefore enter q, k and v through the learned qkv projection, exactly where
relative logits would otherwise supply position, which is the comparison the paper's Tables 6 and 7 make.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .attention import relative_attention

POS_ENCODINGS = ("none", "relative", "sine2d", "coordconv")
SINE_CHANNELS = 16


def sine2d_encoding(height: int, width: int, channels: int = SINE_CHANNELS, device=None, dtype=None):
    """(channels, H, W): sin/cos of y in the first half, of x in the second (Vaswani et al. wavelengths)."""
    if channels % 4:
        raise ValueError(f"channels must be divisible by 4 for sine2d; got {channels}")
    quarter = channels // 4
    inv_freq = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))

    def axis(n):
        ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        return torch.cat([ang.sin(), ang.cos()], dim=1)  # (n, channels/2)

    ey = axis(height).t()[:, :, None].expand(-1, height, width)
    ex = axis(width).t()[:, None, :].expand(-1, height, width)
    return torch.cat([ey, ex], 0).to(dtype or torch.float32)


def coord_encoding(height: int, width: int, device=None, dtype=None):
    """(2, H, W): y and x normalised to [-1, 1] (0 for a size-1 axis)."""
    def axis(n):
        return torch.linspace(-1.0, 1.0, n, device=device) if n > 1 else torch.zeros(1, device=device)

    y = axis(height)[:, None].expand(height, width)
    x = axis(width)[None, :].expand(height, width)
    return torch.stack([y, x], 0).to(dtype or torch.float32)


def table_for_size(table: torch.Tensor, n: int) -> torch.Tensor:
    """Rows of a (2*n0 - 1, d) offset table for a map of size n: (2n - 1, d).

    For n <= n0 the central rows are taken (exact offsets). For n > n0 offsets beyond the learned
    range +-(n0 - 1) are **clamped** to the edge rows (relative-position clipping, as in Shaw et al.).
    """
    n0 = (table.shape[0] + 1) // 2
    if n == n0:
        return table
    offsets = torch.arange(-(n - 1), n, device=table.device).clamp(-(n0 - 1), n0 - 1)
    return table[offsets + (n0 - 1)]


def _bilinear_matrix(n_out: int, n_in: int, device, dtype) -> torch.Tensor:
    """(n_out, n_in): bilinear interpolation along one axis as `F.interpolate(mode="bilinear",
    align_corners=False)` does it (half-pixel centres, source clamped at 0, edge rows repeated)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), lo] += 1 - frac
    m[torch.arange(n_out), hi] += frac
    return m.to(device=device, dtype=dtype)


_BILINEAR = {}  # (n_out, n_in, device, dtype) -> its matrix, built once (eager runs; a compiled graph keeps its own)


def _bilinear(n_out: int, n_in: int, device, dtype) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _bilinear_matrix(n_out, n_in, device, dtype)
    key = (n_out, n_in, device, dtype)
    if key not in _BILINEAR:
        _BILINEAR[key] = _bilinear_matrix(n_out, n_in, device, dtype)
    return _BILINEAR[key]


def resize_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W), bilinear as `F.interpolate(..., align_corners=False)`, computed as two small
    products with the interpolation matrices: its backward is deterministic on CUDA (that of upsample_bilinear2d
    accumulates with atomics, and deterministic runs refuse it)."""
    mh = _bilinear(int(size[0]), x.shape[-2], x.device, x.dtype)
    mw = _bilinear(int(size[1]), x.shape[-1], x.device, x.dtype)
    return torch.einsum("Hh,bchw,Ww->bcHW", mh, x, mw)


def attention_map_size(out_size: Tuple[int, int], stride: int, attention_pool: bool) -> Tuple[int, int]:
    """(H, W) of a layer's attention map from its output size: the output itself, or with ``attention_pool`` at
    stride 1 its 3x3 stride-2 average pool, ceil(H/2) x ceil(W/2) (at stride 2 that pooling gives the output size)."""
    h, w = out_size
    return ((h + 1) // 2, (w + 1) // 2) if attention_pool and stride == 1 else (h, w)


class RelativePositionTables(LazyModuleMixin, nn.Module):
    """Learned r^W (2W - 1, d_kh) and r^H (2H - 1, d_kh), shared across heads.

    Sized for ``feature_size`` = (H, W) of the attention map when given, else from the first input.
    Another size at run time works: see `table_for_size` (crop or clamp).
    """

    cls_to_become = None

    def __init__(self, dkh: int, feature_size: Optional[Tuple[int, int]] = None):
        with warnings.catch_warnings():  # the mixin warns that lazy modules are new, on every build
            warnings.simplefilter("ignore", UserWarning)
            super().__init__()
        self.dkh = dkh
        if feature_size is None:
            self.rel_height = UninitializedParameter()
            self.rel_width = UninitializedParameter()
        else:
            h, w = feature_size
            self.rel_height = nn.Parameter(torch.empty(2 * h - 1, dkh))
            self.rel_width = nn.Parameter(torch.empty(2 * w - 1, dkh))
            self.reset_parameters()
            self._initialize_hook.remove()  # sized already: no lazy hook on the forward path (torch.compile)
            self._load_hook.remove()

    def reset_parameters(self):
        if not self.has_uninitialized_params():
            nn.init.normal_(self.rel_height, std=self.dkh ** -0.5)
            nn.init.normal_(self.rel_width, std=self.dkh ** -0.5)

    def initialize_parameters(self, height: int, width: int):  # called by LazyModuleMixin's hook
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.rel_height.materialize((2 * height - 1, self.dkh))
                self.rel_width.materialize((2 * width - 1, self.dkh))
                self.reset_parameters()

    def forward(self, height: int, width: int):
        return table_for_size(self.rel_width, width), table_for_size(self.rel_height, height)


def _pair(x) -> Tuple[int, int]:
    return (x, x) if isinstance(x, int) else tuple(x)


class AugmentedConv2d(nn.Module):
    """Concat[Conv(X), MHA(X)] along channels.

    Args:
        in_channels, out_channels (F_out), kernel_size: as for `nn.Conv2d` (padding kernel_size // 2).
        kappa, upsilon: d_k / F_out and d_v / F_out, in [0, 1]. Or give ``dk`` and ``dv`` directly.
        num_heads: N_h; must divide d_k and d_v (per-head depth >= 1) when attention is present.
        pos_enc: one of ``none``, ``relative``, ``sine2d``, ``coordconv`` (see the module docstring).
        stride: 1 or 2. With 2 the attention runs on the input average-pooled 2x2 (ceil mode), so both
            branches give ceil(H/2) x ceil(W/2).
        feature_size: (H, W) of the attention map, to size the relative tables; default: first input.
        bias: bias for the convolution branch and the output projection W^O (False under BatchNorm).
        attention_impl: passed to `relative_attention` (``auto`` picks triton on CUDA).
        attention_pool: the attention branch runs on its input average-pooled 3x3 with stride 2 (padding 1; in
            place of the 2x2 pooling of a stride-2 layer), and its output (after W^O) is upsampled bilinearly to
            the convolution's size where that is larger: at stride 1 a quarter of the positions, a sixteenth of
            the attention's memory. ``feature_size`` is the pooled map's size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Sequence[int]] = 3,
        *,
        kappa: Optional[float] = None,
        upsilon: Optional[float] = None,
        num_heads: int = 1,
        pos_enc: str = "relative",
        stride: int = 1,
        dk: Optional[int] = None,
        dv: Optional[int] = None,
        feature_size: Optional[Tuple[int, int]] = None,
        bias: bool = False,
        attention_impl: str = "auto",
        attention_pool: bool = False,
    ):
        super().__init__()
        dk, dv = _resolve_depths(out_channels, kappa, upsilon, dk, dv)
        _validate(out_channels, dk, dv, num_heads, pos_enc, stride)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.dk, self.dv, self.num_heads, self.pos_enc = dk, dv, num_heads, pos_enc
        self.attention_impl = attention_impl
        self.attention_pool = bool(attention_pool)
        kh, kw = _pair(kernel_size)
        conv_out = out_channels - dv
        self.conv = (
            nn.Conv2d(in_channels, conv_out, (kh, kw), stride=stride, padding=(kh // 2, kw // 2), bias=bias)
            if conv_out > 0 else None
        )
        if dv == 0:
            self.qkv = self.attn_out = self.rel = None
            return
        self.pos_channels = {"none": 0, "relative": 0, "sine2d": SINE_CHANNELS, "coordconv": 2}[pos_enc]
        self.qkv = nn.Conv2d(in_channels + self.pos_channels, 2 * dk + dv, 1, bias=False)
        self.attn_out = nn.Conv2d(dv, dv, 1, bias=bias)
        self.rel = RelativePositionTables(dk // num_heads, feature_size) if pos_enc == "relative" else None
        self._pos_cache = {}

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, dk={self.dk}, dv={self.dv}, "
                f"num_heads={self.num_heads}, pos_enc={self.pos_enc!r}, stride={self.stride}"
                + (", attention_pool=True" if self.attention_pool else ""))

    def _absolute_channels(self, x):
        _, _, h, w = x.shape
        key = (h, w, x.device, x.dtype)
        if key not in self._pos_cache:
            make = sine2d_encoding if self.pos_enc == "sine2d" else coord_encoding
            self._pos_cache[key] = make(h, w, device=x.device, dtype=x.dtype)
        return self._pos_cache[key].expand(x.shape[0], -1, -1, -1)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch alone: (B, C_in, H, W) -> (B, d_v, H', W')."""
        if self.attention_pool:
            size = [-(-n // self.stride) for n in x.shape[-2:]]  # the convolution's output size
            out = self._attend(F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False))
            return out if list(out.shape[-2:]) == size else resize_bilinear(out, size)
        if self.stride == 2:
            x = F.avg_pool2d(x, 2, ceil_mode=True)
        return self._attend(x)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head attention over every position of x, then W^O: (B, C_in, h, w) -> (B, d_v, h, w)."""
        if self.pos_channels:
            x = torch.cat([x, self._absolute_channels(x)], dim=1)
        B, _, h, w = x.shape
        nh, dkh, dvh = self.num_heads, self.dk // self.num_heads, self.dv // self.num_heads
        # (B, C, H, W) -> (B, L, C): free for channels_last activations, one copy for NCHW. Each head's
        # (B, N_h, L, d) view then has a contiguous last dim, which the fused attention kernels need.
        qkv = self.qkv(x).permute(0, 2, 3, 1).reshape(B, h * w, 2 * self.dk + self.dv)
        q, k, v = torch.split(qkv, [self.dk, self.dk, self.dv], dim=-1)
        q, k = (t.unflatten(-1, (nh, dkh)).transpose(1, 2) for t in (q, k))
        v = v.unflatten(-1, (nh, dvh)).transpose(1, 2)
        rel_w = rel_h = None
        if self.rel is not None:
            rel_w, rel_h = self.rel(h, w)
        out = relative_attention(q, k, v, rel_w, rel_h, h, w, implementation=self.attention_impl)
        # (B, N_h, L, d_vh) -> (B, d_v, H, W), heads concatenated along channels (channels_last strides).
        out = out.transpose(1, 2).reshape(B, h, w, self.dv).permute(0, 3, 1, 2)
        return self.attn_out(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        if self.qkv is None:
            return self.conv(x)
        attn = self.attention(x)
        return attn if self.conv is None else torch.cat([self.conv(x), attn], dim=1)


def check_fractions(kappa, upsilon):
    """kappa and upsilon (None: not given) must lie in [0, 1]."""
    for name, frac in (("kappa", kappa), ("upsilon", upsilon)):
        if frac is not None and not (0.0 <= frac <= 1.0):
            raise ValueError(f"{name} must be in [0, 1]; got {frac}")


def layer_depths(f_out: int, kappa: float, upsilon: float, num_heads: int, min_key_depth_per_head: int = 0,
                 round_to_heads: bool = False) -> Tuple[int, int]:
    """(d_k, d_v) of an augmented layer with F_out = f_out channels, as the networks build them: kappa * F_out and
    upsilon * F_out rounded, or with ``round_to_heads`` rounded to the nearest multiple of N_h (at least N_h, as
    kappa = 2 upsilon = 0.2 needs on 128 channels and 8 heads); d_k then raised to ``min_key_depth_per_head``
    dimensions per head where kappa > 0."""
    def depth(frac):
        if frac == 0:
            return 0
        if round_to_heads:
            return num_heads * max(1, int(round(frac * f_out / num_heads)))
        return int(round(frac * f_out))
    dk = depth(kappa)
    if kappa > 0:
        dk = max(dk, (min_key_depth_per_head or 0) * num_heads)
    return dk, depth(upsilon)


def _resolve_depths(out_channels, kappa, upsilon, dk, dv) -> Tuple[int, int]:
    if (kappa is None) == (dk is None):
        raise ValueError("give exactly one of kappa= or dk=")
    if (upsilon is None) == (dv is None):
        raise ValueError("give exactly one of upsilon= or dv=")
    check_fractions(kappa, upsilon)
    dk = int(round(kappa * out_channels)) if dk is None else dk
    dv = int(round(upsilon * out_channels)) if dv is None else dv
    return dk, dv


def _validate(out_channels, dk, dv, num_heads, pos_enc, stride):
    if pos_enc not in POS_ENCODINGS:
        raise ValueError(f"pos_enc must be one of {POS_ENCODINGS}; got {pos_enc!r}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2; got {stride}")
    if not (0 <= dv <= out_channels):
        raise ValueError(f"dv must be in [0, out_channels={out_channels}]; got {dv}")
    if dk < 0:
        raise ValueError(f"dk must be >= 0; got {dk}")
    if (dk == 0) != (dv == 0):
        raise ValueError(f"dk and dv must both be 0 (plain convolution) or both > 0; got dk={dk}, dv={dv}")
    if dv == 0:
        return
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive integer; got {num_heads!r}")
    if dk % num_heads:
        raise ValueError(f"dk={dk} is not divisible by num_heads={num_heads}")
    if dv % num_heads:
        raise ValueError(f"dv={dv} is not divisible by num_heads={num_heads}")
    if dk // num_heads < 1 or dv // num_heads < 1:
        raise ValueError(f"per-head depth is 0: dk={dk}, dv={dv}, num_heads={num_heads}")
