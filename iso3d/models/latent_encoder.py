"""Faster VAE encodes for the SDS step: channels-last layout, fused GroupNorm + SiLU, cuDNN autotuning,
``torch.compile``.

Why: every SDS step encodes its rendered views through the VAE's encoder and back-propagates
through it (on an H200, 26 ms of the official step for 8 views and 16 ms for 4; benchmarks/RESULTS.md).
Unlike the UNet's forward this time grows with the batch, so it is bound by arithmetic, not by
launches, and a CUDA graph would not pay. What can pay is faster convolutions: the NHWC layout that
cuDNN's bf16 tensor-core kernels prefer, cuDNN's autotuned algorithm choice for the fixed shapes of
a run, or inductor's fusion of the GroupNorm + SiLU pairs. ``benchmarks/models/bench_vae_encode.py``
times each (benchmarks/RESULTS.md): only the compile paid, and since its compile time is about what
it saves over a run, :class:`~iso3d.generation.GenerateConfig` offers it as ``compile_vae``, off.
Channels-last alone was 1.4× slower: PyTorch's CUDA GroupNorm returns NCHW, so every norm converts
layouts twice. ``fused_group_norm`` swaps the encoder's GroupNorm → SiLU pairs for
:func:`iso3d.kernels.group_norm` (:mod:`iso3d.models.fused_norm`), which keeps the layout and fuses
the pair, with no compile time. With channels-last, it made the official step 1.01–1.16× faster on an
H100 and saved up to 1.0 GiB (RESULTS.md, twentieth session), so ``generate`` uses both on a GPU
(``GenerateConfig.fused_vae_norms``).

Example (iso3d-tiny works in pixel space, so every option leaves ``x ↦ 2x − 1``)::

    >>> import torch
    >>> from iso3d.models.bundle import MultiViewDiffusion
    >>> from iso3d.models.latent_encoder import latent_encoder
    >>> from iso3d.models.presets import tiny_bundle_config
    >>> model = MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0)
    >>> encode = latent_encoder(model, channels_last=True)
    >>> x = torch.rand(2, 3, 16, 16)
    >>> torch.equal(encode(x), model.encode_images(x))
    True
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

__all__ = ["cudnn_autotune", "latent_encoder"]


def latent_encoder(model, *, channels_last: bool = False, compile: bool = False,
                   fused_group_norm: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.encode_images`` (``[B, 3, H, W]`` in [0, 1] → UNet space), optionally faster.

    Args:
        model: a :class:`~iso3d.models.bundle.MultiViewDiffusion`.
        channels_last: convert the VAE's weights to ``torch.channels_last`` **in place** and feed it
            channels-last images (NHWC); the values are unchanged up to the convolutions' rounding.
        compile: wrap the encode in ``torch.compile(dynamic=False)``: each new input shape compiles
            once, on its first call (~35 s on an H100). In SDS the images are always resized to the
            model's size, so the shapes differ by batch: 8 images in the 64² stage, 4 in the 256² one.
        fused_group_norm: swap the VAE encoder's GroupNorm → SiLU pairs for one fused op **in place**
            (:func:`~iso3d.models.fused_norm.fuse_group_norm_silu`: Triton on CUDA, the PyTorch twin on
            the CPU; same parameters, values equal up to fp32 summation order).

    Models without a VAE (pixel space, iso3d-tiny) have nothing to speed up: the options are ignored.
    """
    for name, value in (("channels_last", channels_last), ("compile", compile), ("fused_group_norm", fused_group_norm)):
        if not isinstance(value, bool):
            raise TypeError(f"latent_encoder: {name} must be a bool, got {value!r}")
    if model.vae is None:
        return model.encode_images
    if fused_group_norm:
        from iso3d.models.fused_norm import fuse_group_norm_silu

        fuse_group_norm_silu(model.vae.encoder)
    encode = model.encode_images
    if channels_last:
        model.vae.to(memory_format=torch.channels_last)
        plain = encode

        def encode(images: torch.Tensor) -> torch.Tensor:
            return plain(images.contiguous(memory_format=torch.channels_last))
    if compile:
        encode = torch.compile(encode, dynamic=False)
    return encode


@contextlib.contextmanager
def cudnn_autotune(enabled: bool = True) -> Iterator[None]:
    """Within the block, let cuDNN time its convolution algorithms for each new shape and keep the
    fastest (``torch.backends.cudnn.benchmark``); the previous setting is restored on exit.

    An SDS run has two input shapes per convolution (8 and 4 images, one per render-size milestone),
    so the search happens twice per run. Measured on an H100, it does not pay for the official VAE
    (cuDNN's default choice was already the fastest), so nothing in ``generate`` uses it. No effect
    on the CPU.
    """
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
