"""Triton kernels of multi-view attention with an explicit reference block (forward and backward).

Provenance: FlashAttention-2 (Dao, 2023) tiling with an online softmax, written after the Triton
fused-attention tutorial; the multi-view / reference-block indexing is iso3d's own.

Layout: per object ``b`` and head ``h`` the kernel attends over two key *segments* that are never
concatenated in memory:

* the view segment: the ``V·N`` rows ``b·V·N … (b+1)·V·N − 1`` of the packed ``(B·V, N, H·D)``
  tensors. For contiguous inputs the V views of one object are adjacent rows, so the joint sequence
  of an object is one strided run of memory: no concat, no head transpose (head ``h`` is the column
  offset ``h·D`` inside each ``H·D`` row);
* the reference segment: the ``N_ref`` rows of object ``b`` in the ``(B, N_ref, H·D)`` tensors.

Queries come from the same two segments (reference queries only when requested). One program
handles ``BLOCK_M`` queries of one segment of one (object, head) and loops over both key segments.
The backward pass is split in two kernels without atomics (deterministic): ``dK, dV`` (one program
per key block, looping over all queries) and ``dQ`` (one program per query block, looping over all
keys), after a pre-pass computing ``delta = rowsum(dO ∘ O)``.

Internally the scores are kept in log2 units (``qk_scale = scale·log2 e``) and ``LSE`` stores
``m + log2 l`` per query row, fp32, shape ``(B, H, V·N [+ N_ref])``.

Caution:
* Head dims that are not powers of two (40, 80) are padded to ``BLOCK_D`` with masked loads.
* Under ``TRITON_INTERPRET=1`` (CPU tests) 16-bit ``tl.dot`` is unreliable, so ``UPCAST`` rounds the
  operands to the working dtype and multiplies in fp32, which is what the tensor cores compute
  (exact products, fp32 accumulation).
* fp32 inputs use ``input_precision="ieee"`` (no TF32), to match PyTorch's fp32 attention.
* Only first-order gradients exist (the autograd Function is ``once_differentiable``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._backends import autotune_candidates, interpreter_active

_INTERPRET = interpreter_active()


# Autotuning candidates ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``: Hopper-friendly tiles in the
# spirit of Triton's fused-attention tutorial. Each default fits BLOCK_D = 128 in shared memory with
# room to spare; ``ISO3D_TRITON_AUTOTUNE=0`` keeps only the defaults (one compile per specialization
# instead of one per candidate: the GPU test runs).
FWD_TILES = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3), (64, 128, 4, 2)]
FWD_DEFAULT = (64, 64, 4, 2)
BWD_TILES = [(32, 64, 4, 2), (64, 64, 4, 2), (64, 128, 8, 2), (32, 128, 4, 3)]
BWD_DEFAULT = (32, 64, 4, 2)


def _configs(tiles, default):
    # Under the interpreter one moderately large tile keeps the tests fast.
    chosen = autotune_candidates(tiles, default, interpreter_tile=(32, 32, 4, 1))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in chosen]


_FWD_CONFIGS = _configs(FWD_TILES, FWD_DEFAULT)
_BWD_CONFIGS = _configs(BWD_TILES, BWD_DEFAULT)
_TUNE_KEY = ["n_view_tokens", "n_ref", "BLOCK_D", "REF_QUERIES", "HAS_REF"]


@triton.jit
def _operand(x, DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    # Round to the working dtype (as the tensor cores see it); widen to fp32 in the interpreter.
    x = x.to(DTYPE)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _load_rows(base, offs_rows, n_rows, offs_d, head_dim, stride_row):
    mask = (offs_rows[:, None] < n_rows) & (offs_d[None, :] < head_dim)
    return tl.load(base + offs_rows[:, None] * stride_row + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _store_rows(base, x, offs_rows, n_rows, offs_d, head_dim, stride_row):
    mask = (offs_rows[:, None] < n_rows) & (offs_d[None, :] < head_dim)
    tl.store(base + offs_rows[:, None] * stride_row + offs_d[None, :], x, mask=mask)


@triton.jit
def _segment_of_block(
    pid, n_view_rows, n_ref_rows, view_base, ref_base, lse_base, BLOCK: tl.constexpr
):
    """Map a program's block index to (row offset, row count, base offset, LSE offset)."""
    n_view_blocks = tl.cdiv(n_view_rows, BLOCK)
    is_ref = pid >= n_view_blocks
    if is_ref:
        start = (pid - n_view_blocks) * BLOCK
        n_rows = n_ref_rows
        base = ref_base
        lse_off = lse_base + n_view_rows
    else:
        start = pid * BLOCK
        n_rows = n_view_rows
        base = view_base
        lse_off = lse_base
    return start, n_rows, base, lse_off, is_ref


