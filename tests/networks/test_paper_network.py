"""The paper's own AA-ResNet (its Table 5 parameters and FLOPs) and the pooled attention it needs: the key-depth
floor, stage 2's attention on a 3x3 stride-2 average-pooled map, depths rounded to the heads."""
import pytest
import torch
import torch.nn.functional as F

import aa_modules as A
from aa_modules import flash_relative
from aa_modules.augmented_conv import AugmentedConv2d, layer_depths, resize_bilinear
from conftest import ROOT


@pytest.mark.parametrize("size", [(14, 14, 28, 28), (4, 7, 7, 13), (1, 3, 2, 6), (7, 7, 14, 14)])
def test_resize_bilinear_is_interpolate_bilinear(size):
    h, w, H, W = size
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    ours, theirs = resize_bilinear(x, (H, W)), F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, theirs)
    up = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, x, up)[0], torch.autograd.grad(theirs, x, up)[0])


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pos_enc", ["relative", "none", "sine2d", "coordconv"])
def test_pooled_attention_is_attention_on_the_pooled_map_upsampled(pos_enc, stride):
    """attention_pool: avg-pool 3x3 / 2 of the input, the layer's own attention on it, bilinear back to the
    convolution's size (stride 2: the pooled map is already that size)."""
    torch.manual_seed(0)
    layer = AugmentedConv2d(6, 16, 3, dk=8, dv=8, num_heads=2, pos_enc=pos_enc, stride=stride,
                            feature_size=(5, 6), attention_pool=True,
                            attention_impl="reference")
    x = torch.randn(2, 6, 9, 11)
    out = layer(x)
    conv_hw = (-(-9 // stride), -(-11 // stride))
    assert out.shape == (2, 16, *conv_hw)
    pooled = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
    expect = layer._attend(pooled)
    if expect.shape[-2:] != conv_hw:
        expect = F.interpolate(expect, size=conv_hw, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, 8:], expect)


@pytest.mark.parametrize("impl", ["fused", "triton"])
@pytest.mark.parametrize("pos_enc", ["relative", "none"])
def test_pooled_attention_implementations_agree_forward_and_backward(impl, pos_enc):
    if impl == "triton" and not flash_relative.available(torch.device("cpu")):
        pytest.skip("Triton's interpreter is not active in this process")
    torch.manual_seed(1)
    make = lambda i: AugmentedConv2d(6, 12, 3, dk=40, dv=4, num_heads=2, pos_enc=pos_enc, feature_size=(4, 5),
                                     attention_pool=True, attention_impl=i)
    ref, other = make("reference"), make(impl)
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 7, 9)
    a, b = ref(x), other(x)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    up = torch.randn_like(a)
    (a * up).sum().backward()
    (b * up).sum().backward()
    for (name, p), q in zip(ref.named_parameters(), other.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_pooled_network_traces_whole_under_torch_compile():
    model = A.aa_resnet18(num_classes=4, kappa=0.25, num_heads=2, stages=(3, 4), small_input=True, input_size=16,
                          min_key_depth_per_head=4, attention_pool_stages=(3,), attention_impl="triton")
    explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 16, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_layer_depths_floor_and_rounding():
    assert layer_depths(128, 0.25, 0.25, 8) == (32, 32)
    assert layer_depths(128, 0.25, 0.25, 8, 20) == (160, 32)  # at least 20 per head
    assert layer_depths(128, 0.2, 0.1, 8, 20, round_to_heads=True) == (160, 16)  # 12.8 value dims -> 16
    assert layer_depths(512, 0.2, 0.1, 8, 20, round_to_heads=True) == (160, 48)  # 51.2 -> 48
    assert layer_depths(1024, 0.2, 0.1, 8, 20, round_to_heads=True) == (208, 104)  # 204.8 -> 208 > the floor
    assert layer_depths(64, 0, 0, 8, 20) == (0, 0)  # no attention, no floor


def _paper_cells():
    from pipelines.spec import load_study
    study = load_study(str(ROOT / "studies/table5.yaml"), "paper")
    return {t.config["kappa"]: t.config for t in study.trials}


def test_table5_paper_profile_builds_the_paper_s_networks():
    """Every Table 5 cell of the paper profile, built as a trial builds it, within 0.1 M parameters and 0.15 GFLOPs
    (convolutions and classifier, 2 per multiply-add, 224 px) of the paper's Table 5 (reports/paper_values.yaml)."""
    from pipelines.settings import arch_kwargs
    from pipelines.training.classifier import build_model
    from reports.tables import paper_values
    paper = {r["kappa"]: r for r in paper_values()["table5"]}
    cells = _paper_cells()
    assert set(cells) == set(paper)
    for kappa, cfg in sorted(cells.items()):
        model = build_model(cfg["arch"], 1000, 3, (224, 224), **arch_kwargs(cfg))
        prof = A.profile(model, (3, 224, 224))
        assert abs(prof.params_m - paper[kappa]["params"]) <= 0.1, (kappa, prof.params_m)
        assert abs(prof.gflops_conv - paper[kappa]["gflops"]) <= 0.15, (kappa, prof.gflops_conv)
