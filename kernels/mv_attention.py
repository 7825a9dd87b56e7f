"""Multi-view (joint) attention with an optional explicit reference block — the public op.

Three layers: Triton kernels (``_mv_attention_triton``, imported on first use) → the private
autograd Function :class:`_MVAttentionFunction` → the checked public op :func:`mv_attention`.
The twin :func:`iso3d.kernels.reference.mv_attention_ref` is the CPU fallback and test oracle.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ._backends import select_backend, triton_device_reasons
from .reference import mv_attention_ref

__all__ = ["SUPPORTED_DTYPES", "TRITON_MAX_HEAD_DIM", "auto_order", "mv_attention", "mv_attention_backend_reasons"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_MAX_HEAD_DIM = 128  # largest padded tile the tuned configs keep in registers/shared memory


def auto_order(device_type: str, has_reference: bool) -> list[str]:
    """The backends ``backend="auto"`` tries, best first: on CUDA the Triton kernel, then the twin.

    Measured in the CUDA-graphed official SDS step (bf16, H100, 2026-11-27, benchmarks/RESULTS.md,
    eighteenth session): side by side in one run the kernel took 191.3 ms at 256² and 73.8 ms at 64²,
    SDPA on the concatenated views 211.8 and 75.4 ms; across two runs of the density-head cases the
    two differed by 2.5 % or less, either way. An H200 table of the UNet alone (eager) had SDPA ahead
    without a reference block, but no in-step measurement favours it, so the kernel stays first, as
    in every full-run estimate. ``has_reference`` is kept so the order can depend on it again.

    >>> auto_order("cuda", has_reference=False), auto_order("cuda", has_reference=True), auto_order("cpu", True)
    (['triton', 'torch'], ['triton', 'torch'], ['torch'])
    """
    if device_type != "cuda":
        return ["torch"]
    return ["triton", "torch"]


def _new_buffer(shape, *, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    # Every kernel output is allocated here, uninitialized; tests poison it to catch unwritten elements.
    return torch.empty(shape, device=like.device, dtype=dtype or like.dtype)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
def _launch_meta(q, n_views, n_heads, k_ref, q_ref, scale):
    import triton

    from . import _mv_attention_triton as tk

    n_objects = q.shape[0] // n_views
    head_dim = q.shape[-1] // n_heads
    n_view_tokens = n_views * q.shape[1]
    n_ref = k_ref.shape[1] if k_ref is not None else 0
    n_ref_queries = n_ref if q_ref is not None else 0
    meta = dict(
        n_view_tokens=n_view_tokens,
        n_ref=n_ref,
        n_heads=n_heads,
        head_dim=head_dim,
        stride_row=q.shape[-1],
        lse_stride=n_view_tokens + n_ref_queries,
        qk_scale=scale * 1.4426950408889634,  # log2(e): the kernels use exp2
    )
    consts = dict(
        HAS_REF=k_ref is not None,
        REF_QUERIES=q_ref is not None,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        UPCAST=tk._INTERPRET,
        PRECISION="ieee" if (q.dtype == torch.float32 or tk._INTERPRET) else "tf32",
    )
    return tk, n_objects, n_ref_queries, meta, consts


def _mv_attention_fwd(q, k, v, q_ref, k_ref, v_ref, n_views, n_heads, scale):
    tk, n_objects, n_ref_q, meta, consts = _launch_meta(q, n_views, n_heads, k_ref, q_ref, scale)
    import triton

    out = _new_buffer(q.shape, like=q)
    out_ref = _new_buffer(q_ref.shape, like=q_ref) if q_ref is not None else out
    lse = _new_buffer((n_objects, n_heads, meta["lse_stride"]), like=q, dtype=torch.float32)
    qr, kr, vr = (x if x is not None else q for x in (q_ref, k_ref, v_ref))

    def grid(c):
        n_blocks = triton.cdiv(meta["n_view_tokens"], c["BLOCK_M"]) + triton.cdiv(n_ref_q, c["BLOCK_M"])
        return (n_blocks, n_objects * n_heads)

    tk._mv_attn_fwd_kernel[grid](q, k, v, qr, kr, vr, out, out_ref, lse, **meta, **consts)
    return out, (out_ref if q_ref is not None else None), lse


def _mv_attention_bwd(dout, dout_ref, q, k, v, q_ref, k_ref, v_ref, out, out_ref, lse, n_views, n_heads, scale):
    tk, n_objects, n_ref_q, meta, consts = _launch_meta(q, n_views, n_heads, k_ref, q_ref, scale)
    import triton

    n_bh = n_objects * n_heads
    qr, kr, vr = (x if x is not None else q for x in (q_ref, k_ref, v_ref))
    o_r = out_ref if out_ref is not None else out
    do_r = dout_ref if dout_ref is not None else dout

    delta = _new_buffer(lse.shape, like=lse)
    block_m = 32
    n_delta_blocks = triton.cdiv(meta["n_view_tokens"], block_m) + triton.cdiv(n_ref_q, block_m)
    tk._bwd_delta_kernel[(n_delta_blocks, n_bh)](
        out, dout, o_r, do_r, delta,
        meta["n_view_tokens"], n_ref_q, n_heads, meta["head_dim"], meta["stride_row"], meta["lse_stride"],
        BLOCK_M=block_m, BLOCK_D=consts["BLOCK_D"],
    )

    dq, dk, dv = (_new_buffer(x.shape, like=x) for x in (q, k, v))
    dq_r = _new_buffer(q_ref.shape, like=q_ref) if q_ref is not None else dq
    dk_r = _new_buffer(k_ref.shape, like=k_ref) if k_ref is not None else dk
    dv_r = _new_buffer(v_ref.shape, like=v_ref) if v_ref is not None else dv

    def grid_keys(c):
        return (triton.cdiv(meta["n_view_tokens"], c["BLOCK_N"]) + triton.cdiv(meta["n_ref"], c["BLOCK_N"]), n_bh)

    def grid_queries(c):
        return (triton.cdiv(meta["n_view_tokens"], c["BLOCK_M"]) + triton.cdiv(n_ref_q, c["BLOCK_M"]), n_bh)

    tk._mv_attn_bwd_dkdv_kernel[grid_keys](
        q, k, v, qr, kr, vr, dout, do_r, dk, dv, dk_r, dv_r, lse, delta, **meta, sm_scale=scale, **consts
    )
    tk._mv_attn_bwd_dq_kernel[grid_queries](
        q, k, v, qr, kr, vr, dout, do_r, dq, dq_r, lse, delta, **meta, sm_scale=scale, **consts
    )
    none_if = lambda x, given: x if given is not None else None  # noqa: E731
    return dq, dk, dv, none_if(dq_r, q_ref), none_if(dk_r, k_ref), none_if(dv_r, v_ref)


class _MVAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_ref, k_ref, v_ref, n_views, n_heads, scale):
        out, out_ref, lse = _mv_attention_fwd(q, k, v, q_ref, k_ref, v_ref, n_views, n_heads, scale)
        ctx.save_for_backward(q, k, v, q_ref, k_ref, v_ref, out, out_ref, lse)
        ctx.config = (n_views, n_heads, scale)
        ctx.set_materialize_grads(False)
        return out, out_ref

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dout_ref):
        q, k, v, q_ref, k_ref, v_ref, out, out_ref, lse = ctx.saved_tensors
        # A missing cotangent means the output was not used: its contribution is zero.
        dout = torch.zeros_like(out) if dout is None else dout.contiguous()
        if out_ref is not None:
            dout_ref = torch.zeros_like(out_ref) if dout_ref is None else dout_ref.contiguous()
        grads = _mv_attention_bwd(dout, dout_ref, q, k, v, q_ref, k_ref, v_ref, out, out_ref, lse, *ctx.config)
        return (*grads, None, None, None)


# ----------------------------------------------------------------------------------------------
# validation and the public op
# ----------------------------------------------------------------------------------------------
def _check_tensor(name: str, x, dtype=None, device=None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"mv_attention: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"mv_attention: {name} must be 3-D [rows, tokens, heads·head_dim], got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"mv_attention: {name} must be float32, float16 or bfloat16, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"mv_attention: {name} has dtype {x.dtype} but q has {dtype}")
    if device is not None and x.device != device:
        raise ValueError(f"mv_attention: {name} is on {x.device} but q is on {device}")


def _check_inputs(q, k, v, n_views, n_heads, q_ref, k_ref, v_ref, scale) -> None:
    _check_tensor("q", q)
    for name, x in (("k", k), ("v", v)):
        _check_tensor(name, x, q.dtype, q.device)
        if x.shape != q.shape:
            raise ValueError(f"mv_attention: {name} must have q's shape {tuple(q.shape)}, got {tuple(x.shape)}")
    for name, val in (("n_views", n_views), ("n_heads", n_heads)):
        if isinstance(val, bool) or not isinstance(val, int):
            raise TypeError(f"mv_attention: {name} must be an int, got {type(val).__name__}")
        if val < 1:
            raise ValueError(f"mv_attention: {name} must be >= 1, got {val}")
    rows, tokens, channels = q.shape
    if rows == 0 or tokens == 0:
        raise ValueError(f"mv_attention: q must have at least one row and one token, got shape {tuple(q.shape)}")
    if rows % n_views:
        raise ValueError(f"mv_attention: q.shape[0]={rows} (objects·views) is not divisible by n_views={n_views}")
    if channels % n_heads:
        raise ValueError(f"mv_attention: q.shape[-1]={channels} (heads·head_dim) is not divisible by n_heads={n_heads}")
    if (k_ref is None) != (v_ref is None):
        raise ValueError("mv_attention: k_ref and v_ref must be given together (the reference block's keys and values)")
    if q_ref is not None and k_ref is None:
        raise ValueError("mv_attention: q_ref needs k_ref and v_ref (reference queries attend over all keys)")
    expected_ref = (rows // n_views, None, channels)
    for name, x in (("q_ref", q_ref), ("k_ref", k_ref), ("v_ref", v_ref)):
        if x is None:
            continue
        _check_tensor(name, x, q.dtype, q.device)
        if x.shape[0] != expected_ref[0] or x.shape[2] != channels or x.shape[1] < 1:
            raise ValueError(
                f"mv_attention: {name} must have shape [B={expected_ref[0]}, N_ref>=1, {channels}], got {tuple(x.shape)}"
            )
        if x.shape != k_ref.shape:
            raise ValueError(f"mv_attention: {name} must have k_ref's shape {tuple(k_ref.shape)}, got {tuple(x.shape)}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
        raise ValueError(f"mv_attention: scale must be a positive float or None, got {scale!r}")


def mv_attention_backend_reasons(q: torch.Tensor, n_heads: int) -> dict[str, list[str]]:
    """Why each backend cannot run ``q`` (empty list: it can). ``q`` must be validated."""
    triton_reasons = triton_device_reasons(q.device, q.dtype)
    head_dim = q.shape[-1] // n_heads
    if head_dim > TRITON_MAX_HEAD_DIM:
        triton_reasons.append(f"head_dim={head_dim} > {TRITON_MAX_HEAD_DIM}")
    return {"triton": triton_reasons, "torch": []}


def mv_attention(
    q: torch.Tensor,  # [B·V, N, H·D]
    k: torch.Tensor,  # [B·V, N, H·D]
    v: torch.Tensor,  # [B·V, N, H·D]
    *,
    n_views: int,
    n_heads: int,
    q_ref: torch.Tensor | None = None,  # [B, N_ref, H·D]
    k_ref: torch.Tensor | None = None,  # [B, N_ref, H·D]
    v_ref: torch.Tensor | None = None,  # [B, N_ref, H·D]
    scale: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Joint self-attention over the V views of each object, plus an optional reference block.

    Equivalent to :func:`iso3d.kernels.reference.mv_attention_ref`: for object ``b`` and head ``h``
    let ``Q_b = [q_{b,0}; …; q_{b,V-1}; q_ref_b]`` (rows stacked; ``q_ref_b`` only when given) and
    ``K_b, V_b`` likewise with ``k_ref_b, v_ref_b``; then

    .. math::  O_b = \\mathrm{softmax}(Q_b K_b^\\top \\cdot \\text{scale})\\, V_b,
               \\quad \\text{scale} = D^{-1/2} \\text{ by default,}

    split back into per-view rows and the reference rows. The Triton backend never builds
    ``Q_b, K_b, V_b``: it reads the packed projections in place (no concat, no head transpose).

    Modes: no reference (``*_ref`` all ``None``); full reference block (``q_ref, k_ref, v_ref``:
    the reference tokens are queries, keys and values, as in EMA fine-tuning); reference as keys
    and values only (``k_ref, v_ref``; no reference output).

    Args:
        q, k, v: ``[B·V, N, H·D]`` projections of the view tokens, views of one object adjacent
            (row ``b·V + i`` is view ``i`` of object ``b``); float32, float16 or bfloat16.
        n_views: V, views per object.
        n_heads: H; ``H·D`` must divide the last dimension.
        q_ref, k_ref, v_ref: ``[B, N_ref, H·D]`` reference block of each object, or ``None``.
        scale: softmax scale, default ``D ** -0.5``.
        backend: ``"auto"`` (on CUDA: the twin's SDPA without a reference block, Triton with one,
            as measured, see :func:`auto_order`; PyTorch on CPU), ``"triton"`` (CUDA, or CPU under
            ``TRITON_INTERPRET=1``) or ``"torch"`` (the twin).

    Returns:
        ``(out, out_ref)``: ``out`` ``[B·V, N, H·D]`` and ``out_ref`` ``[B, N_ref, H·D]`` (``None``
        unless ``q_ref`` is given), in the input dtype.

    Raises:
        TypeError / ValueError: naming the argument, for wrong types, dtypes, shapes or devices.
        BackendUnavailableError: an explicit ``backend`` cannot run the inputs (reasons listed).

    Notes:
        Differentiable in all six inputs (first order only with the Triton backend). The Triton
        backward saves only the output and a per-row log-sum-exp: memory is linear in tokens.

    Example:
        >>> import torch
        >>> from iso3d.kernels import mv_attention
        >>> q, k, v = torch.randn(3, 2 * 4, 16, 2 * 32).unbind(0)  # B=2 objects, V=4 views, N=16, H=2, D=32
        >>> out, _ = mv_attention(q, k, v, n_views=4, n_heads=2)
        >>> out.shape
        torch.Size([8, 16, 64])
    """
    _check_inputs(q, k, v, n_views, n_heads, q_ref, k_ref, v_ref, scale)
    scale = float(scale) if scale is not None else (q.shape[-1] // n_heads) ** -0.5
    reasons = mv_attention_backend_reasons(q, n_heads)
    order = auto_order(q.device.type, has_reference=k_ref is not None)
    chosen = select_backend("mv_attention", backend, reasons, order)
    if chosen == "torch":
        return mv_attention_ref(
            q, k, v, n_views=n_views, n_heads=n_heads, q_ref=q_ref, k_ref=k_ref, v_ref=v_ref, scale=scale
        )
    contiguous = [x.contiguous() if x is not None else None for x in (q, k, v, q_ref, k_ref, v_ref)]
    return _MVAttentionFunction.apply(*contiguous, n_views, n_heads, scale)
