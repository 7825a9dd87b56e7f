"""CLIP image encoder: an open_clip vision tower producing the single context token of the UNet.

Official preprocessing (DESIGN.md §2): RGBA composited on white, resized to 256, then an antialiased
bicubic resize to 224, normalized with OpenAI's mean/std; the pooled, projected embedding (not
normalized) is the token ``[B, 1, D]``. The null condition for classifier-free guidance is zeros.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from iso3d.io import composite_on_white
from iso3d.utils.imports import require

__all__ = ["CLIPImageEncoder", "ImageEncoderConfig", "OPENAI_MEAN", "OPENAI_STD", "preprocess_images"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """open_clip vision tower: a named open_clip config (``ViT-H-14``) or an explicit ``vision_cfg``."""

    model_name: str | None = "ViT-H-14"
    embed_dim: int = 1024
    vision_cfg: dict = field(default_factory=dict)  # overrides / replaces the named config's vision_cfg
    load_size: int = 256
    image_size: int = 224

    def resolved_vision_cfg(self) -> dict:
        cfg = {}
        if self.model_name is not None:
            open_clip = _open_clip()
            named = open_clip.get_model_config(self.model_name)
            if named is None:
                raise ValueError(f"ImageEncoderConfig: open_clip has no model config named {self.model_name!r}")
            cfg.update(named["vision_cfg"])
        cfg.update(self.vision_cfg)
        cfg["image_size"] = self.image_size
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def _open_clip():
    from iso3d.utils.torchvision_compat import patch_torchvision_if_needed

    patch_torchvision_if_needed()
    return require("open_clip", "CLIPImageEncoder")


def preprocess_images(
    images: torch.Tensor,  # [B, 3|4, H, W] in [0, 1]
    load_size: int = 256,
    image_size: int = 224,
) -> torch.Tensor:  # [B, 3, image_size, image_size], normalized
    """RGBA on white → resize ``load_size`` → antialiased bicubic ``image_size`` → OpenAI mean/std."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a [B, 3 or 4, H, W] tensor in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1], got {images.dtype}")
    x = images.float()
    if x.shape[1] == 4:
        x = composite_on_white(x)
    x = F.interpolate(x, size=(load_size, load_size), mode="bicubic", antialias=True, align_corners=False)
    x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    return (x.clamp(0, 1) - mean) / std


class CLIPImageEncoder(nn.Module):
    """Frozen open_clip vision tower → ``[B, 1, embed_dim]`` context token."""

    def __init__(self, config: ImageEncoderConfig = ImageEncoderConfig()):
        super().__init__()
        _open_clip()  # fails with the install command when open_clip is missing
        self.config = config
        from open_clip.model import _build_vision_tower

        self.visual = _build_vision_tower(config.embed_dim, config.resolved_vision_cfg())
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # frozen: stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [B, 3|4, H, W] in [0, 1] -> [B, 1, D]
        x = preprocess_images(images, self.config.load_size, self.config.image_size)
        param = next(self.visual.parameters())
        return self.visual(x.to(device=param.device, dtype=param.dtype))[:, None, :]

    @staticmethod
    def null_embedding(like: torch.Tensor) -> torch.Tensor:
        """The classifier-free-guidance null condition: zeros shaped like ``like``."""
        return torch.zeros_like(like)
