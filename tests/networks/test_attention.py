"""relative_attention: both implementations against a brute-force loop, and against each other."""
import pytest
import torch

from aa_modules.attention import brute_force_attention, relative_attention, relative_logits_reference

IMPLS = ["reference", "fused"]


def _inputs(B, N, H, W, dkh, dvh, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()
    return mk(B, N, H * W, dkh), mk(B, N, H * W, dkh), mk(B, N, H * W, dvh), mk(2 * W - 1, dkh), mk(2 * H - 1, dkh)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("H,W", [(3, 5), (4, 2), (1, 6)])
def test_matches_brute_force_outputs_and_gradients(impl, H, W):
    q, k, v, rw, rh = _inputs(2, 2, H, W, 4, 3, seed=H * 10 + W)
    expected = brute_force_attention(q, k, v, rw, rh, H, W)
    got = relative_attention(q, k, v, rw, rh, H, W, implementation=impl)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(expected)
    g_exp = torch.autograd.grad(expected, (q, k, v, rw, rh), upstream)
    g_got = torch.autograd.grad(got, (q, k, v, rw, rh), upstream)
    for name, a, b in zip("q k v rel_width rel_height".split(), g_got, g_exp):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_content_only_matches_brute_force(impl):
    q, k, v, _, _ = _inputs(1, 3, 4, 3, 2, 2)
    expected = brute_force_attention(q, k, v, None, None, 4, 3)
    torch.testing.assert_close(relative_attention(q, k, v, None, None, 4, 3, implementation=impl), expected)


@pytest.mark.parametrize("seed", range(4))
def test_fused_matches_reference_on_random_shapes(seed):
    g = torch.Generator().manual_seed(100 + seed)
    B, N, H, W = (int(torch.randint(1, 5, (1,), generator=g)) for _ in range(4))
    H, W = H + 2, W + 3
    dkh, dvh = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
    q, k, v, rw, rh = _inputs(B, N, H, W, dkh, dvh, dtype=torch.float32, seed=seed)
    ref = relative_attention(q, k, v, rw, rh, H, W, implementation="reference")
    fused = relative_attention(q, k, v, rw, rh, H, W, implementation="fused")
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    gr = torch.autograd.grad(ref.square().sum(), (q, k, v, rw, rh))
    gf = torch.autograd.grad(fused.square().sum(), (q, k, v, rw, rh))
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_relative_logits_depend_only_on_offsets():
    H, W, d = 4, 5, 3
    q = torch.randn(1, 1, 1, d, dtype=torch.float64).expand(1, 1, H * W, d)  # one query vector everywhere
    rw, rh = torch.randn(2 * W - 1, d, dtype=torch.float64), torch.randn(2 * H - 1, d, dtype=torch.float64)
    logits = relative_logits_reference(q, rw, rh, H, W)[0, 0].reshape(H, W, H, W)
    # shifting query and key by the same (dy, dx) leaves the logit unchanged
    assert torch.allclose(logits[0, 0, 1, 2], logits[1, 1, 2, 3])
    assert torch.allclose(logits[2, 3, 0, 1], logits[3, 4, 1, 2])
    assert torch.allclose(logits[1, 0, 3, 4], logits[0, 0, 2, 4])
    # and a different offset gives a different logit (the test can fail)
    assert not torch.allclose(logits[0, 0, 1, 2], logits[0, 0, 2, 1])


def test_bad_shapes_raise():
    q, k, v, rw, rh = _inputs(1, 1, 3, 4, 2, 2)
    with pytest.raises(ValueError, match="rel_width must be"):
        relative_attention(q, k, v, rh, rh, 3, 4)
    with pytest.raises(ValueError, match="height\\*width"):
        relative_attention(q, k, v, rw, rh, 4, 4)
    with pytest.raises(ValueError, match="implementation"):
        relative_attention(q, k, v, rw, rh, 3, 4, implementation="flash")
