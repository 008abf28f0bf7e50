"""RetinaNet with an AA-ResNet backbone (Bello et al., ICCV 2019, Table 7): torchvision's RetinaNet (heads,
anchors, focal loss, post-processing) on a BackboneWithFPN over C3-C5 of an AA-ResNet from this package.
Only the glue is written here. The detector resizes images (shorter side `min_size`), so the attention
maps vary in size: relative tables are sized for `min_size` and crop/clamp for other sizes
(see augmented_conv.table_for_size)."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from .resnet import aa_resnet18, aa_resnet34, aa_resnet50, aa_resnet101

BACKBONES = {"aa_resnet18": aa_resnet18, "aa_resnet34": aa_resnet34, "aa_resnet50": aa_resnet50,
             "aa_resnet101": aa_resnet101}


def aa_retinanet(num_classes: int, arch: str = "aa_resnet50", *, kappa: float = 0.0, upsilon: Optional[float] = None,
                 num_heads: int = 8, pos_enc: str = "relative", stages: Sequence[int] = (2, 3, 4),
                 min_size: int = 800, max_size: int = 1333, min_key_depth_per_head: Optional[int] = 0,
                 attention_pool_stages: Sequence[int] = (), round_depths_to_heads: bool = False,
                 **retinanet_kwargs) -> nn.Module:
    """`num_classes` as torchvision counts it (categories + 1: labels are 1..K)."""
    if arch not in BACKBONES:
        raise ValueError(f"detection backbone must be one of {sorted(BACKBONES)}; got {arch!r}")
    body = BACKBONES[arch](1000, kappa=kappa, upsilon=upsilon, num_heads=num_heads, pos_enc=pos_enc,
                           stages=stages, input_size=min_size, min_key_depth_per_head=min_key_depth_per_head,
                           attention_pool_stages=attention_pool_stages, round_depths_to_heads=round_depths_to_heads)
    backbone = _resnet_fpn_extractor(body, trainable_layers=5, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, num_classes, min_size=min_size, max_size=max_size, **retinanet_kwargs)
