"""Volume renderer against closed forms and a dense quadrature; occupancy grid; gradients; fitting."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from analytic_fields import GaussianBlob, TwoSpheres, UniformSphere  # noqa: E402

from iso3d.cameras import camera_to_world, generate_rays  # noqa: E402
from iso3d.kernels.hash_grid import HashGridConfig  # noqa: E402
from iso3d.nerf import FieldConfig, ImplicitVolume, RendererConfig, VolumeRenderer  # noqa: E402
from iso3d.nerf.renderer import ray_aabb_intersect  # noqa: E402

SMALL_GRID = HashGridConfig(n_levels=8, n_features_per_level=2, log2_hashmap_size=14, base_resolution=8, per_level_scale=1.5)


def _camera_rays(h=24, w=24, elevation=15.0, azimuth=30.0, distance=2.5, fovy=40.0):
    c2w = camera_to_world(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([distance]))
    rays_o, rays_d = generate_rays(c2w, torch.tensor([fovy]), h, w)
    return rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)


def test_uniform_sphere_matches_closed_form():
    sphere = UniformSphere(radius=0.5, sigma=5.0, color=(0.9, 0.2, 0.1))
    renderer = VolumeRenderer(RendererConfig(num_samples_per_ray=1024)).eval()
    b = torch.tensor([0.0, 0.2, 0.45, 0.7])  # impact parameters; the last ray misses the sphere
    rays_o = torch.stack([b, torch.zeros(4), torch.full((4,), 3.0)], -1)
    rays_d = torch.tensor([[0.0, 0.0, -1.0]]).expand(4, 3)
    out = renderer(sphere, rays_o, rays_d)
    chord = 2 * torch.sqrt((0.25 - b**2).clamp(min=0))
    t0, s = 3 - chord / 2, 5.0
    opacity = 1 - torch.exp(-s * chord)
    # ∫_{t0}^{t0+L} t σ e^{−σ(t−t0)} dt
    depth = t0 * opacity + (1 / s - torch.exp(-s * chord) * (chord + 1 / s))
    step = renderer.config.render_step_size
    # Midpoint quadrature: boundary cells are off by at most half a step of path length.
    torch.testing.assert_close(out.opacity.squeeze(-1), opacity, atol=s * step, rtol=0)
    torch.testing.assert_close(out.depth.squeeze(-1), depth, atol=3 * step, rtol=0)
    rgb = opacity[:, None] * sphere.color + (1 - opacity[:, None]) * 1.0
    torch.testing.assert_close(out.rgb, rgb, atol=s * step, rtol=0)
    assert out.opacity[-1].item() == 0.0 and out.rgb[-1].tolist() == [1.0, 1.0, 1.0]  # white background


def _reference_quadrature(field, rays_o, rays_d, radius=1.0, n=20000):
    """Straightforward fp64 midpoint quadrature of the volume-rendering integral, ray by ray."""
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, radius)
    rgb, opacity = [], []
    for o, d, tn, tf, h in zip(rays_o.double(), rays_d.double(), t_near.double(), t_far.double(), hit):
        if not h:
            rgb.append(torch.ones(3, dtype=torch.float64))
            opacity.append(torch.zeros((), dtype=torch.float64))
            continue
        dt = (tf - tn) / n
        t = tn + (torch.arange(n, dtype=torch.float64) + 0.5) * dt
        x = (o + t[:, None] * d).float()
        out = field(x)
        tau = out.density.double() * dt
        trans = torch.exp(-(torch.cumsum(tau, 0) - tau))
        w = trans * (1 - torch.exp(-tau))
        opacity.append(w.sum())
        rgb.append((w[:, None] * out.albedo.double()).sum(0) + (1 - w.sum()))
    return torch.stack(rgb), torch.stack(opacity)


def test_smooth_density_matches_dense_quadrature():
    blob = GaussianBlob()
    # The official 512 samples per ray, without pruning (the quadrature itself is under test here).
    renderer = VolumeRenderer(RendererConfig(prune_alpha_threshold=0.0, early_stop_eps=0.0)).eval()
    rays_o, rays_d = _camera_rays(h=6, w=6)
    out = renderer(blob, rays_o, rays_d)
    rgb, opacity = _reference_quadrature(blob, rays_o, rays_d)
    # Midpoint rule with step h on a smooth integrand: error O(h²)·max σ″; use a one-step bound.
    tol = blob.amplitude * renderer.config.render_step_size**2 * 10
    assert (out.opacity.squeeze(-1).double() - opacity).abs().max() <= tol
    assert (out.rgb.double() - rgb).abs().max() <= tol


def test_occupancy_grid_keeps_the_image():
    """Once built (16 warm-up updates, each evaluating every cell at one random point), the grid
    skips empty space without changing the image of a sharp object (a converged field): mean error
    ≤ 1e-3; the max error (≤ 0.1) sits on grazing rays through cells the object barely touches, which
    random per-cell probes can miss. Smooth low-density tails are a different matter: samples with
    α < 0.01 are dropped by design (nerfacc's threshold), which is why the test uses sharp objects."""
    torch.manual_seed(0)
    rays_o, rays_d = _camera_rays(h=32, w=32)
    field = TwoSpheres()
    # Pruning off: the grid alone is under test here.
    renderer = VolumeRenderer(RendererConfig(num_samples_per_ray=256, prune_alpha_threshold=0, early_stop_eps=0)).eval()
    full = renderer(field, rays_o, rays_d, use_grid=False)
    for step in range(16):
        renderer.update_occupancy(field, step=step, every=1)
    occupied = renderer._estimator.binaries.float().mean().item()
    assert 0.0 < occupied < 0.2, "the grid should mark the empty space empty"
    skipped = renderer(field, rays_o, rays_d)
    assert skipped.n_samples < 0.2 * full.n_samples
    err = (skipped.rgb - full.rgb).abs()
    assert err.mean() <= 1e-3 and err.max() <= 0.1
    assert (skipped.opacity - full.opacity).abs().mean() <= 1e-3


def _pruned_reference(field, rays_o, rays_d, cfg: RendererConfig, alpha_thre: float):
    """fp64 oracle of the pruning rule: slot by slot, keep ``α ≥ alpha_thre`` and ``T ≥ ε`` (T from all
    evaluated slots, as nerfacc), then composite the kept slots alone. Returns (rgb, n_kept)."""
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, cfg.radius)
    step, n = cfg.render_step_size, cfg.num_samples_per_ray
    t0 = t_near.double()[:, None] + torch.arange(n, dtype=torch.float64) * step
    t1 = torch.minimum(t0 + step, t_far.double()[:, None])
    valid = hit[:, None] & (t1 > t0)
    points = (rays_o.double()[:, None] + rays_d.double()[:, None] * ((t0 + t1) / 2)[..., None]).float()
    out = field(points.reshape(-1, 3))
    sigma = out.density.double().reshape(valid.shape) * valid
    alpha = 1 - torch.exp(-sigma * (t1 - t0).clamp(min=0))
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
    keep = valid & (alpha >= alpha_thre) & (trans >= cfg.early_stop_eps)
    alpha_kept = alpha * keep
    w = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha_kept[:, :-1]], 1), 1) * alpha_kept
    albedo = out.albedo.double().reshape(*valid.shape, 3)
    rgb = (w[..., None] * albedo).sum(1) + (1 - w.sum(1, keepdim=True))
    return rgb, int(keep.sum())


