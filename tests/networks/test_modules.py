"""AugmentedConv2d, the AA networks and profile()."""
import pytest
import torch
import torchvision

import aa_modules as A
from aa_modules.augmented_conv import table_for_size


@pytest.mark.parametrize("stride,H,W,out_hw", [(1, 6, 9, (6, 9)), (2, 6, 9, (3, 5)), (2, 7, 7, (4, 4))])
def test_shapes_stride_and_non_square(stride, H, W, out_hw):
    layer = A.AugmentedConv2d(5, 16, 3, kappa=0.5, upsilon=0.25, num_heads=2, stride=stride)
    y = layer(torch.randn(2, 5, H, W))
    assert y.shape == (2, 16, *out_hw)


def test_output_is_concat_of_conv_and_attention():
    layer = A.AugmentedConv2d(4, 12, 3, dk=8, dv=4, num_heads=2, pos_enc="relative")
    x = torch.randn(3, 4, 5, 6)
    y = layer(x)
    torch.testing.assert_close(y[:, :8], layer.conv(x))
    torch.testing.assert_close(y[:, 8:], layer.attention(x))


def test_fully_attentional_and_plain_conv():
    full = A.AugmentedConv2d(4, 8, 3, kappa=1.0, upsilon=1.0, num_heads=2)
    assert full.conv is None and full(torch.randn(1, 4, 5, 3)).shape == (1, 8, 5, 3)
    plain = A.AugmentedConv2d(4, 8, 3, kappa=0.0, upsilon=0.0, num_heads=2)
    assert plain.qkv is None
    assert sum(p.numel() for p in plain.parameters()) == sum(
        p.numel() for p in torch.nn.Conv2d(4, 8, 3, bias=False).parameters())


