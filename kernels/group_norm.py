"""GroupNorm with an optional fused SiLU, in the input's layout (NCHW or channels-last).

Backends: ``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``; kernels in ``_group_norm_triton``)
and ``torch`` (the twin :func:`~iso3d.kernels.reference.group_norm_ref`).
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

from ._backends import cdiv, select_backend, triton_device_reasons
from .reference import group_norm_ref

__all__ = ["group_norm"]

# BLOCK_HW · BLOCK_C per program and warps of the four streaming kernels. Untuned: chosen for sm_90a
# registers (compile_check: ≤ 48 per thread, so ~40 warps per SM can hide memory latency; 4096 at 4
# warps took 100-165) and 8 bf16 values per thread per load (one 16-byte access).
TILE_ELEMENTS = 2048
NUM_WARPS = 8
# Channels per tile: channels-last rows are C-contiguous, so 64 channels (128 bytes of bf16) per
# position; NCHW rows are HW-contiguous, so few channels and long runs of positions (256 bytes).
MAX_BLOCK_C = {"channels_fastest": 64, "positions_fastest": 16}
FINALIZE_BLOCK_K = 32


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _as_n_hw_c(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``t [N, C, *spatial]`` and its element strides as ``(n, c, hw)``: the spatial axes must flatten
    to one stride (true of NCHW- and channels-last-contiguous tensors); otherwise a contiguous copy."""
    n_stride, c_stride, *spatial = t.stride()
    sizes = t.shape[2:]
    dims = [(size, stride) for size, stride in zip(sizes, spatial) if size != 1]
    flat = all(dims[i][1] == dims[i + 1][1] * dims[i + 1][0] for i in range(len(dims) - 1))
    if not flat:
        t = t.contiguous()
        return _as_n_hw_c(t)
    hw_stride = dims[-1][1] if dims else 1
    return t, (n_stride, c_stride, hw_stride)


