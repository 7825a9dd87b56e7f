"""Triton kernels of a two-layer bias-free ReLU MLP with one output, with its input gradient.

The density head of the implicit volume (``raw = w₂ᵀ·relu(W₁·y)``) together with
``v = ∂raw/∂y = W₁ᵀ·(w₂ ⊙ 1[W₁y > 0])``, which analytic normals contract with the hash grid's
Jacobian. One program handles BLOCK points; the hidden layer lives in registers, so no ``[P, H]``
tensor reaches memory (PyTorch materializes several, and launches cuBLAS GEMMs and GEMVs that the
ninth session's H100 profile found inefficient for P ≈ 10⁷ rows of 32 → 64).

``WITH_JAC`` (the fused density op, density_gradient.py): the forward also takes the hash grid's
Jacobian, level-major ``J_d[l, p, f]`` (one pointer per axis d), and stores ``g = Jᵀv`` ``[P, 3]``
beside ``v``. Its backward is this file's backward kernel with the features' own cotangent added to
``dy`` (``HAS_DFEATS``), after ``_jac_matvec_kernel`` (``dv = J·dg``); the hash grid's backward forms
``dJ = v ⊗ dg`` on the fly. (A first version also did the J part inside the backward kernel: it
spilled 20 KB per thread on sm_90 and made the step 2.9× slower; compile_check reports spills.)

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

from ._backends import autotune_candidates

# Autotuning candidates (BLOCK points per program, num_warps). (64, 4) is what the ninth session
# measured in the SDS step; for sm_90 ptxas spills it (fwd 156 B, bwd 1.5 KB per thread; 21.7 KB
# with the fused op's extra cotangent), and only (16, 8) is spill-free in every variant
# (``python -m iso3d.kernels.compile_check`` prints the report). ``ISO3D_TRITON_AUTOTUNE=0`` keeps
# only the default; with autotuning (the default on a GPU) the fastest candidate is timed and kept.
TILES = [(16, 8), (32, 8), (64, 4), (32, 4)]
DEFAULT_TILE = (16, 8)
MIN_BLOCK = min(b for b, _ in TILES)


def tile_config(block: int, warps: int) -> triton.Config:
    return triton.Config({"BLOCK": block}, num_warps=warps)


def _configs():
    return [tile_config(*tile) for tile in autotune_candidates(TILES, DEFAULT_TILE, interpreter_tile=(32, 4))]


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


# size_class (⌊log2 P⌋, unused by the code) is in the keys so that a tile timed on a few points is
# not reused for 10⁷.
@triton.autotune(configs=_configs(), key=["K", "H", "WITH_V", "WITH_JAC", "size_class"])
@triton.jit
def _mlp_head_fwd_kernel(
    Y, W1, W2, RAW, V, J0, J1, J2, G, n_points, j_stride_level, j_stride_point, size_class,
    K: tl.constexpr, H: tl.constexpr, KP: tl.constexpr, HP: tl.constexpr,
    F: tl.constexpr, WITH_V: tl.constexpr, WITH_JAC: tl.constexpr, BLOCK: tl.constexpr,
):
    # WITH_V = False: the density alone (the renderer's pruning pass evaluates it, without gradients,
    # at every marched sample); WITH_JAC needs WITH_V.
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
    tl.store(RAW + rows, raw, mask=in_rows)
    if WITH_V:
        v = tl.dot(tl.where(active, w2[None, :], 0.0), w1, input_precision="ieee")  # [BLOCK, KP]
        tl.store(V + rows[:, None] * K + ks[None, :], v, mask=tile)
    if WITH_JAC:
        jp = _jac_offsets(rows, ks, j_stride_level, j_stride_point, F)
        gx = tl.sum(v * tl.load(J0 + jp, mask=tile, other=0.0).to(tl.float32), axis=1)
        gy = tl.sum(v * tl.load(J1 + jp, mask=tile, other=0.0).to(tl.float32), axis=1)
        gz = tl.sum(v * tl.load(J2 + jp, mask=tile, other=0.0).to(tl.float32), axis=1)
        tl.store(G + rows * 3 + 0, gx, mask=in_rows)
        tl.store(G + rows * 3 + 1, gy, mask=in_rows)
        tl.store(G + rows * 3 + 2, gz, mask=in_rows)


@triton.autotune(configs=_configs(), key=["K", "H", "HAS_DFEATS", "size_class"])
@triton.jit
def _mlp_head_bwd_kernel(
    Y, W1, W2, DRAW, DV, DFEATS, DY, DW1_PARTIAL, DW2_PARTIAL, n_points, size_class,
    K: tl.constexpr, H: tl.constexpr, KP: tl.constexpr, HP: tl.constexpr,
    HAS_DFEATS: tl.constexpr, BLOCK: tl.constexpr,
):
    # The grid is fixed by the caller, not by BLOCK: a program beyond the last block stores zero
    # partials, so every tile (autotuning) writes every row the caller sums.
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_blocks = tl.cdiv(n_points, BLOCK)
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
        dv = tl.load(DV + rows[:, None] * K + ks[None, :], mask=tile, other=0.0).to(tl.float32)
        h = tl.dot(y, tl.trans(w1), input_precision="ieee")  # [BLOCK, HP]
        active = h > 0
        gate = tl.where(active, w2[None, :], 0.0)  # w₂ ⊙ mask, per point
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