@pytest.mark.parametrize("grid_updated", [False, True])
@pytest.mark.parametrize("field_name", ["blob", "spheres"])
def test_pruning_follows_the_release_rule(field_name, grid_updated):
    """Samples with α below nerfacc's threshold (min(0.01, mean grid occupancy): 0 on a fresh grid) or
    behind T < 1e-4 are dropped before the full evaluation (threestudio's ``prune_alpha_threshold``):
    same samples and image as the oracle; far fewer samples than without pruning on a sharp object,
    and the image of that object barely changes."""
    field = GaussianBlob() if field_name == "blob" else TwoSpheres()
    cfg = RendererConfig(num_samples_per_ray=256)
    rays_o, rays_d = _camera_rays(h=12, w=12)
    renderer = VolumeRenderer(cfg).eval()
    assert renderer.alpha_threshold == 0.0
    if grid_updated:
        torch.manual_seed(0)
        for step in range(4):
            renderer.update_occupancy(field, step=step, every=1)
        assert 0.0 < renderer.alpha_threshold <= 0.01
    pruned = renderer(field, rays_o, rays_d, use_grid=False)
    rgb, n_kept = _pruned_reference(field, rays_o, rays_d, cfg, renderer.alpha_threshold)
    assert pruned.n_samples == n_kept
    assert (pruned.rgb.double() - rgb).abs().max() <= 1e-5
    full = VolumeRenderer(RendererConfig(num_samples_per_ray=256, prune_alpha_threshold=0, early_stop_eps=0)).eval()(
        field, rays_o, rays_d, use_grid=False)
    assert pruned.n_samples < full.n_samples
    # pruning evaluates the density at every marched sample and keeps a subset; without it, all are kept
    assert pruned.n_marched == full.n_marched == full.n_samples
    if field_name == "spheres":  # σ·δ = 0.4 inside, 0 outside: only empty and hidden (T < 1e-4) samples go
        if grid_updated:  # empty space (α = 0) goes only once the α threshold is positive
            assert pruned.n_samples < 0.5 * full.n_samples
        assert (pruned.rgb - full.rgb).abs().max() <= 2e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nerfacc's packed sampler needs CUDA")