# ----------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _fwd_key_segment(
    acc, m_i, l_i, q, K, Vv, n_keys, stride_row, head_dim, qk_scale,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DTYPE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(0, n_keys, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _operand(_load_rows(K, offs_n, n_keys, offs_d, head_dim, stride_row), DTYPE, UPCAST)
        v = _operand(_load_rows(Vv, offs_n, n_keys, offs_d, head_dim, stride_row), DTYPE, UPCAST)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        qk = tl.where(offs_n[None, :] < n_keys, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(_operand(p, DTYPE, UPCAST), v, input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.autotune(configs=_FWD_CONFIGS, key=_TUNE_KEY)
@triton.jit
def _mv_attn_fwd_kernel(
    Q, K, Vv, QR, KR, VR, O, OR, LSE,
    n_view_tokens, n_ref, n_heads, head_dim, stride_row, lse_stride, qk_scale,
    HAS_REF: tl.constexpr, REF_QUERIES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = pid_bh % n_heads
    DTYPE: tl.constexpr = Q.dtype.element_ty
    # -- where this object's rows start (column offset h·D selects the head) --
    view_off = b * n_view_tokens * stride_row + h * head_dim
    ref_off = b * n_ref * stride_row + h * head_dim
    lse_base = pid_bh.to(tl.int64) * lse_stride
    start_m, n_q, q_off, lse_off, is_ref = _segment_of_block(
        pid_m, n_view_tokens, n_ref, view_off, ref_off, lse_base, BLOCK_M
    )
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    if is_ref:
        q = _load_rows(QR + q_off, offs_m, n_q, offs_d, head_dim, stride_row)
    else:
        q = _load_rows(Q + q_off, offs_m, n_q, offs_d, head_dim, stride_row)
    q = _operand(q, DTYPE, UPCAST)
    # -- online softmax over the view keys, then the reference keys --
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc, m_i, l_i = _fwd_key_segment(
        acc, m_i, l_i, q, K + view_off, Vv + view_off, n_view_tokens, stride_row, head_dim,
        qk_scale, BLOCK_N, BLOCK_D, DTYPE, UPCAST, PRECISION,
    )
    if HAS_REF:
        acc, m_i, l_i = _fwd_key_segment(
            acc, m_i, l_i, q, KR + ref_off, VR + ref_off, n_ref, stride_row, head_dim,
            qk_scale, BLOCK_N, BLOCK_D, DTYPE, UPCAST, PRECISION,
        )
    # -- epilogue --
    out = (acc / l_i[:, None]).to(O.dtype.element_ty)
    tl.store(LSE + lse_off + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < n_q)
    if is_ref:
        _store_rows(OR + q_off, out, offs_m, n_q, offs_d, head_dim, stride_row)
    else:
        _store_rows(O + q_off, out, offs_m, n_q, offs_d, head_dim, stride_row)


# ----------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _bwd_delta_kernel(
    O, DO, OR, DOR, DELTA,
    n_view_tokens, n_ref, n_heads, head_dim, stride_row, lse_stride,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # delta = rowsum(dO ∘ O), the softmax-Jacobian term of every query row.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = pid_bh % n_heads
    view_off = b * n_view_tokens * stride_row + h * head_dim
    ref_off = b * n_ref * stride_row + h * head_dim
    start_m, n_q, off, lse_off, is_ref = _segment_of_block(
        pid_m, n_view_tokens, n_ref, view_off, ref_off, pid_bh.to(tl.int64) * lse_stride, BLOCK_M
    )
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    if is_ref:
        o = _load_rows(OR + off, offs_m, n_q, offs_d, head_dim, stride_row)
        do = _load_rows(DOR + off, offs_m, n_q, offs_d, head_dim, stride_row)
    else:
        o = _load_rows(O + off, offs_m, n_q, offs_d, head_dim, stride_row)
        do = _load_rows(DO + off, offs_m, n_q, offs_d, head_dim, stride_row)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + lse_off + offs_m, delta, mask=offs_m < n_q)


@triton.jit
def _bwd_dkdv_query_segment(
    dk, dv, k, v, Q, DO, LSE, DELTA, n_q, stride_row, head_dim, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    DTYPE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in range(0, n_q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_mask = offs_m < n_q
        q = _operand(_load_rows(Q, offs_m, n_q, offs_d, head_dim, stride_row), DTYPE, UPCAST)
        do = _operand(_load_rows(DO, offs_m, n_q, offs_d, head_dim, stride_row), DTYPE, UPCAST)
        lse = tl.load(LSE + offs_m, mask=m_mask, other=0.0)
        delta = tl.load(DELTA + offs_m, mask=m_mask, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # [BLOCK_N, BLOCK_M]
        p_t = tl.where(m_mask[None, :], tl.math.exp2(qk_t - lse[None, :]), 0.0)
        dv += tl.dot(_operand(p_t, DTYPE, UPCAST), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(_operand(ds_t, DTYPE, UPCAST), q, input_precision=PRECISION)
    return dk, dv


@triton.autotune(configs=_BWD_CONFIGS, key=_TUNE_KEY)
@triton.jit
def _mv_attn_bwd_dkdv_kernel(
    Q, K, Vv, QR, KR, VR, DO, DOR, DK, DV, DKR, DVR, LSE, DELTA,
    n_view_tokens, n_ref, n_heads, head_dim, stride_row, lse_stride, qk_scale, sm_scale,
    HAS_REF: tl.constexpr, REF_QUERIES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = pid_bh % n_heads
    DTYPE: tl.constexpr = Q.dtype.element_ty
    view_off = b * n_view_tokens * stride_row + h * head_dim
    ref_off = b * n_ref * stride_row + h * head_dim
    lse_base = pid_bh.to(tl.int64) * lse_stride
    start_n, n_k, k_off, _unused, is_ref = _segment_of_block(
        pid_n, n_view_tokens, n_ref, view_off, ref_off, lse_base, BLOCK_N
    )
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    if is_ref:
        k = _load_rows(KR + k_off, offs_n, n_k, offs_d, head_dim, stride_row)
        v = _load_rows(VR + k_off, offs_n, n_k, offs_d, head_dim, stride_row)
    else:
        k = _load_rows(K + k_off, offs_n, n_k, offs_d, head_dim, stride_row)
        v = _load_rows(Vv + k_off, offs_n, n_k, offs_d, head_dim, stride_row)
    k = _operand(k, DTYPE, UPCAST)
    v = _operand(v, DTYPE, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dk, dv = _bwd_dkdv_query_segment(
        dk, dv, k, v, Q + view_off, DO + view_off, LSE + lse_base, DELTA + lse_base,
        n_view_tokens, stride_row, head_dim, qk_scale, BLOCK_M, BLOCK_D, DTYPE, UPCAST, PRECISION,
    )
    if REF_QUERIES:
        dk, dv = _bwd_dkdv_query_segment(
            dk, dv, k, v, QR + ref_off, DOR + ref_off,
            LSE + lse_base + n_view_tokens, DELTA + lse_base + n_view_tokens,
            n_ref, stride_row, head_dim, qk_scale, BLOCK_M, BLOCK_D, DTYPE, UPCAST, PRECISION,
        )
    dk = (dk * sm_scale).to(DK.dtype.element_ty)
    dv = dv.to(DV.dtype.element_ty)
    if is_ref:
        _store_rows(DKR + k_off, dk, offs_n, n_k, offs_d, head_dim, stride_row)
        _store_rows(DVR + k_off, dv, offs_n, n_k, offs_d, head_dim, stride_row)
    else:
        _store_rows(DK + k_off, dk, offs_n, n_k, offs_d, head_dim, stride_row)
        _store_rows(DV + k_off, dv, offs_n, n_k, offs_d, head_dim, stride_row)


@triton.jit
def _bwd_dq_key_segment(
    dq, q, do, lse, delta, K, Vv, n_keys, stride_row, head_dim, qk_scale,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DTYPE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(0, n_keys, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _operand(_load_rows(K, offs_n, n_keys, offs_d, head_dim, stride_row), DTYPE, UPCAST)
        v = _operand(_load_rows(Vv, offs_n, n_keys, offs_d, head_dim, stride_row), DTYPE, UPCAST)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.where(offs_n[None, :] < n_keys, tl.math.exp2(qk - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(_operand(ds, DTYPE, UPCAST), k, input_precision=PRECISION)
    return dq


@triton.autotune(configs=_BWD_CONFIGS, key=_TUNE_KEY)
@triton.jit
def _mv_attn_bwd_dq_kernel(
    Q, K, Vv, QR, KR, VR, DO, DOR, DQ, DQR, LSE, DELTA,
    n_view_tokens, n_ref, n_heads, head_dim, stride_row, lse_stride, qk_scale, sm_scale,
    HAS_REF: tl.constexpr, REF_QUERIES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = pid_bh % n_heads
    DTYPE: tl.constexpr = Q.dtype.element_ty
    view_off = b * n_view_tokens * stride_row + h * head_dim
    ref_off = b * n_ref * stride_row + h * head_dim
    start_m, n_q, q_off, lse_off, is_ref = _segment_of_block(
        pid_m, n_view_tokens, n_ref, view_off, ref_off, pid_bh.to(tl.int64) * lse_stride, BLOCK_M
    )
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < n_q
    if is_ref:
        q = _load_rows(QR + q_off, offs_m, n_q, offs_d, head_dim, stride_row)
        do = _load_rows(DOR + q_off, offs_m, n_q, offs_d, head_dim, stride_row)
    else:
        q = _load_rows(Q + q_off, offs_m, n_q, offs_d, head_dim, stride_row)
        do = _load_rows(DO + q_off, offs_m, n_q, offs_d, head_dim, stride_row)
    q = _operand(q, DTYPE, UPCAST)
    do = _operand(do, DTYPE, UPCAST)
    lse = tl.load(LSE + lse_off + offs_m, mask=m_mask, other=0.0)
    delta = tl.load(DELTA + lse_off + offs_m, mask=m_mask, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _bwd_dq_key_segment(
        dq, q, do, lse, delta, K + view_off, Vv + view_off, n_view_tokens, stride_row, head_dim,
        qk_scale, BLOCK_N, BLOCK_D, DTYPE, UPCAST, PRECISION,
    )
    if HAS_REF:
        dq = _bwd_dq_key_segment(
            dq, q, do, lse, delta, KR + ref_off, VR + ref_off, n_ref, stride_row, head_dim,
            qk_scale, BLOCK_N, BLOCK_D, DTYPE, UPCAST, PRECISION,
        )
    dq = (dq * sm_scale).to(DQ.dtype.element_ty)
    if is_ref:
        _store_rows(DQR + q_off, dq, offs_m, n_q, offs_d, head_dim, stride_row)
    else:
        _store_rows(DQ + q_off, dq, offs_m, n_q, offs_d, head_dim, stride_row)
