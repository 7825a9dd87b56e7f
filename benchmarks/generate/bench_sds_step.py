"""One SDS step end to end (render 4 views + UNet with CFG + backward + optimizer): optimized vs naive.

* ``optimized``: Triton joint attention, Triton hash grid, nerfacc occupancy-grid sampling (grid
  updated 16 times on the initial blob, as after the first steps of a run).
* ``naive``: materialized fp32-score attention (MVDream's fallback), the PyTorch hash-grid twin,
  dense sampling of all 512 slots per ray.
* ablations: the optimized path with one part made naive (``naive_attention``, ``torch_hash_grid``,
  ``dense_sampling``), to see which part pays.

On a GPU: the official model at random weights (speed does not depend on values; ~1.6 B parameters
with the VAE and ViT-H), bf16, the official field and renderer, both SDS stages: 64² renders of
2×4 views resized to 256² for the VAE, and 256² renders of 4 views. The full-run estimate printed
in RESULTS.md is ``5000·t(64²) + 5000·t(256²)``, the release's 10,000 steps.
On CPU: the iso3d-tiny model and :meth:`GenerateConfig.cpu_tiny` (the official size takes minutes
per step on 2 cores), fp32, renders at the model's 32².
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")
pytest.importorskip("open_clip", reason="open_clip not installed (pip install open-clip-torch)")

from iso3d.generation import GenerateConfig, sds_step  # noqa: E402
from iso3d.models.bundle import BundleConfig, MultiViewDiffusion  # noqa: E402
from iso3d.models.presets import tiny_bundle_config  # noqa: E402
from iso3d.nerf import ImplicitVolume, VolumeRenderer  # noqa: E402

PROVIDERS = {  # name: (attention backend, hash-grid backend, sampler)
    "optimized": ("auto", "triton", "nerfacc"),
    "naive_attention": ("naive", "triton", "nerfacc"),
    "torch_hash_grid": ("auto", "torch", "nerfacc"),
    "dense_sampling": ("auto", "triton", "dense"),
    "naive": ("naive", "torch", "dense"),
}
BASELINE = "optimized"  # the naive path does not fit a 141 GB GPU at the official size


@pytest.fixture(scope="module")
def model(bench_device, request):
    smoke = request.config.getoption("--smoke")
    if bench_device.type == "cuda" and not smoke:
        with torch.device(bench_device):  # random init on the GPU: seconds instead of a minute
            m = MultiViewDiffusion(BundleConfig.official(), seed=0)
        return m.to(torch.bfloat16).eval()
    size = 16 if smoke else 32
    return MultiViewDiffusion(tiny_bundle_config(image_size=size, width=16 if smoke else 32), seed=0).to(bench_device).eval()


def _config(bench_device, smoke, stage: int) -> GenerateConfig:
    if bench_device.type == "cuda" and not smoke:
        cfg = GenerateConfig.official()
        # Pin the milestone under test at step 0 (64²: 2 objects × 4 views; 256²: 1 × 4).
        return dataclasses.replace(cfg, milestones=((0, 64, 2),) if stage == 64 else ((0, 256, 1),))
    cfg = GenerateConfig.cpu_tiny(steps=100)
    if smoke:
        cfg = dataclasses.replace(cfg, renderer=dataclasses.replace(cfg.renderer, num_samples_per_ray=16))
    return dataclasses.replace(cfg, milestones=((0, None, 2 if stage == 64 else 1),))


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("stage", [64, 256])
def test_sds_step(run_bench, bench_device, smoke, model, stage, provider):
    on_gpu = bench_device.type == "cuda"
    if provider != "naive" and not on_gpu:
        pytest.skip(f"{provider}: Triton runs only in its interpreter on CPU and nerfacc's sampler needs CUDA")
    cfg = _config(bench_device, smoke, stage)
    backend_attn, backend_grid, sampler = PROVIDERS[provider]
    cfg = dataclasses.replace(cfg, field=dataclasses.replace(cfg.field, backend=backend_grid),
                              renderer=dataclasses.replace(cfg.renderer, sampler=sampler))
    model.unet.backend = backend_attn
    model.unet.install_processors()
    torch.manual_seed(0)
    fld = ImplicitVolume(cfg.field, seed=0).to(bench_device)
    renderer = VolumeRenderer(cfg.renderer).to(bench_device)
    if sampler == "nerfacc":
        for step in range(16):
            renderer.update_occupancy(fld, step, every=1)
    optim = torch.optim.AdamW(fld.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-15)
    token = torch.randn(1, 1, model.config.unet.cross_attention_dim, device=bench_device)
    acp = model.config.scheduler.alphas_cumprod(bench_device)
    gen = torch.Generator().manual_seed(0)

    def step():
        loss = sds_step(model, fld, renderer, token, acp, cfg, 0, gen)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    size, batch = cfg.milestones[0][1] or model.config.image_size, cfg.milestones[0][2]
    frames = batch * cfg.views.n_views
    label = "official bf16" if on_gpu and not smoke else "tiny fp32"
    try:
        run_bench(step, group=f"sds step {label} {frames} views {size}^2 render", provider=provider,
                  baseline=BASELINE, work=1, unit="steps/s", max_rounds=3 if sampler == "dense" else None,
                  extra=dict(model=label, render_size=size, views=frames, samples_per_ray=cfg.renderer.num_samples_per_ray,
                             hash_levels=cfg.field.encoding.n_levels, attention=backend_attn, hash_grid=backend_grid,
                             sampler=sampler))
    except torch.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        pytest.skip(f"{provider} at {size}^2: out of GPU memory ({str(exc).splitlines()[0]})")
