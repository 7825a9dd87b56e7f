"""Hash encoding side by side: the PyTorch twin vs Triton vs tiny-cuda-nn (when importable).

``test_hash_grid_jacobian``: features with their Jacobian (analytic normals), twin vs Triton, beside
Triton's plain encoding of the same points (``triton_features_only``: what the Jacobian costs on top).

Config: the official Isotropic3D grid (16 levels × 2 features, 2^19 table, base 16, scale 1.4473).
Point counts 2^18–2^22 span one SDS step: 4 views × 64² rays × ~16–64 occupied samples per ray.
"""

from __future__ import annotations

import pytest
import torch

from iso3d.kernels.hash_grid import HashGridConfig, hash_grid_encode, hash_grid_encode_with_jacobian, init_hash_grid_params
from iso3d.utils.imports import probe

CONFIG = HashGridConfig()  # the official one
POINTS = [2**18, 2**20, 2**22]
CPU_MAX_POINTS = 2**18  # the twin on 2 CPU cores: larger counts take minutes per round
PROVIDERS = ["torch", "triton", "tcnn"]


def _skip_reason(provider: str, device: torch.device, n_points: int, smoke: bool) -> str | None:
    if device.type != "cuda":
        if provider == "triton":
            return "triton: on CPU Triton runs only in its interpreter, a correctness tool, not a timing"
        if provider == "tcnn":
            return "tcnn: tiny-cuda-nn needs CUDA"
        if n_points > CPU_MAX_POINTS and not smoke:
            return f"torch twin on CPU: only up to {CPU_MAX_POINTS} points (minutes per round beyond)"
    if provider == "tcnn":
        ok, why = probe("tinycudann")
        if not ok:
            return f"tcnn: {why}"
    return None


def _inputs(n_points: int, mode: str, device: torch.device, smoke: bool):
    """Points and the official table (trainable for fwd+bwd); smoke runs use 1/4096 of the points."""
    if smoke:
        n_points = n_points >> 12
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n_points, 3, generator=gen).to(device)
    table = init_hash_grid_params(CONFIG, generator=gen, device=device).requires_grad_(mode != "fwd")
    return n_points, x, table, gen


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("n_points", POINTS, ids=lambda n: f"2^{n.bit_length() - 1}")
def test_hash_grid(run_bench, bench_device, smoke, n_points, mode, provider):
    reason = _skip_reason(provider, bench_device, n_points, smoke)
    if reason:
        pytest.skip(reason)
    n_points, x, table, gen = _inputs(n_points, mode, bench_device, smoke)
    cotangent = torch.randn(n_points, CONFIG.n_output_dims, generator=gen).to(bench_device)

    def step():
        if mode == "fwd":
            with torch.no_grad():
                hash_grid_encode(x, table, CONFIG, backend=provider, check_range=False)
        else:
            y = hash_grid_encode(x, table, CONFIG, backend=provider, check_range=False)
            torch.autograd.grad(y, table, cotangent)

    run_bench(step, group=f"hash_grid official P={n_points} {mode}", provider=provider, baseline="torch",
              work=n_points, unit="Mpoints/s", extra=dict(n_points=n_points, mode=mode, config=CONFIG.to_tcnn()))


@pytest.mark.parametrize("provider", ["torch", "triton", "triton_features_only"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("n_points", POINTS, ids=lambda n: f"2^{n.bit_length() - 1}")
def test_hash_grid_jacobian(run_bench, bench_device, smoke, n_points, mode, provider):
    backend = "triton" if provider.startswith("triton") else provider
    reason = _skip_reason(backend, bench_device, n_points, smoke)
    if reason:
        pytest.skip(reason.replace(backend, provider, 1))
    n_points, x, table, gen = _inputs(n_points, mode, bench_device, smoke)
    dy = torch.randn(n_points, CONFIG.n_output_dims, generator=gen).to(bench_device)
    djac = torch.randn(n_points, CONFIG.n_output_dims, 3, generator=gen).to(bench_device)

    def step():
        with torch.set_grad_enabled(mode != "fwd"):
            if provider == "triton_features_only":
                outs, cots = (hash_grid_encode(x, table, CONFIG, backend=backend, check_range=False),), (dy,)
            else:
                outs, cots = hash_grid_encode_with_jacobian(x, table, CONFIG, backend=backend, check_range=False), (dy, djac)
            if mode != "fwd":
                torch.autograd.grad(outs, table, cots)

    run_bench(step, group=f"hash_grid+jacobian official P={n_points} {mode}", provider=provider, baseline="torch",
              work=n_points, unit="Mpoints/s", extra=dict(n_points=n_points, mode=mode, config=CONFIG.to_tcnn()))


@pytest.mark.parametrize("gather", ["index_select", "embedding"])
def test_gather_backward(run_bench, bench_device, smoke, gather):
    """The twin's corner gather (``kernels.reference._gather_rows``: one ``index_select``) against the
    ``F.embedding`` it replaced, forward and backward, at the CPU default run's shapes: ``cpu_tiny``'s
    8-level grid (2^15 rows per level) and 2^15 samples × 8 levels × 8 corners."""
    import torch.nn.functional as F

    from iso3d.generation import GenerateConfig
    from iso3d.kernels.reference import _gather_rows

    cfg = GenerateConfig.cpu_tiny().field.encoding
    gen = torch.Generator().manual_seed(0)
    n_points = 2**15 >> (8 if smoke else 0)
    rows_total = cfg.n_params // cfg.n_features_per_level
    table = torch.randn(rows_total, cfg.n_features_per_level, generator=gen).to(bench_device).requires_grad_()
    rows = torch.randint(0, rows_total, (n_points, cfg.n_levels, 8), generator=gen).to(bench_device)
    cotangent = torch.randn(*rows.shape, cfg.n_features_per_level, generator=gen).to(bench_device)
    op = _gather_rows if gather == "index_select" else (lambda t, r: F.embedding(r, t))

    def step():
        (grad,) = torch.autograd.grad(op(table, rows), table, cotangent)
        return grad

    if gather == "embedding":  # the same sums
        torch.testing.assert_close(step(), torch.autograd.grad(_gather_rows(table, rows), table, cotangent)[0])
    run_bench(step, group=f"hash-grid twin gather fwd+bwd P={n_points} L={cfg.n_levels}", provider=gather,
              baseline="embedding", work=n_points, unit="Mpoints/s",
              extra=dict(table_rows=rows_total, levels=cfg.n_levels, points=n_points))
