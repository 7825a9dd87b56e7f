"""fuse_group_norm_silu: the swapped diffusers blocks compute what they did, with the Triton kernels too."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")

from diffusers.models.resnet import ResnetBlock2D  # noqa: E402

from iso3d.models.bundle import MultiViewDiffusion  # noqa: E402
from iso3d.models.fused_norm import GroupNormSiLU, fuse_group_norm_silu  # noqa: E402
from iso3d.models.presets import tiny_latent_bundle_config  # noqa: E402


def _values_and_grads(module, x, *args):
    x = x.clone().requires_grad_()
    module.zero_grad()
    y = module(x, *args)
    (y * torch.linspace(-1, 1, y.numel(), device=y.device).reshape(y.shape)).sum().backward()
    return [y.detach(), x.grad, *(p.grad.clone() for p in module.parameters() if p.requires_grad)]


def test_resnet_block_without_time_embedding_is_fused_and_unchanged():
    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=8, out_channels=12, temb_channels=None, groups=4)
    x = torch.randn(2, 8, 7, 5)
    want = _values_and_grads(block, x, None)
    keys = list(block.state_dict())
    assert fuse_group_norm_silu(block) == 2
    assert isinstance(block.norm1, GroupNormSiLU) and isinstance(block.nonlinearity, torch.nn.Identity)
    assert list(block.state_dict()) == keys, "the parameters keep their names"
    got = _values_and_grads(block, x, None)  # parameter gradients too: the Parameters are shared
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert fuse_group_norm_silu(block) == 0, "nothing left to fuse"


def test_blocks_with_a_time_embedding_are_left_alone():
    # The UNet's resnets pass the time embedding through the same `nonlinearity` module.
    block = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=16, groups=4)
    assert fuse_group_norm_silu(block) == 0
    assert isinstance(block.norm1, torch.nn.GroupNorm) and isinstance(block.nonlinearity, torch.nn.SiLU)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        fuse_group_norm_silu("vae")
    with pytest.raises(TypeError, match="norm must be a torch.nn.GroupNorm"):
        GroupNormSiLU(torch.nn.LayerNorm(4))


def test_channels_last_vae_encoder_with_the_triton_kernels(device, monkeypatch):
    # The tiny latent VAE's encoder, channels-last, with the Triton kernels (the interpreter on a CPU):
    # values and input gradients equal the plain encoder's, and every fused norm returns channels-last.
    # cuDNN's fp32 convolutions default to TF32 (10-bit mantissa), and NCHW and NHWC pick different
    # algorithms: on an H100 the two encoders then differed by 1e-3, the convolutions' rounding, not
    # the norms'. Compare in full fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = MultiViewDiffusion(tiny_latent_bundle_config(), seed=0).eval().to(device)
    encoder = model.vae.encoder
    x = torch.rand(2, 3, 16, 12, device=device)
    want = _values_and_grads(encoder, x)  # the VAE is frozen: no parameter gradients
    assert fuse_group_norm_silu(encoder, backend="triton") == 9
    encoder.to(memory_format=torch.channels_last)
    layouts = []
    for m in encoder.modules():
        if isinstance(m, GroupNormSiLU):
            m.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last)))
    got = _values_and_grads(encoder, x.contiguous(memory_format=torch.channels_last))
    assert layouts == [True] * 9
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
