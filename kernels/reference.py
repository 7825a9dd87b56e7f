"""Pure-PyTorch twins of iso3d's kernels: test oracles, benchmark baselines and CPU fallbacks.

Each twin has the signature of the public op it mirrors (minus ``backend``) and is the single
reference implementation used by tests, benchmarks and dispatch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .hash_grid_config import HashGridConfig

__all__ = ["group_norm_ref", "hash_grid_encode_ref", "hash_grid_encode_with_jacobian_ref", "hash_grid_density_with_gradient_ref", "jacobian_transpose_times", "joint_attention_via_concat",
           "mlp_head_ref", "mlp_head_with_input_grad_ref",
           "mv_attention_naive", "mv_attention_ref"]


def _split_heads(x: torch.Tensor, n_objects: int, n_heads: int) -> torch.Tensor:
    # (B·V, N, H·D) or (B, N_ref, H·D) -> (B, H, L, D): the tokens of one object in one sequence.
    head_dim = x.shape[-1] // n_heads
    return x.reshape(n_objects, -1, n_heads, head_dim).transpose(1, 2)


def _merge_heads(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    # (B, H, L, D) -> the packed layout ``shape``.
    return x.transpose(1, 2).reshape(shape)


def joint_attention_via_concat(q, k, v, *, n_views, n_heads, q_ref, k_ref, v_ref, attend):
    """Concatenate each object's view tokens (and reference block), run ``attend``, split back.

    ``attend(q, k, v)`` takes and returns ``(B, H, L, D)`` tensors; the shared scaffolding of the
    twin, the naive version and the library peers in the benchmarks.
    """
    n_objects = q.shape[0] // n_views
    heads = lambda x: _split_heads(x, n_objects, n_heads)  # noqa: E731
    queries, keys, values = heads(q), heads(k), heads(v)
    if k_ref is not None:
        keys = torch.cat([keys, heads(k_ref)], dim=2)
        values = torch.cat([values, heads(v_ref)], dim=2)
    if q_ref is not None:
        queries = torch.cat([queries, heads(q_ref)], dim=2)
    out = attend(queries, keys, values)
    n_view_tokens = q.shape[0] // n_objects * q.shape[1]
    out_views = _merge_heads(out[:, :, :n_view_tokens], q.shape)
    out_ref = _merge_heads(out[:, :, n_view_tokens:], q_ref.shape) if q_ref is not None else None
    return out_views, out_ref


def mv_attention_ref(
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PyTorch twin of :func:`iso3d.kernels.mv_attention.mv_attention` (concat + SDPA).

    Materializes the per-object concatenation ``[views…, reference]`` with heads transposed and
    calls :func:`torch.nn.functional.scaled_dot_product_attention`. Inputs are assumed valid (the
    public op validates). Returns ``(out [B·V, N, H·D], out_ref [B, N_ref, H·D] or None)``.
    """

    def attend(qh, kh, vh):
        return F.scaled_dot_product_attention(qh, kh, vh, scale=scale)

    return joint_attention_via_concat(
        q, k, v, n_views=n_views, n_heads=n_heads, q_ref=q_ref, k_ref=k_ref, v_ref=v_ref, attend=attend
    )


