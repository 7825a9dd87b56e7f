"""The multi-view diffusion UNet: diffusers' ``UNet2DConditionModel`` with a camera MLP and joint attention.

Official release (DESIGN.md §2): SD-2.1-base layout (widths 320/640/1280/1280, 2 res blocks, attention
at the three finest levels, head dim 64 → 5/10/20 heads, linear proj in/out, context 1024), cos-first
timestep embedding, camera MLP ``Linear(16→1280)–SiLU–Linear(1280→1280)`` added to the time embedding
(diffusers ``class_embed_type="projection"``). The tiny family keeps the same structure, smaller.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from iso3d.utils.imports import require

from .attention_processor import MultiViewAttnProcessor, ReferenceMode

__all__ = ["MultiViewUNet", "MultiViewUNetConfig", "ReferenceFrame"]


@dataclass(frozen=True)
class MultiViewUNetConfig:
    sample_size: int = 32
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # finest first
    layers_per_block: int = 2
    head_dim: int = 64
    cross_attention_dim: int = 1024
    camera_dim: int = 16
    norm_num_groups: int = 32
    space: Literal["latent", "pixel"] = "latent"

    def __post_init__(self):
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError("MultiViewUNetConfig: attention_levels needs one flag per block_out_channels entry")
        for ch in self.block_out_channels:
            if ch % self.head_dim or ch % self.norm_num_groups:
                raise ValueError(f"MultiViewUNetConfig: width {ch} must be divisible by head_dim={self.head_dim} and norm_num_groups={self.norm_num_groups}")

    @classmethod
    def official(cls) -> "MultiViewUNetConfig":
        return cls()

    @classmethod
    def from_dict(cls, d: dict) -> "MultiViewUNetConfig":
        d = dict(d)
        for key in ("block_out_channels", "attention_levels"):
            if key in d:
                d[key] = tuple(d[key])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"MultiViewUNetConfig: unknown keys {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_diffusers(self) -> dict:
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention_levels))
        return dict(
            sample_size=self.sample_size,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            # diffusers' "attention_head_dim" is the number of heads for SD-2-style UNets (a known
            # naming quirk): heads = width / head_dim.
            attention_head_dim=tuple(ch // self.head_dim for ch in self.block_out_channels),
            cross_attention_dim=self.cross_attention_dim,
            use_linear_projection=True,
            flip_sin_to_cos=True,
            freq_shift=0,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=self.camera_dim,
            norm_num_groups=self.norm_num_groups,
        )


@dataclass
class ReferenceFrame:
    """The clean reference frame of EMA fine-tuning, one per object."""

    sample: torch.Tensor  # [B, C, H, W] clean latents (or pixels)
    camera: torch.Tensor  # [B, 16] its camera embedding (zeros as an option)
    timestep: torch.Tensor | None = None  # [B]; None -> 0 (DESIGN.md: default t_ref = 0)
    mode: ReferenceMode = "full"


class MultiViewUNet(nn.Module):
    """``eps = unet(x_t, t, clip_token, camera)`` over ``B`` objects × ``V`` views, views attending jointly.

    Example:
        >>> cfg = MultiViewUNetConfig(sample_size=8, block_out_channels=(32, 64), attention_levels=(True, False),
        ...                           layers_per_block=1, head_dim=16, cross_attention_dim=32, norm_num_groups=8)
        >>> unet = MultiViewUNet(cfg)
        >>> x = torch.randn(2 * 4, 4, 8, 8)  # 2 objects x 4 views
        >>> eps = unet(x, torch.full((8,), 500), torch.randn(8, 1, 32), torch.randn(8, 16), n_views=4)
        >>> eps.shape
        torch.Size([8, 4, 8, 8])
    """

    def __init__(self, config: MultiViewUNetConfig = MultiViewUNetConfig(), *, backend: str = "auto"):
        super().__init__()
        from iso3d.utils.torchvision_compat import patch_torchvision_if_needed

        patch_torchvision_if_needed()
        diffusers = require("diffusers", "MultiViewUNet")
        self.config = config
        self.unet = diffusers.UNet2DConditionModel(**config.to_diffusers())
        self.backend = backend
        self.processors: list[MultiViewAttnProcessor] = []
        self.install_processors()

    def install_processors(self) -> None:
        """Put a :class:`MultiViewAttnProcessor` on every ``attn1``; other attention stays stock."""
        current = self.unet.attn_processors
        self.processors = []
        new = {}
        for name, proc in current.items():
            if name.endswith("attn1.processor"):
                proc = MultiViewAttnProcessor(backend=self.backend)
                self.processors.append(proc)
            new[name] = proc
        self.unet.set_attn_processor(new)

    def forward(
        self,
        sample: torch.Tensor,  # [B·V, C, H, W] noisy views
        timestep: torch.Tensor,  # [B·V]
        context: torch.Tensor,  # [B·V, 1, D] CLIP image token (zeros: unconditional)
        camera: torch.Tensor,  # [B·V, 16]
        *,
        n_views: int,
        reference: ReferenceFrame | None = None,
    ) -> torch.Tensor:  # [B·V, C_out, H, W]
        rows = sample.shape[0]
        if rows % n_views:
            raise ValueError(f"MultiViewUNet: batch of {rows} frames is not a multiple of n_views={n_views}")
        for name, t, shape in (("timestep", timestep, (rows,)), ("camera", camera, (rows, self.config.camera_dim))):
            if tuple(t.shape) != shape:
                raise ValueError(f"MultiViewUNet: {name} must have shape {shape}, got {tuple(t.shape)}")
        if context.dim() != 3 or context.shape[0] != rows or context.shape[-1] != self.config.cross_attention_dim:
            raise ValueError(f"MultiViewUNet: context must have shape [{rows}, tokens, {self.config.cross_attention_dim}], got {tuple(context.shape)}")
        dtype = self.unet.dtype  # inputs follow the weights, so a bf16/fp16 UNet takes fp32 callers
        sample, context, camera = sample.to(dtype), context.to(dtype), camera.to(dtype)
        frames, mode = n_views, "none"
        if reference is not None:
            sample, timestep, context, camera = self._append_reference(sample, timestep, context, camera, n_views, reference)
            frames, mode = n_views + 1, reference.mode
        for proc in self.processors:
            proc.num_frames, proc.reference = frames, mode
        eps = self.unet(sample, timestep, encoder_hidden_states=context, class_labels=camera).sample
        if reference is not None:  # the reference frame's prediction is dropped
            objects = rows // n_views
            eps = eps.view(objects, frames, *eps.shape[1:])[:, :n_views].reshape(rows, *eps.shape[1:])
        return eps

    @staticmethod
    def _append_reference(sample, timestep, context, camera, n_views, ref: ReferenceFrame):
        objects = sample.shape[0] // n_views
        if ref.sample.shape != (objects, *sample.shape[1:]):
            raise ValueError(f"ReferenceFrame.sample must have shape {(objects, *sample.shape[1:])}, got {tuple(ref.sample.shape)}")
        if ref.camera.shape != (objects, camera.shape[-1]):
            raise ValueError(f"ReferenceFrame.camera must have shape {(objects, camera.shape[-1])}, got {tuple(ref.camera.shape)}")
        t_ref = ref.timestep if ref.timestep is not None else torch.zeros(objects, dtype=timestep.dtype, device=timestep.device)

        def interleave(views, extra):  # [B·V, ...] + [B, ...] -> [B·(V+1), ...], reference last per object
            v = views.view(objects, n_views, *views.shape[1:])
            return torch.cat([v, extra.to(views)[:, None]], dim=1).reshape(objects * (n_views + 1), *views.shape[1:])

        ctx_ref = context.view(objects, n_views, *context.shape[1:])[:, 0]
        return (interleave(sample, ref.sample), interleave(timestep, t_ref), interleave(context, ctx_ref),
                interleave(camera, ref.camera))