def test_packed_and_dense_samplers_agree_on_cuda():
    field = GaussianBlob().cuda()
    rays_o, rays_d = (t.cuda() for t in _camera_rays(h=16, w=16))
    outs = {s: VolumeRenderer(RendererConfig(num_samples_per_ray=256, sampler=s)).cuda().eval()(
        field, rays_o, rays_d, use_grid=False) for s in ("nerfacc", "dense")}
    # nerfacc marches from the same t_near with the same step; fp32 sums in another order.
    assert abs(outs["nerfacc"].n_samples - outs["dense"].n_samples) <= 0.01 * outs["dense"].n_samples
    assert abs(outs["nerfacc"].n_marched - outs["dense"].n_marched) <= 0.01 * outs["dense"].n_marched
    assert (outs["nerfacc"].rgb - outs["dense"].rgb).abs().max() <= 1e-2
    assert (outs["nerfacc"].opacity - outs["dense"].opacity).abs().mean() <= 1e-3


@pytest.mark.parametrize("shading", ["albedo", "lambertian", "textureless"])
def test_gradients_reach_every_parameter_group(shading):
    field = ImplicitVolume(FieldConfig(encoding=SMALL_GRID), seed=0)
    renderer = VolumeRenderer(RendererConfig(num_samples_per_ray=64)).train()
    rays_o, rays_d = _camera_rays(h=8, w=8)
    lights = torch.tensor([[2.0, 2.0, 2.0]]).expand_as(rays_o)
    out = renderer(field, rays_o, rays_d, shading=shading, light_positions=lights, with_normals=True,
                   generator=torch.Generator().manual_seed(0))
    loss = (out.rgb - 0.5).square().mean() + out.orientation_loss + out.opacity.mean()
    loss.backward()
    groups = {"hash table": field.encoding.params, "density MLP": field.density_mlp[0].weight,
              "albedo MLP": field.albedo_mlp[0].weight}
    for name, param in groups.items():
        if shading == "textureless" and name == "albedo MLP":
            assert param.grad is None or param.grad.abs().sum() == 0  # textureless ignores albedo
            continue
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reaches the {name}"


