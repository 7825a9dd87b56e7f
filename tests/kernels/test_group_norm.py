"""GroupNorm (+ fused SiLU): Triton vs the PyTorch twin vs a float64 reference, in both layouts."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from iso3d.kernels import BackendUnavailableError
from iso3d.kernels.group_norm import group_norm
from iso3d.kernels.reference import group_norm_ref

gn_module = importlib.import_module("iso3d.kernels.group_norm")  # the module (the package exports the function)
LOW_PRECISION = [torch.float16, torch.bfloat16]


def _inputs(shape, dtype, device, seed, channels_last=False, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(*shape, generator=gen) * 2 + offset).to(device, dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = (1 + 0.5 * torch.randn(c, generator=gen)).to(device, dtype)
    bias = (0.5 * torch.randn(c, generator=gen)).to(device, dtype)
    dy = torch.randn(*shape, generator=gen).to(device, dtype)
    return x, weight, bias, dy


def _run(fn, x, weight, bias, dy, groups, silu):
    """Output and the gradients of x, weight and bias for cotangent ``dy``."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    y = fn(*leaves[:1], groups, *leaves[1:], silu=silu)
    return [y, *torch.autograd.grad(y, leaves, dy.to(y.dtype))]


def _native(x, groups, weight, bias, *, silu):
    """PyTorch's own GroupNorm (→ SiLU) in x's dtype: the low-precision error a user accepts today."""
    y = F.group_norm(x, groups, weight, bias, 1e-5)
    return F.silu(y) if silu else y


FP32_EPS = torch.finfo(torch.float32).eps


