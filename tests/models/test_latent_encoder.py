"""latent_encoder (channels-last / compiled VAE encode) and cudnn_autotune against the plain encode."""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")

from iso3d.models.bundle import MultiViewDiffusion  # noqa: E402
from iso3d.models.latent_encoder import cudnn_autotune, latent_encoder  # noqa: E402
from iso3d.models.presets import tiny_bundle_config, tiny_latent_bundle_config  # noqa: E402


def _latent_model() -> MultiViewDiffusion:
    """A small latent-space bundle: a two-level AutoencoderKL with GroupNorm and SiLU, random weights."""
    return MultiViewDiffusion(tiny_latent_bundle_config(), seed=0).eval()


def _encode_and_grad(encode, x: torch.Tensor, seed: int = 3):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the posterior sample draws noise
    z = encode(x)
    (z * torch.linspace(-1, 1, z.numel()).reshape(z.shape)).sum().backward()  # a non-uniform upstream gradient
    return z.detach(), x.grad


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (3, 3, 24, 40)])
def test_channels_last_encode_matches_plain_values_and_gradients(shape):
    model = _latent_model()
    x = torch.rand(shape)
    z_ref, g_ref = _encode_and_grad(model.encode_images, x)
    encode = latent_encoder(model, channels_last=True)
    assert model.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    z, g = _encode_and_grad(encode, x)
    assert z.shape == z_ref.shape == (shape[0], 4, shape[2] // 2, shape[3] // 2)
    # fp32 convolutions summed in another order: a few ulps of the outputs' scale
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
    assert g.abs().sum() > 0


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_fused_group_norm_encode_matches_plain(channels_last):
    # On the CPU the fused op runs its PyTorch twin: this checks the swap (every encoder pair fused,
    # the decoder untouched); tests/models/test_fused_norm.py runs the Triton kernels inside the VAE.
    from iso3d.models.fused_norm import GroupNormSiLU

    model = _latent_model()
    x = torch.rand(2, 3, 16, 24)
    z_ref, g_ref = _encode_and_grad(model.encode_images, x)
    encode = latent_encoder(model, channels_last=channels_last, fused_group_norm=True)
    encoder = model.vae.encoder
    fused = [m for m in encoder.modules() if isinstance(m, GroupNormSiLU)]
    plain = [m for m in encoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(fused) == 2 * 4 + 1  # norm1, norm2 of the 4 resnets and the output norm
    assert plain == [a.group_norm for a in encoder.mid_block.attentions]  # no SiLU follows these
    assert not any(isinstance(m, GroupNormSiLU) for m in model.vae.decoder.modules())
    z, g = _encode_and_grad(encode, x)
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="inductor on the CPU needs a C++ compiler")
def test_compiled_encode_matches_plain_values_and_gradients():
    # ~40 s on 2 cores: inductor compiles the forward and the backward once
    model = _latent_model()
    x = torch.rand(2, 3, 16, 16)
    encode = latent_encoder(model, compile=True)
    # The compiled graph draws the posterior's noise from another generator, so silence the noise:
    # log-variance channels set to −60 (diffusers clamps it to −30: std e^−15 ≈ 3e−7).
    model.vae.quant_conv.weight.data[4:] = 0
    model.vae.quant_conv.bias.data[4:] = -60.0
    z_ref, g_ref = _encode_and_grad(model.encode_images, x)
    z, g = _encode_and_grad(encode, x)
    torch.testing.assert_close(z, z_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_pixel_space_model_ignores_options_and_bad_options_fail():
    model = MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0)
    x = torch.rand(2, 3, 16, 16)
    for options in (dict(channels_last=True), dict(compile=True)):
        assert torch.equal(latent_encoder(model, **options)(x), 2 * x - 1)
    with pytest.raises(TypeError, match="latent_encoder: channels_last must be a bool"):
        latent_encoder(model, channels_last="yes")
    with pytest.raises(TypeError, match="latent_encoder: fused_group_norm must be a bool"):
        latent_encoder(model, fused_group_norm=1)


def test_cudnn_autotune_sets_and_restores_the_flag():
    before = torch.backends.cudnn.benchmark
    with cudnn_autotune():
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is before
    with pytest.raises(RuntimeError):
        with cudnn_autotune(not before):
            assert torch.backends.cudnn.benchmark is (not before)
            raise RuntimeError("inside")
    assert torch.backends.cudnn.benchmark is before
