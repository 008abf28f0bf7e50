"""AA-WRN-28-10 for CIFAR-100: the paper's Table 1 setting.

Bello et al., "Attention Augmented Convolutional Networks", ICCV 2019 (arXiv 1904.09925), Section 4.1:
relative self-attention augments the first convolution of every residual block, N_h = 8,
kappa = 2 * upsilon = 0.2, with a minimum of 20 dimensions per head for the keys.

The wide ResNet itself (Zagoruyko & Komodakis, 2016; pre-activation basic blocks, widen factor k) is
written here because torchvision has no CIFAR WRN.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augmented_conv import AugmentedConv2d, attention_map_size, layer_depths


class WideBasic(nn.Module):
    def __init__(self, in_planes, planes, stride, dropout, feature_size, aa: dict, attention_pool: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        if aa:
            dk, dv = layer_depths(planes, aa["kappa"], aa["upsilon"], aa["num_heads"], aa["min_key_depth_per_head"],
                                  aa.get("round_depths_to_heads", False))
            self.conv1 = AugmentedConv2d(in_planes, planes, 3, stride=stride, dk=dk, dv=dv, num_heads=aa["num_heads"],
                                         pos_enc=aa["pos_enc"], feature_size=feature_size,
                                         attention_impl=aa["attention_impl"], attention_pool=attention_pool)
        else:
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.dropout(F.relu(self.bn2(y))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, depth=28, widen_factor=10, num_classes=100, dropout=0.0, in_channels=3,
                 input_size=32, aa: dict | None = None):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4; got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        layers, in_planes, size = [], widths[0], input_size
        pooled = tuple((aa or {}).get("attention_pool_stages") or ())
        if not set(pooled) <= {1, 2, 3}:
            raise ValueError(f"attention_pool_stages must be drawn from the groups 1, 2, 3; got {list(pooled)}")
        for g, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            size = -(-size // stride)
            pool = g + 1 in pooled
            for b in range(n):
                try:
                    st = stride if b == 0 else 1
                    layers.append(WideBasic(in_planes, planes, st, dropout, attention_map_size((size, size), st, pool),
                                            aa or {}, pool))
                except ValueError as e:
                    raise ValueError(f"group{g + 1}.{b}.conv1 (F_out={planes}): {e}") from None
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(self.conv1(x))
        x = F.relu(self.bn(x)).mean((-2, -1))  # = adaptive_avg_pool2d(., 1), whose CUDA backward is nondeterministic
        return self.fc(x)


def wide_resnet28_10(num_classes=100, *, dropout=0.0, in_channels=3):
    """WRN-28-10, no attention."""
    return WideResNet(28, 10, num_classes, dropout, in_channels)


def aa_wide_resnet28_10(num_classes=100, *, kappa=0.2, upsilon=0.1, num_heads=8, pos_enc="relative",
                        min_key_depth_per_head=20, dropout=0.0, in_channels=3, input_size=32,
                        attention_impl="auto", attention_pool_stages=(), round_depths_to_heads=False):
    """AA-WRN-28-10: the first convolution of every block augmented (paper defaults: N_h=8, kappa=2*upsilon=0.2,
    at least 20 key dimensions per head; None takes that default). attention_pool_stages: groups (1-3) whose
    attention runs on a 3x3 stride-2 average-pooled map. kappa = upsilon = 0 gives the plain WRN-28-10."""
    aa = None
    if kappa > 0 or upsilon > 0:
        aa = dict(kappa=kappa, upsilon=upsilon, num_heads=num_heads, pos_enc=pos_enc,
                  min_key_depth_per_head=20 if min_key_depth_per_head is None else min_key_depth_per_head,
                  attention_impl=attention_impl, attention_pool_stages=attention_pool_stages,
                  round_depths_to_heads=round_depths_to_heads)
    return WideResNet(28, 10, num_classes, dropout, in_channels, input_size, aa)
