"""Hash encoding: Triton vs the PyTorch twin, golden tcnn formulas, bad input."""

import pytest
import torch

from iso3d.kernels import BackendUnavailableError
from iso3d.kernels.hash_grid import (TOLERANCES, HashGridConfig, hash_grid_encode, hash_grid_encode_with_jacobian,
                                     init_hash_grid_params)
from iso3d.kernels.hash_grid_config import HASH_PRIMES

OFFICIAL = {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
            "base_resolution": 16, "per_level_scale": 1.447269237440378}
# Small grids with dense and hashed levels; base 5 makes level 0's scale 4, so x = (k − ½)/4 lands
# exactly on lattice corners.
SMALL = [
    HashGridConfig(n_levels=5, n_features_per_level=2, log2_hashmap_size=10, base_resolution=5, per_level_scale=1.7),
    HashGridConfig(n_levels=3, n_features_per_level=4, log2_hashmap_size=9, base_resolution=5, per_level_scale=2.5),
    HashGridConfig(n_levels=2, n_features_per_level=1, log2_hashmap_size=8, base_resolution=5, per_level_scale=3.0),
]


def test_official_config_levels_are_tcnn_golden():
    cfg = HashGridConfig.from_tcnn(OFFICIAL)
    levels = cfg.levels
    # Hand-computed: scale_l = 16·1.447269…^l − 1, resolution = ⌈scale⌉ + 1, size = next multiple of 8
    # of resolution³, capped at 2^19 (hashed beyond).
    assert [lvl.resolution for lvl in levels[:6]] == [16, 24, 34, 49, 71, 102]
    assert [lvl.size for lvl in levels[:6]] == [4096, 13824, 39304, 117656, 357912, 524288]
    assert [lvl.hashed for lvl in levels[:6]] == [False] * 5 + [True]
    assert levels[0].scale == 15.0 and levels[-1].resolution == 4096
    assert [lvl.offset for lvl in levels[:3]] == [0, 4096, 17920]
    assert cfg.n_params == 2 * (532792 + 11 * 524288)
    assert cfg.n_output_dims == 32
    assert cfg.to_tcnn() == OFFICIAL


def test_hash_function_is_tcnn_golden(device):
    # tcnn: (1·x) ⊕ (2654435761·y) ⊕ (805459861·z) in uint32 arithmetic.
    assert HASH_PRIMES == (1, 2654435761, 805459861)
    corner = (1, 2, 3)
    # 2·2654435761 mod 2^32 = 1013904226; 3·805459861 = 2416379583; 1 ⊕ 1013904226 ⊕ 2416379583:
    expected = 2892625372
    # Place a one-hot table row at that hashed index and check both backends read it.
    cfg = HashGridConfig(n_levels=1, n_features_per_level=1, log2_hashmap_size=6, base_resolution=9, per_level_scale=1.0)
    (level,) = cfg.levels
    assert level.hashed and level.scale == 8.0 and level.size == 64
    table = torch.zeros(cfg.n_params)
    table[expected % 64] = 1.0
    # pos = 8x + 0.5 = corner + ¼ on every axis; the weight of the (0,0,0) corner is (¾)³.
    x = torch.tensor([[(c + 0.25 - 0.5) / 8 for c in corner]])
    for backend in ("torch", "triton"):
        y = hash_grid_encode(x.to(device), table.to(device), cfg, backend=backend)
        assert y.item() == pytest.approx(0.75**3, abs=1e-6), backend


def test_dense_level_indexing_is_tcnn_golden(device):
    cfg = HashGridConfig(n_levels=1, n_features_per_level=2, log2_hashmap_size=19, base_resolution=5, per_level_scale=1.0)
    (level,) = cfg.levels
    assert not level.hashed and level.resolution == 5 and level.size == 128  # 125 → multiple of 8
    table = torch.zeros(cfg.n_params)
    row = 3 + 1 * 5 + 2 * 25  # dense index of corner (3, 1, 2)
    table[2 * row: 2 * row + 2] = torch.tensor([1.0, -2.0])
    x = torch.tensor([[(c - 0.5) / 4 for c in (3, 1, 2)]])  # exactly on that corner
    for backend in ("torch", "triton"):
        got = hash_grid_encode(x.to(device), table.to(device), cfg, backend=backend)
        torch.testing.assert_close(got.cpu(), torch.tensor([[1.0, -2.0]]))