def test_forward_differences_approach_the_true_gradient_at_first_order():
    """On σ(x) = exp(−‖x − c‖²) the normal is known; central differences err O(ε²), forward O(ε)."""
    from iso3d.nerf import finite_difference_normals

    c = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    density = lambda p: torch.exp(-((p - c) ** 2).sum(-1))  # noqa: E731
    x = torch.rand(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.5
    truth = torch.nn.functional.normalize(x - c, dim=-1)  # −∇σ points away from c
    for eps in (1e-2, 1e-3):
        central = finite_difference_normals(density, x, eps)
        forward = finite_difference_normals(density, x, eps, sigma_at_x=density(x))
        err_c = (central - truth).norm(dim=-1).max().item()
        err_f = (forward - truth).norm(dim=-1).max().item()
        assert err_c < 20 * eps**2 and err_f < 20 * eps and err_f > err_c
    field = ImplicitVolume(FieldConfig(encoding=SMALL_GRID, normal_type="forward_difference", finite_difference_eps=1e-3), seed=0)
    central_field = ImplicitVolume(FieldConfig(encoding=SMALL_GRID, finite_difference_eps=1e-3), seed=0)
    p = torch.tensor([[0.3, 0.1, 0.0], [0.0, -0.35, 0.2]])
    assert ((field(p, with_normals=True).normal * central_field(p, with_normals=True).normal).sum(-1) > 0.99).all()


def test_analytic_and_finite_difference_normals_agree():
    cfg = FieldConfig(encoding=SMALL_GRID, normal_type="analytic")
    field = ImplicitVolume(cfg, seed=0)
    x = torch.tensor([[0.3, 0.1, 0.0], [0.0, -0.35, 0.2], [0.1, 0.1, 0.4]])
    analytic = field(x, with_normals=True).normal
    fd_field = ImplicitVolume(FieldConfig(encoding=SMALL_GRID, normal_type="finite_difference", finite_difference_eps=1e-3), seed=0)
    fd = fd_field(x, with_normals=True).normal
    # The blob bias dominates at init: normals point outward, and both estimates agree.
    assert ((analytic * fd).sum(-1) > 0.99).all()
    assert ((analytic * torch.nn.functional.normalize(x, dim=-1)).sum(-1) > 0.9).all()


@pytest.mark.parametrize("impl", ["fused", "separate"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_closed_form_analytic_normals_match_double_backward(backend, impl, device):
    # The closed form (the encoding's Jacobian chained through the MLP) against autograd's double
    # backward through the PyTorch twin (the path tcnn takes): same σ and normals, and the same
    # gradients of a loss on the normals in every parameter (the SDS step's orientation loss and
    # shading depend on them).
    gen = torch.Generator().manual_seed(5)
    x = torch.cat([torch.rand(61, 3, generator=gen) * 2.2 - 1.1,  # some outside the box: clamped
                   torch.tensor([[0.0, 0.0, 0.0], [1.0, -0.2, 0.3]])]).to(device)
    weights = torch.randn(x.shape[0], 3, generator=gen).to(device)
    params = torch.randn(SMALL_GRID.n_params, generator=gen).to(device)  # so the grid, not the blob, dominates
    results = []
    for field_backend, path in ((backend, "_analytic_normals"), ("torch", "_analytic_normals_autograd")):
        field = ImplicitVolume(FieldConfig(encoding=SMALL_GRID, normal_type="analytic", backend=field_backend,
                                           analytic_normals_impl=impl, density_head_backend=field_backend), seed=0)
        field = field.to(device).train()
        with torch.no_grad():
            field.encoding.params.copy_(params)
        density, _, normal = getattr(field, path)(x)
        loss = (normal * weights).sum() + density.sum() * 1e-3
        used = [field.encoding.params, *field.density_mlp.parameters()]  # albedo is not in these paths
        results.append((density, normal, torch.autograd.grad(loss, used)))
    (d_closed, n_closed, g_closed), (d_auto, n_auto, g_auto) = results
    torch.testing.assert_close(d_closed, d_auto, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(n_closed, n_auto, atol=1e-4, rtol=1e-4)
    for got, want in zip(g_closed, g_auto):
        torch.testing.assert_close(got, want, atol=1e-4 * (1 + want.abs().max().item()), rtol=1e-4)
    # The public path picks the closed form for every backend but tcnn.
    field = ImplicitVolume(FieldConfig(encoding=SMALL_GRID, normal_type="analytic", backend=backend,
                                       analytic_normals_impl=impl, density_head_backend=backend), seed=0).to(device)
    with torch.no_grad():
        field.encoding.params.copy_(params)
        torch.testing.assert_close(field(x, with_normals=True).normal, n_closed, atol=1e-6, rtol=1e-6)


def test_fits_a_synthetic_target():
    torch.manual_seed(0)
    target_field = TwoSpheres()
    views = [(15.0, az) for az in (0.0, 90.0, 180.0, 270.0)]
    rays = [_camera_rays(h=20, w=20, elevation=e, azimuth=a) for e, a in views]
    rays_o = torch.cat([r[0] for r in rays])
    rays_d = torch.cat([r[1] for r in rays])
    cfg = RendererConfig(num_samples_per_ray=96)
    with torch.no_grad():
        target = VolumeRenderer(cfg).eval()(target_field, rays_o, rays_d).rgb
    field = ImplicitVolume(FieldConfig(encoding=SMALL_GRID, hidden_dims=32), seed=0)
    renderer = VolumeRenderer(cfg).train()
    optim = torch.optim.Adam([
        {"params": field.encoding.parameters(), "lr": 1e-2},
        {"params": list(field.density_mlp.parameters()) + list(field.albedo_mlp.parameters()), "lr": 1e-2},
    ], betas=(0.9, 0.99), eps=1e-15)
    gen = torch.Generator().manual_seed(0)
    for step in range(250):
        idx = torch.randint(0, rays_o.shape[0], (512,), generator=gen)
        renderer.update_occupancy(field, step)
        out = renderer(field, rays_o[idx], rays_d[idx], generator=gen)
        loss = (out.rgb - target[idx]).square().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    with torch.no_grad():
        pred = renderer.eval()(field, rays_o, rays_d).rgb
    psnr = -10 * math.log10((pred - target).square().mean().item())
    print(f"synthetic fit: {psnr:.2f} dB PSNR after 250 steps")
    assert psnr >= 30.0, f"fit reached only {psnr:.1f} dB"


def test_bad_inputs():
    renderer = VolumeRenderer(RendererConfig(num_samples_per_ray=8))
    field = UniformSphere()
    with pytest.raises(ValueError, match="rays_o and rays_d must both be"):
        renderer(field, torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="light_positions must be"):
        renderer(field, torch.zeros(4, 3), torch.ones(4, 3), light_positions=torch.zeros(3))
    with pytest.raises(ValueError, match="needs CUDA"):
        VolumeRenderer(RendererConfig(sampler="nerfacc"))(field, torch.zeros(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="needs normals and a light position"):
        renderer(field, torch.tensor([[0.0, 0, 3]]), torch.tensor([[0.0, 0, -1]]), shading="lambertian")
    with pytest.raises(ValueError, match="prune_alpha_threshold and early_stop_eps"):
        RendererConfig(prune_alpha_threshold=1.5)
    with pytest.raises(ValueError, match=r"x must have shape \[P, 3\]"):
        ImplicitVolume(FieldConfig(encoding=SMALL_GRID))(torch.zeros(3))
