"""Triton kernels of GroupNorm with an optional fused SiLU, for NCHW and NHWC (channels-last) tensors.

Why: the VAE encode of every SDS step runs 22 GroupNorm (+ SiLU) layers forward and backward. In
PyTorch each is a statistics kernel, a normalizing pass and a separate SiLU pass (two more in the
backward), and on CUDA PyTorch's GroupNorm returns NCHW whatever the input, so a channels-last VAE
(the layout cuDNN's bf16 convolutions run in) pays a layout conversion around every norm: the
eighth session measured the channels-last VAE 1.4× *slower* than NCHW on an H100, and the ninth
session's profile of the 64² step shows 278 layout-transform kernels per step.

Every kernel sees the input as ``x[n, hw, c]`` through element strides, so one kernel serves NCHW
(``hw`` contiguous) and NHWC (``c`` contiguous), and the output keeps the input's layout. A program
handles a tile of ``BLOCK_HW`` positions × ``BLOCK_C`` channels, computing in fp32.

Forward (3 launches):
  1. ``_stats_kernel``: a program per (sample, chunk of positions, channel block) walks its chunk's
     tiles and keeps, per channel, the mean and the centred sum of squares ``M2`` (tiles merged by
     Chan's parallel formula, so there is no ``E[x²] − E[x]²`` cancellation).
  2. ``_finalize_stats_kernel``: a program per (sample, group) merges its channels' chunk partials:
     ``μ = Σ nᵢμᵢ / M``, ``M2 = Σ M2ᵢ + nᵢ(μᵢ − μ)²``, ``rstd = 1/√(M2/M + eps)``, ``M = HW·C/G``.
  3. ``_apply_kernel``: ``y = act(x·a_c + b_c)`` with ``a_c = rstd_g·w_c``, ``b_c = β_c − μ_g·a_c``.

Backward (3 launches), with ``x̂ = (x − μ)·rstd``, ``z = x̂·w + β`` and ``dz = dy·silu'(z)`` (or ``dy``):
  1. ``_bwd_partials_kernel``: per (sample, chunk, channel) ``Σ dz`` and ``Σ dz·x̂`` (also dβ and dw).
  2. ``_finalize_bwd_kernel``: per (sample, group) ``s₁ = Σ_c w_c Σ dz``, ``s₂ = Σ_c w_c Σ dz·x̂``.
  3. ``_bwd_apply_kernel``: ``dx = rstd·(dz·w − (s₁ + x̂·s₂)/M)``.
Only ``x`` (and the per-group μ, rstd) are saved for the backward; ``z`` is recomputed.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile_offsets(hws, cs, s_hw, s_c):
    return hws[:, None] * s_hw + cs[None, :] * s_c


@triton.jit
def _chunk_of_program(C, HW, CHUNK, N_CHUNKS, BLOCK_C: tl.constexpr):
    """A reduction program's row (sample · N_CHUNKS + chunk), sample, positions [hw0, hw_end), channels."""
    row = tl.program_id(0)
    hw0 = (row % N_CHUNKS) * CHUNK
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return row, row // N_CHUNKS, hw0, tl.minimum(hw0 + CHUNK, HW), cs, cs < C


