"""The SDS step's VAE encode + its backward (to the rendered images): ways to make it faster.

Variants (``iso3d.models.latent_encoder``), side by side against ``eager``:

* ``cudnn_benchmark``: cuDNN times its convolution algorithms for the shape and keeps the fastest;
* ``channels_last``: the VAE's weights and the images in NHWC (cuDNN's preferred bf16 layout);
* ``channels_last_cudnn_benchmark``: both;
* ``compiled``: ``torch.compile(dynamic=False)`` (inductor fuses GroupNorm + SiLU); the first call,
  which compiles, is timed apart (``first_call_s``): a run pays it once per render-size milestone;
* ``fused_norm`` / ``channels_last_fused_norm``: the encoder's GroupNorm → SiLU pairs as one Triton op
  (:func:`iso3d.kernels.group_norm`), which keeps the channels-last layout (PyTorch's CUDA GroupNorm
  returns NCHW); on a copy of the VAE, since the swap is in place.

On a GPU: the official bundle's (Stable Diffusion) VAE at random weights in bf16, 256² images, 8 of
them (the 64² stage: 2 objects × 4 views resized to 256²) and 4 (the 256² stage). On CPU the small
VAE of :func:`~iso3d.models.presets.tiny_latent_bundle_config` in fp32 (the same code, checked, not
timed for the GPU), without ``compiled`` (inductor takes a minute on 2 cores).
"""

from __future__ import annotations

import copy
import time

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")

from iso3d.models.bundle import BundleConfig, MultiViewDiffusion  # noqa: E402
from iso3d.models.latent_encoder import cudnn_autotune, latent_encoder  # noqa: E402
from iso3d.models.presets import tiny_latent_bundle_config  # noqa: E402

VARIANTS = {  # name: (channels_last, cudnn_benchmark, compile, fused_group_norm)
    "eager": (False, False, False, False),
    "cudnn_benchmark": (False, True, False, False),
    "channels_last": (True, False, False, False),
    "channels_last_cudnn_benchmark": (True, True, False, False),
    "compiled": (False, False, True, False),
    "fused_norm": (False, False, False, True),
    "channels_last_fused_norm": (True, False, False, True),
}


@pytest.fixture(scope="module")
def vae_model(bench_device, request):
    if bench_device.type == "cuda" and not request.config.getoption("--smoke"):
        with torch.device(bench_device):  # random init on the GPU: seconds
            return MultiViewDiffusion(BundleConfig.official(), seed=0).to(torch.bfloat16).eval()
    return MultiViewDiffusion(tiny_latent_bundle_config(), seed=0).to(bench_device).eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("images", [8, 4])
def test_vae_encode(run_bench, bench_device, smoke, vae_model, images, variant):
    on_gpu = bench_device.type == "cuda" and not smoke
    channels_last, cudnn_benchmark, compile, fused = VARIANTS[variant]
    if compile and bench_device.type != "cuda":
        pytest.skip("compiled: inductor takes about a minute on 2 CPU cores (its path is checked in tests/models)")
    size = 256 if on_gpu else 32
    torch.manual_seed(0)
    x = torch.rand(images, 3, size, size, device=bench_device, requires_grad=True)
    plain_vae = vae_model.vae
    if fused:
        vae_model.vae = copy.deepcopy(plain_vae)
    encode = latent_encoder(vae_model, channels_last=channels_last, compile=compile, fused_group_norm=fused)

    def fn():
        encode(x).float().sum().backward()

    try:
        with cudnn_autotune(cudnn_benchmark):
            start = time.perf_counter()
            fn()  # compiles (compiled) or searches algorithms (cudnn_benchmark) for this shape
            if bench_device.type == "cuda":
                torch.cuda.synchronize(bench_device)
            first = time.perf_counter() - start
            label = "official bf16" if on_gpu else "tiny latent fp32"
            run_bench(fn, group=f"vae encode+backward {label} {images}x{size}^2", provider=variant, baseline="eager",
                      work=images, unit="images/s",
                      extra=dict(images=images, size=size, channels_last=channels_last, cudnn_benchmark=cudnn_benchmark,
                                 compiled=compile, fused_group_norm=fused, first_call_s=round(first, 3)))
    finally:
        vae_model.vae = plain_vae  # the next variant starts from the plain VAE, in the plain layout
        if channels_last:
            plain_vae.to(memory_format=torch.contiguous_format)
