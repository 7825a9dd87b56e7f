"""Analytic normals' density part, side by side: the fused op vs the separate ops vs the PyTorch twin.

* ``fused``: :func:`iso3d.kernels.density_gradient.hash_grid_density_with_gradient` (Triton; J level-major).
* ``separate``: the hash grid's Jacobian op (Triton), the density head op (Triton) and a PyTorch
  contraction ``(J·v).sum`` — the field's ``analytic_normals_impl="separate"``.
* ``torch``: the twin (the separate ops' twins composed).

Official grid and MLP (16 levels × 2 features, 2^19 table; 32 → 64 → 1). fwd+bwd puts a cotangent
on all three outputs (features → albedo, raw → density, gradient → normals), as an SDS step does.
"""

from __future__ import annotations

import pytest
import torch

from iso3d.kernels.density_gradient import hash_grid_density_with_gradient
from iso3d.kernels.hash_grid import HashGridConfig, hash_grid_encode_with_jacobian, init_hash_grid_params
from iso3d.kernels.mlp_head import mlp_head_with_input_grad
from iso3d.kernels.reference import jacobian_transpose_times

CONFIG = HashGridConfig()
HIDDEN = 64
POINTS = [2**16, 2**20, 2**22, 2**23]
CPU_MAX_POINTS = 2**16


def _separate(x, table, w1, w2):
    feats, jac = hash_grid_encode_with_jacobian(x, table, CONFIG, backend="triton", check_range=False)
    raw, v = mlp_head_with_input_grad(feats, w1, w2, backend="triton")
    return feats, raw, jacobian_transpose_times(jac, v)


@pytest.mark.parametrize("provider", ["torch", "separate", "fused"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("n_points", POINTS, ids=lambda n: f"2^{n.bit_length() - 1}")
def test_density_gradient(run_bench, bench_device, smoke, n_points, mode, provider):
    if bench_device.type != "cuda":
        if provider != "torch":
            pytest.skip(f"{provider}: on CPU Triton runs only in its interpreter, a correctness tool, not a timing")
        if n_points > CPU_MAX_POINTS and not smoke:
            pytest.skip(f"torch twin on CPU: only up to {CPU_MAX_POINTS} points (seconds per round beyond)")
    if smoke:
        n_points >>= 12
    gen = torch.Generator().manual_seed(0)
    grad = mode != "fwd"
    x = torch.rand(n_points, 3, generator=gen).to(bench_device)
    table = init_hash_grid_params(CONFIG, generator=gen, device=bench_device).requires_grad_(grad)
    w1 = (torch.randn(HIDDEN, CONFIG.n_output_dims, generator=gen) / 32**0.5).to(bench_device).requires_grad_(grad)
    w2 = (torch.randn(HIDDEN, generator=gen) / 8).to(bench_device).requires_grad_(grad)
    cots = [torch.randn(n_points, CONFIG.n_output_dims, generator=gen).to(bench_device),
            torch.randn(n_points, generator=gen).to(bench_device), torch.randn(n_points, 3, generator=gen).to(bench_device)]

    def step():
        with torch.set_grad_enabled(grad):
            if provider == "separate":
                outs = _separate(x, table, w1, w2)
            else:
                outs = hash_grid_density_with_gradient(x, table, CONFIG, w1, w2, backend=provider, check_range=False)
            if grad:
                torch.autograd.grad(outs, [table, w1, w2], [c.to(o.dtype) for c, o in zip(cots, outs)])

    run_bench(step, group=f"density+gradient official P={n_points} {mode}", provider=provider, baseline="torch",
              work=n_points, unit="Mpoints/s", extra=dict(n_points=n_points, mode=mode, config=CONFIG.to_tcnn(), hidden=HIDDEN))
