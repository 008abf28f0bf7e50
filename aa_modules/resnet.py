"""AA-ResNets: torchvision's ResNet with the 3x3 convolution of chosen stages' blocks attention-augmented.

Bello et al., "Attention Augmented Convolutional Networks", ICCV 2019 (arXiv 1904.09925), Section 4.2.

The network is torchvision's own `ResNet` (not a rewrite). In every block of the chosen stages the 3x3
convolution that carries the block's stride is swapped for an `AugmentedConv2d` of the same in/out
channels and stride: ``conv2`` of a `Bottleneck`, ``conv1`` of a `BasicBlock` (see `AUGMENTED_CONV`).
Stages are numbered 1-4 (torchvision's layer1..layer4). With kappa = upsilon = 0 nothing is swapped, so
the parameter count is exactly torchvision's.

``small_input=True``: a 3x3 stride-1 stem convolution and no max-pool, for 28-64 px images.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch.nn as nn
from torchvision.models import resnet as tv

from .augmented_conv import AugmentedConv2d, attention_map_size, check_fractions, layer_depths

AUGMENTED_CONV = {tv.BasicBlock: "conv1", tv.Bottleneck: "conv2"}
_DEPTHS = {
    18: (tv.BasicBlock, [2, 2, 2, 2]),
    34: (tv.BasicBlock, [3, 4, 6, 3]),
    50: (tv.Bottleneck, [3, 4, 6, 3]),
    101: (tv.Bottleneck, [3, 4, 23, 3]),
}
DEFAULT_STAGES = (2, 3, 4)


def _size2(x) -> Tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def stage_feature_sizes(input_size, small_input: bool) -> list:
    """(H, W) of each stage's output (= of its blocks' attention maps) for a given input size."""
    h, w = _size2(input_size)
    if not small_input:  # 7x7 stride-2 stem, then 3x3 stride-2 max-pool (padding 1): ceil twice
        h, w = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
    sizes = [(h, w)]
    for _ in range(3):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


def augment_resnet(
    model: tv.ResNet,
    *,
    kappa: float,
    upsilon: float,
    num_heads: int,
    pos_enc: str = "relative",
    stages: Iterable[int] = DEFAULT_STAGES,
    input_size: Union[int, Sequence[int]] = 224,
    small_input: bool = False,
    min_key_depth_per_head: int = 0,
    attention_pool_stages: Iterable[int] = (),
    round_depths_to_heads: bool = False,
    attention_impl: str = "auto",
) -> tv.ResNet:
    """Swap the 3x3 convolution of every block in ``stages`` for an `AugmentedConv2d` (in place).

    min_key_depth_per_head: d_k is at least this many dimensions per head (the paper's 20) wherever kappa > 0.
    attention_pool_stages: stages whose attention runs on a 3x3 stride-2 average-pooled input, upsampled back
    (`AugmentedConv2d`'s ``attention_pool``); each must be among ``stages``.
    round_depths_to_heads: d_k and d_v rounded to the nearest multiple of N_h (`layer_depths`).
    """
    stages, pooled = tuple(stages), tuple(attention_pool_stages or ())
    for s in stages:
        if s not in (1, 2, 3, 4):
            raise ValueError(f"stages must be drawn from 1, 2, 3, 4; got {stages}")
    if not set(pooled) <= set(stages):
        raise ValueError(f"attention_pool_stages must be among the augmented stages {list(stages)}; got {list(pooled)}")
    if kappa == 0 and upsilon == 0:
        return model
    sizes = stage_feature_sizes(input_size, small_input)
    for s in stages:
        for b, block in enumerate(getattr(model, f"layer{s}")):
            name = AUGMENTED_CONV[type(block)]
            conv: nn.Conv2d = getattr(block, name)
            f_out = conv.out_channels
            dk, dv = layer_depths(f_out, kappa, upsilon, num_heads, min_key_depth_per_head, round_depths_to_heads)
            try:
                pool = s in pooled
                aug = AugmentedConv2d(
                    conv.in_channels, f_out, conv.kernel_size, dk=dk, dv=dv,
                    num_heads=num_heads, pos_enc=pos_enc, stride=conv.stride[0],
                    feature_size=attention_map_size(sizes[s - 1], conv.stride[0], pool),
                    attention_impl=attention_impl, attention_pool=pool,
                )
            except ValueError as e:
                raise ValueError(f"layer{s}.{b}.{name} (F_out={f_out}): {e}") from None
            setattr(block, name, aug)
    return model


class GlobalAvgPool(nn.Module):
    """torchvision's ``AdaptiveAvgPool2d((1, 1))`` as a mean over the map: the same values and gradients, bit for bit on
    the CPU, but its CUDA backward is deterministic (adaptive_avg_pool2d's is not, so `deterministic` runs refuse it)."""

    def forward(self, x):
        return x.mean((-2, -1), keepdim=True)


def _aa_resnet(depth, num_classes, kappa, upsilon, num_heads, pos_enc, stages, small_input, in_channels,
               input_size, attention_impl, zero_init_residual=False, min_key_depth_per_head=0,
               attention_pool_stages=(), round_depths_to_heads=False):
    check_fractions(kappa, upsilon)
    block, layers = _DEPTHS[depth]
    # zero_init_residual: the last BatchNorm of every residual branch starts at gamma 0 (Goyal et al. 2017; the TPU
    # reference ResNet's init_zero), so each block starts as its shortcut; without it ResNet-50 at 224 px diverged
    # within 10 steps (benchmarks/results/2026-11-25-multi-gpu.md). torchvision applies it after its own init.
    model = tv.ResNet(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual)
    model.avgpool = GlobalAvgPool()
    if small_input or in_channels != 3:
        k, s, p = (3, 1, 1) if small_input else (7, 2, 3)
        model.conv1 = nn.Conv2d(in_channels, 64, k, s, p, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if small_input:
        model.maxpool = nn.Identity()
    if input_size is None:
        input_size = 32 if small_input else 224
    return augment_resnet(model, kappa=kappa, upsilon=upsilon, num_heads=num_heads, pos_enc=pos_enc,
                          stages=stages, input_size=input_size, small_input=small_input,
                          min_key_depth_per_head=min_key_depth_per_head or 0,
                          attention_pool_stages=attention_pool_stages or (),
                          round_depths_to_heads=round_depths_to_heads, attention_impl=attention_impl)


def _builder(depth):
    def build(num_classes: int = 1000, *, kappa: float = 0.0, upsilon: Optional[float] = None,
              num_heads: int = 8, pos_enc: str = "relative", stages: Iterable[int] = DEFAULT_STAGES,
              small_input: bool = False, in_channels: int = 3, input_size=None,
              attention_impl: str = "auto", zero_init_residual: bool = False,
              min_key_depth_per_head: Optional[int] = 0, attention_pool_stages: Iterable[int] = (),
              round_depths_to_heads: bool = False) -> tv.ResNet:
        return _aa_resnet(depth, num_classes, kappa, kappa if upsilon is None else upsilon, num_heads,
                          pos_enc, stages, small_input, in_channels, input_size, attention_impl,
                          zero_init_residual, min_key_depth_per_head, attention_pool_stages, round_depths_to_heads)

    build.__name__ = build.__qualname__ = f"aa_resnet{depth}"
    build.__doc__ = (
        f"AA-ResNet-{depth} on torchvision's ResNet. kappa = d_k/F_out, upsilon = d_v/F_out (default: "
        f"upsilon = kappa), N_h = num_heads, pos_enc in none/relative/sine2d/coordconv, stages from 1-4. "
        f"input_size sizes the relative tables (default 224, or 32 with small_input); other sizes still run. "
        f"zero_init_residual: each residual branch's last BatchNorm starts at 0 (the ImageNet recipe's init). "
        f"min_key_depth_per_head: at least this many key dimensions per head (the paper's 20); "
        f"attention_pool_stages: stages whose attention runs on a 3x3 stride-2 average-pooled map; "
        f"round_depths_to_heads: d_k and d_v rounded to the nearest multiple of num_heads."
    )
    return build


aa_resnet18 = _builder(18)
aa_resnet34 = _builder(34)
aa_resnet50 = _builder(50)
aa_resnet101 = _builder(101)
