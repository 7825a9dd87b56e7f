"""Multiresolution hash encoding (tiny-cuda-nn ``HashGrid`` semantics) — the public op.

Backends: ``tcnn`` (tiny-cuda-nn, when importable and the input is on CUDA), ``triton`` (CUDA, or
CPU under ``TRITON_INTERPRET=1``), ``torch`` (the twin :func:`~iso3d.kernels.reference.hash_grid_encode_ref`).
All three read the same flat parameter vector laid out as tcnn does (level after level, rows of F
features), so weights trained by one backend give the same features in another.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ._backends import cdiv, select_backend, triton_device_reasons
from .hash_grid_config import HashGridConfig
from .reference import hash_grid_encode_ref, hash_grid_encode_with_jacobian_ref
from iso3d.utils.imports import probe

__all__ = ["TOLERANCES", "HashGridConfig", "hash_grid_backend_reasons", "hash_grid_encode",
           "hash_grid_encode_with_jacobian", "init_hash_grid_params"]

# Agreement expected between backends, per table dtype. Features are trilinear blends of table rows
# computed in fp32 (same formula, possibly different fma contraction): a few fp32 ulps; fp16 tables
# round the result to fp16 (eps 2^-10); table gradients sum atomically in any order (fp32).
TOLERANCES = {
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
}

BLOCK = 128  # points per program
_AUTO_ORDER = ["tcnn", "triton", "torch"]


def init_hash_grid_params(config: HashGridConfig, *, generator: torch.Generator | None = None,
                          device=None, dtype=torch.float32) -> torch.Tensor:
    """tcnn's initialization: uniform in [-1e-4, 1e-4], ``config.n_params`` values."""
    params = torch.rand(config.n_params, generator=generator, dtype=torch.float32) * 2e-4 - 1e-4
    return params.to(device=device, dtype=dtype)


def _level_tables(config: HashGridConfig, device: torch.device):
    levels = config.levels
    return (
        torch.tensor([lvl.scale for lvl in levels], dtype=torch.float32, device=device),
        torch.tensor([lvl.resolution for lvl in levels], dtype=torch.int64, device=device),
        torch.tensor([lvl.offset for lvl in levels], dtype=torch.int64, device=device),
        torch.tensor([lvl.size for lvl in levels], dtype=torch.int64, device=device),
    )


def _launch_backward(ctx, kernel, *grads, extra_args=(), constexprs=None):
    """Both Functions' backward: fp32 buffers for the gradients asked for (atomics accumulate in
    fp32), one launch of ``kernel(x, table, *grads, dtable, dx, …, n_points, *extra_args)``, the
    table gradient cast back."""
    x, table = ctx.saved_tensors[:2]
    config = ctx.config
    need_dx, need_dtable = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dtable = torch.zeros(table.shape, device=table.device, dtype=torch.float32) if need_dtable else table
    dx = torch.zeros(x.shape, device=x.device, dtype=torch.float32) if need_dx else x  # unused pointer if not
    grid = (cdiv(x.shape[0], BLOCK), config.n_levels)
    kernel[grid](
        x, table, *(g.contiguous() for g in grads), dtable, dx, *_level_tables(config, x.device), x.shape[0], *extra_args,
        N_LEVELS=config.n_levels, F=config.n_features_per_level, BLOCK=BLOCK,
        NEED_DTABLE=need_dtable, NEED_DX=need_dx, **(constexprs or {}),
    )
    return (dx if need_dx else None), (dtable.to(table.dtype) if need_dtable else None), None


def axis_major_strides(config: HashGridConfig) -> tuple[int, int, int]:
    """Element strides (axis, level, point) of J stored as ``[P, 3, L·F]``."""
    return config.n_output_dims, config.n_features_per_level, 3 * config.n_output_dims


class _HashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, config):
        from . import _hash_grid_triton as tk

        meta = _level_tables(config, x.device)
        out = torch.empty(x.shape[0], config.n_output_dims, device=x.device, dtype=table.dtype)
        grid = (cdiv(x.shape[0], BLOCK), config.n_levels)
        tk._hash_grid_fwd_kernel[grid](x, table, out, *meta, x.shape[0], N_LEVELS=config.n_levels,
                                       F=config.n_features_per_level, BLOCK=BLOCK)
        ctx.save_for_backward(x, table)
        ctx.config = config
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        from . import _hash_grid_triton as tk

        return _launch_backward(ctx, tk._hash_grid_bwd_kernel, dout)


