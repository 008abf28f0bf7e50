"""Parameter count and GFLOPs of a network, counted with `torch.utils.flop_counter`.

A multiply-add counts as 2 FLOPs, as the paper does. Attention is counted with its reference algorithm
(q k^T, q r^T for relative logits, weights v): the fused path appends one-hot columns to q and k whose
multiplications are an implementation device, not part of the model's cost.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from .augmented_conv import AugmentedConv2d


class Profile(NamedTuple):
    params: int
    gflops: float
    # FLOPs of convolutions and fully connected layers only, attention's matmuls left out: the convention that
    # comes nearest the paper's Table 5 GFLOPs (which fall as kappa grows; benchmarks/results/paper-gflops.md)
    gflops_conv: float = math.nan

    @property
    def params_m(self) -> float:
        return self.params / 1e6


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def profile(model: torch.nn.Module, input_size: Sequence[int]) -> Profile:
    """Parameters and forward GFLOPs for one image of ``input_size`` = (C, H, W)."""
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W); got {tuple(input_size)}")
    params = count_parameters(model)
    device = next(model.parameters()).device
    augmented = [m for m in model.modules() if isinstance(m, AugmentedConv2d)]
    saved = [m.attention_impl for m in augmented]
    was_training = model.training
    try:
        for m in augmented:
            m.attention_impl = "reference"
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for m, impl in zip(augmented, saved):
            m.attention_impl = impl
        model.train(was_training)
    counts = counter.get_flop_counts().get("Global", {})
    conv = sum(v for op, v in counts.items() if "convolution" in str(op) or "addmm" in str(op))
    return Profile(params, counter.get_total_flops() / 1e9, conv / 1e9)
