"""The fused density op (hash grid → density MLP → ∂raw/∂x): Triton vs the twin (the separate ops composed)."""

import pytest
import torch

from iso3d.kernels.density_gradient import hash_grid_density_with_gradient
from iso3d.kernels.hash_grid import TOLERANCES, HashGridConfig

SMALL = [  # dense and hashed levels; F = 2, 4 and 1 (K = 10, 12, 2: padded inside the MLP kernel)
    HashGridConfig(n_levels=5, n_features_per_level=2, log2_hashmap_size=10, base_resolution=5, per_level_scale=1.7),
    HashGridConfig(n_levels=3, n_features_per_level=4, log2_hashmap_size=9, base_resolution=5, per_level_scale=2.5),
    HashGridConfig(n_levels=2, n_features_per_level=1, log2_hashmap_size=8, base_resolution=5, per_level_scale=3.0),
]


def _inputs(cfg, n, hidden, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=gen).to(device)
    table = (torch.rand(cfg.n_params, generator=gen) * 2 - 1).to(device, dtype)
    w1 = (torch.randn(hidden, cfg.n_output_dims, generator=gen) / cfg.n_output_dims**0.5).to(device)
    w2 = (torch.randn(hidden, generator=gen) / hidden**0.5).to(device)
    return x, table, w1, w2


def _run(backend, cfg, inputs, used, seed):
    """Outputs, then gradients in (x, table, w1, w2) of random cotangents on the ``used`` outputs."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    outs = hash_grid_density_with_gradient(*leaves[:2], cfg, *leaves[2:], backend=backend)
    gen = torch.Generator().manual_seed(seed)
    cots = [torch.randn(o.shape, generator=gen).to(o) for o in outs]
    picked = [i for i, name in enumerate(("feats", "raw", "grad")) if name in used]
    grads = torch.autograd.grad([outs[i] for i in picked], leaves, [cots[i] for i in picked])
    return [o.detach() for o in outs] + list(grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("cfg_index", range(len(SMALL)))
@pytest.mark.parametrize("n_points, hidden", [(1, 64), (97, 64), (300, 20)])
def test_triton_matches_twin(cfg_index, n_points, hidden, dtype, device):
    cfg = SMALL[cfg_index]
    seed = 10 * n_points + cfg_index
    inputs = _inputs(cfg, n_points, hidden, dtype, device, seed)
    used = ("feats", "raw", "grad")
    got, want = _run("triton", cfg, inputs, used, seed), _run("torch", cfg, inputs, used, seed)
    tol = TOLERANCES[dtype]
    names = ["feats", "raw", "grad", "dx", "dtable", "dw1", "dw2"]
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        # J (in grad, dx, dtable) scales with the finest level's scale: a bound relative to size, as
        # test_hash_grid's Jacobian test; the MLP adds only fp32 rounding.
        err = (g.double() - w.double()).abs().max().item()
        assert err <= tol["rtol"] * 10 * (1 + w.abs().max().item()), f"{name}: max error {err:.3g}"


@pytest.mark.parametrize("used", [("raw", "grad"), ("feats", "grad"), ("grad",), ("feats", "raw")])
def test_unused_outputs_have_zero_cotangent(used, device):
    # An output no loss uses gets a None cotangent (set_materialize_grads(False)): its work is skipped
    # (no dg: no J·dg pass; no dfeats: nothing added), and the gradients match the twin's.
    cfg = SMALL[0]
    inputs = _inputs(cfg, 70, 64, torch.float32, device, seed=3)
    got, want = _run("triton", cfg, inputs, used, 4), _run("torch", cfg, inputs, used, 4)
    for g, w in zip(got[3:], want[3:]):
        assert (g - w).abs().max().item() <= 1e-4 * (1 + w.abs().max().item())


def test_gradient_is_autograds(device):
    # The twin's g against autograd's ∂raw/∂x through the plain encoding and MLP (the definition).
    from iso3d.kernels.hash_grid import hash_grid_encode

    cfg = SMALL[0]
    x, table, w1, w2 = _inputs(cfg, 50, 32, torch.float32, "cpu", seed=5)
    xg = x.clone().requires_grad_()
    raw_plain = torch.relu(hash_grid_encode(xg, table, cfg, backend="torch") @ w1.T) @ w2
    (want,) = torch.autograd.grad(raw_plain.sum(), xg)
    for backend in ("torch", "triton"):
        _, raw, grad = hash_grid_density_with_gradient(x.to(device), table.to(device), cfg, w1.to(device), w2.to(device),
                                                       backend=backend)
        torch.testing.assert_close(raw.cpu(), raw_plain.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad.cpu(), want, atol=1e-4, rtol=1e-4)


def test_bad_input_names_the_argument():
    cfg = SMALL[0]
    x, table, w1, w2 = _inputs(cfg, 4, 16, torch.float32, "cpu", seed=0)
    with pytest.raises(ValueError, match="w1 \\[H, 10\\]"):
        hash_grid_density_with_gradient(x, table, cfg, w1[:, :4], w2)
    with pytest.raises(TypeError, match="w2 must be float32"):
        hash_grid_density_with_gradient(x, table, cfg, w1, w2.half())
    with pytest.raises(ValueError, match="x must have shape"):
        hash_grid_density_with_gradient(x[:, :2], table, cfg, w1, w2)
    with pytest.raises(ValueError, match="x must lie in"):
        hash_grid_density_with_gradient(x + 2, table, cfg, w1, w2)
