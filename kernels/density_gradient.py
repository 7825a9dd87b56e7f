"""Hash grid → density MLP → density gradient, fused: the analytic normals of the implicit volume.

``feats = y(x)`` (the hash encoding), ``raw = w₂ᵀ·relu(W₁·y)`` and ``g = ∂raw/∂x = J(x)ᵀ·v`` with
``v = ∂raw/∂y``: two kernels forward (the grid with its Jacobian; the MLP with the contraction) and
three backward (``dv = J·dg``; the MLP's backward; the grid's, which forms ``dJ = v ⊗ dg`` on the
fly), where the separate ops (:func:`~iso3d.kernels.hash_grid.hash_grid_encode_with_jacobian`,
:func:`~iso3d.kernels.mlp_head.mlp_head_with_input_grad` and a PyTorch contraction) also move the
product ``J·v`` and ``dJ`` through memory. ``J`` is kept level-major, ``[3, L, P, F]``, so that the
one-level-per-program kernels write and read it in contiguous runs.

Backends: ``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``) and ``torch`` (the twin
:func:`~iso3d.kernels.reference.hash_grid_density_with_gradient_ref`, the separate ops' twins composed).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ._backends import cdiv, select_backend, triton_device_reasons
from .hash_grid import BLOCK as GRID_BLOCK, HashGridConfig, _check_inputs, _launch_backward, _level_tables
from .mlp_head import check_head_weights, launch_head_backward, launch_head_forward
from .reference import hash_grid_density_with_gradient_ref

__all__ = ["hash_grid_density_with_gradient"]


class _DensityGradientFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, w1, w2, config):
        from . import _hash_grid_triton as grid_k

        n, levels, f = x.shape[0], config.n_levels, config.n_features_per_level
        feats = torch.empty(n, config.n_output_dims, device=x.device, dtype=table.dtype)
        jac = torch.empty(3, levels, n, f, device=x.device, dtype=table.dtype)
        strides = jac.stride()[:3]  # (axis, level, point) in elements; the feature stride is 1
        grid_k._hash_grid_jac_fwd_kernel[(cdiv(n, GRID_BLOCK), levels)](
            x, table, feats, jac, *_level_tables(config, x.device), n, *strides, N_LEVELS=levels, F=f, BLOCK=GRID_BLOCK)
        raw, v, grad = launch_head_forward(feats, w1, w2, jac, strides, f)
        ctx.save_for_backward(x, table, w1, w2, feats, jac, v)
        ctx.config = config
        ctx.set_materialize_grads(False)  # unused outputs' cotangents arrive as None: their work is skipped
        return feats, raw, grad

    @staticmethod
    @once_differentiable
    def backward(ctx, dfeats, draw, dgrad):
        from . import _hash_grid_triton as grid_k

        x, table, w1, w2, feats, jac, v = ctx.saved_tensors
        config = ctx.config
        n, levels, f = x.shape[0], config.n_levels, config.n_features_per_level
        strides = jac.stride()[:3]
        dv = None
        if dgrad is not None:  # g = Jᵀv sends J·dg to v (one level per program, J read in contiguous runs)
            dgrad = dgrad.contiguous()
            dv = torch.empty(n, config.n_output_dims, device=x.device, dtype=torch.float32)
            grid_k._jac_matvec_kernel[(cdiv(n, GRID_BLOCK), levels)](
                jac, dgrad, dv, n, *strides, N_LEVELS=levels, F=f, BLOCK=GRID_BLOCK)
        dy, dw1, dw2 = launch_head_backward(feats, w1, w2, draw, dv, dfeats, dy_dtype=torch.float32)
        if dgrad is None:  # no loss on the gradient: J gets no cotangent (v stands in for it, times dg = 0)
            dgrad = torch.zeros(n, 3, device=x.device, dtype=torch.float32)
        dx, dtable, _ = _launch_backward(ctx, grid_k._hash_grid_jac_bwd_kernel, dy, v, dgrad, extra_args=strides,
                                         constexprs=dict(DJAC_OUTER=True))
        return dx, dtable, dw1, dw2, None


def hash_grid_density_with_gradient(
    x: torch.Tensor,  # [P, 3] float32 in [0, 1]
    table: torch.Tensor,  # [n_params] float32 or float16
    config: HashGridConfig,
    w1: torch.Tensor,  # [H, L·F] float32
    w2: torch.Tensor,  # [H] float32
    *,
    backend: str = "auto",
    check_range: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # [P, L·F], [P], [P, 3]
    """Features, the density MLP's output and its gradient in ``x``, in one fused pass.

    .. math::  y = \\mathrm{enc}(x),\\qquad raw = w_2^\\top \\max(W_1 y, 0),\\qquad
               \\nabla_x raw = J(x)^\\top\\, W_1^\\top (w_2 \\odot 1[W_1 y > 0]),

    with ``J = ∂y/∂x`` the encoding's Jacobian (:func:`~iso3d.kernels.hash_grid.hash_grid_encode_with_jacobian`).
    All three outputs are differentiable (first order) in ``table``, ``w1``, ``w2`` and ``x``, so a loss
    on normals built from the gradient trains the grid and the MLP without a double backward.

    Args:
        x, table, config, check_range: as :func:`~iso3d.kernels.hash_grid.hash_grid_encode`.
        w1: ``[H, L·F]`` float32 first-layer weight (``nn.Linear`` layout). w2: ``[H]`` float32 output weights.
        backend: ``"auto"`` (triton on CUDA, torch on CPU), ``"triton"`` or ``"torch"``.

    Returns:
        ``feats [P, L·F]`` (the table's dtype), ``raw [P]`` and ``grad [P, 3]`` (float32).

    Example:
        >>> import torch
        >>> from iso3d.kernels.hash_grid import HashGridConfig, init_hash_grid_params
        >>> from iso3d.kernels.density_gradient import hash_grid_density_with_gradient
        >>> cfg = HashGridConfig(n_levels=4, log2_hashmap_size=12)
        >>> table = init_hash_grid_params(cfg, generator=torch.Generator().manual_seed(0))
        >>> feats, raw, grad = hash_grid_density_with_gradient(torch.rand(5, 3), table, cfg, torch.randn(16, 8), torch.randn(16))
        >>> feats.shape, raw.shape, grad.shape
        (torch.Size([5, 8]), torch.Size([5]), torch.Size([5, 3]))
    """
    _check_inputs(x, table, config, check_range, op="hash_grid_density_with_gradient")
    check_head_weights("hash_grid_density_with_gradient", w1, w2, config.n_output_dims, x.device)
    reasons = {"triton": triton_device_reasons(x.device, table.dtype), "torch": []}
    order = ["triton", "torch"] if x.device.type == "cuda" else ["torch"]
    if select_backend("hash_grid_density_with_gradient", backend, reasons, order) == "torch":
        return hash_grid_density_with_gradient_ref(x, table, config, w1, w2)
    return _DensityGradientFunction.apply(x.contiguous(), table.contiguous(), w1.contiguous(), w2.contiguous(), config)
