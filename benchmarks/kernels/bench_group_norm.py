"""GroupNorm → SiLU, forward + backward: PyTorch's ops vs the fused Triton op, NCHW and channels-last.

The shapes are the SD VAE encoder's norms in the 64² SDS stage (8 images of 256², bf16, 32 groups):
128 channels at 256², 256 at 128², 512 at 64² and at 32². ``torch`` is what diffusers runs
(``F.silu(F.group_norm(x))``; on CUDA its output is NCHW even for a channels-last input, and the
``nhwc`` rows include that); ``triton`` is :func:`iso3d.kernels.group_norm` with ``silu=True``, whose
output keeps the input's layout.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iso3d.kernels.group_norm import group_norm

SHAPES = [(8, 128, 256), (8, 256, 128), (8, 512, 64), (8, 512, 32)]  # (images, channels, side)
GROUPS = 32


def _torch_gn_silu(x, groups, weight, bias, eps):
    return F.silu(F.group_norm(x, groups, weight, bias, eps))


@pytest.mark.parametrize("provider", ["torch", "triton"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}x{s[2]}^2")
def test_group_norm_silu(run_bench, bench_device, smoke, shape, layout, provider):
    if bench_device.type != "cuda" and provider == "triton":
        pytest.skip("triton: on CPU Triton runs only in its interpreter, a correctness tool, not a timing")
    images, channels, official_side = shape
    side = official_side if bench_device.type == "cuda" and not smoke else max(4, official_side // 32)
    dtype = torch.bfloat16 if bench_device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(images, channels, side, side, generator=gen).to(bench_device, dtype)
    if layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = (1 + 0.1 * torch.randn(channels, generator=gen)).to(bench_device, dtype)
    bias = (0.1 * torch.randn(channels, generator=gen)).to(bench_device, dtype)
    dy = torch.randn(images, channels, side, side, generator=gen).to(bench_device, dtype)
    if layout == "nhwc":
        dy = dy.to(memory_format=torch.channels_last)

    def step():
        if provider == "torch":
            y = _torch_gn_silu(x, GROUPS, weight, bias, 1e-6)
        else:
            y = group_norm(x, GROUPS, weight, bias, 1e-6, silu=True, backend="triton")
        torch.autograd.grad(y, x, dy)

    # the least traffic of a fwd+bwd: read x, write y; read x and dy, write dx (5 tensor passes)
    least_bytes = 5 * x.numel() * x.element_size()
    run_bench(step, group=f"group_norm+silu fwd+bwd {images}x{channels}x{official_side}^2 {layout} {str(dtype)[6:]}",
              provider=provider, baseline="torch", work=least_bytes, unit="GB/s (5 passes)",
              extra=dict(shape=[images, channels, side, side], groups=GROUPS, layout=layout, dtype=str(dtype)))