@functools.lru_cache(maxsize=None)
def _target_programs(device: torch.device) -> int:
    """How many (sample, chunk, channel-block) programs the reductions aim for: 4 per SM on a GPU; a
    few under the interpreter (tests raise it to exercise many chunks)."""
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _layout(n: int, c: int, hw: int, device: torch.device, channels_fastest: bool = True) -> dict:
    """Tile and chunking of a launch: enough (sample, chunk, channel-block) programs to fill the GPU."""
    block_c = min(_next_pow2(c), MAX_BLOCK_C["channels_fastest" if channels_fastest else "positions_fastest"])
    block_hw = max(16, min(TILE_ELEMENTS // block_c, _next_pow2(hw)))
    c_blocks = cdiv(c, block_c)
    target = _target_programs(device)
    n_chunks = max(1, min(cdiv(hw, block_hw), cdiv(target, n * c_blocks)))
    chunk = cdiv(cdiv(hw, n_chunks), block_hw) * block_hw
    return dict(block_c=block_c, block_hw=block_hw, c_blocks=c_blocks, chunk=chunk, n_chunks=cdiv(hw, chunk))


def _launch_forward(x, weight, bias, groups: int, eps: float, silu: bool):
    from . import _group_norm_triton as tk

    n, c = x.shape[:2]
    hw = x[0, 0].numel()
    x, (sxn, sxc, sxhw) = _as_n_hw_c(x)
    lay = _layout(n, c, hw, x.device, channels_fastest=sxc == 1)
    f32 = dict(device=x.device, dtype=torch.float32)
    mean_p = torch.empty(n * lay["n_chunks"], c, **f32)
    m2_p = torch.empty_like(mean_p)
    tk._stats_kernel[(n * lay["n_chunks"], lay["c_blocks"])](
        x, mean_p, m2_p, c, hw, lay["chunk"], lay["n_chunks"], sxn, sxc, sxhw,
        BLOCK_HW=lay["block_hw"], BLOCK_C=lay["block_c"], num_warps=NUM_WARPS)
    mean = torch.empty(n * groups, **f32)
    rstd = torch.empty_like(mean)
    cpg = c // groups
    tk._finalize_stats_kernel[(n * groups,)](
        mean_p, m2_p, mean, rstd, c, hw, lay["chunk"], lay["n_chunks"], cpg, groups, eps, float(hw * cpg),
        BLOCK_K=FINALIZE_BLOCK_K, BLOCK_CPG=_next_pow2(cpg))
    y = torch.empty_like(x)  # keeps x's layout (x is dense here)
    _, (syn, syc, syhw) = _as_n_hw_c(y)
    n_tiles = cdiv(hw, lay["block_hw"])
    tk._apply_kernel[(n * n_tiles, lay["c_blocks"])](
        x, y, mean, rstd, weight, bias, c, hw, cpg, groups, n_tiles, sxn, sxc, sxhw, syn, syc, syhw,
        SILU=silu, BLOCK_HW=lay["block_hw"], BLOCK_C=lay["block_c"], num_warps=NUM_WARPS)
    return x, y, mean, rstd


def _launch_backward(x, dy, mean, rstd, weight, bias, groups: int, silu: bool, need_affine_grads: bool):
    from . import _group_norm_triton as tk

    n, c = x.shape[:2]
    hw = x[0, 0].numel()
    x, (sxn, sxc, sxhw) = _as_n_hw_c(x)
    dy, (sdn, sdc, sdhw) = _as_n_hw_c(dy)
    lay = _layout(n, c, hw, x.device, channels_fastest=sxc == 1)
    cpg = c // groups
    p1 = torch.empty(n * lay["n_chunks"], c, device=x.device, dtype=torch.float32)
    p2 = torch.empty_like(p1)
    tk._bwd_partials_kernel[(n * lay["n_chunks"], lay["c_blocks"])](
        x, dy, mean, rstd, weight, bias, p1, p2, c, hw, lay["chunk"], lay["n_chunks"], cpg, groups,
        sxn, sxc, sxhw, sdn, sdc, sdhw, SILU=silu, BLOCK_HW=lay["block_hw"], BLOCK_C=lay["block_c"], num_warps=NUM_WARPS)
    s1 = torch.empty_like(mean)
    s2 = torch.empty_like(mean)
    tk._finalize_bwd_kernel[(n * groups,)](
        p1, p2, weight, s1, s2, c, lay["n_chunks"], cpg, groups, BLOCK_K=FINALIZE_BLOCK_K, BLOCK_CPG=_next_pow2(cpg))
    dx = torch.empty_like(x)
    _, (sxn2, sxc2, sxhw2) = _as_n_hw_c(dx)
    n_tiles = cdiv(hw, lay["block_hw"])
    tk._bwd_apply_kernel[(n * n_tiles, lay["c_blocks"])](
        x, dy, dx, mean, rstd, weight, bias, s1, s2, c, hw, cpg, groups, n_tiles, float(hw * cpg),
        sxn, sxc, sxhw, sdn, sdc, sdhw, sxn2, sxc2, sxhw2,
        SILU=silu, BLOCK_HW=lay["block_hw"], BLOCK_C=lay["block_c"], num_warps=NUM_WARPS)
    if not need_affine_grads:
        return dx, None, None
    return dx, p2.sum(0), p1.sum(0)  # dw = Σ dz·x̂, dβ = Σ dz, over samples and positions


class _GroupNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps, silu):
        x, y, mean, rstd = _launch_forward(x, weight, bias, groups, eps, silu)
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.groups, ctx.silu = groups, silu
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        dx, dw, db = _launch_backward(x, dy, mean, rstd, weight, bias, ctx.groups, ctx.silu, want_w or want_b)
        return (dx if want_x else None, dw.to(weight.dtype) if want_w else None,
                db.to(bias.dtype) if want_b else None, None, None, None)


def _check(x, num_groups, weight, bias, eps, silu):
    op = "group_norm"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(f"{op}: x must have shape [N, C, *spatial] with no empty axis, got {tuple(x.shape)}")
    if not x.is_floating_point() or x.dtype == torch.float64:
        raise TypeError(f"{op}: x must be float32, float16 or bfloat16, got {x.dtype}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or x.shape[1] % num_groups:
        raise ValueError(f"{op}: num_groups must be a positive int dividing the {x.shape[1]} channels, got {num_groups!r}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.shape != (x.shape[1],):
            raise ValueError(f"{op}: {name} must have shape [C] = [{x.shape[1]}], got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"{op}: eps must be a positive number, got {eps!r}")
    if not isinstance(silu, bool):
        raise TypeError(f"{op}: silu must be a bool, got {silu!r}")


def group_norm(
    x: torch.Tensor,  # [N, C, *spatial] float32 / float16 / bfloat16, NCHW or channels-last
    num_groups: int,
    weight: torch.Tensor | None = None,  # [C]
    bias: torch.Tensor | None = None,  # [C]
    eps: float = 1e-5,
    *,
    silu: bool = False,
    backend: str = "auto",
) -> torch.Tensor:  # [N, C, *spatial], x's dtype and layout
    """``torch.nn.functional.group_norm``, optionally followed by SiLU in the same pass.

    .. math::  \\mu_{ng} = \\frac{1}{M}\\sum_{c \\in g,\\,s} x_{ncs},\\qquad
               \\sigma^2_{ng} = \\frac{1}{M}\\sum_{c \\in g,\\,s} (x_{ncs} - \\mu_{ng})^2,\\qquad
               y_{ncs} = \\mathrm{act}\\Big(\\frac{x_{ncs} - \\mu_{ng}}{\\sqrt{\\sigma^2_{ng} + \\epsilon}}\\,w_c + b_c\\Big)

    with ``M = (C / G)·∏ spatial`` and ``act(z) = z·sigmoid(z)`` when ``silu`` (else identity).
    Statistics and arithmetic are fp32; the output is rounded once to ``x``'s dtype. Differentiable
    in ``x``, ``weight`` and ``bias`` (first order).

    Unlike PyTorch's CUDA GroupNorm (up to at least 2.11), the output keeps a channels-last input's
    layout, so a channels-last network pays no layout conversion around its norms.

    Args:
        x: ``[N, C, *spatial]`` input. num_groups: ``G``, dividing ``C``.
        weight, bias: ``[C]`` affine parameters (None: 1 and 0). eps: added to the variance.
        silu: apply SiLU to the normalized output (a GroupNorm → SiLU pair in one op).
        backend: ``"auto"`` (triton on CUDA, torch on CPU), ``"triton"`` or ``"torch"``.

    Example:
        >>> import torch
        >>> from iso3d.kernels.group_norm import group_norm
        >>> x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
        >>> y = group_norm(x, 4, torch.ones(8), torch.zeros(8), silu=True)
        >>> torch.allclose(y, torch.nn.functional.silu(torch.nn.functional.group_norm(x, 4)), atol=1e-6)
        True
    """
    _check(x, num_groups, weight, bias, eps, silu)
    reasons = {"triton": triton_device_reasons(x.device, x.dtype), "torch": []}
    if x.numel() >= 2**31:  # the kernels' offsets are int32
        reasons["triton"].append(f"x has {x.numel()} elements; the kernels index at most 2^31 - 1")
    order = ["triton", "torch"] if x.device.type == "cuda" else ["torch"]
    if select_backend("group_norm", backend, reasons, order) == "torch":
        return group_norm_ref(x, num_groups, weight, bias, eps, silu=silu)
    c = x.shape[1]  # absent affine parameters: constants, which need no gradient
    weight = torch.ones(c, device=x.device, dtype=torch.float32) if weight is None else weight
    bias = torch.zeros(c, device=x.device, dtype=torch.float32) if bias is None else bias
    return _GroupNormFunction.apply(x, weight.contiguous(), bias.contiguous(), num_groups, float(eps), silu)
