"""Swap a diffusers network's GroupNorm → SiLU pairs for one fused op (:func:`iso3d.kernels.group_norm`).

Why: on CUDA, PyTorch's GroupNorm returns NCHW whatever its input's layout (up to at least 2.11), and
the SiLU after it is another full pass over the activations (two in the backward). A channels-last
VAE therefore converts layouts around each of its 22 norms; with the fused op it stays channels-last
and each pair is one pass. See :func:`~iso3d.models.latent_encoder.latent_encoder`.

The swap is in place and keeps the parameters (the same ``Parameter`` objects, under the same names),
so ``state_dict`` keys, loading and the values are unchanged: on the CPU the op runs the PyTorch twin.

Example::

    >>> import torch
    >>> from diffusers.models.resnet import ResnetBlock2D
    >>> from iso3d.models.fused_norm import fuse_group_norm_silu
    >>> block = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=None, groups=4).eval()
    >>> x = torch.randn(2, 8, 6, 6)
    >>> want = block(x, None)
    >>> fuse_group_norm_silu(block)
    2
    >>> torch.allclose(block(x, None), want, atol=1e-6)
    True
"""

from __future__ import annotations

import torch
from torch import nn

from iso3d.kernels.group_norm import group_norm

__all__ = ["GroupNormSiLU", "fuse_group_norm_silu"]


class GroupNormSiLU(nn.Module):
    """``nn.GroupNorm`` (then SiLU when ``silu``) as one op, sharing ``norm``'s affine parameters."""

    def __init__(self, norm: nn.GroupNorm, *, silu: bool = True, backend: str = "auto"):
        super().__init__()
        if not isinstance(norm, nn.GroupNorm):
            raise TypeError(f"GroupNormSiLU: norm must be a torch.nn.GroupNorm, got {type(norm).__name__}")
        self.num_groups, self.num_channels, self.eps = norm.num_groups, norm.num_channels, norm.eps
        self.weight, self.bias = norm.weight, norm.bias  # the same Parameters (None without affine)
        self.silu, self.backend = silu, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, silu=self.silu, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, silu={self.silu}, backend={self.backend!r}"


def _is_resnet_with_plain_silu(m: nn.Module) -> bool:
    """A diffusers ``ResnetBlock2D`` whose ``nonlinearity`` only follows ``norm1`` and ``norm2``: no
    time embedding (its projection would also go through ``nonlinearity``) and plain GroupNorms."""
    return (isinstance(getattr(m, "norm1", None), nn.GroupNorm) and isinstance(getattr(m, "norm2", None), nn.GroupNorm)
            and isinstance(getattr(m, "nonlinearity", None), nn.SiLU) and getattr(m, "time_emb_proj", 0) is None
            and getattr(m, "time_embedding_norm", None) == "default")


def fuse_group_norm_silu(module: nn.Module, *, backend: str = "auto") -> int:
    """Replace, in place, every GroupNorm → SiLU pair of ``module`` that can be fused; return how many
    norms were replaced.

    Fused: the ``norm1``/``norm2`` pairs of diffusers ``ResnetBlock2D`` blocks without a time
    embedding (the VAE's), whose ``nonlinearity`` becomes ``nn.Identity``, and a ``conv_norm_out`` →
    ``conv_act`` pair (the VAE encoder's head). Other norms (the attention's) are left as they are.
    Calling it again finds nothing more to fuse and returns 0.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"fuse_group_norm_silu: module must be a torch.nn.Module, got {type(module).__name__}")
    fused = 0
    for m in list(module.modules()):
        if _is_resnet_with_plain_silu(m):
            m.norm1 = GroupNormSiLU(m.norm1, backend=backend)
            m.norm2 = GroupNormSiLU(m.norm2, backend=backend)
            m.nonlinearity = nn.Identity()
            fused += 2
        if isinstance(getattr(m, "conv_norm_out", None), nn.GroupNorm) and isinstance(getattr(m, "conv_act", None), nn.SiLU):
            m.conv_norm_out = GroupNormSiLU(m.conv_norm_out, backend=backend)
            m.conv_act = nn.Identity()
            fused += 1
    return fused
