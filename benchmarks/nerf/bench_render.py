"""One render + backward of 4 views: occupancy-grid sampling vs dense sampling, side by side.

The field is an ImplicitVolume whose blob bias is made sharp (λ=100 inside r=0.5), standing in for a
converged object: a surface with empty space around it, which is what the occupancy grid exploits.
Resolutions 64² and 256² are the two SDS stages; 512 samples per ray as the official config.
On CPU the images shrink (the dense path evaluates every slot with the PyTorch twin).
"""

from __future__ import annotations

import pytest
import torch

from iso3d.cameras import SDSViewConfig, generate_rays, sample_sds_views
from iso3d.kernels.hash_grid import HashGridConfig
from iso3d.nerf import FieldConfig, ImplicitVolume, RendererConfig, VolumeRenderer

# 2 CPU cores: a dense 64² render at 512 samples is ~10⁷ twin evaluations (×7 with normals).
CPU_SIZES = {64: 16, 256: 24}
CPU_SAMPLES = 128


@pytest.mark.parametrize("provider", ["dense", "grid"])
@pytest.mark.parametrize("size", [64, 256])
def test_render_step(run_bench, bench_device, smoke, size, provider):
    samples, encoding, grid_updates = 512, HashGridConfig(), 16
    if bench_device.type != "cuda":
        size, samples = CPU_SIZES[size], CPU_SAMPLES
    if smoke:
        size, samples, encoding, grid_updates = 8, 32, HashGridConfig(n_levels=4, log2_hashmap_size=12), 2
    torch.manual_seed(0)
    field = ImplicitVolume(FieldConfig(encoding=encoding, blob_density=100.0), seed=0).to(bench_device)
    renderer = VolumeRenderer(RendererConfig(num_samples_per_ray=samples)).to(bench_device).train()
    if provider == "grid":
        for step in range(grid_updates):
            renderer.update_occupancy(field, step=step, every=1)
    views = sample_sds_views(SDSViewConfig(), batch=1, generator=torch.Generator().manual_seed(0))
    rays_o, rays_d = generate_rays(views.c2w.to(bench_device), views.fovy.to(bench_device), size, size)
    rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    lights = (rays_o * 1.5).contiguous()
    params = list(field.parameters())

    def step():
        out = renderer(field, rays_o, rays_d, shading="lambertian", light_positions=lights,
                       use_grid=provider == "grid")
        loss = out.rgb.square().mean() + out.orientation_loss
        torch.autograd.grad(loss, params, allow_unused=True)

    run_bench(step, group=f"render+backward 4x{size}x{size} S={samples}", provider=provider, baseline="dense",
              work=rays_o.shape[0], unit="Mrays/s", extra=dict(size=size, views=4, samples_per_ray=samples))