class _HashGridJacobianFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, config):
        from . import _hash_grid_triton as tk

        n_out = config.n_output_dims
        out = torch.empty(x.shape[0], n_out, device=x.device, dtype=table.dtype)
        jac = torch.empty(x.shape[0], 3, n_out, device=x.device, dtype=table.dtype)  # axis-major: see the kernel
        grid = (cdiv(x.shape[0], BLOCK), config.n_levels)
        tk._hash_grid_jac_fwd_kernel[grid](x, table, out, jac, *_level_tables(config, x.device), x.shape[0],
                                           *axis_major_strides(config), N_LEVELS=config.n_levels,
                                           F=config.n_features_per_level, BLOCK=BLOCK)
        ctx.save_for_backward(x, table)
        ctx.config = config
        return out, jac

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, djac):
        from . import _hash_grid_triton as tk

        djac = djac.contiguous()  # also stands in for the unused DG pointer
        return _launch_backward(ctx, tk._hash_grid_jac_bwd_kernel, dout, djac, djac,
                                extra_args=axis_major_strides(ctx.config),
                                constexprs=dict(DJAC_OUTER=False))


def _tcnn_encode(x, table, config):
    import tinycudann as tcnn

    # tcnn's torch module keeps a native encoding; its autograd function takes the parameters as an
    # argument, so our table (same layout) trains through it.
    encoding = tcnn.Encoding(3, config.to_tcnn(), dtype=table.dtype)
    return tcnn.modules._module_function.apply(encoding.native_tcnn_module, x, table, encoding.loss_scale)


