"""A two-layer bias-free ReLU MLP with one output and its input gradient — the field's density head.

Backends: ``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``) and ``torch`` (the twin
:func:`~iso3d.kernels.reference.mlp_head_with_input_grad_ref`).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ._backends import cdiv, select_backend, triton_device_reasons
from .reference import mlp_head_ref, mlp_head_with_input_grad_ref

__all__ = ["mlp_head", "mlp_head_with_input_grad"]

def padded(n: int) -> int:  # tl.dot wants power-of-two widths of at least 16
    return max(16, 1 << (n - 1).bit_length())


def _backward_programs(n_points: int, device: torch.device) -> int:
    """Programs of the persistent backward, whatever the tile (see the kernel): ≤ 4 per SM on a GPU."""
    from ._mlp_head_triton import MIN_BLOCK

    n_blocks = max(1, cdiv(n_points, MIN_BLOCK))
    if device.type == "cuda":
        return min(n_blocks, 4 * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(n_blocks, 3)  # the interpreter: a few programs still exercise the partial sums


def _kernel(autotuned, tile):
    """The autotuned kernel, or with ``tile = (BLOCK, num_warps)`` the plain kernel at that tile
    (tests check every autotuning candidate this way)."""
    if tile is None:
        return autotuned, {}
    block, warps = tile
    return autotuned.fn, {"BLOCK": block, "num_warps": warps}


def launch_head_forward(y, w1, w2, jac=None, jac_strides=(0, 0, 0), n_features_per_level: int = 1, tile=None,
                        with_v: bool = True):
    """``raw [P]``, ``v [P, K]`` (None unless ``with_v``) and, given the level-major Jacobian
    ``jac [3, L, P, F]`` (its element strides), ``g = Jᵀv [P, 3]`` (else None), all float32, from one
    kernel launch."""
    from . import _mlp_head_triton as tk

    if jac is not None and not with_v:
        raise ValueError("launch_head_forward: g = Jᵀv needs v (with_v=True)")
    n, (hidden, k) = y.shape[0], w1.shape
    raw = torch.empty(n, device=y.device, dtype=torch.float32)
    v = torch.empty(n, k, device=y.device, dtype=torch.float32) if with_v else None
    g = torch.empty(n, 3, device=y.device, dtype=torch.float32) if jac is not None else None
    j = (jac[0], jac[1], jac[2]) if jac is not None else (raw,) * 3  # raw stands in for unused pointers
    kernel, fixed = _kernel(tk._mlp_head_fwd_kernel, tile)
    kernel[lambda meta: (cdiv(n, meta["BLOCK"]),)](
        y, w1, w2, raw, raw if v is None else v, *j, raw if g is None else g, n, jac_strides[1], jac_strides[2],
        max(n, 1).bit_length(), K=k, H=hidden, KP=padded(k), HP=padded(hidden), F=n_features_per_level,
        WITH_V=with_v, WITH_JAC=jac is not None, **fixed)
    return raw, v, g


def launch_head_backward(y, w1, w2, draw, dv, dfeats=None, dy_dtype=None, tile=None):
    """``dy [P, K]`` (plus ``dfeats`` when given; in ``dy_dtype``, default y's), ``dW₁ [H, K]`` and
    ``dw₂ [H]`` from the cotangents of ``raw`` and ``v`` (None: zero)."""
    from . import _mlp_head_triton as tk

    n, (hidden, k) = y.shape[0], w1.shape
    kp, hp = padded(k), padded(hidden)
    zeros = lambda *shape: torch.zeros(*shape, device=y.device, dtype=torch.float32)  # noqa: E731
    draw = zeros(n) if draw is None else draw.contiguous()
    dv = zeros(n, k) if dv is None else dv.contiguous()
    programs = _backward_programs(n, y.device)
    dy = torch.empty(n, k, device=y.device, dtype=dy_dtype or y.dtype)
    dw1 = torch.empty(programs, hp, kp, device=y.device, dtype=torch.float32)
    dw2 = torch.empty(programs, hp, device=y.device, dtype=torch.float32)
    kernel, fixed = _kernel(tk._mlp_head_bwd_kernel, tile)
    kernel[(programs,)](
        y, w1, w2, draw, dv, dy if dfeats is None else dfeats.contiguous(), dy, dw1, dw2, n, max(n, 1).bit_length(),
        K=k, H=hidden, KP=kp, HP=hp, HAS_DFEATS=dfeats is not None, **fixed)
    return dy, dw1.sum(0)[:hidden, :k].to(w1.dtype), dw2.sum(0)[:hidden].to(w2.dtype)


def check_head_weights(op: str, w1, w2, n_in: int, device: torch.device) -> None:
    """``w1 [H, n_in]`` and ``w2 [H]``, float32, on ``device``; else an error naming the argument."""
    for name, t in (("w1", w1), ("w2", w2)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.float32:
            raise TypeError(f"{op}: {name} must be float32 (the MLP's weights), got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device} but the inputs are on {device}")
    if w1.dim() != 2 or w1.shape[1] != n_in or w2.shape != (w1.shape[0],):
        raise ValueError(f"{op}: expected w1 [H, {n_in}] and w2 [H], got {tuple(w1.shape)} and {tuple(w2.shape)}")


class _MLPHeadFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, w1, w2):
        raw, v, _ = launch_head_forward(y, w1, w2)
        ctx.save_for_backward(y, w1, w2)
        ctx.set_materialize_grads(False)  # an unused output's cotangent arrives as None, not a zero tensor
        return raw, v

    @staticmethod
    @once_differentiable
    def backward(ctx, draw, dv):
        return launch_head_backward(*ctx.saved_tensors, draw, dv)


class _MLPHeadRawFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, w1, w2):
        raw, _, _ = launch_head_forward(y, w1, w2, with_v=False)
        ctx.save_for_backward(y, w1, w2)
        return raw

    @staticmethod
    @once_differentiable
    def backward(ctx, draw):
        return launch_head_backward(*ctx.saved_tensors, draw, None)


def _check_head_inputs(op: str, y, w1, w2) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{op}: y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 2:
        raise ValueError(f"{op}: y must have shape [P, K], got {tuple(y.shape)}")
    if y.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"{op}: y must be float32 or float16, got {y.dtype}")
    check_head_weights(op, w1, w2, y.shape[1], y.device)


def _head_backend(op: str, y, backend: str) -> str:
    reasons = {"triton": triton_device_reasons(y.device, y.dtype), "torch": []}
    order = ["triton", "torch"] if y.device.type == "cuda" else ["torch"]
    return select_backend(op, backend, reasons, order)


def mlp_head(
    y: torch.Tensor,  # [P, K] float32 or float16
    w1: torch.Tensor,  # [H, K] float32
    w2: torch.Tensor,  # [H] float32
    *,
    backend: str = "auto",
) -> torch.Tensor:  # [P] float32
    """``raw = w₂ᵀ·relu(W₁·y)`` alone: the density head where no normal is needed (the renderer's
    pruning pass and the occupancy grid evaluate it at every marched sample, without gradients).

    The Triton kernel keeps the hidden layer in registers; PyTorch's two linear layers write and
    re-read a ``[P, H]`` float32 tensor (2.6 GB at the 10 M samples of a 256² SDS step). Differentiable
    in ``y``, ``W₁`` and ``w₂`` (first order; the backward is :func:`mlp_head_with_input_grad`'s).

    Args:
        y: ``[P, K]`` inputs, float32 or float16 (computed in fp32). w1: ``[H, K]`` float32.
        w2: ``[H]`` float32. backend: ``"auto"`` (triton on CUDA, torch on CPU), ``"triton"`` or ``"torch"``.

    Example:
        >>> import torch
        >>> from iso3d.kernels.mlp_head import mlp_head
        >>> y, w1, w2 = torch.randn(5, 32), torch.randn(64, 32), torch.randn(64)
        >>> torch.allclose(mlp_head(y, w1, w2), torch.relu(y @ w1.T) @ w2, atol=1e-5)
        True
    """
    _check_head_inputs("mlp_head", y, w1, w2)
    if _head_backend("mlp_head", y, backend) == "torch":
        return mlp_head_ref(y, w1, w2)
    return _MLPHeadRawFunction.apply(y.contiguous(), w1.contiguous(), w2.contiguous())


def mlp_head_with_input_grad(
    y: torch.Tensor,  # [P, K] float32 or float16
    w1: torch.Tensor,  # [H, K] float32 (first layer's weight, nn.Linear layout)
    w2: torch.Tensor,  # [H] float32 (the output layer's weight row)
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:  # [P], [P, K] float32
    """``raw = w₂ᵀ·relu(W₁·y)`` and its input gradient ``v = ∂raw/∂y``, for every point, in one pass.

    .. math::  h = W_1 y,\\qquad raw = \\sum_j w_{2,j}\\,\\max(h_j, 0),\\qquad
               v = W_1^\\top\\,(w_2 \\odot 1[h > 0]).

    Both outputs are differentiable in ``y``, ``W₁`` and ``w₂`` (first order), so a loss on normals
    built from ``v`` trains the MLP without a double backward. ReLU's mask is piecewise constant.

    Args:
        y: ``[P, K]`` inputs (the hash grid's features), float32 or float16 (computed in fp32).
        w1: ``[H, K]`` float32 first-layer weight. w2: ``[H]`` float32 output weights.
        backend: ``"auto"`` (triton on CUDA, torch on CPU), ``"triton"`` or ``"torch"``.

    Returns:
        ``raw [P]`` and ``v [P, K]``, float32.

    Example:
        >>> import torch
        >>> from iso3d.kernels.mlp_head import mlp_head_with_input_grad
        >>> y, w1, w2 = torch.randn(5, 32), torch.randn(64, 32), torch.randn(64)
        >>> raw, v = mlp_head_with_input_grad(y, w1, w2)
        >>> raw.shape, v.shape
        (torch.Size([5]), torch.Size([5, 32]))
        >>> torch.allclose(raw, torch.relu(y @ w1.T) @ w2, atol=1e-5)
        True
    """
    _check_head_inputs("mlp_head_with_input_grad", y, w1, w2)
    if _head_backend("mlp_head_with_input_grad", y, backend) == "torch":
        return mlp_head_with_input_grad_ref(y, w1, w2)
    return _MLPHeadFunction.apply(y.contiguous(), w1.contiguous(), w2.contiguous())