@triton.jit
def _tile_of_program(C, HW, N_TILES, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """An elementwise program's sample, positions, channels and masks (row: sample · N_TILES + tile)."""
    row = tl.program_id(0)
    hws = (row % N_TILES) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    return row // N_TILES, hws, cs, c_ok, (hws < HW)[:, None] & c_ok[None, :]


@triton.jit
def _stats_kernel(X, MEAN_P, M2_P, C, HW, CHUNK, N_CHUNKS, sx_n, sx_c, sx_hw,
                  BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    row, n, hw0, hw_end, cs, c_ok = _chunk_of_program(C, HW, CHUNK, N_CHUNKS, BLOCK_C)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(hw0, hw_end, BLOCK_HW):
        hws = start + tl.arange(0, BLOCK_HW)
        ok = (hws < hw_end)[:, None] & c_ok[None, :]
        x = tl.load(X + n * sx_n + _tile_offsets(hws, cs, sx_hw, sx_c), mask=ok, other=0.0).to(tl.float32)
        seen = (start - hw0).to(tl.float32)
        count = tl.minimum(hw_end - start, BLOCK_HW).to(tl.float32)
        tile_mean = tl.sum(x, axis=0) / count
        centred = tl.where(ok, x - tile_mean[None, :], 0.0)
        delta = tile_mean - mean
        total = seen + count
        mean += delta * (count / total)
        m2 += tl.sum(centred * centred, axis=0) + delta * delta * (seen * count / total)
    tl.store(MEAN_P + row * C + cs, mean, mask=c_ok)
    tl.store(M2_P + row * C + cs, m2, mask=c_ok)


@triton.jit
def _chunk_counts(ks, HW, CHUNK):
    return tl.maximum(tl.minimum(HW - ks * CHUNK, CHUNK), 0).to(tl.float32)


@triton.jit
def _finalize_stats_kernel(MEAN_P, M2_P, MEAN, RSTD, C, HW, CHUNK, N_CHUNKS, CPG, G, eps, group_size,
                           BLOCK_K: tl.constexpr, BLOCK_CPG: tl.constexpr):
    pid = tl.program_id(0)  # sample · G + group
    n = pid // G
    cs = (pid % G) * CPG + tl.arange(0, BLOCK_CPG)
    c_ok = tl.arange(0, BLOCK_CPG) < CPG
    size = group_size  # HW·CPG as a float from the host: ints equal to 1 are specialized into constants
    acc = tl.zeros([BLOCK_K, BLOCK_CPG], dtype=tl.float32)
    for k0 in range(0, N_CHUNKS, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        ok = (ks < N_CHUNKS)[:, None] & c_ok[None, :]
        offs = (n * N_CHUNKS + ks)[:, None] * C + cs[None, :]
        acc += tl.load(MEAN_P + offs, mask=ok, other=0.0) * _chunk_counts(ks, HW, CHUNK)[:, None]
    mean = tl.sum(tl.sum(acc, axis=1), axis=0) / size
    acc = tl.zeros([BLOCK_K, BLOCK_CPG], dtype=tl.float32)
    for k0 in range(0, N_CHUNKS, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        ok = (ks < N_CHUNKS)[:, None] & c_ok[None, :]
        offs = (n * N_CHUNKS + ks)[:, None] * C + cs[None, :]
        d = tl.load(MEAN_P + offs, mask=ok, other=0.0) - mean
        acc += tl.load(M2_P + offs, mask=ok, other=0.0) + tl.where(ok, d * d, 0.0) * _chunk_counts(ks, HW, CHUNK)[:, None]
    var = tl.sum(tl.sum(acc, axis=1), axis=0) / size
    tl.store(MEAN + pid, mean)
    tl.store(RSTD + pid, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _affine(MEAN, RSTD, W, B, n, cs, c_ok, CPG, G):
    """Per channel of the tile: (μ, rstd) of its group, and the affine weight and bias."""
    groups = n * G + cs // CPG
    mean = tl.load(MEAN + groups, mask=c_ok, other=0.0)
    rstd = tl.load(RSTD + groups, mask=c_ok, other=0.0)
    w = tl.load(W + cs, mask=c_ok, other=0.0).to(tl.float32)
    b = tl.load(B + cs, mask=c_ok, other=0.0).to(tl.float32)
    return mean, rstd, w, b


@triton.jit
def _apply_kernel(X, Y, MEAN, RSTD, W, B, C, HW, CPG, G, N_TILES, sx_n, sx_c, sx_hw, sy_n, sy_c, sy_hw,
                  SILU: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    n, hws, cs, c_ok, ok = _tile_of_program(C, HW, N_TILES, BLOCK_HW, BLOCK_C)
    mean, rstd, w, b = _affine(MEAN, RSTD, W, B, n, cs, c_ok, CPG, G)
    scale = rstd * w
    shift = b - mean * scale
    x = tl.load(X + n * sx_n + _tile_offsets(hws, cs, sx_hw, sx_c), mask=ok, other=0.0).to(tl.float32)
    y = tl.where(ok, x * scale[None, :] + shift[None, :], 0.0)  # masked lanes: 0, not exp overflow
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(Y + n * sy_n + _tile_offsets(hws, cs, sy_hw, sy_c), y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _dz_and_xhat(X, DY, n, hws, cs, ok, mean, rstd, w, b, sx_n, sx_c, sx_hw, sd_n, sd_c, sd_hw,
                 SILU: tl.constexpr):
    """``x̂`` and the cotangent ``dz`` of the affine output ``z = x̂·w + β`` (through SiLU if fused)."""
    x = tl.load(X + n * sx_n + _tile_offsets(hws, cs, sx_hw, sx_c), mask=ok, other=0.0).to(tl.float32)
    dz = tl.load(DY + n * sd_n + _tile_offsets(hws, cs, sd_hw, sd_c), mask=ok, other=0.0).to(tl.float32)
    xhat = tl.where(ok, (x - mean[None, :]) * rstd[None, :], 0.0)  # masked lanes: 0, not exp overflow
    if SILU:
        z = xhat * w[None, :] + b[None, :]
        s = tl.sigmoid(z)
        dz = dz * s * (1.0 + z * (1.0 - s))
    return xhat, dz


@triton.jit
def _bwd_partials_kernel(X, DY, MEAN, RSTD, W, B, P1, P2, C, HW, CHUNK, N_CHUNKS, CPG, G,
                         sx_n, sx_c, sx_hw, sd_n, sd_c, sd_hw,
                         SILU: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    row, n, hw0, hw_end, cs, c_ok = _chunk_of_program(C, HW, CHUNK, N_CHUNKS, BLOCK_C)
    mean, rstd, w, b = _affine(MEAN, RSTD, W, B, n, cs, c_ok, CPG, G)
    sum_dz = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_dz_xhat = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(hw0, hw_end, BLOCK_HW):
        hws = start + tl.arange(0, BLOCK_HW)
        ok = (hws < hw_end)[:, None] & c_ok[None, :]
        xhat, dz = _dz_and_xhat(X, DY, n, hws, cs, ok, mean, rstd, w, b, sx_n, sx_c, sx_hw, sd_n, sd_c, sd_hw, SILU)
        sum_dz += tl.sum(dz, axis=0)
        sum_dz_xhat += tl.sum(dz * xhat, axis=0)  # masked lanes have dz = 0
    tl.store(P1 + row * C + cs, sum_dz, mask=c_ok)
    tl.store(P2 + row * C + cs, sum_dz_xhat, mask=c_ok)


@triton.jit
def _finalize_bwd_kernel(P1, P2, W, S1, S2, C, N_CHUNKS, CPG, G, BLOCK_K: tl.constexpr, BLOCK_CPG: tl.constexpr):
    pid = tl.program_id(0)  # sample · G + group
    n = pid // G
    cs = (pid % G) * CPG + tl.arange(0, BLOCK_CPG)
    c_ok = tl.arange(0, BLOCK_CPG) < CPG
    w = tl.load(W + cs, mask=c_ok, other=0.0).to(tl.float32)
    acc1 = tl.zeros([BLOCK_K, BLOCK_CPG], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_K, BLOCK_CPG], dtype=tl.float32)
    for k0 in range(0, N_CHUNKS, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        ok = (ks < N_CHUNKS)[:, None] & c_ok[None, :]
        offs = (n * N_CHUNKS + ks)[:, None] * C + cs[None, :]
        acc1 += tl.load(P1 + offs, mask=ok, other=0.0)
        acc2 += tl.load(P2 + offs, mask=ok, other=0.0)
    tl.store(S1 + pid, tl.sum(tl.sum(acc1, axis=0) * w, axis=0))
    tl.store(S2 + pid, tl.sum(tl.sum(acc2, axis=0) * w, axis=0))


@triton.jit
def _bwd_apply_kernel(X, DY, DX, MEAN, RSTD, W, B, S1, S2, C, HW, CPG, G, N_TILES, group_size,
                      sx_n, sx_c, sx_hw, sd_n, sd_c, sd_hw, sdx_n, sdx_c, sdx_hw,
                      SILU: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    n, hws, cs, c_ok, ok = _tile_of_program(C, HW, N_TILES, BLOCK_HW, BLOCK_C)
    mean, rstd, w, b = _affine(MEAN, RSTD, W, B, n, cs, c_ok, CPG, G)
    xhat, dz = _dz_and_xhat(X, DY, n, hws, cs, ok, mean, rstd, w, b, sx_n, sx_c, sx_hw, sd_n, sd_c, sd_hw, SILU)
    groups = n * G + cs // CPG
    inv_size = 1.0 / group_size
    s1 = tl.load(S1 + groups, mask=c_ok, other=0.0) * inv_size
    s2 = tl.load(S2 + groups, mask=c_ok, other=0.0) * inv_size
    dx = rstd[None, :] * (dz * w[None, :] - s1[None, :] - xhat * s2[None, :])
    tl.store(DX + n * sdx_n + _tile_offsets(hws, cs, sdx_hw, sdx_c), dx.to(DX.dtype.element_ty), mask=ok)