def _check_inputs(x, table, config, check_range, op="hash_grid_encode"):
    if not isinstance(config, HashGridConfig):
        raise TypeError(f"{op}: config must be a HashGridConfig, got {type(config).__name__}")
    for name, t in (("x", x), ("table", table)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 2 or x.shape[-1] != 3:
        raise ValueError(f"{op}: x must have shape [P, 3], got {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise TypeError(f"{op}: x must be float32 (points in [0, 1]^3), got {x.dtype}; use x.float()")
    if table.dim() != 1 or table.shape[0] != config.n_params:
        raise ValueError(f"{op}: table must have shape [{config.n_params}] for this config, got {tuple(table.shape)}")
    if table.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"{op}: table must be float32 or float16, got {table.dtype}")
    if table.device != x.device:
        raise ValueError(f"{op}: table is on {table.device} but x is on {x.device}")
    if check_range and x.numel():
        lo, hi = torch.aminmax(x.detach())
        if not (lo.item() >= 0.0 and hi.item() <= 1.0):
            raise ValueError(
                f"{op}: x must lie in [0, 1]^3 (map your AABB first), got values in [{lo.item():.4g}, {hi.item():.4g}]"
            )


def hash_grid_backend_reasons(x: torch.Tensor, table: torch.Tensor) -> dict[str, list[str]]:
    """Why each backend cannot run (empty list: it can)."""
    tcnn_reasons = []
    ok, why = probe("tinycudann")
    if not ok:
        tcnn_reasons.append(why)
    if x.device.type != "cuda":
        tcnn_reasons.append("tiny-cuda-nn needs CUDA tensors")
    return {"tcnn": tcnn_reasons, "triton": triton_device_reasons(x.device, table.dtype), "torch": []}


def hash_grid_encode(
    x: torch.Tensor,  # [P, 3] float32 in [0, 1]
    table: torch.Tensor,  # [n_params] float32 or float16
    config: HashGridConfig,
    *,
    backend: str = "auto",
    check_range: bool = True,
) -> torch.Tensor:  # [P, L·F]
    """Encode points with a multiresolution hash grid (Instant-NGP), exactly as tiny-cuda-nn.

    Equivalent to :func:`iso3d.kernels.reference.hash_grid_encode_ref`. For level ``l`` with
    ``s_l = 2^{l·log2 b}·N_min − 1``, ``p = s_l·x + 1/2``, ``c = ⌊p⌋``, ``f = p − c``:

    .. math::  y_l(x) = \\sum_{δ∈\\{0,1\\}^3} \\prod_d (f_d)^{δ_d}(1−f_d)^{1−δ_d}\\;
               θ_l[\\,h_l(c+δ)\\,],

    where ``h_l`` is the dense index ``c_x + c_y R + c_z R²`` while ``R³`` fits the level's table,
    else ``(c_x ⊕ c_y·2654435761 ⊕ c_z·805459861) mod 2³²``, both modulo the level size.

    Args:
        x: ``[P, 3]`` float32 points in ``[0, 1]³``.
        table: ``[config.n_params]`` flat parameters (tcnn layout), float32 or float16.
        config: the grid (:class:`HashGridConfig`, tcnn keys).
        backend: ``"auto"`` (tcnn → triton → torch), ``"tcnn"``, ``"triton"`` or ``"torch"``.
        check_range: verify ``x ∈ [0,1]³`` (one device sync); hot loops that clamp may skip it.

    Returns:
        ``[P, L·F]`` features in the table's dtype, level-major (``[:, l·F:(l+1)·F]`` is level ``l``).

    Notes:
        Differentiable in ``table`` (all backends) and in ``x`` (torch and triton; tcnn only when
        built with input gradients). First order only on the triton backend.

    Example:
        >>> import torch
        >>> from iso3d.kernels.hash_grid import HashGridConfig, hash_grid_encode, init_hash_grid_params
        >>> cfg = HashGridConfig(n_levels=4, log2_hashmap_size=12)
        >>> table = init_hash_grid_params(cfg, generator=torch.Generator().manual_seed(0))
        >>> hash_grid_encode(torch.rand(5, 3), table, cfg).shape
        torch.Size([5, 8])
    """
    _check_inputs(x, table, config, check_range)
    reasons = hash_grid_backend_reasons(x, table)
    order = _AUTO_ORDER if x.device.type == "cuda" else ["torch"]
    chosen = select_backend("hash_grid_encode", backend, reasons, order)
    if chosen == "torch":
        return hash_grid_encode_ref(x, table, config)
    if chosen == "tcnn":
        return _tcnn_encode(x.contiguous(), table.contiguous(), config)
    return _HashGridFunction.apply(x.contiguous(), table.contiguous(), config)


def hash_grid_encode_with_jacobian(
    x: torch.Tensor,  # [P, 3] float32 in [0, 1]
    table: torch.Tensor,  # [n_params] float32 or float16
    config: HashGridConfig,
    *,
    backend: str = "auto",
    check_range: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:  # [P, L·F], [P, L·F, 3]
    """Features of :func:`hash_grid_encode` and their Jacobian ``J = ∂y/∂x`` in one pass.

    Analytic normals need ``∇σ = Jᵀ·∂σ/∂y``, and a loss on normals needs its derivative in the table:
    through ``hash_grid_encode`` that is a double backward; here ``J`` is an ordinary output whose
    gradient (like ``y``'s) flows to ``table`` and ``x`` in one first-order backward. Per level, with
    ``p = s_l·x + ½``, ``f = p − ⌊p⌋`` and corner weights ``w_c = Π_d ω_{c,d}`` (``ω = f`` or ``1 − f``,
    sign ``σ_{c,d} = ±1``):

    .. math::  J_l(x)_{·,d} = s_l \\sum_c σ_{c,d} \\prod_{e≠d} ω_{c,e}\\; θ_l[h_l(c)].

    Backends: ``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``) and ``torch`` (the twin
    :func:`~iso3d.kernels.reference.hash_grid_encode_with_jacobian_ref`); tiny-cuda-nn has no such
    op (its users take the double backward instead).

    Args:
        x, table, config, check_range: as :func:`hash_grid_encode`.
        backend: ``"auto"`` (triton → torch on CUDA, torch on CPU), ``"triton"`` or ``"torch"``.

    Returns:
        ``y [P, L·F]`` and ``J [P, L·F, 3]`` (``J[p, k, d] = ∂y[p, k]/∂x[p, d]``), in the table's dtype.
        ``J`` is a transposed view of an axis-major ``[P, 3, L·F]`` buffer (both backends), so that a
        contraction over ``k`` such as ``(J * v[:, :, None]).sum(1)`` reads contiguous memory.

    Example:
        >>> import torch
        >>> from iso3d.kernels.hash_grid import HashGridConfig, hash_grid_encode_with_jacobian, init_hash_grid_params
        >>> cfg = HashGridConfig(n_levels=4, log2_hashmap_size=12)
        >>> table = init_hash_grid_params(cfg, generator=torch.Generator().manual_seed(0))
        >>> y, jac = hash_grid_encode_with_jacobian(torch.rand(5, 3), table, cfg)
        >>> y.shape, jac.shape
        (torch.Size([5, 8]), torch.Size([5, 8, 3]))
    """
    _check_inputs(x, table, config, check_range, op="hash_grid_encode_with_jacobian")
    reasons = hash_grid_backend_reasons(x, table)
    reasons["tcnn"] = reasons["tcnn"] + ["tiny-cuda-nn has no features-with-Jacobian op"]
    order = ["triton", "torch"] if x.device.type == "cuda" else ["torch"]
    chosen = select_backend("hash_grid_encode_with_jacobian", backend, reasons, order)
    if chosen == "torch":
        return hash_grid_encode_with_jacobian_ref(x, table, config)
    y, jac_axis_major = _HashGridJacobianFunction.apply(x.contiguous(), table.contiguous(), config)
    return y, jac_axis_major.transpose(1, 2)
