"""The field's density head (32 → 64 → 1 ReLU MLP and its input gradient): PyTorch twin vs fused Triton.

What analytic normals evaluate at every kept sample (``iso3d.kernels.mlp_head``). Point counts
2^18–2^23 span one SDS step (4 views × 256² rays × ~10–40 kept samples per ray is 2.6–10.5 M).
fwd+bwd takes a cotangent on both outputs (the density and the normals both feed the loss).
``density`` is the density alone without gradients (``mlp_head``): what the renderer's pruning pass
evaluates at every marched sample (the twin is the field's ``Linear → ReLU → Linear``).
"""

from __future__ import annotations

import pytest
import torch

from iso3d.kernels.mlp_head import mlp_head, mlp_head_with_input_grad

POINTS = [2**18, 2**20, 2**22, 2**23]
CPU_MAX_POINTS = 2**20
K, HIDDEN = 32, 64  # the official field: 16 levels × 2 features, 64 hidden units


@pytest.mark.parametrize("provider", ["torch", "triton"])
@pytest.mark.parametrize("mode", ["density", "fwd", "fwd+bwd"])
@pytest.mark.parametrize("n_points", POINTS, ids=lambda n: f"2^{n.bit_length() - 1}")
def test_mlp_head(run_bench, bench_device, smoke, n_points, mode, provider):
    if bench_device.type != "cuda":
        if provider == "triton":
            pytest.skip("triton: on CPU Triton runs only in its interpreter, a correctness tool, not a timing")
        if n_points > CPU_MAX_POINTS and not smoke:
            pytest.skip(f"torch twin on CPU: only up to {CPU_MAX_POINTS} points")
    if smoke:
        n_points >>= 12
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(n_points, K, generator=gen).to(bench_device)
    grads = mode == "fwd+bwd"
    w1 = (torch.randn(HIDDEN, K, generator=gen) / K**0.5).to(bench_device).requires_grad_(grads)
    w2 = (torch.randn(HIDDEN, generator=gen) / HIDDEN**0.5).to(bench_device).requires_grad_(grads)
    y.requires_grad_(grads)
    draw = torch.randn(n_points, generator=gen).to(bench_device)
    dv = torch.randn(n_points, K, generator=gen).to(bench_device)

    def step():
        if mode == "density":
            with torch.no_grad():
                mlp_head(y, w1, w2, backend=provider)
            return
        with torch.set_grad_enabled(mode != "fwd"):
            raw, v = mlp_head_with_input_grad(y, w1, w2, backend=provider)
            if mode != "fwd":
                torch.autograd.grad([raw, v], [y, w1, w2], [draw, dv])

    run_bench(step, group=f"mlp_head {K}->{HIDDEN}->1 P={n_points} {mode}", provider=provider, baseline="torch",
              work=n_points, unit="Mpoints/s", extra=dict(n_points=n_points, mode=mode, k=K, hidden=HIDDEN))
