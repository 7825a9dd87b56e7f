"""mv_attention side by side: naive (fp32 scores, MVDream's fallback) vs SDPA on the concatenated
tensors (concat and head transposes included) vs xformers (same concat) vs the Triton kernel.

Shapes are the Isotropic3D UNet's self-attention at its three attention levels (DESIGN.md §2:
32² latents, 4 views, head dim 64): level 1 has 32·32 = 1024 tokens per view and 320/64 = 5 heads,
level 2 16·16 = 256 tokens and 10 heads, level 3 8·8 = 64 tokens and 20 heads. The EMA reference
block adds one more frame of tokens. Batch 2 is one classifier-free-guidance pair; 4 is two.
"""

from __future__ import annotations

import os

import pytest
import torch

from iso3d.kernels import mv_attention, mv_attention_naive, mv_attention_ref
from iso3d.kernels.reference import joint_attention_via_concat
from iso3d.utils.imports import probe

N_VIEWS = 4
HEAD_DIM = 64
LEVELS = {  # level: (tokens per view, heads)
    "L1": (1024, 5),
    "L2": (256, 10),
    "L3": (64, 20),
}
PROVIDERS = ["naive", "sdpa_concat", "xformers", "triton"]
BASELINE = "sdpa_concat"


def _xformers_concat(q, k, v, *, n_views, n_heads, q_ref=None, k_ref=None, v_ref=None, scale=None):
    import xformers.ops as xops

    def attend(qh, kh, vh):  # (B, H, L, D) -> xformers' (B, L, H, D)
        t = lambda x: x.transpose(1, 2)  # noqa: E731
        return t(xops.memory_efficient_attention(t(qh), t(kh), t(vh), scale=scale))

    return joint_attention_via_concat(q, k, v, n_views=n_views, n_heads=n_heads, q_ref=q_ref, k_ref=k_ref, v_ref=v_ref,
                            attend=attend)


def _provider_fn(provider: str, device: torch.device):
    if provider == "naive":
        return mv_attention_naive
    if provider == "sdpa_concat":
        return mv_attention_ref
    if provider == "xformers":
        ok, why = probe("xformers")
        if not ok:
            pytest.skip(f"xformers: {why}")
        if device.type != "cuda":
            pytest.skip("xformers: no CPU attention kernels")
        return _xformers_concat
    if device.type != "cuda":
        pytest.skip("triton: on CPU Triton runs only in its interpreter, a correctness tool, not a timing")
    return lambda *a, **kw: mv_attention(*a, backend="triton", **kw)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("reference", ["none", "ema"])
@pytest.mark.parametrize("batch", [2, 4])
@pytest.mark.parametrize("level", list(LEVELS))
def test_mv_attention(run_bench, bench_device, smoke, level, batch, reference, mode, provider):
    fn = _provider_fn(provider, bench_device)
    tokens, heads = LEVELS[level]
    if smoke:
        tokens = max(8, tokens // 32)
    dtype = torch.bfloat16 if bench_device.type == "cuda" else torch.float32
    dtype = getattr(torch, os.environ.get("ISO3D_BENCH_DTYPE", str(dtype)[6:]))
    channels = heads * HEAD_DIM
    gen = torch.Generator().manual_seed(0)
    make = lambda *s: torch.randn(*s, generator=gen).to(bench_device, dtype).requires_grad_(mode != "fwd")  # noqa: E731
    q, k, v = (make(batch * N_VIEWS, tokens, channels) for _ in range(3))
    refs = {}
    if reference == "ema":
        refs = {name: make(batch, tokens, channels) for name in ("q_ref", "k_ref", "v_ref")}
    leaves = [q, k, v, *refs.values()]
    n_rows = N_VIEWS * tokens + (tokens if refs else 0)  # queries = keys per object
    flops = 4 * batch * heads * n_rows * n_rows * HEAD_DIM  # two matmuls, 2 FLOPs per multiply-add

    def call():
        return fn(q, k, v, n_views=N_VIEWS, n_heads=heads, **refs)

    if mode == "fwd":
        def step():
            with torch.no_grad():
                call()
    else:
        flops = flops * 7 // 2  # backward = 2.5x forward (5 matmuls vs 2), FlashAttention's convention
        cotangents = None

        def step():
            nonlocal cotangents
            outs = [o for o in call() if o is not None]
            if cotangents is None:
                cotangents = [torch.randn_like(o) for o in outs]
            torch.autograd.grad(outs, leaves, cotangents)

    group = f"mv_attention {level} B={batch} V={N_VIEWS} N={tokens} ref={reference} H={heads} D={HEAD_DIM} {str(dtype)[6:]} {mode}"
    run_bench(step, group=group, provider=provider, baseline=BASELINE, work=flops,
              extra=dict(level=level, batch=batch, views=N_VIEWS, tokens=tokens, n_ref=tokens if refs else 0,
                         heads=heads, head_dim=HEAD_DIM, dtype=str(dtype), mode=mode))