def _affine_magnitude(x, weight, bias, groups):
    """max |x·a| + |μ·a| + |β| over the elements, with a = rstd·w per channel (float64 inputs)."""
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    mean, var = xg.mean(-1), xg.var(-1, unbiased=False)
    a = (var + 1e-5).rsqrt().repeat_interleave(c // groups, 1) * weight  # [N, C]
    mean_c = mean.repeat_interleave(c // groups, 1)
    spatial = [1] * (x.dim() - 2)
    terms = x.abs() * a.abs().view(n, c, *spatial) + (mean_c * a).abs().view(n, c, *spatial) + bias.abs().view(1, c, *spatial)
    return terms.max().item()


def _errors(got, want):
    return [(g.double() - w.double()).abs().max().item() for g, w in zip(got, want)]


def test_twin_is_group_norm_then_silu():
    x, w, b, _ = _inputs((2, 6, 4, 3), torch.float64, "cpu", seed=0)
    want = F.silu(F.group_norm(x, 3, w, b, 1e-5))
    torch.testing.assert_close(group_norm_ref(x, 3, w, b, silu=True), want, rtol=0, atol=0)
    torch.testing.assert_close(group_norm_ref(x, 3, w, b), F.group_norm(x, 3, w, b, 1e-5), rtol=0, atol=0)


# Odd channel counts and spatial sizes, 1D/2D spatial, one and several channel blocks (BLOCK_C ≤ 64)
# and several tiles of positions per program; channels-last only where it exists (4D).
SHAPES = [((2, 8, 5, 7), 4, False), ((2, 8, 5, 7), 4, True), ((3, 96, 9, 11), 32, False), ((3, 96, 9, 11), 32, True),
          ((1, 6, 100), 3, False), ((2, 12, 1, 1), 6, True), ((1, 4, 33, 17), 1, False), ((1, 4, 33, 17), 1, True),
          ((3, 8, 1, 1), 8, False)]  # HW = C/G = 1: on a GPU, Triton specializes integer arguments equal to 1


@pytest.mark.parametrize("silu", [False, True], ids=["plain", "silu"])
@pytest.mark.parametrize("shape, groups, channels_last", SHAPES, ids=str)
def test_triton_matches_twin_fp32(shape, groups, channels_last, silu, device):
    seed = sum(shape) + groups
    x, w, b, dy = _inputs(shape, torch.float32, device, seed, channels_last)
    got = _run(lambda *a, **k: group_norm(*a, **k, backend="triton"), x, w, b, dy, groups, silu)
    twin = _run(group_norm_ref, x, w, b, dy, groups, silu)
    exact = _run(group_norm_ref, *(t.double() for t in (x, w, b, dy)), groups, silu)
    if channels_last:
        assert got[0].is_contiguous(memory_format=torch.channels_last), "the output keeps the input's layout"
        assert got[1].is_contiguous(memory_format=torch.channels_last), "so does the input's gradient"
    # The kernel applies y = x·a + (β − μ·a) with a = rstd·w, as PyTorch's CUDA GroupNorm does; its
    # rounding is relative to |x·a| + |μ·a| + |β|, which exceeds |y| when a group's variance is tiny
    # (a group of one element: rstd = 1/√eps ≈ 316). With FMA (a GPU) the two products no longer cancel.
    affine = _affine_magnitude(*(t.double() for t in (x, w, b)), groups)
    for name, g, t, e, err, twin_err in zip(["y", "dx", "dw", "db"], got, twin, exact, _errors(got, exact), _errors(twin, exact)):
        assert g.shape == t.shape and g.dtype == t.dtype, name
        scale = e.abs().max().item()
        # fp32 arithmetic in both, summed in different orders: a few times the twin's own rounding error
        bound = 4 * twin_err + 1e-6 * (1 + scale) + (4 * FP32_EPS * affine if name == "y" else 0.0)
        assert err <= bound, f"{name}: kernel error {err:.3g}, twin's {twin_err:.3g}"


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape, groups", [((2, 8, 5, 7), 4), ((3, 96, 9, 11), 32)], ids=str)
def test_triton_low_precision_error_at_most_pytorchs(shape, groups, channels_last, dtype, device):
    # flash-attention's criterion: against a float64 reference on the same (rounded) inputs, the
    # kernel's error is at most a small multiple of PyTorch's own GroupNorm → SiLU in that dtype.
    x, w, b, dy = _inputs(shape, dtype, device, seed=7 + groups, channels_last=channels_last)
    got = _run(lambda *a, **k: group_norm(*a, **k, backend="triton"), x, w, b, dy, groups, True)
    native = _run(_native, x, w, b, dy, groups, True)
    exact = _run(group_norm_ref, *(t.double() for t in (x, w, b, dy)), groups, True)
    for name, g, err, native_err in zip(["y", "dx", "dw", "db"], got, _errors(got, exact), _errors(native, exact)):
        assert g.dtype == dtype, name
        assert err <= 2 * native_err + 1e-6, f"{name}: kernel error {err:.3g}, PyTorch's {native_err:.3g}"


def test_many_chunks_and_a_large_mean_stay_exact(monkeypatch, device):
    # Small tiles and many programs: > 32 chunks per sample (the finalize kernels loop over blocks of
    # chunks), one tile each. A mean 300× the spread would cancel in E[x²] − E[x]²; Chan's merge does not.
    monkeypatch.setattr(gn_module, "TILE_ELEMENTS", 64)
    monkeypatch.setattr(gn_module, "_target_programs", lambda device: 1000)
    x, w, b, dy = _inputs((2, 4, 29, 31), torch.float32, device, seed=3, offset=600.0)
    assert gn_module._layout(2, 4, 29 * 31, x.device)["n_chunks"] > gn_module.FINALIZE_BLOCK_K
    got = _run(lambda *a, **k: group_norm(*a, **k, backend="triton"), x, w, b, dy, 2, True)
    exact = _run(group_norm_ref, *(t.double() for t in (x, w, b, dy)), 2, True)
    twin = _run(group_norm_ref, x, w, b, dy, 2, True)
    for name, err, twin_err in zip(["y", "dx", "dw", "db"], _errors(got, exact), _errors(twin, exact)):
        assert err <= 4 * twin_err + 1e-5, f"{name}: kernel error {err:.3g}, twin's {twin_err:.3g}"


def test_cotangent_and_input_in_different_layouts(device):
    # Autograd may hand a channels-last output an NCHW cotangent (and a non-dense input is copied).
    x, w, b, dy = _inputs((2, 8, 6, 5), torch.float32, device, seed=5, channels_last=True)
    got = _run(lambda *a, **k: group_norm(*a, **k, backend="triton"), x, w, b, dy.contiguous(), 4, True)
    want = _run(group_norm_ref, x, w, b, dy, 4, True)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    strided = torch.randn(2, 8, 12, 5, device=device)[:, :, ::2]  # spatial axes that do not flatten
    torch.testing.assert_close(group_norm(strided, 4, backend="triton"), group_norm_ref(strided, 4), atol=1e-5, rtol=1e-5)
    # y.sum().backward() hands an expanded cotangent (all strides 0)
    leaves = [x.detach().clone().requires_grad_() for _ in range(2)]
    group_norm(leaves[0], 4, w, b, silu=True, backend="triton").sum().backward()
    group_norm_ref(leaves[1], 4, w, b, silu=True).sum().backward()
    torch.testing.assert_close(leaves[0].grad, leaves[1].grad, atol=1e-5, rtol=1e-5)


def test_without_affine_parameters(device):
    x, _, _, dy = _inputs((2, 6, 7, 3), torch.float32, device, seed=9)
    leaf = x.clone().requires_grad_()
    y = group_norm(leaf, 3, silu=True, backend="triton")
    (dx,) = torch.autograd.grad(y, leaf, dy)
    ref_leaf = x.clone().requires_grad_()
    want = F.silu(F.group_norm(ref_leaf, 3))
    (want_dx,) = torch.autograd.grad(want, ref_leaf, dy)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, want_dx, atol=1e-5, rtol=1e-5)


def test_auto_backend_on_cpu_is_the_twin():
    x, w, b, _ = _inputs((1, 4, 3, 3), torch.float32, "cpu", seed=1)
    torch.testing.assert_close(group_norm(x, 2, w, b, silu=True), group_norm_ref(x, 2, w, b, silu=True), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=[1.0]), TypeError, "x must be a torch.Tensor"),
        (dict(x=torch.zeros(4)), ValueError, r"\[N, C, \*spatial\]"),
        (dict(x=torch.zeros(2, 4, 0)), ValueError, "no empty axis"),
        (dict(x=torch.zeros(2, 4, 3, dtype=torch.int64)), TypeError, "float32, float16 or bfloat16"),
        (dict(num_groups=3), ValueError, "num_groups must be a positive int dividing the 4 channels"),
        (dict(num_groups=True), ValueError, "num_groups"),
        (dict(weight=torch.ones(3)), ValueError, r"weight must have shape \[C\] = \[4\]"),
        (dict(bias=torch.ones(4, dtype=torch.int64)), TypeError, "bias must be a floating-point tensor"),
        (dict(weight=[1.0] * 4), TypeError, "weight must be a torch.Tensor or None"),
        (dict(eps=0.0), ValueError, "eps must be a positive number"),
        (dict(silu=1), TypeError, "silu must be a bool"),
        (dict(backend="cuda"), ValueError, "backend must be 'auto' or one of"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    args = dict(x=torch.zeros(2, 4, 3), num_groups=2, weight=None, bias=None, eps=1e-5, silu=False, backend="torch")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        group_norm(**args)


def test_refusal_lists_reasons(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # as if the interpreter were off: Triton cannot run on CPU
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        group_norm(torch.zeros(1, 2, 3), 1, backend="triton")
