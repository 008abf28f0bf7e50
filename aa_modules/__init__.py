"""Attention-augmented convolutional networks (Bello et al., ICCV 2019) in plain PyTorch."""
from .attention import relative_attention
from .augmented_conv import POS_ENCODINGS, AugmentedConv2d, coord_encoding, sine2d_encoding
from .complexity import Profile, count_parameters, profile
from .resnet import aa_resnet18, aa_resnet34, aa_resnet50, aa_resnet101, augment_resnet
from .wide_resnet import WideResNet, aa_wide_resnet28_10, wide_resnet28_10

ARCHITECTURES = {
    "aa_resnet18": aa_resnet18,
    "aa_resnet34": aa_resnet34,
    "aa_resnet50": aa_resnet50,
    "aa_resnet101": aa_resnet101,
    "aa_wide_resnet28_10": aa_wide_resnet28_10,
}

__all__ = [
    "ARCHITECTURES", "POS_ENCODINGS", "AugmentedConv2d", "Profile", "WideResNet", "aa_resnet18", "aa_resnet34",
    "aa_resnet50", "aa_resnet101", "aa_wide_resnet28_10", "augment_resnet", "coord_encoding",
    "count_parameters", "profile", "relative_attention", "sine2d_encoding", "wide_resnet28_10",
]
