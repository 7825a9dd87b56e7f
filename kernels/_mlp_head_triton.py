"""Triton kernels of a two-layer bias-free ReLU MLP with one output, with its input gradient.

The density head of the implicit volume (``raw = w₂ᵀ·relu(W₁·y)``) together with
``v = ∂raw/∂y = W₁ᵀ·(w₂ ⊙ 1[W₁y > 0])``, which analytic normals contract with the hash grid's
Jacobian. One program handles BLOCK points; the hidden layer lives in registers, so no ``[P, H]``
tensor reaches memory (PyTorch materializes several, and launches cuBLAS GEMMs and GEMVs that the
ninth session's H100 profile found inefficient for P ≈ 10⁷ rows of 32 → 64).

``WITH_JAC`` (the fused density op, density_gradient.py): the kernels also take the hash grid's
Jacobian, level-major ``J_d[l, p, f]`` (one pointer per axis d), and contract it in registers: the
forward stores ``g = Jᵀv`` ``[P, 3]`` instead of ``v``; the backward takes ``dg``, forms
``dv = J·dg`` and writes ``dJ = v ⊗ dg`` (fp32, level-major) for the hash grid's backward, and adds
the features' own cotangent (``HAS_DFEATS``) to ``dy``.

Backward: a persistent grid; each program loops over blocks of points, writes ``dy`` per point and
accumulates its share of ``dW₁`` and ``dw₂`` in registers, then stores one partial per program (the
op sums them), so there are no atomics. With ``a = dv·W₁ᵀ`` (the gradient reaching ``w₂ ⊙ mask``):
``dw₂ = Σ_p mask ⊙ a + draw·relu(h)``, ``dh = draw·w₂ ⊙ mask``,
``dW₁ = Σ_p dhᵀ·y + (w₂ ⊙ mask)ᵀ·dv``, ``dy = dh·W₁``.

Widths are padded to powers of two of at least 16 (``tl.dot``'s minimum); padded hidden units have
zero weights, so they are never active and contribute nothing. Products run in fp32 (``ieee``: no
TF32), so the result matches the PyTorch twin to fp32 rounding.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_weights(W1, W2, K: tl.constexpr, H: tl.constexpr, KP: tl.constexpr, HP: tl.constexpr):
    hs = tl.arange(0, HP)
    ks = tl.arange(0, KP)
    w1 = tl.load(W1 + hs[:, None] * K + ks[None, :], mask=(hs[:, None] < H) & (ks[None, :] < K), other=0.0)
    w2 = tl.load(W2 + hs, mask=hs < H, other=0.0)
    return w1.to(tl.float32), w2.to(tl.float32)  # [HP, KP], [HP]


@triton.jit
def _jac_offsets(rows, ks, j_stride_level, j_stride_point, F: tl.constexpr):
    # [BLOCK, KP] int64 offsets of J_d[l, p, f] for feature column k = l·F + f
    return (ks // F).to(tl.int64)[None, :] * j_stride_level + rows[:, None] * j_stride_point + (ks % F)[None, :]


@triton.jit
def _mlp_head_fwd_kernel(
    Y, W1, W2, RAW, V, J0, J1, J2, G, n_points, j_stride_level, j_stride_point,
    K: tl.constexpr, H: tl.constexpr, KP: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr,
    F: tl.constexpr, WITH_JAC: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    ks = tl.arange(0, KP)
    in_rows = rows < n_points
    tile = in_rows[:, None] & (ks[None, :] < K)
    w1, w2 = _load_weights(W1, W2, K, H, KP, HP)
    y = tl.load(Y + rows[:, None] * K + ks[None, :], mask=tile, other=0.0).to(tl.float32)
    h = tl.dot(y, tl.trans(w1), input_precision="ieee")  # [BLOCK, HP]
    active = h > 0
    raw = tl.sum(tl.where(active, h, 0.0) * w2[None, :], axis=1)
    v = tl.dot(tl.where(active, w2[None, :], 0.0), w1, input_precision="ieee")  # [BLOCK, KP]
    tl.store(RAW + rows, raw, mask=in_rows)
    if WITH_JAC:
        jp = _jac_offsets(rows, ks, j_stride_level, j_stride_point, F)
        gx = tl.sum(v * tl.load(J0 + jp, mask=tile, other=0.0).to(tl.float32), axis=1)
        gy = tl.sum(v * tl.load(J1 + jp, mask=tile, other=0.0).to(tl.float32), axis=1)
        gz = tl.sum(v * tl.load(J2 + jp, mask=tile, other=0.0).to(tl.float32), axis=1)
        tl.store(G + rows * 3 + 0, gx, mask=in_rows)
        tl.store(G + rows * 3 + 1, gy, mask=in_rows)
        tl.store(G + rows * 3 + 2, gz, mask=in_rows)
    else:
        tl.store(V + rows[:, None] * K + ks[None, :], v, mask=tile)


@triton.jit
def _mlp_head_bwd_kernel(
    Y, W1, W2, DRAW, DV, DY, DW1_PARTIAL, DW2_PARTIAL, J0, J1, J2, DG, DFEATS, DJ0, DJ1, DJ2,
    n_points, n_blocks, j_stride_level, j_stride_point,
    K: tl.constexpr, H: tl.constexpr, KP: tl.constexpr, HP: tl.constexpr, BLOCK: tl.constexpr,
    F: tl.constexpr, WITH_JAC: tl.constexpr, HAS_DFEATS: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    ks = tl.arange(0, KP)
    hs = tl.arange(0, HP)
    w1, w2 = _load_weights(W1, W2, K, H, KP, HP)
    dw1 = tl.zeros([HP, KP], dtype=tl.float32)
    dw2 = tl.zeros([HP], dtype=tl.float32)
    for block in range(pid, n_blocks, n_programs):
        rows = (block * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
        in_rows = rows < n_points
        tile = in_rows[:, None] & (ks[None, :] < K)
        y = tl.load(Y + rows[:, None] * K + ks[None, :], mask=tile, other=0.0).to(tl.float32)
        draw = tl.load(DRAW + rows, mask=in_rows, other=0.0).to(tl.float32)
        h = tl.dot(y, tl.trans(w1), input_precision="ieee")  # [BLOCK, HP]
        active = h > 0
        gate = tl.where(active, w2[None, :], 0.0)  # w₂ ⊙ mask, per point
        if WITH_JAC:
            v = tl.dot(gate, w1, input_precision="ieee")  # recomputed: cheaper than storing [P, K]
            jp = _jac_offsets(rows, ks, j_stride_level, j_stride_point, F)
            dgx = tl.load(DG + rows * 3 + 0, mask=in_rows, other=0.0)[:, None]
            dgy = tl.load(DG + rows * 3 + 1, mask=in_rows, other=0.0)[:, None]
            dgz = tl.load(DG + rows * 3 + 2, mask=in_rows, other=0.0)[:, None]
            dv = (tl.load(J0 + jp, mask=tile, other=0.0).to(tl.float32) * dgx
                  + tl.load(J1 + jp, mask=tile, other=0.0).to(tl.float32) * dgy
                  + tl.load(J2 + jp, mask=tile, other=0.0).to(tl.float32) * dgz)
            tl.store(DJ0 + jp, v * dgx, mask=tile)
            tl.store(DJ1 + jp, v * dgy, mask=tile)
            tl.store(DJ2 + jp, v * dgz, mask=tile)
        else:
            dv = tl.load(DV + rows[:, None] * K + ks[None, :], mask=tile, other=0.0).to(tl.float32)
        a = tl.dot(dv, tl.trans(w1), input_precision="ieee")  # ∂L/∂gate
        dw2 += tl.sum(tl.where(active, a + h * draw[:, None], 0.0), axis=0)
        dh = gate * draw[:, None]
        dw1 += tl.dot(tl.trans(dh), y, input_precision="ieee") + tl.dot(tl.trans(gate), dv, input_precision="ieee")
        dy = tl.dot(dh, w1, input_precision="ieee")  # [BLOCK, KP]
        if HAS_DFEATS:
            dy += tl.load(DFEATS + rows[:, None] * K + ks[None, :], mask=tile, other=0.0).to(tl.float32)
        tl.store(DY + rows[:, None] * K + ks[None, :], dy.to(DY.dtype.element_ty), mask=tile)
    tl.store(DW1_PARTIAL + pid * HP * KP + hs[:, None] * KP + ks[None, :], dw1)
    tl.store(DW2_PARTIAL + pid * HP + hs, dw2)