def _points(n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=gen)
    corners = (torch.randint(0, 5, (n // 4, 3), generator=gen).float() - 0.5).clamp(min=0) / 4  # lattice corners
    faces = torch.rand(n // 4, 3, generator=gen)
    faces[torch.arange(n // 4), torch.randint(0, 3, (n // 4,), generator=gen)] = torch.randint(0, 2, (n // 4,), generator=gen).float()
    return torch.cat([x, corners, faces, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("cfg_index", range(len(SMALL)))
@pytest.mark.parametrize("n_points", [1, 97, 300])
def test_triton_matches_twin(cfg_index, n_points, dtype, device):
    cfg = SMALL[cfg_index]
    gen = torch.Generator().manual_seed(n_points + cfg_index)
    table = (torch.rand(cfg.n_params, generator=gen) * 2 - 1).to(device, dtype)
    x = _points(n_points, seed=n_points).to(device)
    outs, grads = [], []
    for backend in ("torch", "triton"):
        xs, ts = x.clone().requires_grad_(), table.clone().requires_grad_()
        y = hash_grid_encode(xs, ts, cfg, backend=backend)
        cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
        outs.append(y)
        grads.append(torch.autograd.grad(y, [xs, ts], cot))
    tol = TOLERANCES[dtype]
    assert outs[1].dtype == dtype
    torch.testing.assert_close(outs[1], outs[0], **tol)
    torch.testing.assert_close(grads[1][1], grads[0][1], **tol)  # table gradient
    # Input gradient: d(weights)/dx = ±scale·(…), scale up to ~100 here; compare relative to its size.
    dx_twin, dx_tri = grads[0][0].float(), grads[1][0].float()
    assert (dx_tri - dx_twin).abs().max() <= tol["rtol"] * 10 * (1 + dx_twin.abs().max())


@pytest.mark.parametrize("cfg_index", range(len(SMALL)))
def test_twin_jacobian_is_autograds_jacobian(cfg_index):
    # The closed-form J of the twin against autograd through hash_grid_encode_ref, output by output.
    cfg = SMALL[cfg_index]
    gen = torch.Generator().manual_seed(10 + cfg_index)
    table = torch.rand(cfg.n_params, generator=gen) * 2 - 1
    x = _points(41, seed=cfg_index).requires_grad_()
    y, jac = hash_grid_encode_with_jacobian(x, table, cfg, backend="torch")
    y_plain = hash_grid_encode(x, table, cfg, backend="torch")
    assert torch.equal(y, y_plain)
    rows = [torch.autograd.grad(y_plain[:, k].sum(), x, retain_graph=True)[0] for k in range(cfg.n_output_dims)]
    torch.testing.assert_close(jac, torch.stack(rows, dim=1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("cfg_index", range(len(SMALL)))
@pytest.mark.parametrize("n_points", [1, 97, 300])
def test_triton_jacobian_matches_twin(cfg_index, n_points, dtype, device):
    # Outputs and the first-order backward of both outputs (table and x), against autograd through
    # the twin's closed form; the x-gradient of J exercises the mixed second derivatives ∂²w/∂f_d∂f_e.
    cfg = SMALL[cfg_index]
    gen = torch.Generator().manual_seed(100 + n_points + cfg_index)
    table = (torch.rand(cfg.n_params, generator=gen) * 2 - 1).to(device, dtype)
    x = _points(n_points, seed=n_points + 1).to(device)
    outs, grads = [], []
    for backend in ("torch", "triton"):
        xs, ts = x.clone().requires_grad_(), table.clone().requires_grad_()
        y, jac = hash_grid_encode_with_jacobian(xs, ts, cfg, backend=backend)
        cot = torch.Generator().manual_seed(2)
        dy = torch.randn(y.shape, generator=cot).to(y)
        djac = torch.randn(jac.shape, generator=cot).to(jac)
        outs.append((y, jac))
        grads.append(torch.autograd.grad([y, jac], [xs, ts], [dy, djac]))
    tol = TOLERANCES[dtype]
    (y0, j0), (y1, j1) = outs
    assert y1.dtype == dtype and j1.dtype == dtype and j1.shape == (x.shape[0], cfg.n_output_dims, 3)
    torch.testing.assert_close(y1, y0, **tol)

    def close_relative_to_size(got, want):  # J and its gradients scale with the level scale (up to ~100)
        got, want = got.float(), want.float()
        assert (got - want).abs().max() <= tol["rtol"] * 10 * (1 + want.abs().max())

    close_relative_to_size(j1, j0)
    close_relative_to_size(grads[1][1], grads[0][1])  # table
    close_relative_to_size(grads[1][0], grads[0][0])  # x


def test_jacobian_op_refuses_tcnn_with_reason():
    cfg = SMALL[0]
    with pytest.raises(BackendUnavailableError, match="no features-with-Jacobian op"):
        hash_grid_encode_with_jacobian(torch.rand(2, 3), torch.zeros(cfg.n_params), cfg, backend="tcnn")
    with pytest.raises(ValueError, match=r"x must have shape \[P, 3\]"):
        hash_grid_encode_with_jacobian(torch.rand(2, 2), torch.zeros(cfg.n_params), cfg)


def test_twin_input_gradient_matches_finite_differences():
    cfg = SMALL[0]
    gen = torch.Generator().manual_seed(3)
    table = torch.rand(cfg.n_params, generator=gen, dtype=torch.float32) * 2 - 1
    x = torch.rand(1, 3, generator=gen) * 0.8 + 0.1
    x.requires_grad_()
    w = torch.randn(cfg.n_output_dims, generator=gen)
    (dx,) = torch.autograd.grad((hash_grid_encode(x, table, cfg, backend="torch") * w).sum(), x)
    eps = 1e-3
    for d in range(3):
        step = torch.zeros(1, 3)
        step[0, d] = eps
        f = lambda p: (hash_grid_encode(p, table, cfg, backend="torch") * w).sum()  # noqa: E731
        fd = (f(x.detach() + step) - f(x.detach() - step)) / (2 * eps)
        # Piecewise-linear in each axis: exact unless the step crosses a lattice plane.
        assert dx[0, d].item() == pytest.approx(fd.item(), rel=5e-2, abs=5e-2)


def test_init_matches_tcnn_range():
    cfg = HashGridConfig.from_tcnn(OFFICIAL)
    params = init_hash_grid_params(cfg, generator=torch.Generator().manual_seed(0))
    assert params.shape == (cfg.n_params,) and params.dtype == torch.float32
    assert params.abs().max() <= 1e-4 and params.std() > 5e-5


@pytest.mark.parametrize(
    "x, table_len, error, match",
    [
        (torch.tensor([[0.5, 0.5, 1.5]]), None, ValueError, r"x must lie in \[0, 1\]\^3"),
        (torch.tensor([[-0.1, 0.5, 0.5]]), None, ValueError, r"x must lie in \[0, 1\]\^3"),
        (torch.rand(4, 2), None, ValueError, r"x must have shape \[P, 3\]"),
        (torch.rand(4, 3, dtype=torch.float64), None, TypeError, "x must be float32"),
        (torch.rand(4, 3), 7, ValueError, "table must have shape"),
        ([[0.1, 0.2, 0.3]], None, TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_inputs_name_the_argument(x, table_len, error, match):
    cfg = SMALL[0]
    table = torch.zeros(table_len or cfg.n_params)
    with pytest.raises(error, match=match):
        hash_grid_encode(x, table, cfg)


def test_device_and_dtype_mismatch():
    cfg = SMALL[0]
    with pytest.raises(ValueError, match="table is on meta but x is on cpu"):
        hash_grid_encode(torch.rand(2, 3), torch.zeros(cfg.n_params, device="meta"), cfg)
    with pytest.raises(TypeError, match="table must be float32 or float16"):
        hash_grid_encode(torch.rand(2, 3), torch.zeros(cfg.n_params, dtype=torch.float64), cfg)
    with pytest.raises(TypeError, match="config must be a HashGridConfig"):
        hash_grid_encode(torch.rand(2, 3), torch.zeros(cfg.n_params), OFFICIAL)


def test_explicit_tcnn_backend_explains_why():
    cfg = SMALL[0]
    with pytest.raises(BackendUnavailableError, match="tcnn"):
        hash_grid_encode(torch.rand(2, 3), torch.zeros(cfg.n_params), cfg, backend="tcnn")


def test_config_rejects_unknown_and_bad_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        HashGridConfig.from_tcnn({**OFFICIAL, "n_level": 8})
    with pytest.raises(ValueError, match="n_features_per_level must be 1, 2, 4 or 8"):
        HashGridConfig(n_features_per_level=3)
    with pytest.raises(ValueError, match="only 'Linear'"):
        HashGridConfig.from_tcnn({**OFFICIAL, "interpolation": "Smoothstep"})
