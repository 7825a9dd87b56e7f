"""Triton kernels of the multiresolution hash encoding (Müller et al. 2022), tcnn-compatible.

Provenance: the algorithm of tiny-cuda-nn's ``kernel_grid`` / ``kernel_grid_backward`` (linear
interpolation, ``pos = fma(scale, x, 0.5)``, dense indexing while ``resolution³`` fits the level's
table, else the coherent prime hash ``x·1 ⊕ y·2654435761 ⊕ z·805459861`` mod 2³², then modulo the
level size); the Triton formulation is iso3d's own.

Grid: ``(cdiv(P, BLOCK), L)`` — one program encodes BLOCK points at one level, so one level's table
is hot in cache at a time (tcnn's reasoning). Per-level scale, resolution, row offset and size come
from small device tables built from :class:`HashGridConfig` (the single source of truth).

Backward: table gradients accumulate with fp32 atomics into a zeroed buffer (non-deterministic
summation order, as tcnn); point gradients (for analytic normals) accumulate across levels with
fp32 atomics into ``[P, 3]``. Every atomic is ``sem="relaxed"``: Triton's default (acq_rel) lowers to
``atom.acq_rel`` with its fences, while a sum read only after the kernel needs no ordering; with
relaxed, ptxas emits fire-and-forget ``red`` (``tests/kernels/test_compile.py`` checks the PTX).

Caution: index arithmetic is int64 with explicit 32-bit wrap of the hash products, which matches
tcnn's uint32 arithmetic for every level whose lattice fits in 2³¹ per axis.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .hash_grid_config import HASH_PRIMES

# Globals a kernel reads must be tl.constexpr instances (an annotation is not enough for the
# compiler, though the interpreter accepts it).
HASH_P1 = tl.constexpr(HASH_PRIMES[1])
HASH_P2 = tl.constexpr(HASH_PRIMES[2])
MASK32 = tl.constexpr(0xFFFFFFFF)


@triton.jit
def _level_meta(SCALES, RESOLUTIONS, OFFSETS, SIZES, level):
    scale = tl.load(SCALES + level)
    res = tl.load(RESOLUTIONS + level).to(tl.int64)
    offset = tl.load(OFFSETS + level).to(tl.int64)
    size = tl.load(SIZES + level).to(tl.int64)
    return scale, res, offset, size


@triton.jit
def _split(X, offs, mask, scale):
    # pos = scale·x + 0.5 (fused, as tcnn's fmaf); lattice corner and fractional part.
    x = tl.load(X + offs * 3 + 0, mask=mask, other=0.0)
    y = tl.load(X + offs * 3 + 1, mask=mask, other=0.0)
    z = tl.load(X + offs * 3 + 2, mask=mask, other=0.0)
    px = tl.fma(x, scale, 0.5)
    py = tl.fma(y, scale, 0.5)
    pz = tl.fma(z, scale, 0.5)
    gx = tl.floor(px)
    gy = tl.floor(py)
    gz = tl.floor(pz)
    return px - gx, py - gy, pz - gz, gx.to(tl.int64), gy.to(tl.int64), gz.to(tl.int64)


@triton.jit
def _corner_row(gx, gy, gz, bx: tl.constexpr, by: tl.constexpr, bz: tl.constexpr, res, size, offset):
    cx = gx + bx
    cy = gy + by
    cz = gz + bz
    dense = cx + cy * res + cz * res * res
    hashed = (cx ^ ((cy * HASH_P1) & MASK32) ^ ((cz * HASH_P2) & MASK32)) & MASK32
    index = tl.where(res * res * res > size, hashed, dense)
    return offset + index % size


@triton.jit
def _corner_weight(fx, fy, fz, bx: tl.constexpr, by: tl.constexpr, bz: tl.constexpr):
    wx = fx if bx else 1.0 - fx
    wy = fy if by else 1.0 - fy
    wz = fz if bz else 1.0 - fz
    return wx, wy, wz


@triton.jit
def _hash_grid_fwd_kernel(
    X, TABLE, OUT, SCALES, RESOLUTIONS, OFFSETS, SIZES, n_points,
    N_LEVELS: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    level = tl.program_id(1)
    offs = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = offs < n_points
    feats = tl.arange(0, F)
    scale, res, offset, size = _level_meta(SCALES, RESOLUTIONS, OFFSETS, SIZES, level)
    fx, fy, fz, gx, gy, gz = _split(X, offs, mask, scale)
    acc = tl.zeros([BLOCK, F], dtype=tl.float32)
    for corner in tl.static_range(8):
        bx = corner & 1  # constexpr: static_range unrolls the loop
        by = (corner >> 1) & 1
        bz = (corner >> 2) & 1
        row = _corner_row(gx, gy, gz, bx, by, bz, res, size, offset)
        wx, wy, wz = _corner_weight(fx, fy, fz, bx, by, bz)
        val = tl.load(TABLE + row[:, None] * F + feats[None, :], mask=mask[:, None], other=0.0)
        acc += (wx * wy * wz)[:, None] * val.to(tl.float32)
    out_ptr = OUT + offs[:, None] * (N_LEVELS * F) + level * F + feats[None, :]
    tl.store(out_ptr, acc.to(OUT.dtype.element_ty), mask=mask[:, None])


@triton.jit
def _hash_grid_bwd_kernel(
    X, TABLE, DOUT, DTABLE, DX, SCALES, RESOLUTIONS, OFFSETS, SIZES, n_points,
    N_LEVELS: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr,
    NEED_DTABLE: tl.constexpr, NEED_DX: tl.constexpr,
):
    pid = tl.program_id(0)
    level = tl.program_id(1)
    offs = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = offs < n_points
    feats = tl.arange(0, F)
    scale, res, offset, size = _level_meta(SCALES, RESOLUTIONS, OFFSETS, SIZES, level)
    fx, fy, fz, gx, gy, gz = _split(X, offs, mask, scale)
    dout = tl.load(DOUT + offs[:, None] * (N_LEVELS * F) + level * F + feats[None, :], mask=mask[:, None], other=0.0)
    dout = dout.to(tl.float32)
    dfx = tl.zeros([BLOCK], dtype=tl.float32)
    dfy = tl.zeros([BLOCK], dtype=tl.float32)
    dfz = tl.zeros([BLOCK], dtype=tl.float32)
    for corner in tl.static_range(8):
        bx = corner & 1  # constexpr: static_range unrolls the loop
        by = (corner >> 1) & 1
        bz = (corner >> 2) & 1
        row = _corner_row(gx, gy, gz, bx, by, bz, res, size, offset)
        wx, wy, wz = _corner_weight(fx, fy, fz, bx, by, bz)
        ptrs = row[:, None] * F + feats[None, :]
        if NEED_DTABLE:
            tl.atomic_add(DTABLE + ptrs, (wx * wy * wz)[:, None] * dout, mask=mask[:, None], sem="relaxed")
        if NEED_DX:
            val = tl.load(TABLE + ptrs, mask=mask[:, None], other=0.0).to(tl.float32)
            g = tl.sum(val * dout, axis=1)  # dL/d(weight of this corner)
            # d(weight)/d(frac): ±1 on the differentiated axis times the other two factors.
            dfx += g * (wy * wz) * (1.0 if bx else -1.0)
            dfy += g * (wx * wz) * (1.0 if by else -1.0)
            dfz += g * (wx * wy) * (1.0 if bz else -1.0)
    if NEED_DX:
        tl.atomic_add(DX + offs * 3 + 0, dfx * scale, mask=mask, sem="relaxed")
        tl.atomic_add(DX + offs * 3 + 1, dfy * scale, mask=mask, sem="relaxed")
        tl.atomic_add(DX + offs * 3 + 2, dfz * scale, mask=mask, sem="relaxed")


# Features with their Jacobian ∂y/∂x (analytic normals without a double backward): with the corner
# weight w = ωx·ωy·ωz (ω = f or 1 − f, sign s = ±1), ∂w/∂f_x = s_x·ωy·ωz etc., and ∂x = scale·∂f.
# JAC is in the table's dtype like OUT, laid out by strides (elements) of the axis d, the level and the
# point; a level's F features are contiguous. The public op uses axis-major [P, 3, L·F]; the fused
# density op (density_gradient.py) level-major [3, L, P, F], where a program's block of points is one
# contiguous run per axis. (Axis last, [P, L·F, 3], scattered each value 12 bytes from the next: the
# ninth session's H100 profile put that forward at 4.7 ns per point against 0.9 without J.)


@triton.jit
def _jac_pointers(JAC, offs, level, feats, jac_stride_d, jac_stride_level, jac_stride_point):
    # [BLOCK, F] pointers to axis 0 of this level's J, and the axis stride, in int64 (3·L·P·F can pass
    # 2³¹; a stride may arrive as an i32 scalar or, when 1, as a constexpr, hence the arithmetic).
    lvl = level.to(tl.int64)
    base = JAC + lvl * jac_stride_level + offs[:, None] * jac_stride_point + feats[None, :]
    return base, lvl * 0 + jac_stride_d


@triton.jit
def _hash_grid_jac_fwd_kernel(
    X, TABLE, OUT, JAC, SCALES, RESOLUTIONS, OFFSETS, SIZES, n_points, jac_stride_d, jac_stride_level, jac_stride_point,
    N_LEVELS: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    level = tl.program_id(1)
    offs = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = offs < n_points
    feats = tl.arange(0, F)
    scale, res, offset, size = _level_meta(SCALES, RESOLUTIONS, OFFSETS, SIZES, level)
    fx, fy, fz, gx, gy, gz = _split(X, offs, mask, scale)
    acc = tl.zeros([BLOCK, F], dtype=tl.float32)
    jx = tl.zeros([BLOCK, F], dtype=tl.float32)
    jy = tl.zeros([BLOCK, F], dtype=tl.float32)
    jz = tl.zeros([BLOCK, F], dtype=tl.float32)
    for corner in tl.static_range(8):
        bx = corner & 1  # constexpr: static_range unrolls the loop
        by = (corner >> 1) & 1
        bz = (corner >> 2) & 1
        row = _corner_row(gx, gy, gz, bx, by, bz, res, size, offset)
        wx, wy, wz = _corner_weight(fx, fy, fz, bx, by, bz)
        val = tl.load(TABLE + row[:, None] * F + feats[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
        acc += (wx * wy * wz)[:, None] * val
        jx += ((wy * wz) * (1.0 if bx else -1.0))[:, None] * val
        jy += ((wx * wz) * (1.0 if by else -1.0))[:, None] * val
        jz += ((wx * wy) * (1.0 if bz else -1.0))[:, None] * val
    column = level * F + feats[None, :]
    tl.store(OUT + offs[:, None] * (N_LEVELS * F) + column, acc.to(OUT.dtype.element_ty), mask=mask[:, None])
    jac_ptr, stride_d = _jac_pointers(JAC, offs, level, feats, jac_stride_d, jac_stride_level, jac_stride_point)
    tl.store(jac_ptr, (jx * scale).to(JAC.dtype.element_ty), mask=mask[:, None])
    tl.store(jac_ptr + stride_d, (jy * scale).to(JAC.dtype.element_ty), mask=mask[:, None])
    tl.store(jac_ptr + 2 * stride_d, (jz * scale).to(JAC.dtype.element_ty), mask=mask[:, None])


@triton.jit
def _hash_grid_jac_bwd_kernel(
    X, TABLE, DOUT, DJAC, DG, DTABLE, DX, SCALES, RESOLUTIONS, OFFSETS, SIZES, n_points,
    jac_stride_d, jac_stride_level, jac_stride_point,
    N_LEVELS: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr,
    NEED_DTABLE: tl.constexpr, NEED_DX: tl.constexpr, DJAC_OUTER: tl.constexpr,
):
    # DJAC is laid out as JAC (the strides); or, DJAC_OUTER (the fused density op, where g = Jᵀv),
    # dJ = v ⊗ dg is never stored: DJAC is v, point-major [P, L·F] fp32, and DG is dg [P, 3].
    # dtable[row_c] += w_c·dy + scale·Σ_d ∂w_c/∂f_d·dJ_d;  dx_e = scale·Σ_c (∂w_c/∂f_e·⟨v_c, dy⟩
    #                  + scale·Σ_{d≠e} ∂²w_c/∂f_d∂f_e·⟨v_c, dJ_d⟩), with ∂²w/∂f_x∂f_y = s_x·s_y·ωz etc.
    pid = tl.program_id(0)
    level = tl.program_id(1)
    offs = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = offs < n_points
    feats = tl.arange(0, F)
    scale, res, offset, size = _level_meta(SCALES, RESOLUTIONS, OFFSETS, SIZES, level)
    fx, fy, fz, gx, gy, gz = _split(X, offs, mask, scale)
    column = level * F + feats[None, :]
    dout = tl.load(DOUT + offs[:, None] * (N_LEVELS * F) + column, mask=mask[:, None], other=0.0).to(tl.float32)
    if DJAC_OUTER:
        v = tl.load(DJAC + offs[:, None] * (N_LEVELS * F) + column, mask=mask[:, None], other=0.0) * scale
        djx = v * tl.load(DG + offs * 3 + 0, mask=mask, other=0.0)[:, None]
        djy = v * tl.load(DG + offs * 3 + 1, mask=mask, other=0.0)[:, None]
        djz = v * tl.load(DG + offs * 3 + 2, mask=mask, other=0.0)[:, None]
    else:
        djac_ptr, stride_d = _jac_pointers(DJAC, offs, level, feats, jac_stride_d, jac_stride_level, jac_stride_point)
        djx = tl.load(djac_ptr, mask=mask[:, None], other=0.0).to(tl.float32) * scale
        djy = tl.load(djac_ptr + stride_d, mask=mask[:, None], other=0.0).to(tl.float32) * scale
        djz = tl.load(djac_ptr + 2 * stride_d, mask=mask[:, None], other=0.0).to(tl.float32) * scale
    dfx = tl.zeros([BLOCK], dtype=tl.float32)
    dfy = tl.zeros([BLOCK], dtype=tl.float32)
    dfz = tl.zeros([BLOCK], dtype=tl.float32)
    for corner in tl.static_range(8):
        bx = corner & 1  # constexpr: static_range unrolls the loop
        by = (corner >> 1) & 1
        bz = (corner >> 2) & 1
        sx = 1.0 if bx else -1.0
        sy = 1.0 if by else -1.0
        sz = 1.0 if bz else -1.0
        row = _corner_row(gx, gy, gz, bx, by, bz, res, size, offset)
        wx, wy, wz = _corner_weight(fx, fy, fz, bx, by, bz)
        ptrs = row[:, None] * F + feats[None, :]
        if NEED_DTABLE:
            grad_row = ((wx * wy * wz)[:, None] * dout + (sx * wy * wz)[:, None] * djx
                        + (sy * wx * wz)[:, None] * djy + (sz * wx * wy)[:, None] * djz)
            tl.atomic_add(DTABLE + ptrs, grad_row, mask=mask[:, None], sem="relaxed")
        if NEED_DX:
            val = tl.load(TABLE + ptrs, mask=mask[:, None], other=0.0).to(tl.float32)
            a = tl.sum(val * dout, axis=1)
            cx = tl.sum(val * djx, axis=1)  # scale already folded into dJ
            cy = tl.sum(val * djy, axis=1)
            cz = tl.sum(val * djz, axis=1)
            dfx += sx * (wy * wz * a + sy * wz * cy + sz * wy * cz)
            dfy += sy * (wx * wz * a + sx * wz * cx + sz * wx * cz)
            dfz += sz * (wx * wy * a + sx * wy * cx + sy * wx * cy)
    if NEED_DX:
        tl.atomic_add(DX + offs * 3 + 0, dfx * scale, mask=mask, sem="relaxed")
        tl.atomic_add(DX + offs * 3 + 1, dfy * scale, mask=mask, sem="relaxed")
        tl.atomic_add(DX + offs * 3 + 2, dfz * scale, mask=mask, sem="relaxed")


@triton.jit
def _jac_matvec_kernel(
    JAC, DG, DV, n_points, jac_stride_d, jac_stride_level, jac_stride_point,
    N_LEVELS: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr,
):
    # dv[p, l·F + f] = Σ_d J_d[l, p, f]·dg[p, d]: the gradient that g = Jᵀv sends to v (the fused
    # density op's backward). One level per program, like the kernels above: J is read in contiguous runs.
    pid = tl.program_id(0)
    level = tl.program_id(1)
    offs = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = offs < n_points
    feats = tl.arange(0, F)
    ptr, stride_d = _jac_pointers(JAC, offs, level, feats, jac_stride_d, jac_stride_level, jac_stride_point)
    dv = tl.load(ptr, mask=mask[:, None], other=0.0).to(tl.float32) * tl.load(DG + offs * 3 + 0, mask=mask, other=0.0)[:, None]
    dv += tl.load(ptr + stride_d, mask=mask[:, None], other=0.0).to(tl.float32) * tl.load(DG + offs * 3 + 1, mask=mask, other=0.0)[:, None]
    dv += tl.load(ptr + 2 * stride_d, mask=mask[:, None], other=0.0).to(tl.float32) * tl.load(DG + offs * 3 + 2, mask=mask, other=0.0)[:, None]
    tl.store(DV + offs[:, None] * (N_LEVELS * F) + level * F + feats[None, :], dv, mask=mask[:, None])
