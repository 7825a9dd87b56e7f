"""One UNet step of the multi-view model: fused attention processor vs concat+SDPA vs naive.

Official size (random weights: speed does not depend on values) on a GPU: 4 views (+ the EMA
reference frame) of 32² latents, batch 2 (one CFG pair), bf16 and fp16. On CPU the iso3d-tiny UNet
in fp32 (the official one takes minutes per step on 2 cores).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")

from iso3d.models import MultiViewUNet, MultiViewUNetConfig, ReferenceFrame  # noqa: E402
from iso3d.models.presets import tiny_bundle_config  # noqa: E402


def _install(unet: MultiViewUNet, provider: str) -> None:
    unet.backend = {"fused": "triton", "sdpa_concat": "torch", "naive": "naive"}[provider]  # "auto" picks per mode
    unet.install_processors()


@pytest.fixture(scope="module")
def unet(bench_device):
    config = MultiViewUNetConfig.official() if bench_device.type == "cuda" else tiny_bundle_config().unet
    torch.manual_seed(0)
    return MultiViewUNet(config).to(bench_device)


@pytest.fixture(params=["bf16", "fp16"])
def unet_and_dtype(request, unet, bench_device):
    if bench_device.type != "cuda":
        if request.param == "fp16":
            pytest.skip("CPU: fp32 only (low-precision CPU matmuls say nothing about the GPU)")
        return unet.float(), torch.float32
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[request.param]
    return unet.to(dtype), dtype


@pytest.mark.parametrize("provider", ["naive", "sdpa_concat", "fused"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("reference", ["none", "ema"])
def test_unet_step(run_bench, bench_device, smoke, unet_and_dtype, reference, mode, provider):
    unet, dtype = unet_and_dtype
    if provider == "fused" and bench_device.type != "cuda":
        pytest.skip("fused: the Triton kernel runs only in its interpreter on CPU (the twin is sdpa_concat)")
    _install(unet, provider)
    cfg = unet.config
    objects, views = 2, 4
    size = 8 if smoke else cfg.sample_size
    rows = objects * views
    gen = torch.Generator().manual_seed(0)
    make = lambda *s: torch.randn(*s, generator=gen).to(bench_device, dtype)  # noqa: E731
    x = make(rows, cfg.in_channels, size, size).requires_grad_(mode != "fwd")
    t = torch.full((rows,), 500, device=bench_device)
    ctx, cam = make(rows, 1, cfg.cross_attention_dim), make(rows, cfg.camera_dim)
    ref = ReferenceFrame(make(objects, cfg.in_channels, size, size), make(objects, cfg.camera_dim)) if reference == "ema" else None
    params = [p for p in unet.parameters() if p.requires_grad]

    def step():
        if mode == "fwd":
            with torch.no_grad():
                unet(x, t, ctx, cam, n_views=views, reference=ref)
        else:
            eps = unet(x, t, ctx, cam, n_views=views, reference=ref)
            torch.autograd.grad(eps.float().square().mean(), [x] + params)

    label = "official" if bench_device.type == "cuda" else "tiny"
    run_bench(step, group=f"unet step {label} B={objects}x{views} {size}^2 ref={reference} {str(dtype)[6:]} {mode}",
              provider=provider, baseline="sdpa_concat", work=rows, unit="frames/s",
              extra=dict(config=label, objects=objects, views=views, size=size, reference=reference, dtype=str(dtype)))