def mv_attention_naive(
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
    upcast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Materialized multi-view attention: ``softmax(q kᵀ·scale) v`` with the full score matrix.

    ``upcast=True`` is MVDream's fallback path (scores and softmax in fp32, as its
    ``_ATTN_PRECISION="fp32"`` branch), kept as the slow baseline of the benchmarks.
    ``upcast=False`` keeps every step in the input dtype: PyTorch's own low-precision error, the
    yardstick the kernel tests scale their tolerances by.
    """

    def attend(qh, kh, vh):
        s = scale if scale is not None else qh.shape[-1] ** -0.5
        if upcast:
            wide = torch.promote_types(qh.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
            scores = torch.matmul(qh.to(wide), kh.to(wide).transpose(-1, -2)) * s
            return torch.matmul(scores.softmax(dim=-1), vh.to(wide)).to(qh.dtype)
        scores = torch.matmul(qh, kh.transpose(-1, -2)) * s
        return torch.matmul(scores.softmax(dim=-1), vh)

    return joint_attention_via_concat(
        q, k, v, n_views=n_views, n_heads=n_heads, q_ref=q_ref, k_ref=k_ref, v_ref=v_ref, attend=attend
    )


def _hash_grid_corners(x: torch.Tensor, config: HashGridConfig):
    """Lattice corners of every point at every level, tcnn's arithmetic (shared by the twins).

    Returns ``rows [P, L, 8]`` (flat table rows), ``frac [P, L, 3]`` (differentiable in ``x``:
    ``d frac / d x = scale``), ``bits [8, 3]`` (corner offsets) and ``scale [L]``.
    """
    from .hash_grid_config import HASH_PRIMES

    levels = config.levels
    dev = x.device
    scale = torch.tensor([lvl.scale for lvl in levels], device=dev, dtype=torch.float32)
    res = torch.tensor([lvl.resolution for lvl in levels], device=dev, dtype=torch.int64)
    offset = torch.tensor([lvl.offset for lvl in levels], device=dev, dtype=torch.int64)
    size = torch.tensor([lvl.size for lvl in levels], device=dev, dtype=torch.int64)
    hashed = res**3 > size
    # pos = fma(scale, x, 0.5): one rounding, emulated by computing in fp64 and rounding once.
    pos = (x.detach().double()[:, None, :] * scale.double()[None, :, None] + 0.5).float()  # [P, L, 3]
    pos = pos + (x[:, None, :] - x[:, None, :].detach()) * scale[None, :, None]  # d pos / d x = scale
    corner0 = torch.floor(pos.detach())
    frac = pos - corner0
    corner0 = corner0.long()
    mask32 = 0xFFFFFFFF
    bits = torch.tensor([[(corner >> d) & 1 for d in range(3)] for corner in range(8)], device=dev)
    rows = []
    for corner in range(8):
        c = corner0 + bits[corner]  # [P, L, 3]
        dense = c[..., 0] + c[..., 1] * res + c[..., 2] * res * res
        hashval = c[..., 0] * HASH_PRIMES[0]
        hashval = hashval ^ ((c[..., 1] * HASH_PRIMES[1]) & mask32) ^ ((c[..., 2] * HASH_PRIMES[2]) & mask32)
        rows.append(offset + torch.where(hashed, hashval & mask32, dense) % size)
    return torch.stack(rows, -1), frac, bits, scale


def hash_grid_encode_ref(
    x: torch.Tensor,  # [P, 3] float32 in [0, 1]
    table: torch.Tensor,  # [n_params] float32 or float16
    config: HashGridConfig,
) -> torch.Tensor:  # [P, L·F]
    """PyTorch twin of :func:`iso3d.kernels.hash_grid.hash_grid_encode` (tiny-cuda-nn semantics).

    Differentiable in ``table`` and in ``x`` (through the interpolation weights; the lattice
    corner is piecewise constant), so analytic normals work through it. Computes in fp32 and
    returns the table's dtype. Inputs are assumed valid (the public op validates).
    """
    rows, frac, bits, _ = _hash_grid_corners(x, config)
    weights = torch.where(bits.bool(), frac[:, :, None, :], 1 - frac[:, :, None, :]).prod(dim=-1)  # [P, L, 8]
    values = _gather_rows(table.view(-1, config.n_features_per_level).float(), rows)  # [P, L, 8, F]
    out = (weights[..., None] * values).sum(dim=2)  # [P, L, F]
    return out.reshape(x.shape[0], -1).to(table.dtype)


def _gather_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # [T, F], [...] -> [..., F]
    """``table[rows]`` as one ``index_select``: its backward is a single ``index_add`` into the table
    (per-corner gathers would cost 8 table-sized gradients), 5–10× faster on CPU than ``F.embedding``'s
    backward, which computes the same sums (``benchmarks/kernels/bench_hash_grid.py::test_gather_backward``)."""
    return table.index_select(0, rows.reshape(-1)).view(*rows.shape, table.shape[-1])


def hash_grid_encode_with_jacobian_ref(
    x: torch.Tensor,  # [P, 3] float32 in [0, 1]
    table: torch.Tensor,  # [n_params] float32 or float16
    config: HashGridConfig,
) -> tuple[torch.Tensor, torch.Tensor]:  # [P, L·F], [P, L·F, 3]
    """PyTorch twin of :func:`iso3d.kernels.hash_grid.hash_grid_encode_with_jacobian`.

    Features as :func:`hash_grid_encode_ref` and their Jacobian ``∂y/∂x``, by the closed form of
    trilinear weights: with ``w_c = Π_d ω_d``, ``ω_d = f_d`` or ``1 − f_d`` (sign ``s_d = ±1``),
    ``∂w_c/∂x_d = scale · s_d · Π_{e≠d} ω_e``. Both outputs are differentiable in ``table`` and
    ``x`` (autograd through this formula gives the second derivatives a loss on normals needs).
    """
    rows, frac, bits, scale = _hash_grid_corners(x, config)
    omega = torch.where(bits.bool(), frac[:, :, None, :], 1 - frac[:, :, None, :])  # [P, L, 8, 3]
    sign = bits.to(frac.dtype) * 2 - 1  # [8, 3]
    ox, oy, oz = omega.unbind(-1)
    weights = ox * oy * oz  # [P, L, 8]
    dweights = torch.stack([oy * oz, ox * oz, ox * oy], -1) * sign * scale[:, None, None]  # [P, L, 8, 3]
    values = _gather_rows(table.view(-1, config.n_features_per_level).float(), rows)  # [P, L, 8, F]
    out = (weights[..., None] * values).sum(dim=2)  # [P, L, F]
    jac = torch.einsum("plcd,plcf->pdlf", dweights, values)  # [P, 3, L, F]: axis-major, as the kernel's
    n = x.shape[0]
    return out.reshape(n, -1).to(table.dtype), jac.reshape(n, 3, -1).to(table.dtype).transpose(1, 2)


def mlp_head_ref(
    y: torch.Tensor,  # [P, K] float32 or float16
    w1: torch.Tensor,  # [H, K]
    w2: torch.Tensor,  # [H]
) -> torch.Tensor:  # [P]
    """PyTorch twin of :func:`iso3d.kernels.mlp_head.mlp_head`: the ops of ``nn.Sequential(Linear(K, H,
    bias=False), ReLU(), Linear(H, 1, bias=False))`` with these weights, so the field's density is the
    same with the twin as with its modules."""
    return F.linear(F.relu(F.linear(y.to(w1.dtype), w1)), w2[None]).squeeze(-1)


def mlp_head_with_input_grad_ref(
    y: torch.Tensor,  # [P, K] float32 or float16
    w1: torch.Tensor,  # [H, K]
    w2: torch.Tensor,  # [H]
) -> tuple[torch.Tensor, torch.Tensor]:  # [P], [P, K] float32
    """PyTorch twin of :func:`iso3d.kernels.mlp_head.mlp_head_with_input_grad`: ``raw = w₂ᵀ·relu(W₁y)``
    and ``v = W₁ᵀ·(w₂ ⊙ 1[W₁y > 0])`` in closed form (plain ops: differentiable in the weights, and
    usable under ``torch.no_grad()``)."""
    h = F.linear(y.to(w1.dtype), w1)  # [P, H], in the weights' precision (float32; float64 in tests)
    active = h > 0
    raw = (h * active) @ w2
    v = (active * w2) @ w1
    return raw, v


def hash_grid_density_with_gradient_ref(
    x: torch.Tensor,  # [P, 3] float32 in [0, 1]
    table: torch.Tensor,  # [n_params]
    config: HashGridConfig,
    w1: torch.Tensor,  # [H, L·F]
    w2: torch.Tensor,  # [H]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # [P, L·F], [P], [P, 3]
    """PyTorch twin of :func:`iso3d.kernels.density_gradient.hash_grid_density_with_gradient`: the
    encoding with its Jacobian, the density head with its input gradient, and ``g = Jᵀv``."""
    feats, jac = hash_grid_encode_with_jacobian_ref(x, table, config)
    raw, v = mlp_head_with_input_grad_ref(feats, w1, w2)
    return feats, raw, jacobian_transpose_times(jac, v)


def jacobian_transpose_times(jac: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # [P, K, 3], [P, K] -> [P, 3]
    """``Jᵀv`` per point, as a broadcast product summed over ``k`` (J's contiguous axis in the layout
    of :func:`~iso3d.kernels.hash_grid.hash_grid_encode_with_jacobian`). Not ``einsum``: it becomes a
    batched matrix product of P 1×K×3 problems, which cuBLAS launches in chunks of 65535 (~50 ms of a
    256² SDS step on an H100, ninth session's profile)."""
    return (jac * v[:, :, None]).sum(1)


def group_norm_ref(
    x: torch.Tensor,  # [N, C, *spatial]
    num_groups: int,
    weight: torch.Tensor | None = None,  # [C]
    bias: torch.Tensor | None = None,  # [C]
    eps: float = 1e-5,
    *,
    silu: bool = False,
) -> torch.Tensor:  # [N, C, *spatial], x's dtype
    """PyTorch twin of :func:`iso3d.kernels.group_norm.group_norm`: ``F.group_norm`` (then SiLU) in
    fp32 (float64 stays float64), rounded once to ``x``'s dtype, as the kernel does."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    cast = lambda t: None if t is None else t.to(work)  # noqa: E731
    y = F.group_norm(x.to(work), num_groups, cast(weight), cast(bias), eps)
    return (F.silu(y) if silu else y).to(x.dtype)
