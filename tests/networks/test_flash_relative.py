"""The Triton relative-attention kernel pair (aa_modules.flash_relative), run on the CPU through Triton's
interpreter: the same kernel source the GPU compiles, checked against the reference and a brute-force loop."""
import pytest
import torch

import aa_modules as A
from aa_modules import AugmentedConv2d
from aa_modules import flash_relative
from aa_modules.attention import brute_force_attention, relative_attention

pytestmark = pytest.mark.skipif(not flash_relative.available(torch.device("cpu")),
                                reason="Triton's interpreter is not active in this process (CUDA machine?)")


def _inputs(B, N, H, W, dkh, dvh, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()
    return mk(B, N, H * W, dkh), mk(B, N, H * W, dkh), mk(B, N, H * W, dvh), mk(2 * W - 1, dkh), mk(2 * H - 1, dkh)


def _grads(out, inputs, upstream):
    return torch.autograd.grad(out, inputs, upstream)


# (B, N_h, H, W, d_kh, d_vh): non-square maps; HW not a multiple of the query block (32 here) nor of the
# key block; W from 1 (R = 8 rows per key block) to 40 (one row of 64 columns); head dims 3, 5, 12, 17, 20.
SHAPES = [(2, 2, 3, 5, 4, 3), (1, 3, 7, 9, 5, 12), (2, 1, 3, 40, 17, 5), (1, 2, 11, 2, 3, 20), (1, 1, 6, 1, 8, 8),
          (1, 2, 5, 17, 12, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("rel", [True, False], ids=["relative", "content"])
def test_forward_and_five_gradients_match_the_reference(shape, rel):
    B, N, H, W, dk, dv = shape
    q, k, v, rw, rh = _inputs(B, N, H, W, dk, dv, seed=sum(shape))
    tables = (rw, rh) if rel else (None, None)
    ref = relative_attention(q, k, v, *tables, H, W, implementation="reference")
    out = relative_attention(q, k, v, *tables, H, W, implementation="triton")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    inputs = (q, k, v, rw, rh) if rel else (q, k, v)
    up = torch.randn_like(ref)
    for name, got, exp in zip("q k v rel_width rel_height".split(), _grads(out, inputs, up), _grads(ref, inputs, up)):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_kernel_gradients_of_the_offset_tables_match_autograd_of_the_dense_logits():
    """dr^W, dr^H straight from the kernel op (each dq program's share, summed in a fixed order) against autograd
    of a dense formula, on a map whose query blocks straddle rows (W = 6, blocks of 32 queries) and several
    batch-heads per dq program."""
    B, N, H, W, d = 3, 2, 7, 6, 5
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(B, N, H * W, d, generator=g).requires_grad_() for _ in range(3))
    rw = torch.randn(2 * W - 1, d, generator=g).requires_grad_()
    rh = torch.randn(2 * H - 1, d, generator=g).requires_grad_()
    xs, ys = torch.arange(W).repeat(H), torch.arange(H).repeat_interleave(W)
    ow = xs[None, :] - xs[:, None] + W - 1  # (L, L) offset row of r^W for query i, key j
    oh = ys[None, :] - ys[:, None] + H - 1
    logits = (q @ k.transpose(-1, -2) + torch.einsum("bnid,ijd->bnij", q, rw[ow])
              + torch.einsum("bnid,ijd->bnij", q, rh[oh])) * d ** -0.5
    ref = torch.softmax(logits, -1) @ v
    saved = dict(flash_relative.TUNING["bwd"])
    # on the CPU: one dq program per query block
    flash_relative.TUNING["bwd"].update(programs_per_sm=1, multirow_programs_per_sm=1)
    try:
        rows = flash_relative._geometry(H * W, H, W, True, flash_relative.TUNING["bwd"]["block_n"])[3]
        assert rows > 1
        assert flash_relative._groups(q, 2, B * N, True, rows) == B * N  # every batch-head in one program
        out = flash_relative.flash_relative_attention(q, k, v, rw, rh, H, W)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        up = torch.randn_like(ref)
        got = _grads(out, (q, k, v, rw, rh), up)
    finally:
        flash_relative.TUNING["bwd"].update(saved)
    for name, got_g, exp in zip("q k v r^W r^H".split(), got, _grads(ref, (q, k, v, rw, rh), up)):
        torch.testing.assert_close(got_g, exp, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_dq_programs_per_sm_follow_whether_a_key_block_holds_several_rows(monkeypatch):
    """TUNING's multirow_programs_per_sm applies where a key block holds several image rows, programs_per_sm
    elsewhere (the CPU counts as one SM: G is the largest divisor of B * N_h leaving that many programs)."""
    monkeypatch.setitem(flash_relative.TUNING, "bwd",
                        dict(flash_relative.TUNING["bwd"], programs_per_sm=2, multirow_programs_per_sm=6))
    q = torch.zeros(1)
    assert flash_relative._groups(q, 1, 12, True, rows=1) == 6
    assert flash_relative._groups(q, 1, 12, True, rows=2) == 2
    assert flash_relative._groups(q, 1, 12, False, rows=2) == 1  # content-only: no shares to group


def test_matches_the_brute_force_loop_on_a_non_square_map():
    q, k, v, rw, rh = _inputs(1, 2, 3, 5, 3, 2, seed=3)
    expected = brute_force_attention(q, k, v, rw, rh, 3, 5)
    got = relative_attention(q, k, v, rw, rh, 3, 5, implementation="triton")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    up = torch.randn_like(expected)
    for got_g, exp_g in zip(_grads(got, (q, k, v, rw, rh), up), _grads(expected, (q, k, v, rw, rh), up)):
        torch.testing.assert_close(got_g, exp_g, rtol=1e-4, atol=1e-5)


def test_backward_twice_gives_bitwise_equal_gradients():
    q, k, v, rw, rh = _inputs(2, 2, 7, 9, 5, 6, seed=11)
    up = torch.randn(2, 2, 63, 6)
    runs = [_grads(relative_attention(q, k, v, rw, rh, 7, 9, implementation="triton"), (q, k, v, rw, rh), up)
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_custom_op_passes_opcheck():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of the custom op."""
    B, N, H, W, d = 1, 2, 3, 4, 4
    g = torch.Generator().manual_seed(5)
    # q, k, v as the AA layer passes them: head views of one (B, HW, 3 * N * d) projection (not contiguous)
    qkv = torch.randn(B, H * W, 3 * N * d, generator=g)
    q, k, v = (t.unflatten(-1, (N, d)).transpose(1, 2).detach().requires_grad_() for t in qkv.split(N * d, -1))
    assert not q.is_contiguous()
    rw = torch.randn(2 * W - 1, d, generator=g, requires_grad=True)
    rh = torch.randn(2 * H - 1, d, generator=g, requires_grad=True)
    for tables in ((rw, rh), (None, None)):
        torch.library.opcheck(flash_relative._fwd_op, (q, k, v, *tables, H, W, 0.5))
        o, lse = flash_relative._fwd_op(q, k, v, *tables, H, W, 0.5)
        do = torch.randn(o.shape, generator=g)
        plain = [t.detach() if t is not None else None for t in (q, k, v, *tables)]
        torch.library.opcheck(flash_relative._bwd_op, (do, *plain, o.detach(), lse.detach(), H, W, 0.5))


def test_augmented_conv_compiles_without_a_graph_break():
    layer = AugmentedConv2d(6, 8, 3, kappa=0.5, upsilon=0.5, num_heads=2, pos_enc="relative",
                            feature_size=(5, 7), attention_impl="triton")
    x = torch.randn(2, 6, 5, 7)
    explanation = torch._dynamo.explain(layer)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("build", [
    *(pytest.param(lambda pe=pe: A.aa_resnet18(num_classes=4, kappa=0.5, num_heads=2, pos_enc=pe, stages=(3, 4),
                                                 small_input=True, input_size=16, attention_impl="triton"),
                   id=f"aa_resnet18-{pe}") for pe in ("relative", "none", "sine2d", "coordconv")),
    pytest.param(lambda: A.aa_wide_resnet28_10(num_classes=4, kappa=0.25, num_heads=2, input_size=8,
                                               attention_impl="triton"), id="aa_wide_resnet28_10"),
])
def test_aa_networks_trace_whole_under_torch_compile(build):
    """`compile: true` sees one graph per AA network: no graph break at the custom op or in the layer."""
    explanation = torch._dynamo.explain(build())(torch.randn(1, 3, 16, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("pos_enc", ["relative", "none", "sine2d"])
def test_augmented_conv_triton_equals_reference(pos_enc):
    torch.manual_seed(0)
    ref_layer = AugmentedConv2d(6, 8, 3, kappa=0.5, upsilon=0.5, num_heads=2, pos_enc=pos_enc, feature_size=(5, 7),
                                attention_impl="reference")
    tri_layer = AugmentedConv2d(6, 8, 3, kappa=0.5, upsilon=0.5, num_heads=2, pos_enc=pos_enc, feature_size=(5, 7),
                                attention_impl="triton")
    tri_layer.load_state_dict(ref_layer.state_dict())
    x = torch.randn(2, 6, 5, 7)
    ref, out = ref_layer(x), tri_layer(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    ref.square().sum().backward()
    out.square().sum().backward()
    for (name, p_ref), p_tri in zip(ref_layer.named_parameters(), tri_layer.parameters()):
        torch.testing.assert_close(p_tri.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_dkdv_blocks_of_their_own_size_give_the_same_gradients():
    """The dk/dv kernel may cut keys into blocks of other row counts than the dq kernel (TUNING['dkdv']); the
    column logits it reads from the dq kernel are per key column, so gradients must not change."""
    q, k, v, rw, rh = _inputs(1, 2, 9, 6, 5, 4, seed=13)
    up = torch.randn(1, 2, 54, 4)
    base = _grads(relative_attention(q, k, v, rw, rh, 9, 6, implementation="triton"), (q, k, v, rw, rh), up)
    saved = dict(flash_relative.TUNING["dkdv"])
    flash_relative.TUNING["dkdv"]["block_n"] = 16  # 2 rows of 8 per key block instead of 8 rows
    try:
        other = _grads(relative_attention(q, k, v, rw, rh, 9, 6, implementation="triton"), (q, k, v, rw, rh), up)
    finally:
        flash_relative.TUNING["dkdv"].update(saved)
    for name, x, y in zip("q k v r^W r^H".split(), base, other):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


def test_kernel_parts_variants_still_patch_the_kernel_source():
    """benchmarks/kernel_parts.py times variants of the kernels made by patching their source text: each patch must
    still find its text (a kernel edit that moves it makes the benchmark refuse the variant)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_parts.py"
    spec = importlib.util.spec_from_file_location("kernel_parts_under_test", path)
    kernel_parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel_parts)
    for name, patches in kernel_parts.ABLATIONS.items():
        module = kernel_parts.patched_kernels(patches)
        assert hasattr(module, "_bwd_dq_kernel"), name


@pytest.fixture
def gpu_launch(monkeypatch):
    """The interpreter runs the block sizes, launch options and dq batch-head groups an H100/H200 (132 SMs) gets."""
    monkeypatch.setattr(flash_relative, "GPU_LAUNCH_IN_INTERPRETER", True)
    monkeypatch.setattr(flash_relative, "INTERPRETER_SMS", 132)


# (B, N_h, H, W, d_k, d_v per head, relative): shapes that crashed or gave wrong numbers on an H200 (d_k != d_v per
# head), at smaller B * N_h; benchmarks/kernel_sweep.py --cases issue runs them at B 8, N_h 8 on the GPU
GPU_FAILED = [(1, 2, 28, 28, 20, 4, True), (1, 2, 28, 28, 20, 4, False), (2, 2, 14, 14, 20, 4, True),
              (2, 2, 14, 14, 40, 8, True), (2, 2, 7, 7, 20, 8, True), (1, 2, 7, 7, 8, 40, True)]


@pytest.mark.parametrize("shape", GPU_FAILED, ids=lambda s: "x".join(map(str, s[:6])) + ("-rel" if s[6] else ""))
def test_unequal_head_depths_at_the_gpu_launch_configuration(shape, gpu_launch):
    B, N, H, W, dk, dv, rel = shape
    q, k, v, rw, rh = _inputs(B, N, H, W, dk, dv, seed=dk * dv + H)
    tables = (rw, rh) if rel else (None, None)
    ref = relative_attention(q, k, v, *tables, H, W, implementation="reference")
    out = relative_attention(q, k, v, *tables, H, W, implementation="triton")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    inputs = (q, k, v, rw, rh) if rel else (q, k, v)
    up = torch.randn_like(ref)
    for name, got, exp in zip("q k v rel_width rel_height".split(), _grads(out, inputs, up), _grads(ref, inputs, up)):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_a_call_the_kernels_do_not_take_runs_the_reference_with_one_warning(monkeypatch):
    """Head depths over MAX_HEAD_DIM (and maps over MAX_SIDE with relative logits) never reach the kernels."""
    import warnings
    from aa_modules import attention
    monkeypatch.setattr(attention, "_WARNED", set())
    launched = []
    monkeypatch.setattr(flash_relative, "_forward", lambda *a: launched.append(a))
    dk = flash_relative.MAX_HEAD_DIM + 1
    q, k, v, rw, rh = _inputs(1, 1, 2, 3, dk, 4, seed=1)
    wide = _inputs(1, 1, 1, flash_relative.MAX_SIDE + 1, 4, 4, seed=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            out = relative_attention(q, k, v, rw, rh, 2, 3, implementation="triton")
            torch.testing.assert_close(out, relative_attention(q, k, v, rw, rh, 2, 3, implementation="reference"))
        relative_attention(*wide, 1, flash_relative.MAX_SIDE + 1, implementation="triton")
    assert not launched
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 2, messages
    assert f"head depths d_k {dk}" in messages[0] and "reference" in messages[0]
    assert f"1 x {flash_relative.MAX_SIDE + 1} map" in messages[1]
    assert flash_relative.unsupported(q[..., :4], v, True, 2, 3) is None


@pytest.mark.parametrize("dk,dv,block", [(20, 4, 32), (4, 20, 32), (40, 8, 64), (16, 4, 16), (1, 1, 16), (65, 3, 128)])
def test_key_and_value_depths_share_one_block(dk, dv, block):
    """The GPU launch pads d_k and d_v to one block (the larger power of two): the launch with two blocks is wrong on
    Hopper while the interpreter computes it right, so CI pins the launch itself."""
    assert flash_relative._head_blocks(dk, dv) == (block, block)