@pytest.mark.parametrize("pos_enc", A.POS_ENCODINGS)
def test_backward_runs_for_every_encoding(pos_enc):
    layer = A.AugmentedConv2d(3, 8, 3, kappa=0.5, upsilon=0.5, num_heads=2, pos_enc=pos_enc, stride=2)
    x = torch.randn(2, 3, 7, 6, requires_grad=True)
    layer(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = {n: p.grad for n, p in layer.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), grads.keys()
    if pos_enc == "relative":
        assert "rel.rel_width" in grads and "rel.rel_height" in grads


def test_absolute_encodings_enter_attention_input():
    for pos_enc, extra in (("sine2d", A.augmented_conv.SINE_CHANNELS), ("coordconv", 2), ("none", 0)):
        layer = A.AugmentedConv2d(3, 8, 3, kappa=0.5, upsilon=0.5, num_heads=2, pos_enc=pos_enc)
        assert layer.qkv.in_channels == 3 + extra
    c = A.coord_encoding(3, 5)
    assert c.shape == (2, 3, 5) and c[0, 0, 0] == -1 and c[1, 0, -1] == 1
    s = A.sine2d_encoding(4, 6)
    assert s.shape == (16, 4, 6) and torch.equal(s[:8, :, 0], s[:8, :, 5])  # y half constant along x


def test_relative_tables_from_first_input_and_other_sizes():
    layer = A.AugmentedConv2d(3, 8, 3, kappa=0.5, upsilon=0.5, num_heads=2, pos_enc="relative")
    layer(torch.randn(1, 3, 4, 6))
    assert layer.rel.rel_width.shape == (11, 2) and layer.rel.rel_height.shape == (7, 2)
    # smaller and larger maps still run; the tables stay as learned
    assert layer(torch.randn(1, 3, 2, 3)).shape == (1, 8, 2, 3)
    assert layer(torch.randn(1, 3, 9, 8)).shape == (1, 8, 9, 8)
    assert layer.rel.rel_width.shape == (11, 2)


def test_table_for_size_crops_then_clamps():
    table = torch.arange(7.0)[:, None]  # n0 = 4, offsets -3..3
    assert table_for_size(table, 2)[:, 0].tolist() == [2, 3, 4]  # offsets -1..1: exact rows
    assert table_for_size(table, 6)[:, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 6, 6]  # -5..5 clamped


def test_feature_size_given_at_construction():
    layer = A.AugmentedConv2d(3, 8, 3, kappa=0.5, upsilon=0.5, num_heads=2, feature_size=(5, 7))
    assert layer.rel.rel_width.shape == (13, 2)
    assert sum(p.numel() for p in layer.parameters()) > 0  # materialised: optimisers see them


@pytest.mark.parametrize("kwargs,message", [
    (dict(kappa=0.5, upsilon=0.5, num_heads=3), "not divisible by num_heads"),
    (dict(dk=4, dv=6, num_heads=4), "dv=6 is not divisible"),
    (dict(kappa=1.5, upsilon=0.5, num_heads=2), "kappa must be in \\[0, 1\\]"),
    (dict(kappa=0.5, upsilon=-0.1, num_heads=2), "upsilon must be in \\[0, 1\\]"),
    (dict(kappa=0.5, upsilon=0.5, num_heads=2, pos_enc="learned"), "pos_enc must be one of"),
    (dict(kappa=0.5, upsilon=0.5, num_heads=2, stride=3), "stride must be 1 or 2"),
    (dict(kappa=0.5, upsilon=0.5, num_heads=0), "num_heads must be a positive integer"),
    (dict(kappa=0.5, dk=4, upsilon=0.5, num_heads=2), "exactly one of kappa= or dk="),
    (dict(kappa=0.5, upsilon=0.0, num_heads=2), "both be 0"),
])
def test_invalid_arguments_raise_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        A.AugmentedConv2d(4, 8, 3, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_kappa_zero_gives_torchvision_parameter_count(depth):
    ours = getattr(A, f"aa_resnet{depth}")(1000, kappa=0.0)
    theirs = getattr(torchvision.models, f"resnet{depth}")(num_classes=1000)
    assert A.count_parameters(ours) == A.count_parameters(theirs)


def test_aa_resnet_swaps_the_strided_3x3_conv_in_chosen_stages():
    m = A.aa_resnet50(10, kappa=0.25, num_heads=8, stages=(3, 4))
    assert isinstance(m.layer3[0].conv2, A.AugmentedConv2d) and m.layer3[0].conv2.stride == 2
    assert isinstance(m.layer2[0].conv2, torch.nn.Conv2d)
    m18 = A.aa_resnet18(10, kappa=0.25, upsilon=0.5, num_heads=2, stages=(1, 2, 3, 4), small_input=True,
                        in_channels=1, input_size=28)
    assert m18.layer1[0].conv1.dv == 32 and m18.layer1[0].conv1.dk == 16
    assert m18.layer1[0].conv1.rel.rel_width.shape == (55, 8)
    y = m18(torch.randn(2, 1, 28, 28))
    assert y.shape == (2, 10)
    assert m18(torch.randn(1, 1, 40, 24)).shape == (1, 10)  # another input size at run time


def test_zero_init_residual_starts_every_block_as_its_shortcut():
    """The ImageNet profiles' init: each residual branch's last BatchNorm starts at gamma 0 (AA blocks included),
    so a block returns relu(shortcut) and the first steps of a deep net stay finite; off by default."""
    m = A.aa_resnet50(10, kappa=0.25, num_heads=8, zero_init_residual=True)
    blocks = [b for s in (m.layer1, m.layer2, m.layer3, m.layer4) for b in s]
    assert isinstance(m.layer3[0].conv2, A.AugmentedConv2d)
    assert all(float(b.bn3.weight.detach().abs().max()) == 0 for b in blocks)
    assert all(float(b.bn1.weight.detach().min()) == 1 for b in blocks)
    b = m.layer2[1].eval()
    x = torch.relu(torch.randn(2, 512, 8, 8))
    assert torch.equal(b(x), torch.relu(x))
    assert all(float(b.bn3.weight.detach().min()) == 1 for b in A.aa_resnet50(10, kappa=0.25, num_heads=8).layer1)


def test_global_average_pool_is_torchvision_s_bit_for_bit():
    """The ResNets pool with a mean (its CUDA backward is deterministic, adaptive_avg_pool2d's is not): the same
    values and gradients as torchvision's AdaptiveAvgPool2d."""
    from aa_modules.resnet import GlobalAvgPool

    assert isinstance(A.aa_resnet18(10).avgpool, GlobalAvgPool)
    for shape in ((4, 512, 7, 7), (3, 64, 5, 3)):
        x = torch.randn(*shape, requires_grad=True)
        g = torch.randn(shape[0], shape[1], 1, 1)
        a = torch.nn.AdaptiveAvgPool2d((1, 1))(x)
        b = GlobalAvgPool()(x)
        assert torch.equal(a, b)
        assert torch.equal(torch.autograd.grad(a, x, g)[0], torch.autograd.grad(b, x, g)[0])


def test_aa_resnet_error_names_the_layer():
    with pytest.raises(ValueError, match="layer2.0.conv1 \\(F_out=128\\): dk=38 is not divisible"):
        A.aa_resnet18(10, kappa=0.3, num_heads=4, stages=(2,))


def test_wide_resnet_paper_setting():
    m = A.aa_wide_resnet28_10(100)
    first = m.blocks[0].conv1
    assert isinstance(first, A.AugmentedConv2d) and first.num_heads == 8
    assert first.dk == 160 and first.dv == 16  # at least 20 key dims per head; upsilon = 0.1
    last = m.blocks[-1].conv1
    assert last.dk == 160 and last.dv == 64
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_profile_counts_attention_matmuls():
    cin, F, dk, dv, nh, H, W = 6, 16, 8, 12, 4, 5, 7
    layer = A.AugmentedConv2d(cin, F, 3, dk=dk, dv=dv, num_heads=nh, pos_enc="relative", feature_size=(H, W),
                              attention_impl="fused")
    L = H * W
    macs = (L * 9 * cin * (F - dv)  # conv branch
            + L * cin * (2 * dk + dv)  # qkv projection
            + L * L * dk + L * L * dv  # q k^T and weights v
            + L * (2 * W - 1) * dk + L * (2 * H - 1) * dk  # q r^T for both axes
            + L * dv * dv)  # output projection
    assert A.profile(layer, (cin, H, W)).gflops * 1e9 == 2 * macs
    assert layer.attention_impl == "fused"  # restored
    # torchvision resnet50 at 224: 4.09 GMACs = 8.18 GFLOPs (the paper's 8.2)
    assert abs(A.profile(torchvision.models.resnet50(), (3, 224, 224)).gflops - 8.18) < 0.01
